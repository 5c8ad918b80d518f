"""`vcell atlas build`: sources -> one shuffled, sharded, checksummed Zarr v3 atlas.

Two streaming passes, memory bounded by one shard:
  1. read every source in chunks: check values, map genes to the global vocabulary,
     accumulate statistics, spill each cell to the shard its shuffled position falls in;
  2. assemble each shard from its spill in position order and write it as AnnData.
Everything is written under a temporary sibling folder that is renamed to the output path
only when complete, so an interrupted build never leaves something that looks like an atlas.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from anndata.io import write_elem
from tqdm.auto import tqdm

from vcell import __version__
from vcell.atlas.durations import conversion_report, convert_duration_columns
from vcell.atlas.merge import SOURCE_COLUMN, Vocabulary, build_vocabulary
from vcell.atlas.obs_spill import ObsSpill
from vcell.atlas.sources import Source
from vcell.atlas.spill import ShardSpill, shard_groups
from vcell.atlas.stats import TARGET_SUM, LIBRARY_EDGES, StatsAccumulator
from vcell.atlas.store import (
    ATLAS_OUTPUT, ATTRS_KEY, FORMAT_NAME, FORMAT_VERSION, SHARDS_GROUP, checksum_tree, index_dtype, shard_name,
    write_shard,
)
from vcell.config.schema import BuildConfig
from vcell.errors import VCellError
from vcell.files import claim_output, swap_into_place

log = logging.getLogger(__name__)
ExtraWriter = Callable[[zarr.Group, Path], None]


def source_label(source: Source) -> str:
    return str(getattr(source, "path", None) or source.name)


def describe_cell(matrix: sp.csr_matrix, position: int, first_row: int, names: pd.Index) -> str:
    """'cell 7 (obs name 'AAACG-1')' for the cell holding stored value number `position`."""
    row = int(np.searchsorted(matrix.indptr, position, side="right") - 1)
    return f"cell {first_row + row} (obs name '{names[row]}')"


def check_values(matrix: sp.csr_matrix, label: str, first_row: int, names: pd.Index, values: str) -> bool:
    """Refuse NaN/inf/negative values; return whether all values are integers (raw counts)."""
    data = matrix.data
    bad = ~np.isfinite(data)
    if bad.any() or (data < 0).any():
        position = int(np.flatnonzero(bad | (data < 0))[0])
        kind = "NaN/inf" if bad.any() else "negative"
        raise VCellError(
            f"{label}: {kind} value {float(data[position])} at {describe_cell(matrix, position, first_row, names)}",
            hint="an atlas holds raw counts or non-negative normalised expression; "
            "choose another matrix with --layer, or clean the input",
        )
    is_integer = bool(np.all(data == np.round(data)))
    if values == "counts" and not is_integer:
        position = int(np.flatnonzero(data != np.round(data))[0])
        raise VCellError(
            f"{label}: counts were requested but the matrix holds non-integer value {float(data[position])} "
            f"at {describe_cell(matrix, position, first_row, names)} (it looks normalised)",
            hint="pass the raw counts (e.g. --layer counts or build.matrix=raw.X), or use build.values=auto",
        )
    return is_integer


def to_vocabulary(matrix: sp.csr_matrix, gene_map: np.ndarray, n_genes: int) -> sp.csr_matrix:
    """Re-index a chunk's columns onto the global vocabulary (sorted indices, no stored zeros)."""
    matrix = sp.csr_matrix(matrix, dtype=np.float64)
    matrix.eliminate_zeros()
    mapped = sp.csr_matrix((matrix.data, gene_map[matrix.indices], matrix.indptr), shape=(matrix.shape[0], n_genes))
    if not np.all(np.diff(gene_map) > 0):
        mapped.has_sorted_indices = False
        mapped.sort_indices()
    return mapped


def plan_shard_cells(config: BuildConfig, n_cells: int, nnz_per_cell: float, n_genes: int) -> int:
    """Balanced shards of about `shard_bytes` uncompressed X (or exactly `shard_cells`)."""
    if config.shard_cells:
        target = config.shard_cells
    else:
        bytes_per_cell = max(nnz_per_cell, 1.0) * (spill_dtype(config).itemsize + index_dtype(n_genes).itemsize)
        target = max(1, int(config.shard_bytes // bytes_per_cell))
    n_shards = -(-n_cells // target)
    return -(-n_cells // n_shards)


def unique_names(names: list[str]) -> list[str]:
    """Source labels for obs: two inputs both called `sample.h5ad` become sample, sample-2."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


def estimate_nnz_per_cell(source: Source, read_cells: int) -> float:
    if hasattr(source, "nnz_per_cell"):
        return float(source.nnz_per_cell())
    first = next(iter(source.chunks(min(read_cells, source.n_cells))))
    return first.X.nnz / max(first.X.shape[0], 1)


def build_atlas(
    sources: list[Source], out: str | Path, config: BuildConfig, *, extra: ExtraWriter | None = None,
    progress: bool = True,
) -> Path:
    """Build an atlas at `out` from `sources`; returns the path. See the module docstring."""
    if not sources:
        raise VCellError("no inputs given", hint="pass one or more .h5ad files or AnnData .zarr stores")
    given = Path(out)
    out = claim_output(given, ATLAS_OUTPUT, inputs=[getattr(s, "path", None) for s in sources], overwrite=config.overwrite)
    temporary = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        build_into(temporary, sources, config, extra, progress)
        swap_into_place(temporary, out)
    except OSError as error:
        # numpy's tofile reports a short write without errno: look at the disk itself then.
        if error.errno in (errno.ENOSPC, errno.EDQUOT) or (error.errno is None and disk_is_full(temporary)):
            raise VCellError(
                f"disk full while writing the atlas {out} ({error}); nothing was left behind",
                hint="free space or choose another --out; a build needs about twice the atlas size while it runs",
            ) from None
        raise VCellError(f"cannot write the atlas {given}: {error}") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return given


def build_into(directory: Path, sources: list[Source], config: BuildConfig, extra: ExtraWriter | None, progress: bool) -> None:
    labels = [source_label(s) for s in sources]
    vocabulary = build_vocabulary(sources, labels)
    n_cells = sum(s.n_cells for s in sources)
    nnz_per_cell = np.average([estimate_nnz_per_cell(s, config.read_cells) for s in sources], weights=[s.n_cells for s in sources])
    shard_cells = plan_shard_cells(config, n_cells, nnz_per_cell, vocabulary.n_genes)
    n_shards = -(-n_cells // shard_cells)
    rng = np.random.default_rng(config.shuffle_seed)
    positions = rng.permutation(n_cells) if config.shuffle else np.arange(n_cells)
    root = zarr.open_group(str(directory), mode="w", zarr_format=3)
    spill = ShardSpill(directory / ".spill", n_shards, shard_cells, spill_dtype(config), index_dtype(vocabulary.n_genes))
    obs_spill = ObsSpill(directory / ".spill", n_cells, len(sources))
    try:
        scan = scan_sources(sources, labels, vocabulary, positions, (spill, obs_spill), config, progress)
    finally:
        spill.close()
    del positions  # pass 2 needs only the spills: nothing left that grows with the atlas but the files
    stored_dtype = resolve_stored_dtype(config, scan)
    obs_plan = obs_spill.plan()
    source_names = unique_names([s.name for s in sources])
    shards = root.create_group(SHARDS_GROUP)
    var = vocabulary.var
    shard_records, converted, obs_columns = [], {}, {}
    for shard in tqdm(range(n_shards), desc="writing shards", unit="shard", disable=not progress or None):
        obs, obsm = obs_spill.assemble(shard, spill.arrival_order(shard), obs_plan, source_names)
        obs = convert_duration_columns(obs, config.duration_columns, SOURCE_COLUMN, converted)
        obs_columns = {c: str(obs[c].dtype) for c in obs.columns}
        matrix = spill.assemble(shard, stored_dtype)
        write_shard(shards, shard_name(shard), matrix, vocabulary.n_genes, obs, var, obsm, config.codec, config.chunk_nnz)
        shard_records.append({"name": shard_name(shard), "start": shard * shard_cells, "n_cells": len(obs), "nnz": int(matrix.nnz)})
        del obs, obsm, matrix
    shutil.rmtree(directory / ".spill")
    write_vocabulary_and_stats(root, vocabulary, scan["stats"])
    if extra is not None:
        extra(root, directory)
    values = "counts" if scan["all_integer"] else "normalized"
    attrs = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "created_by": f"vcell {__version__}",
        "n_cells": n_cells, "n_genes": vocabulary.n_genes, "nnz": sum(r["nnz"] for r in shard_records),
        "values": values, "dtype": stored_dtype.name, "index_dtype": index_dtype(vocabulary.n_genes).name,
        "codec": config.codec.model_dump(), "chunk_nnz": config.chunk_nnz, "shard_cells": shard_cells,
        "shuffled": config.shuffle, "shuffle_seed": config.shuffle_seed,
        "sources": [
            {**s.describe(), "name": s.name, "n_cells": s.n_cells, "n_genes": len(s.gene_ids), "coverage": c}
            for s, c in zip(sources, vocabulary.coverage)
        ],
        "shards": shard_records,
        "obs_columns": obs_columns,
        "obs_categories": {
            c: [str(v) for v in categories] for c, (kind, categories) in obs_plan.columns.items()
            if kind == "category" and c not in converted
        } | {SOURCE_COLUMN: source_names},
        "obs_conversions": conversion_report(converted),
        "obsm_keys": sorted(obs_plan.obsm),
        "stats": {"transform": scan["stats"].transform, "target_sum": TARGET_SUM},
        "library_size": scan["stats"].library_summary(),
    }
    attrs["checksums"] = checksum_tree(directory, exclude={"zarr.json"})
    attrs["complete"] = True  # written last: only a finished build carries it
    root.attrs[ATTRS_KEY] = attrs


def scan_sources(sources, labels, vocabulary: Vocabulary, positions, spills: tuple[ShardSpill, ObsSpill], config: BuildConfig, progress: bool) -> dict:
    """Pass 1: validate, re-index, accumulate statistics and spill, one chunk at a time."""
    spill, obs_spill = spills
    counts_stats = StatsAccumulator(vocabulary.n_genes, "log1p_cp10k")
    identity_stats = StatsAccumulator(vocabulary.n_genes, "identity")
    all_integer, offset, max_value = True, 0, 0.0
    bar = tqdm(total=int(len(positions)), desc="reading inputs", unit="cell", unit_scale=True, disable=not progress or None)
    for index, (source, label) in enumerate(zip(sources, labels)):
        start = offset
        for chunk in source.chunks(config.read_cells):
            matrix = to_vocabulary(chunk.X, vocabulary.source_maps[index], vocabulary.n_genes)
            all_integer &= check_values(matrix, label, offset - start, chunk.obs.index, config.values)
            library = np.asarray(matrix.sum(axis=1)).ravel()
            max_value = max(max_value, float(matrix.data.max(initial=0.0)))
            for stats in (counts_stats, identity_stats):
                stats.add(matrix, library, vocabulary.measured[index])
            chunk_positions = positions[offset : offset + matrix.shape[0]]
            groups = shard_groups(chunk_positions, spill.shard_cells)
            spill.append(matrix, chunk_positions, groups)
            obs_spill.append(index, chunk.obs, chunk.obsm, groups)
            offset += matrix.shape[0]
            bar.update(matrix.shape[0])
        if offset - start != source.n_cells:
            raise VCellError(f"{label}: yielded {offset - start} cells but declares {source.n_cells}")
    bar.close()
    if counts_stats.detected.sum() == 0:
        raise VCellError(f"{', '.join(labels)}: the expression matrix has no non-zero values", hint="check the chosen matrix (--layer)")
    stats = counts_stats if all_integer else identity_stats
    return {"stats": stats, "all_integer": all_integer, "max_value": max_value}


def spill_dtype(config: BuildConfig) -> np.dtype:
    """Values wait in the spill at full precision; the stored type is chosen once all are seen."""
    return np.dtype(np.float64 if config.dtype == "float64" else np.float32)


def resolve_stored_dtype(config: BuildConfig, scan: dict) -> np.dtype:
    fits_uint16 = scan["all_integer"] and scan["max_value"] <= np.iinfo(np.uint16).max
    if config.dtype == "uint16" and not fits_uint16:
        reason = "are not all integers" if not scan["all_integer"] else f"reach {scan['max_value']:g} (> 65,535)"
        raise VCellError(f"build.dtype=uint16: the values {reason}", hint="use build.dtype=auto or float32")
    if config.dtype == "auto":
        return np.dtype(np.uint16 if fits_uint16 else np.float32)
    return np.dtype(config.dtype)


def write_vocabulary_and_stats(root: zarr.Group, vocabulary: Vocabulary, stats: StatsAccumulator) -> None:
    with anndata.settings.override(auto_shard_zarr_v3=False):
        write_elem(root, "var", vocabulary.var)
    genes = root.create_group("genes")
    genes.create_array("measured", data=vocabulary.measured)
    group = root.create_group("stats")
    for name, values in stats.gene_arrays().items():
        group.create_array(name, data=values)
    group.create_array("library_size_histogram", data=stats.library_histogram)
    group.create_array("library_size_edges", data=LIBRARY_EDGES)
    group.attrs.update({"transform": stats.transform, "target_sum": TARGET_SUM})


def disk_is_full(path: Path) -> bool:
    try:
        status = os.statvfs(path if path.exists() else path.parent)
    except OSError:
        return False
    return status.f_bavail * status.f_frsize < 1 << 20


def remove_stale_temporaries(out: Path) -> None:
    """Leftovers of builds that were killed (their process is gone) are deleted."""
    for leftover in out.parent.glob(f".{out.name}.tmp-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            log.info("removing the leftover of an interrupted build: %s", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
