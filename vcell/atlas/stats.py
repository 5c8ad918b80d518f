"""Per-gene and library-size statistics, accumulated in one streaming pass over sparse rows.

Gene statistics are of log1p(counts per 10k) for count atlases (the transform the loader
applies by default) and of the stored values for already-normalised atlases. Means and
variances are over the cells whose source measured the gene, so a gene missing from one
dataset is not dragged towards zero by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

TARGET_SUM = 1e4
# Log-spaced library-size histogram: 1 to 1e9 total counts in 400 bins (quantiles to ~5%).
LIBRARY_EDGES = np.concatenate([[0.0], np.logspace(0, 9, 400)])


def log_normalized_values(matrix: sp.csr_matrix, library_size: np.ndarray) -> np.ndarray:
    """log1p(x / library * 1e4) for the stored values of `matrix` (same order as .data)."""
    row_of_value = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    scale = TARGET_SUM / np.maximum(library_size, 1e-12)
    return np.log1p(matrix.data.astype(np.float64) * scale[row_of_value])


@dataclass
class StatsAccumulator:
    """Sums from which gene means, variances and detection rates follow exactly."""

    n_genes: int
    transform: str = "log1p_cp10k"  # or "identity" for normalised atlases
    sums: np.ndarray = field(init=False)
    squares: np.ndarray = field(init=False)
    detected: np.ndarray = field(init=False)
    measured_cells: np.ndarray = field(init=False)
    library_histogram: np.ndarray = field(init=False)
    library_sum: float = 0.0
    library_squares: float = 0.0
    library_min: float = np.inf
    library_max: float = -np.inf
    n_cells: int = 0

    def __post_init__(self) -> None:
        self.sums = np.zeros(self.n_genes)
        self.squares = np.zeros(self.n_genes)
        self.detected = np.zeros(self.n_genes, dtype=np.int64)
        self.measured_cells = np.zeros(self.n_genes, dtype=np.int64)
        self.library_histogram = np.zeros(len(LIBRARY_EDGES) - 1, dtype=np.int64)

    def add(self, matrix: sp.csr_matrix, library_size: np.ndarray, measured: np.ndarray) -> None:
        """Add cells (rows of `matrix` on the global vocabulary); `measured`: bool (n_genes,)."""
        if self.transform == "log1p_cp10k":
            values = log_normalized_values(matrix, library_size)
        else:
            values = matrix.data.astype(np.float64)
        self.sums += np.bincount(matrix.indices, weights=values, minlength=self.n_genes)
        self.squares += np.bincount(matrix.indices, weights=values * values, minlength=self.n_genes)
        self.detected += np.bincount(matrix.indices, weights=matrix.data != 0, minlength=self.n_genes).astype(np.int64)
        self.measured_cells += measured.astype(np.int64) * matrix.shape[0]
        self.library_histogram += np.histogram(library_size, bins=LIBRARY_EDGES)[0]
        self.library_sum += float(library_size.sum())
        self.library_squares += float(np.square(library_size, dtype=np.float64).sum())
        if len(library_size):
            self.library_min = min(self.library_min, float(library_size.min()))
            self.library_max = max(self.library_max, float(library_size.max()))
        self.n_cells += matrix.shape[0]

    def gene_arrays(self) -> dict[str, np.ndarray]:
        """mean, var (population), detection rate and number of measuring cells per gene."""
        cells = np.maximum(self.measured_cells, 1)
        mean = self.sums / cells
        variance = np.maximum(self.squares / cells - mean * mean, 0.0)
        return {
            "gene_mean": mean,
            "gene_var": variance,
            "gene_detection_rate": self.detected / cells,
            "gene_n_cells": self.measured_cells.astype(np.int64),
        }

    def library_summary(self) -> dict[str, float]:
        n = max(self.n_cells, 1)
        mean = self.library_sum / n
        return {
            "mean": mean,
            "std": float(np.sqrt(max(self.library_squares / n - mean * mean, 0.0))),
            "min": self.library_min if self.n_cells else 0.0,
            "max": self.library_max if self.n_cells else 0.0,
            "median": self.library_quantile(0.5),
        }

    def library_quantile(self, q: float) -> float:
        """Approximate quantile from the histogram (upper edge of the bin that crosses q)."""
        cumulative = np.cumsum(self.library_histogram)
        if cumulative[-1] == 0:
            return 0.0
        index = int(np.searchsorted(cumulative, q * cumulative[-1]))
        return float(LIBRARY_EDGES[index + 1])
