"""New cells as a trained model reads them: an atlas or an `.h5ad`, aligned to its vocabulary.

    stream = open_cells("new.h5ad", trained)          # or an atlas path; trained = open_trained(run)
    stream.coverage                                   # {"model_genes": 2000, "matched": 1873, ...}
    for rows, batch in stream.batches(1024):          # input rows [a, b) in order, loader-style dicts
        ...

Genes are matched to the model's vocabulary by ID, then by symbol; model genes the input
lacks are unmeasured: they enter the model as a gene hidden in training does (0 in its input
space; zero counts before normalisation, so with `normalize.zscore` they are not the z-score of
a zero), and `batch["unmeasured"]` marks them: the model takes them as neither detected nor not
(`vcell.models.slots.detected_genes`). Input genes the model does not know are otherwise ignored but still count towards each
cell's library size, exactly as the training loader does. `min_gene_overlap` refuses an input
sharing fewer than that share of the model's genes. Normalisation (z-score statistics included) is the training run's,
from the model folder, not the new input's. Category columns are re-coded to the model's
categories by name (-1 = a category the model never saw). Batches are assembled by the same
`BatchAssembler` the training loader uses, so a training cell gets the same input here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata.io import read_elem

from vcell.atlas.durations import is_textual, to_hours
from vcell.atlas.store import Atlas, open_atlas
from vcell.data.loader import to_tensors
from vcell.data.epoch_plan import Blocks
from vcell.data.reader import AtlasReader, RowBlock, read_window
from vcell.data.resolve import SYMBOL_COLUMNS, atlas_var
from vcell.data.transform import BatchAssembler
from vcell.errors import VCellError
from vcell.evaluate.export import Trained

LOW_COVERAGE = 0.5  # below this share of the model's genes, say that embeddings will be poor


@dataclass
class CellStream:
    """Every cell (or chosen rows) of one input, in order, as batches the model reads."""

    path: Path
    obs: pd.DataFrame  # one row per streamed cell, in stream order
    coverage: dict
    chunks: object  # callable(batch_size) -> iterator of (RowBlock with model-coded labels, rows)
    assembler: BatchAssembler
    warnings: list[str] = field(default_factory=list)
    unmeasured: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # model genes the input lacks

    @property
    def n_cells(self) -> int:
        return len(self.obs)

    def batches(self, batch_size: int) -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
        """(stream positions, batch) for consecutive batches of at most `batch_size` cells."""
        position = 0
        for block in self.chunks(batch_size):
            window, library = self.assembler.shuffle(block, np.arange(len(block.indptr) - 1))
            size = len(library)
            batch = to_tensors(self.assembler(window, library, 0, size), self.assembler.n_out)
            if len(self.unmeasured):
                batch["x"][:, torch.as_tensor(self.unmeasured)] = 0.0  # what a hidden gene reads as in training
                batch["unmeasured"] = torch.zeros(batch["x"].shape, dtype=torch.bool)
                batch["unmeasured"][:, torch.as_tensor(self.unmeasured)] = True  # not detected, nor counted as such
            yield slice(position, position + size), batch
            position += size


def is_atlas(path: Path) -> bool:
    return (path / "zarr.json").is_file() and (path / "shards").is_dir()


def open_cells(path: str | Path, trained: Trained, *, rows: np.ndarray | None = None, span: tuple[int, int] | None = None,
               layer: str | None = None, gene_key: str | None = None, min_gene_overlap: float = 0.0,
               counts: bool = False) -> CellStream:
    """A stream over an atlas (a directory with zarr.json) or an .h5ad/AnnData zarr file.

    `rows` (atlas rows, any order, repeats allowed) restricts an atlas to a subset; `span`
    (first, last) restricts either kind to consecutive cells (one worker's share). Batches hold
    raw `counts` when the model reads them, and with `counts` whenever an atlas holds them (the
    evaluation's count baselines score every model)."""
    path = Path(path)
    if is_atlas(path):
        if span is not None:
            rows = np.arange(*span, dtype=np.int64)
        stream = atlas_cells(open_atlas(path), trained, rows, counts)
    elif rows is not None:
        raise VCellError("choosing rows is only supported for atlas inputs")
    else:
        stream = anndata_cells(path, trained, layer, gene_key, span)
    check_overlap(stream.coverage, min_gene_overlap, path)
    return stream


# -- vocabulary and categories ---------------------------------------------------------------
def align_genes(model_genes: list[str], input_ids: pd.Index, input_symbols: pd.Series | None,
                source: Path) -> tuple[np.ndarray, dict]:
    """(model gene -> input gene index, or an index past the input's genes when missing), coverage."""
    position = {str(gene): index for index, gene in enumerate(input_ids)}
    if input_symbols is not None:
        for index, symbol in enumerate(input_symbols.astype(str)):
            position.setdefault(symbol, index)
    found = np.array([position.get(gene, -1) for gene in model_genes], dtype=np.int64)
    matched = int((found >= 0).sum())
    if matched == 0:
        raise VCellError(
            f"{source}: none of its {len(input_ids):,} genes is in the model's vocabulary of {len(model_genes):,} "
            f"(model genes look like {model_genes[0]!r}, the input's like {str(input_ids[0])!r})",
            hint="pass --gene-key with the var column holding the same kind of IDs or symbols the model was trained on",
        )
    missing = found < 0
    found[missing] = len(input_ids) + np.arange(int(missing.sum()))  # virtual genes: never stored, read as zero
    coverage = {"model_genes": len(model_genes), "matched": matched, "missing": int(missing.sum()),
                "fraction": matched / len(model_genes), "input_genes": len(input_ids),
                "input_genes_unused": len(input_ids) - matched}
    return found, coverage


def check_overlap(coverage: dict, minimum: float, source: Path) -> None:
    if coverage["fraction"] < minimum:
        raise VCellError(
            f"{source}: only {coverage['matched']:,} of the model's {coverage['model_genes']:,} genes are in the input "
            f"({coverage['fraction']:.0%}), below the minimum overlap of {minimum:.0%}",
            hint="check the gene IDs (--gene-key names the var column with IDs or symbols), or lower --min-gene-overlap "
            "if embeddings from this few genes are what you want",
        )


def coverage_line(coverage: dict) -> str:
    """One line for people: how the input's genes met the model's."""
    return (f"genes: {coverage['matched']:,} of the model's {coverage['model_genes']:,} in the input "
            f"({coverage['fraction']:.0%}); {coverage['missing']:,} unmeasured, "
            f"{coverage['input_genes_unused']:,} input genes not in the model (ignored)")


def category_recoder(input_categories: list[str], model_categories: list[str]) -> np.ndarray:
    """Input code -> model code by name (-1 for categories the model never saw)."""
    lookup = {name: code for code, name in enumerate(model_categories)}
    return np.array([lookup.get(str(name), -1) for name in input_categories], dtype=np.int64)


def make_assembler(trained: Trained, genes: np.ndarray, n_input_genes: int, counts: bool = False) -> BatchAssembler:
    n_virtual = int((genes >= n_input_genes).sum())
    return BatchAssembler(n_input_genes + n_virtual, genes, trained.normalization, dense=True,
                          keep_counts=counts or "counts" in trained.model.spec.inputs)


def unmeasured_genes(genes: np.ndarray, n_input_genes: int) -> np.ndarray:
    """Model gene positions the input lacks (`align_genes` points them past the input's genes)."""
    return np.flatnonzero(genes >= n_input_genes)


def coverage_warnings(coverage: dict) -> list[str]:
    if coverage["fraction"] >= LOW_COVERAGE:
        return []
    return [f"only {coverage['matched']:,} of the model's {coverage['model_genes']:,} genes are in the input "
            f"({coverage['fraction']:.0%}); the others are unmeasured and embeddings will be less reliable"]


def check_counts(trained: Trained, holds_counts: bool, source: Path) -> None:
    if trained.normalization.target_sum is not None and not holds_counts:
        raise VCellError(
            f"{source}: the model scales raw counts (target_sum={trained.normalization.target_sum:g}), "
            "but this input holds non-integer (normalised) values",
            hint="give the raw counts (e.g. --layer counts, or the raw.X matrix)",
        )


# -- atlas inputs ----------------------------------------------------------------------------
def atlas_cells(atlas: Atlas, trained: Trained, rows: np.ndarray | None, counts: bool = False) -> CellStream:
    var = atlas_var(atlas)
    symbols = next((var[c] for c in SYMBOL_COLUMNS if c in var.columns), None)
    genes, coverage = align_genes(trained.model.spec.gene_ids, var.index, symbols, atlas.path)
    check_counts(trained, atlas.attrs["values"] == "counts", atlas.path)
    reader = AtlasReader(atlas, [c for c in trained.config.loader.labels if atlas_has_column(atlas, c)])
    recoders = {column: category_recoder(atlas.attrs["obs_categories"][column], trained.categories.get(column, []))
                for column in reader.kinds if reader.kinds[column] == "category"}
    rows = np.arange(atlas.n_cells, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    missing_labels = [c for c in trained.config.loader.labels if c not in reader.kinds]

    def chunks(batch_size: int) -> Iterator[RowBlock]:
        blocks = Blocks.from_shards([s["start"] for s in atlas.shards], [s["n_cells"] for s in atlas.shards], batch_size)
        for start in range(0, len(rows), batch_size):
            chosen = rows[start: start + batch_size]
            window, local = read_window(reader, blocks, chosen)
            block = sp.csr_matrix((window.data, window.indices, window.indptr),
                                  shape=(len(window.indptr) - 1, atlas.n_genes))[local]
            labels = {name: values[local] for name, values in window.labels.items()}
            for column, recode in recoders.items():
                labels[column] = np.where(labels[column] >= 0, recode[np.maximum(labels[column], 0)], -1)
            labels.update(absent_labels(missing_labels, len(chosen), trained))
            yield RowBlock(block.indptr, block.indices, block.data, labels)

    obs = atlas_obs(atlas).iloc[rows]
    assembler = make_assembler(trained, genes, atlas.n_genes, counts and atlas.attrs["values"] == "counts")
    return CellStream(atlas.path, obs, coverage, chunks, assembler,
                      coverage_warnings(coverage), unmeasured_genes(genes, atlas.n_genes))


def atlas_has_column(atlas: Atlas, column: str) -> bool:
    return column in atlas.attrs["obs_columns"]


def atlas_obs(atlas: Atlas) -> pd.DataFrame:
    """Every cell's obs, shards concatenated in row order."""
    return pd.concat([read_elem(atlas.shard_group(s["name"])["obs"]) for s in atlas.shards])


def absent_labels(columns: list[str], n: int, trained: Trained) -> dict[str, np.ndarray]:
    """Columns the model reads that the input lacks: category -1 (unknown), numbers NaN, except
    a missing stimulus time, which means unstimulated (0), as in training data without one."""
    values = {}
    for column in columns:
        if column in trained.categories:
            values[column] = np.full(n, -1, dtype=np.int64)
        elif column == trained.config.model.columns.time:
            values[column] = np.zeros(n, dtype=np.float32)
        else:
            values[column] = np.full(n, np.nan, dtype=np.float32)
    return values


# -- AnnData inputs --------------------------------------------------------------------------
def numeric_label(values: pd.Series, column: str, path: Path) -> np.ndarray:
    """A column the model reads as a number, as float32. Durations written as text ('4h', '30min')
    become hours, as the atlas build converts them; any other text is an error, never NaN."""
    if is_textual(values):
        hours, _ = to_hours(values, column, pd.Series(str(path), index=values.index))
        return hours
    return values.to_numpy(np.float32)


def anndata_cells(path: Path, trained: Trained, layer: str | None, gene_key: str | None,
                  span: tuple[int, int] | None = None) -> CellStream:
    from vcell.atlas.anndata_source import AnnDataSource

    source = AnnDataSource(path, "X" if layer is None else f"layers/{layer}", gene_key)
    var = source.var
    genes, coverage = align_genes(trained.model.spec.gene_ids, var.index, var.get("gene_symbol"), path)
    first_cell, last_cell = span or (0, source.n_cells)
    obs = source.obs.iloc[first_cell:last_cell]
    first = next(source.chunks(min(1024, source.n_cells))).X
    check_counts(trained, bool(np.all(np.mod(first.data, 1) == 0)) and (first.data >= 0).all(), path)
    columns = trained.config.loader.labels
    present = [c for c in columns if c in obs.columns]
    missing = [c for c in columns if c not in obs.columns]

    def encode(frame: pd.DataFrame) -> dict[str, np.ndarray]:
        labels = {}
        for column in present:
            if column in trained.categories:
                names = frame[column].astype(str).to_numpy()
                lookup = {name: code for code, name in enumerate(trained.categories[column])}
                labels[column] = np.array([lookup.get(name, -1) for name in names], dtype=np.int64)
            else:
                labels[column] = numeric_label(frame[column], column, path)
        labels.update(absent_labels(missing, len(frame), trained))
        return labels

    def chunks(batch_size: int) -> Iterator[RowBlock]:
        for chunk in source.chunks(batch_size, first_cell, last_cell):
            matrix = chunk.X.astype(np.float32)
            yield RowBlock(matrix.indptr, matrix.indices, matrix.data, encode(chunk.obs))

    stream = CellStream(path, obs, coverage, chunks, make_assembler(trained, genes, len(var)), coverage_warnings(coverage),
                        unmeasured_genes(genes, len(var)))
    stream.warnings += [f"obs has no column '{c}' (the model reads it): treated as unknown" for c in missing]
    return stream
