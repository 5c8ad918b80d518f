"""`vcell atlas validate`: every invariant the loader relies on, checked from the bytes up.

Checksums recorded at build, shard shapes and index ranges, sorted indices, values allowed by
the atlas's declared kind, one vocabulary everywhere, identical categories in every shard, and
statistics that match a recomputation. Problems are collected (not first-only) and reported
with the shard and array they concern.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem
from tqdm.auto import tqdm

from vcell.atlas.stats import StatsAccumulator
from vcell.atlas.store import Atlas, checksum_tree, open_atlas
from vcell.errors import VCellError


def check_checksums(atlas: Atlas) -> list[str]:
    recorded: dict[str, str] = atlas.attrs.get("checksums", {})
    actual = checksum_tree(atlas.path, exclude={"zarr.json"})
    problems = [f"missing file: {name}" for name in sorted(set(recorded) - set(actual))]
    problems += [f"unexpected file (not written by the build): {name}" for name in sorted(set(actual) - set(recorded))]
    problems += [
        f"checksum mismatch (file changed or corrupt): {name}"
        for name in sorted(set(recorded) & set(actual))
        if recorded[name] != actual[name]
    ]
    return problems


def check_csr(name: str, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple, n_genes: int) -> list[str]:
    """Structural checks of one shard's CSR arrays; returns problems (empty when sound)."""
    problems = []
    n_rows = shape[0]
    if shape[1] != n_genes:
        problems.append(f"{name}: X has {shape[1]} columns, the vocabulary {n_genes} genes")
    if len(indptr) != n_rows + 1 or indptr[0] != 0:
        return problems + [f"{name}: indptr has length {len(indptr)} (want {n_rows + 1}) or does not start at 0"]
    if np.any(np.diff(indptr) < 0):
        return problems + [f"{name}: indptr decreases (rows overlap)"]
    if indptr[-1] != len(indices) or len(indices) != len(data):
        return problems + [f"{name}: indptr ends at {indptr[-1]} but indices/data hold {len(indices)}/{len(data)} values"]
    if len(indices) and int(indices.max()) >= n_genes:
        problems.append(f"{name}: gene index {int(indices.max())} out of range (vocabulary has {n_genes})")
    steps = np.diff(indices.astype(np.int64))
    within_row = np.ones(len(steps), dtype=bool)
    boundaries = indptr[1:-1] - 1
    within_row[boundaries[(boundaries >= 0) & (boundaries < len(steps))]] = False
    if np.any(steps[within_row] <= 0):
        problems.append(f"{name}: gene indices not strictly increasing within a row (unsorted or duplicated)")
    return problems


def check_values(name: str, data: np.ndarray, declared: str) -> list[str]:
    if not np.all(np.isfinite(data)):
        return [f"{name}: X holds NaN or inf values"]
    problems = [f"{name}: X holds negative values"] if np.any(data < 0) else []
    if declared == "counts" and not np.all(data == np.round(data)):
        problems.append(f"{name}: the atlas declares raw counts but X holds non-integer values")
    return problems


def check_shard(atlas: Atlas, record: dict, var_index: pd.Index, stats: StatsAccumulator | None) -> list[str]:
    name = f"shard {record['name']}"
    group = atlas.shard_group(record["name"])
    x_group = group["X"]
    data, indices, indptr = (np.asarray(x_group[k][:]) for k in ("data", "indices", "indptr"))
    shape = tuple(x_group.attrs["shape"])
    problems = []
    if shape[0] != record["n_cells"] or len(data) != record["nnz"]:
        problems.append(f"{name}: holds {shape[0]} cells / {len(data)} values, the build recorded {record['n_cells']} / {record['nnz']}")
    problems += check_csr(name, data, indices, indptr, shape, atlas.n_genes)
    if problems:
        return problems
    problems += check_values(name, data, atlas.attrs["values"])
    obs = read_elem(group["obs"])
    if len(obs) != shape[0]:
        problems.append(f"{name}: obs has {len(obs)} rows for {shape[0]} cells")
    for column, categories in atlas.attrs["obs_categories"].items():
        if column not in obs or [str(c) for c in obs[column].cat.categories] != categories:
            problems.append(f"{name}: obs '{column}' categories differ from the atlas's global categories")
    if not read_elem(group["var"]).index.equals(var_index):
        problems.append(f"{name}: var differs from the atlas vocabulary")
    if stats is not None and not problems:
        matrix = sp.csr_matrix((data.astype(np.float64), indices.astype(np.int64), indptr), shape=shape)
        library = np.asarray(matrix.sum(axis=1)).ravel()
        source_rows = obs["vcell_source"].cat.codes.to_numpy()
        measured = np.asarray(atlas.root["genes/measured"][:])
        for source in np.unique(source_rows):  # stats are over cells whose source measured the gene
            rows = np.flatnonzero(source_rows == source)
            stats.add(matrix[rows], library[rows], measured[source])
    return problems


def check_stats(atlas: Atlas, stats: StatsAccumulator) -> list[str]:
    stored = {name: np.asarray(atlas.root[f"stats/{name}"][:]) for name in stats.gene_arrays()}
    problems = [
        f"stats/{name} does not match a recomputation from X (max difference {np.max(np.abs(values - stored[name])):.3g})"
        for name, values in stats.gene_arrays().items()
        if not np.allclose(values, stored[name], rtol=1e-5, atol=1e-8)
    ]
    summary, recorded = stats.library_summary(), atlas.attrs["library_size"]
    if not np.allclose([summary["mean"], summary["min"], summary["max"]], [recorded["mean"], recorded["min"], recorded["max"]], rtol=1e-6):
        problems.append("library-size statistics do not match a recomputation from X")
    return problems


def validate_atlas(path: str | Path, *, check_statistics: bool = True, progress: bool = True) -> dict:
    """Validate the atlas at `path`; raises VCellError listing every problem, else a summary."""
    atlas = open_atlas(path, check_files=False)  # missing files are listed below with every other problem
    problems = check_checksums(atlas)
    var_index = read_elem(atlas.root["var"]).index
    if len(var_index) != atlas.n_genes or var_index.has_duplicates:
        problems.append(f"var: {len(var_index)} genes (attrs say {atlas.n_genes}) or duplicate gene IDs")
    if tuple(atlas.root["genes/measured"].shape) != (len(atlas.attrs["sources"]), atlas.n_genes):
        problems.append("genes/measured does not have shape (n_sources, n_genes)")
    starts = np.cumsum([0] + [s["n_cells"] for s in atlas.shards])
    if [s["start"] for s in atlas.shards] != starts[:-1].tolist() or starts[-1] != atlas.n_cells:
        problems.append(f"shards cover {starts[-1]} cells in their records; the atlas declares {atlas.n_cells}")
    stats = StatsAccumulator(atlas.n_genes, atlas.attrs["stats"]["transform"]) if check_statistics else None
    if not problems:  # structural checks only make sense on intact bytes
        for record in tqdm(atlas.shards, desc="validating shards", unit="shard", disable=not progress or None):
            problems += check_shard(atlas, record, var_index, stats)
    if stats is not None and not problems:
        problems += check_stats(atlas, stats)
    if problems:
        listing = "\n  ".join(problems)
        raise VCellError(f"{path}: atlas is invalid ({len(problems)} problem(s)):\n  {listing}", hint="rebuild it with --overwrite")
    return {"path": str(atlas.path), "n_cells": atlas.n_cells, "n_genes": atlas.n_genes, "n_shards": len(atlas.shards), "valid": True}
