"""Gather a batch's rows from the shuffle buffer, normalise them, densify: numpy in, numpy out.

All arithmetic happens on the stored non-zeros (~7% of the matrix), never on the dense batch,
except the one write that densifies it. Per-gene z-scoring costs nothing extra: the dense
batch starts as each gene's value at zero count, (0 - mean) / sd, instead of zeros, and the
non-zeros are written over it already standardised.

Order of operations (scanpy's): library size over all genes -> scale to target_sum -> log1p
-> gene subset -> z-score with the atlas's stored statistics -> clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from vcell.data.reader import RowBlock


@dataclass(frozen=True)
class Normalization:
    """Resolved normalisation (the config, checked against the atlas)."""

    target_sum: float | None  # None: no library-size scaling
    log1p: bool
    gene_mean: np.ndarray | None  # (genes out,) z-score centre; None: no z-score
    gene_scale: np.ndarray | None  # (genes out,) 1 / sd
    clip: float | None


class BatchAssembler:
    """`assembler(window, rows)` -> dict of numpy arrays for the batch (see `vcell.data.loader`)."""

    def __init__(self, n_genes: int, genes: np.ndarray | None, normalization: Normalization,
                 dense: bool = True, keep_counts: bool = False):
        self.genes = genes  # atlas gene indices to keep, in output order; None keeps all
        self.n_in = n_genes
        self.n_out = n_genes if genes is None else len(genes)
        self.lookup = None
        if genes is not None:  # atlas gene index -> output column, -1 when not selected
            self.lookup = np.full(n_genes, -1, dtype=np.int32)
            self.lookup[genes] = np.arange(len(genes), dtype=np.int32)
        self.norm = normalization
        self.dense = dense
        self.keep_counts = keep_counts
        if normalization.gene_mean is not None:
            self.zero_row = (-normalization.gene_mean * normalization.gene_scale).astype(np.float32)
            if normalization.clip is not None:
                np.clip(self.zero_row, -normalization.clip, normalization.clip, out=self.zero_row)

    def __call__(self, window: RowBlock, rows: np.ndarray) -> dict[str, np.ndarray]:
        # scipy's row gather (one C++ pass) is ~3x faster than numpy's repeat/arange/take.
        matrix = sp.csr_matrix((window.data, window.indices, window.indptr), shape=(len(window.indptr) - 1, self.n_in))
        picked = matrix[rows]
        indptr, genes, counts = picked.indptr.astype(np.int64, copy=False), picked.indices, picked.data
        lengths = np.diff(indptr)
        library = np.diff(np.concatenate([[0.0], np.cumsum(counts, dtype=np.float64)])[indptr])
        batch = {"library_size": library.astype(np.float32)}
        values = self.normalise(counts, lengths, library)
        if self.lookup is not None:
            indptr, genes, values, counts = self.subset(indptr, genes, values, counts)
        if self.keep_counts:
            batch["counts"] = self.densify(indptr, genes, counts, standardise=False)
        if self.dense:
            batch["x"] = self.densify(indptr, genes, values, standardise=True)
        else:
            batch["x_indptr"], batch["x_indices"] = indptr, genes.astype(np.int64)
            batch["x_values"] = self.standardise_values(genes, values)
        for name, column in window.labels.items():
            batch[name] = column[rows]
        return batch

    def normalise(self, counts: np.ndarray, lengths: np.ndarray, library: np.ndarray) -> np.ndarray:
        values = counts.astype(np.float32, copy=True)
        if self.norm.target_sum is not None:
            scale = (self.norm.target_sum / np.maximum(library, 1e-12)).astype(np.float32)
            values *= np.repeat(scale, lengths)
        if self.norm.log1p:  # log(1 + x): 5x faster than numpy's float32 log1p, error < 2e-7
            values += 1.0
            np.log(values, out=values)
        return values

    def subset(self, indptr, genes, values, counts):
        """Keep only the selected genes, renumbered to output columns."""
        mapped = self.lookup[genes]
        keep = mapped >= 0
        kept_before = np.zeros(len(keep) + 1, dtype=np.int64)
        np.cumsum(keep, out=kept_before[1:])
        new_indptr = kept_before[indptr]  # kept values before each row boundary
        return new_indptr, mapped[keep], values[keep], counts[keep]

    def standardise_values(self, genes: np.ndarray, values: np.ndarray) -> np.ndarray:
        if self.norm.gene_mean is None:
            return values
        values = (values - self.norm.gene_mean[genes]) * self.norm.gene_scale[genes]
        if self.norm.clip is not None:
            np.clip(values, -self.norm.clip, self.norm.clip, out=values)
        return values.astype(np.float32, copy=False)

    def densify(self, indptr: np.ndarray, genes: np.ndarray, values: np.ndarray, standardise: bool) -> np.ndarray:
        """(rows, genes out) float32; zero-count entries are 0, or the gene's z-score of 0."""
        n_rows = len(indptr) - 1
        if standardise and self.norm.gene_mean is not None:
            out = np.empty((n_rows, self.n_out), dtype=np.float32)
            out[:] = self.zero_row
            values = self.standardise_values(genes, values)
        else:
            out = np.zeros((n_rows, self.n_out), dtype=np.float32)
        flat = np.repeat(np.arange(n_rows, dtype=np.int64) * self.n_out, np.diff(indptr))
        flat += genes
        out.reshape(-1)[flat] = values  # (rows * genes,) view of the batch
        return out
