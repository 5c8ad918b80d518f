"""How well an embedding mixes batches: graph iLISI (scib) and the batch kNN accuracy.

    ilisi(embedding, batches)                       # 1 = batches fully mixed, 0 = fully separated
    knn_accuracy(reference, ref_batches, query, query_batches)   # from scores: lower = better mixed

iLISI follows scib-metrics (`ilisi_knn`, Luecken et al. 2022, after Korsunsky et al. 2019's
Harmony LISI): on each cell's k = 90 nearest neighbours (Euclidean, itself excluded), a
Gaussian kernel exp(-beta * distance) whose beta is found by bisection so the neighbour
distribution's entropy is log(perplexity) (perplexity 30, tolerance 1e-5, at most 50 halvings);
the cell's LISI is the inverse Simpson index 1 / sum_b (weight of batch b)^2 of its neighbours'
batches, i.e. the effective number of batches around it. The score is the median over cells,
rescaled to [0, 1] as (median - 1) / (n_batches - 1). With well mixed batches a finite
neighbourhood still samples them unevenly, so random mixing of 3 balanced batches scores ~0.8,
not exactly 1 (two batches: ~0.9); complete separation scores exactly 0.

Written in numpy (the reference uses jax): every cell's bisection runs at once, vectorised.
"""

from __future__ import annotations

import numpy as np

ILISI_NEIGHBOURS = 90
ILISI_PERPLEXITY = 30.0
BISECTION_TOLERANCE = 1e-5
BISECTION_STEPS = 50


def neighbour_graph(embedding: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices), each (n, k'): every cell's k' = min(k, n - 1) nearest other cells,
    nearest first (the cell itself is dropped even when a duplicate point ties with it)."""
    from sklearn.neighbors import NearestNeighbors

    n = len(embedding)
    k = min(k, n - 1)
    # brute force: in latent dimensions (8-512) it beats the trees sklearn would pick (8x at 3,000 cells)
    search = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(embedding)
    distances, indices = search.kneighbors(embedding)
    # stable sort moves the cell's own column last, keeping the others in distance order
    order = np.argsort(indices == np.arange(n)[:, None], axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, 1), np.take_along_axis(indices, order, 1)


def neighbour_weights(distances: np.ndarray, perplexity: float) -> np.ndarray:
    """(n, k) rows summing to 1: exp(-beta_i * d_ij) with each beta_i bisected until the row's
    entropy is log(perplexity) (scib-metrics' `_get_neighbor_probability`, all rows at once)."""
    shifted = distances - distances[:, :1]  # exp(-beta d) / sum is unchanged by a shift; no underflow
    n = len(distances)
    beta, low, high = np.ones(n), np.full(n, -np.inf), np.full(n, np.inf)
    target = np.log(perplexity)
    for _ in range(BISECTION_STEPS):
        weights, entropy = kernel(shifted, beta)
        excess = entropy - target
        active = np.abs(excess) > BISECTION_TOLERANCE
        if not active.any():
            break
        too_flat = active & (excess > 0)  # entropy too high: sharpen (raise beta)
        too_sharp = active & (excess <= 0)
        low = np.where(too_flat, beta, low)
        high = np.where(too_sharp, beta, high)
        raised = np.where(np.isinf(high), beta * 2, (beta + high) / 2)
        lowered = np.where(np.isinf(low), beta / 2, (beta + low) / 2)
        beta = np.where(too_flat, raised, np.where(too_sharp, lowered, beta))
    return kernel(shifted, beta)[0]


def kernel(distances: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normalised weights (n, k), entropy (n,)) of exp(-beta * distances) per row."""
    raw = np.exp(-distances * beta[:, None])
    total = raw.sum(1)
    entropy = np.log(total) + beta * (distances * raw).sum(1) / total
    return raw / total[:, None], entropy


def inverse_simpson(weights: np.ndarray, neighbour_labels: np.ndarray, n_labels: int) -> np.ndarray:
    """(n,) 1 / sum_b p_b^2, p_b = the weight of label b among each cell's neighbours."""
    shares = np.zeros((len(weights), n_labels))
    np.add.at(shares, (np.repeat(np.arange(len(weights)), weights.shape[1]), neighbour_labels.ravel()), weights.ravel())
    return 1.0 / (shares**2).sum(1)


def lisi(embedding: np.ndarray, labels: np.ndarray, k: int = ILISI_NEIGHBOURS,
         perplexity: float = ILISI_PERPLEXITY) -> np.ndarray:
    """(n,) each cell's LISI: the effective number of labels among its neighbours (1..n_labels).
    With fewer than k + 1 cells, k = n - 1 and the perplexity at most k / 3 (scib-metrics' default)."""
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    distances, indices = neighbour_graph(np.asarray(embedding, dtype=np.float64), k)
    perplexity = min(perplexity, distances.shape[1] / 3)
    weights = neighbour_weights(distances, perplexity)
    return inverse_simpson(weights, codes[indices], int(codes.max()) + 1)


def ilisi(embedding: np.ndarray, batches: np.ndarray, k: int = ILISI_NEIGHBOURS,
          perplexity: float = ILISI_PERPLEXITY) -> float:
    """scib's graph iLISI in [0, 1]: (median LISI over cells - 1) / (n_batches - 1). Cells with
    batch -1 (unknown) are left out; NaN with fewer than 2 batches or 4 cells."""
    batches = np.asarray(batches)
    known = batches != -1
    embedding, batches = np.asarray(embedding)[known], batches[known]
    n_batches = len(np.unique(batches))
    if n_batches < 2 or len(batches) < 4:
        return float("nan")
    return float((np.median(lisi(embedding, batches, k, perplexity)) - 1) / (n_batches - 1))
