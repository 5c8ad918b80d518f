"""The atlas format: one Zarr v3 group of shards, each shard also a valid AnnData zarr store.

```
atlas.zarr/
  zarr.json            attrs["vcell_atlas"]: format, version, counts, sources, shards, checksums
  var/                 the global gene vocabulary (AnnData dataframe; index = stable gene ID)
  genes/measured       bool (n_sources, n_genes): which source measured which gene
  stats/               gene_mean, gene_var, gene_detection_rate, gene_n_cells, library histogram
  shards/00000/ ...    AnnData: X (CSR on the global vocabulary), obs, var, obsm
  truth/, annotations/ simulator ground truth (synthesised atlases only)
```
X arrays use the Zarr sharding codec: one file per array per shard (~1 GB), inner chunks of
~64k non-zeros (a few hundred cells) so a reader decodes only the cells it needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import zarr
from anndata.io import write_elem
from zarr.codecs import BloscCodec, ZstdCodec

from vcell.atlas.chunks import RecordedFiles
from vcell.atlas.spill import CSRArrays
from vcell.config.schema import CodecConfig
from vcell.errors import VCellError
from vcell.files import OutputKind, foreign_entries, sha256_file

FORMAT_NAME = "vcell-atlas"
FORMAT_VERSION = 1
ATTRS_KEY = "vcell_atlas"
SHARDS_GROUP = "shards"
ANNDATA_ATTRS = {"encoding-type": "anndata", "encoding-version": "0.1.0"}
CSR_ATTRS = {"encoding-type": "csr_matrix", "encoding-version": "0.1.0"}
ATLAS_ENTRIES = {"zarr.json", "var", "genes", "stats", SHARDS_GROUP, "truth", "annotations"}  # the layout above
ROW_CHUNK = 8192  # rows per chunk of indptr and obs columns
BLOSC_SHUFFLE = {"byte": "shuffle", "bit": "bitshuffle", "none": "noshuffle"}


def compressors_for(codec: CodecConfig) -> tuple:
    if codec.name == "none":
        return ()
    if codec.name == "zstd":
        return (ZstdCodec(level=codec.level),)
    cname = codec.name.removeprefix("blosc-")
    return (BloscCodec(cname=cname, clevel=codec.level, shuffle=BLOSC_SHUFFLE[codec.shuffle]),)


def index_dtype(n_genes: int) -> np.dtype:
    """The narrowest unsigned type that holds every gene index (uint16 up to 65,536 genes)."""
    return np.dtype(np.uint16) if n_genes <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def shard_name(index: int) -> str:
    return f"{index:05d}"


def write_chunked_array(group: zarr.Group, name: str, values: np.ndarray, chunk: int, compressors: tuple) -> None:
    """One array, one shard file: inner chunks of `chunk` elements inside a single shard."""
    chunk = max(1, min(chunk, len(values)))
    shard_length = -(-max(len(values), 1) // chunk) * chunk  # whole number of inner chunks
    array = group.create_array(
        name, shape=values.shape, dtype=values.dtype, chunks=(chunk,), shards=(shard_length,),
        compressors=compressors, fill_value=0,
    )
    if len(values):
        array[:] = values


def write_shard(
    shards: zarr.Group, name: str, matrix: CSRArrays, n_genes: int, obs: pd.DataFrame, var: pd.DataFrame,
    obsm: dict[str, np.ndarray], codec: CodecConfig, chunk_nnz: int,
) -> None:
    """Write cells as an AnnData zarr store (readable by `anndata.read_zarr`), X in its given dtypes."""
    shard = shards.create_group(name)
    shard.attrs.update(ANNDATA_ATTRS)
    compressors = compressors_for(codec)
    x_group = shard.create_group("X")
    x_group.attrs.update({**CSR_ATTRS, "shape": [matrix.n_rows, n_genes]})
    write_chunked_array(x_group, "data", matrix.data, chunk_nnz, compressors)
    write_chunked_array(x_group, "indices", matrix.indices.astype(index_dtype(n_genes), copy=False), chunk_nnz, compressors)
    # Small row chunks (64 KiB) so a reader fetching one block of cells decodes little.
    write_chunked_array(x_group, "indptr", matrix.indptr.astype(np.int64, copy=False), ROW_CHUNK, compressors)
    with anndata.settings.override(auto_shard_zarr_v3=False):  # obs/var are small: plain chunks
        write_elem(shard, "obs", obs, dataset_kwargs={"chunks": (ROW_CHUNK,)})
        write_elem(shard, "var", var)
        write_elem(shard, "obsm", obsm)
        for key in ("varm", "layers", "obsp", "varp", "uns"):
            write_elem(shard, key, {})


def checksum_tree(root: Path, exclude: set[str] = frozenset()) -> dict[str, str]:
    """sha256 of every file under `root`, keyed by its relative POSIX path."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in files
        if p.relative_to(root).as_posix() not in exclude
    }


@dataclass
class Atlas:
    """An opened, complete atlas: its root group and the build's recorded attributes."""

    path: Path
    root: zarr.Group
    attrs: dict

    @property
    def n_cells(self) -> int:
        return int(self.attrs["n_cells"])

    @property
    def n_genes(self) -> int:
        return int(self.attrs["n_genes"])

    @property
    def shards(self) -> list[dict]:
        return self.attrs["shards"]

    def shard_group(self, name: str) -> zarr.Group:
        return self.root[f"{SHARDS_GROUP}/{name}"]

    def recorded_files(self, array: str) -> RecordedFiles | None:
        """What the build wrote for `array` (from its checksums): readers refuse a missing chunk file."""
        checksums = self.attrs.get("checksums")
        return None if checksums is None else RecordedFiles(self.path, array, checksums)


def open_atlas(path: str | Path, *, check_files: bool = True) -> Atlas:
    """Open an atlas for reading; a clear error if it is missing, incomplete or not an atlas.

    `check_files`: refuse an atlas whose files outside shards/ (vocabulary, statistics, truth)
    are not all there (a stat per file, independent of the number of cells; shard files are
    checked chunk by chunk as they are read). `vcell atlas validate` lists them instead.
    """
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise VCellError(
            f"{path}: not a vcell atlas (no zarr.json)",
            hint="make one with `vcell atlas build` or `vcell atlas synth`",
        )
    try:
        metadata = json.loads((path / "zarr.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise VCellError(f"{path}/zarr.json: unreadable ({error}); the atlas is corrupt") from None
    attrs = metadata.get("attributes", {}).get(ATTRS_KEY)
    if not attrs or attrs.get("format") != FORMAT_NAME:
        raise VCellError(f"{path}: a Zarr group but not a vcell atlas (no '{ATTRS_KEY}' attributes)")
    if attrs.get("version") != FORMAT_VERSION:
        raise VCellError(
            f"{path}: atlas format version {attrs.get('version')} is not supported (this vcell reads {FORMAT_VERSION})",
            hint="rebuild the atlas with this version of vcell",
        )
    if not attrs.get("complete"):
        raise VCellError(f"{path}: the atlas build did not finish; rebuild it with --overwrite")
    if check_files:
        check_files_outside_shards(path, attrs.get("checksums", {}))
    return Atlas(path=path, root=zarr.open_group(str(path), mode="r"), attrs=attrs)


def check_files_outside_shards(path: Path, recorded: dict[str, str]) -> None:
    missing = [name for name in recorded if not name.startswith(f"{SHARDS_GROUP}/") and not (path / name).exists()]
    if missing:
        raise VCellError(
            f"atlas {path}: {len(missing)} file(s) the build wrote are missing: {', '.join(sorted(missing)[:5])}"
            + (" ..." if len(missing) > 5 else ""),
            hint=f"the atlas is damaged: `vcell atlas validate {path}` lists every problem; restore the files or "
            "rebuild the atlas with --overwrite",
        )


def not_an_atlas_of_ours(path: Path) -> str | None:
    """None for a folder vcell built as an atlas (root attrs name the format) holding nothing else; else why not."""
    try:
        metadata = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        metadata = None
    attrs = metadata.get("attributes", {}).get(ATTRS_KEY) if isinstance(metadata, dict) else None
    if not isinstance(attrs, dict) or attrs.get("format") != FORMAT_NAME:
        return "it is not a vcell atlas"
    return foreign_entries(path, ATLAS_ENTRIES)


ATLAS_OUTPUT = OutputKind("an atlas", is_folder=True, not_ours=not_an_atlas_of_ours)


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def atlas_info(path: str | Path) -> dict:
    """What `vcell atlas info` reports: counts, shards, sources, obs columns, size on disk."""
    atlas = open_atlas(path)
    attrs = atlas.attrs
    return {
        "path": str(atlas.path.resolve()),
        "format": f"{attrs['format']} v{attrs['version']}",
        "n_cells": attrs["n_cells"],
        "n_genes": attrs["n_genes"],
        "nnz": attrs["nnz"],
        "density": attrs["nnz"] / max(attrs["n_cells"] * attrs["n_genes"], 1),
        "values": attrs["values"],
        "n_shards": len(attrs["shards"]),
        "cells_per_shard": attrs["shard_cells"],
        "codec": attrs["codec"],
        "chunk_nnz": attrs["chunk_nnz"],
        "obs_columns": attrs["obs_columns"],
        "obsm_keys": attrs["obsm_keys"],
        "sources": [
            {k: s[k] for k in ("name", "kind", "n_cells", "n_genes", "coverage") if k in s}
            for s in attrs["sources"]
        ],
        "library_size": attrs["library_size"],
        "has_truth": "truth" in atlas.root,
        "bytes_on_disk": directory_bytes(atlas.path),
    }
