"""Benchmark scores on arrays (numpy): embedding quality (scib-metrics), clustering agreement
(scikit-learn definitions) and perturbation-prediction scores (Arc's cell-eval / Virtual Cell
Challenge). Our own implementations; the tests check them against scikit-learn and scipy.

Distances are computed a block of rows at a time so that memory stays bounded
(about `BLOCK_BYTES` per block) however many cells there are.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.sparse import csr_matrix
from scipy.stats import ttest_ind

BLOCK_BYTES = 64 * 2**20  # memory for one block of pairwise distances


def block_rows(n_columns: int, bytes_per_entry: int = 8) -> int:
    """How many rows of an (rows, n_columns) block fit in BLOCK_BYTES."""
    return max(1, BLOCK_BYTES // (bytes_per_entry * max(n_columns, 1)))


def squared_distances(a: np.ndarray, b: np.ndarray, b_squared_norms: np.ndarray | None = None) -> np.ndarray:
    """(n_a, n_b) squared Euclidean distances by ||a||^2 - 2 a.b + ||b||^2, in place to save copies."""
    if b_squared_norms is None:
        b_squared_norms = np.einsum("ij,ij->i", b, b)
    distances = a @ b.T
    distances *= -2.0
    distances += np.einsum("ij,ij->i", a, a)[:, None]
    distances += b_squared_norms[None, :]
    return np.maximum(distances, 0.0, out=distances)  # rounding can make a zero distance slightly negative


# ---------------------------------------------------------------- nearest neighbours

def knn_accuracy(
    reference: np.ndarray, reference_labels: np.ndarray, query: np.ndarray, query_labels: np.ndarray, k: int = 15,
) -> float:
    """Fraction of query cells whose majority label among their k nearest reference cells
    (Euclidean) equals their own label: the k-nearest-neighbour classifier of scikit-learn's
    KNeighborsClassifier(n_neighbors=k), used in scib-style label-transfer benchmarks.

    A tied vote goes to the tied label whose nearest neighbour is closest. Label -1 means
    missing: such query cells are skipped and such reference cells ignored. NaN if no query
    cell has a label. Queries are processed in blocks, so memory is bounded by BLOCK_BYTES;
    float32 inputs are compared in float32 (twice as fast), anything else in float64.
    """
    dtype = np.result_type(reference, query, np.float32)
    reference_labels, query_labels = np.asarray(reference_labels), np.asarray(query_labels)
    reference = np.asarray(reference, dtype=dtype)[reference_labels != -1]
    classes, reference_codes = np.unique(reference_labels[reference_labels != -1], return_inverse=True)
    query = np.asarray(query, dtype=dtype)[query_labels != -1]
    query_labels = query_labels[query_labels != -1]
    if len(query_labels) == 0 or len(reference) == 0:
        return float("nan")
    k = min(k, len(reference))
    reference_norms = np.einsum("ij,ij->i", reference, reference)
    # distances plus argpartition's int64 indices per (query, reference) pair
    step = block_rows(len(reference), bytes_per_entry=dtype.itemsize + 8)
    n_correct = 0
    for start in range(0, len(query), step):
        nearest = nearest_reference(query[start:start + step], reference, reference_norms, k)
        predicted = classes[majority_closest_first(reference_codes[nearest], len(classes))]
        n_correct += int((predicted == query_labels[start:start + step]).sum())
    return n_correct / len(query_labels)


def nearest_reference(block: np.ndarray, reference: np.ndarray, reference_norms: np.ndarray, k: int) -> np.ndarray:
    """(block, k) indices of each query's k nearest reference rows, closest first."""
    # ||query||^2 is the same for every reference cell, so the ranking does not need it
    distances = block @ reference.T  # (block, n_reference)
    distances *= -2.0
    distances += reference_norms[None, :]
    nearest = np.argpartition(distances, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(distances, nearest, axis=1), axis=1, kind="stable")
    return np.take_along_axis(nearest, order, axis=1)


def neighbour_means(reference: np.ndarray, values: np.ndarray, query: np.ndarray, k: int,
                    detected_only: bool = False, zero_level: np.ndarray | None = None) -> np.ndarray:
    """(n_query, G) the mean of `values` (n_reference, G) over each query's k nearest `reference`
    rows (Euclidean, coordinates (n_reference, D) and (n_query, D)): kNN smoothing, the simplest
    imputation. `detected_only`: each gene's mean over the neighbours in which it is detected
    (`detected_entries` at `zero_level`; where none is, its mean over every reference row that detects it, else 0), the
    estimate of a value known to be non-zero. In blocks of queries, so memory stays near BLOCK_BYTES."""
    reference, query = np.asarray(reference, dtype=np.float64), np.asarray(query, dtype=np.float64)
    k = min(k, len(reference))
    reference_norms = np.einsum("ij,ij->i", reference, reference)
    # a block holds (block, k, G) neighbour values: float64, and with `detected_only` as many bools and a copy
    step = block_rows(max(len(reference), k * values.shape[1]), 17 if detected_only else 8)
    means = np.empty((len(query), values.shape[1]))
    if detected_only:
        from vcell.models.inputs import detected_entries

        detected = detected_entries(values, zero_level)
        overall = np.where(detected, values, 0).sum(0) / np.maximum(detected.sum(0), 1)  # (G,)
    for start in range(0, len(query), step):
        nearest = nearest_reference(query[start:start + step], reference, reference_norms, k)  # (block, k)
        neighbours = values[nearest]  # (block, k, G)
        if detected_only:
            found = detected[nearest]  # (block, k, G)
            counts = found.sum(axis=1)  # (block, G)
            sums = np.where(found, neighbours, 0).sum(axis=1)
            means[start:start + step] = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
        else:
            means[start:start + step] = neighbours.mean(axis=1)  # (block, k, G) -> (block, G)
    return means


def majority_closest_first(codes: np.ndarray, n_classes: int) -> np.ndarray:
    """(rows,) most frequent code in each row of (rows, k) codes sorted by distance;
    a tie goes to the code that appears first (its neighbour is closest)."""
    rows, k = codes.shape
    row_index = np.arange(rows)[:, None]
    votes = np.bincount((row_index * n_classes + codes).ravel(), minlength=rows * n_classes).reshape(rows, n_classes)
    first_rank = np.full((rows, n_classes), k, dtype=np.int64)
    for rank in range(k - 1, -1, -1):  # walking back from the farthest leaves each code's closest rank
        first_rank[np.arange(rows), codes[:, rank]] = rank
    # more votes wins; among equal votes the smaller first rank wins (rank < k + 1)
    return np.argmax(votes * (k + 1) - first_rank, axis=1)


# ---------------------------------------------------------------- clustering agreement

def contingency_counts(labels_true: np.ndarray, labels_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(non-zero cells of the contingency table, row sums, column sums), each int64.

    Kept sparse (only the pairs that occur) so that many clusters do not need a dense table."""
    _, true_codes = np.unique(labels_true, return_inverse=True)
    _, pred_codes = np.unique(labels_pred, return_inverse=True)
    true_codes, pred_codes = true_codes.ravel().astype(np.int64), pred_codes.ravel().astype(np.int64)
    _, cell_counts = np.unique(true_codes * (pred_codes.max(initial=0) + 1) + pred_codes, return_counts=True)
    return cell_counts, np.bincount(true_codes), np.bincount(pred_codes)


def pairs(counts: np.ndarray) -> float:
    """Sum over groups of (count choose 2), in float64 so large atlases cannot overflow."""
    counts = counts.astype(np.float64)
    return float((counts * (counts - 1) / 2).sum())


def adjusted_rand_index(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985), as sklearn.metrics.adjusted_rand_score:
    (together_both - expected) / (mean(together_true, together_pred) - expected), where
    together_* counts the pairs of cells in one group and expected = together_true *
    together_pred / all pairs. 1 when no pair is grouped differently (e.g. one cluster in both)."""
    cell_counts, row_sums, column_sums = contingency_counts(labels_true, labels_pred)
    together_both, together_true, together_pred = pairs(cell_counts), pairs(row_sums), pairs(column_sums)
    if together_both == together_true == together_pred:
        return 1.0
    expected = together_true * together_pred / pairs(np.array([row_sums.sum()]))
    return (together_both - expected) / ((together_true + together_pred) / 2 - expected)


def entropy(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of the distribution given by counts."""
    probability = counts[counts > 0] / counts.sum()
    return float(-(probability * np.log(probability)).sum())


def normalized_mutual_info(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Normalised mutual information, sklearn.metrics.normalized_mutual_info_score with its
    default arithmetic mean: I(true; pred) / ((H(true) + H(pred)) / 2). 1 when both are one
    cluster; 0 when the mutual information is 0."""
    cell_counts, row_sums, column_sums = contingency_counts(labels_true, labels_pred)
    if len(row_sums) == len(column_sums) <= 1:  # one cluster in both (or no cells): sklearn's 1
        return 1.0
    mutual_info = entropy(row_sums) + entropy(column_sums) - entropy(cell_counts)
    if mutual_info <= 1e-15:  # rounding of an exact 0, as sklearn clips it
        return 0.0
    return mutual_info / ((entropy(row_sums) + entropy(column_sums)) / 2)


# ---------------------------------------------------------------- embedding structure

def silhouette_labels(embedding: np.ndarray, labels: np.ndarray, *, max_cells: int = 10000, seed: int = 0) -> float:
    """scib-metrics' silhouette_label: mean silhouette width of the cells with cell-type labels
    as clusters, rescaled to (asw + 1) / 2 so it lies in [0, 1] (1 = tight, separate types).

    Silhouette of a cell (sklearn.metrics.silhouette_samples): (b - a) / max(a, b) with a its
    mean Euclidean distance to the other cells of its type and b the smallest mean distance to
    another type; 0 for a type with one cell. With more than max_cells cells, the score is
    computed on a uniform random subsample of max_cells cells drawn with
    np.random.default_rng(seed). NaN with fewer than two types.
    """
    embedding, labels = np.asarray(embedding, dtype=np.float64), np.asarray(labels)
    if len(labels) > max_cells:
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), max_cells, replace=False))
        embedding, labels = embedding[keep], labels[keep]
    _, codes = np.unique(labels, return_inverse=True)
    type_sizes = np.bincount(codes)
    if len(type_sizes) < 2:
        return float("nan")
    one_hot = np.eye(len(type_sizes))[codes]  # (n, types)
    silhouettes = np.concatenate([
        block_silhouettes(embedding, codes, type_sizes, one_hot, start)
        for start in range(0, len(codes), block_rows(len(codes)))
    ])
    return (float(silhouettes.mean()) + 1) / 2


def block_silhouettes(
    embedding: np.ndarray, codes: np.ndarray, type_sizes: np.ndarray, one_hot: np.ndarray, start: int,
) -> np.ndarray:
    """Silhouettes of the cells in one block of rows starting at `start`."""
    stop = min(start + block_rows(len(codes)), len(codes))
    distances = np.sqrt(squared_distances(embedding[start:stop], embedding))  # (block, n)
    distances[np.arange(stop - start), np.arange(start, stop)] = 0.0  # exact zero to oneself
    type_totals = distances @ one_hot  # (block, types): summed distance to each type
    rows, own = np.arange(stop - start), codes[start:stop]
    own_size = type_sizes[own]
    within = type_totals[rows, own] / np.maximum(own_size - 1, 1)
    mean_to_type = type_totals / type_sizes[None, :]
    mean_to_type[rows, own] = np.inf
    nearest_other = mean_to_type.min(axis=1)
    width = (nearest_other - within) / np.maximum(np.maximum(within, nearest_other), 1e-300)
    return np.where(own_size > 1, width, 0.0)


def kmeans(embedding: np.ndarray, n_clusters: int, *, seed: int = 0, n_init: int = 4, max_iter: int = 100) -> np.ndarray:
    """(n,) k-means cluster labels: greedy k-means++ initialisation (Arthur & Vassilvitskii
    2007, with sklearn's 2 + log k candidates per centre) then Lloyd iterations; the best of
    n_init runs by inertia (summed squared distance to the centre). Deterministic for a seed."""
    points = np.asarray(embedding, dtype=np.float64)
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    best_labels, best_inertia = None, np.inf
    for _ in range(n_init):
        labels, inertia = lloyd(points, kmeans_plus_plus(points, n_clusters, rng), max_iter)
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    return best_labels


def kmeans_plus_plus(points: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """(n_clusters, d) starting centres: each new centre is the best (lowest resulting
    inertia) of a few candidates drawn with probability proportional to squared distance."""
    n_candidates = 2 + int(math.log(n_clusters))
    centres = [points[rng.integers(len(points))]]
    closest = nearest_centres(points, np.array(centres))[1]
    for _ in range(1, n_clusters):
        cumulative = np.cumsum(closest)
        picks = np.searchsorted(cumulative, rng.random(n_candidates) * cumulative[-1], side="right")
        picks = np.minimum(picks, len(points) - 1)
        candidate_closest = np.minimum(closest[None, :], squared_distances(points[picks], points))
        best = int(np.argmin(candidate_closest.sum(axis=1)))
        centres.append(points[picks[best]])
        closest = candidate_closest[best]
    return np.array(centres)


def nearest_centres(points: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, squared distance to the nearest centre), both (n,), a block of points at a time."""
    labels, closest = np.empty(len(points), dtype=np.int64), np.empty(len(points))
    centre_norms = np.einsum("ij,ij->i", centres, centres)
    step = block_rows(len(centres))
    for start in range(0, len(points), step):
        distances = squared_distances(points[start:start + step], centres, centre_norms)
        labels[start:start + step] = distances.argmin(axis=1)
        closest[start:start + step] = distances.min(axis=1)
    return labels, closest


def lloyd(points: np.ndarray, centres: np.ndarray, max_iter: int) -> tuple[np.ndarray, float]:
    """Lloyd iterations until the labels stop changing or the centres move (summed squared
    shift) no more than sklearn's tolerance, 1e-4 x the mean variance of a dimension;
    (labels, inertia). An empty cluster keeps its previous centre."""
    tolerance = 1e-4 * float(points.var(axis=0).mean())
    labels, closest = nearest_centres(points, centres)
    for _ in range(max_iter):
        sizes = np.bincount(labels, minlength=len(centres))
        membership = csr_matrix((np.ones(len(labels)), (labels, np.arange(len(labels)))), shape=(len(centres), len(labels)))
        sums = membership @ points  # (clusters, d), in one sparse pass over the points
        new_centres = np.where(sizes[:, None] > 0, sums / np.maximum(sizes, 1)[:, None], centres)
        shift, centres = float(((new_centres - centres) ** 2).sum()), new_centres
        new_labels, closest = nearest_centres(points, centres)
        unchanged, labels = np.array_equal(new_labels, labels), new_labels
        if unchanged or shift <= tolerance:
            break
    return labels, float(closest.sum())


# ---------------------------------------------------------------- perturbation prediction

def discrimination_score(predicted: np.ndarray, observed: np.ndarray) -> tuple[float, np.ndarray]:
    """Perturbation discrimination of the Virtual Cell Challenge (Arc's cell-eval): for each
    perturbation i (rows of (P, G) pseudobulk deltas or profiles), the normalised rank
    r_i = #{j != i : L1(predicted_i, observed_j) < L1(predicted_i, observed_i)} / (P - 1).
    Returns (1 - mean r, r): 1 when every prediction is closest to its own truth, about 0.5
    for random ones. Ties count in the prediction's favour. (cell-eval divides by P and drops
    the perturbation's target gene before the distances; this takes the rows as given.)"""
    predicted, observed = np.asarray(predicted, dtype=np.float64), np.asarray(observed, dtype=np.float64)
    n_perturbations = len(observed)
    ranks = np.empty(n_perturbations)
    for i in range(n_perturbations):  # one row at a time: (P, G) memory, not (P, P, G)
        distances = np.abs(observed - predicted[i]).sum(axis=1)
        ranks[i] = (distances < distances[i]).sum() / max(n_perturbations - 1, 1)
    return 1.0 - float(ranks.mean()), ranks


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (as scipy.stats.false_discovery_control):
    p_(i) * m / i, made monotone from the largest down, capped at 1."""
    p_values = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p_values)
    scaled = p_values[order] * len(p_values) / np.arange(1, len(p_values) + 1)
    adjusted = np.empty_like(p_values)
    adjusted[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return adjusted


def differential_genes(perturbed: np.ndarray, control: np.ndarray, *, fdr: float = 0.05, top: int | None = 20) -> np.ndarray:
    """Indices of genes differentially expressed between (n1, G) perturbed and (n2, G) control
    cells (normalised expression): Welch's t-test per gene (a constant gene's NaN p-value counts
    as 1), Benjamini-Hochberg adjusted p < fdr, sorted by |mean difference| descending, at most
    `top` (all if None). cell-eval finds DE genes the same way with a Wilcoxon test (pdex)."""
    with warnings.catch_warnings():  # constant genes and groups under two cells warn; their NaN means "not DE"
        warnings.simplefilter("ignore")
        p_values = ttest_ind(perturbed, control, axis=0, equal_var=False).pvalue
    significant = np.flatnonzero(benjamini_hochberg(np.nan_to_num(p_values, nan=1.0)) < fdr)
    if len(significant) == 0:  # also spares the mean of an empty group
        return significant
    change = np.abs(np.mean(perturbed, axis=0) - np.mean(control, axis=0))[significant]
    ranked = significant[np.argsort(-change, kind="stable")]
    return ranked if top is None else ranked[:top]


def de_overlap(predicted_delta: np.ndarray, true_genes: np.ndarray) -> float:
    """cell-eval's overlap at N with N = len(true_genes): the fraction of true_genes among the
    N genes of largest |predicted_delta|. NaN when true_genes is empty."""
    true_genes = np.asarray(true_genes)
    if len(true_genes) == 0:
        return float("nan")
    predicted_top = np.argsort(-np.abs(predicted_delta), kind="stable")[:len(true_genes)]
    return len(np.intersect1d(predicted_top, true_genes)) / len(true_genes)


def interval_coverage(samples: np.ndarray, observed: np.ndarray, level: float = 0.9,
                      seed: int | tuple[int, ...] = 0) -> float:
    """Calibration of a predictive distribution: the share of (n, G) observed entries whose
    randomised PIT under the (S, n, G) draws lies in the central `level` band. `level` when the
    observations follow the draws' distribution, for counts as for continuous values.

    The randomised probability integral transform (Czado, Gneiting & Held 2009, Biometrics) of an
    observation y is F(y-) + V (F(y) - F(y-)), V uniform on [0, 1), with F the draws' empirical
    CDF. For counts it replaces "y lies between the draws' quantiles, bounds included": when most
    entries are 0 (93% on the demo atlas), an interval that starts at 0 contains every zero
    whatever the distribution's shape, so that count exceeded `level` for any model (a calibrated
    negative binomial scored 0.978, a Poisson that ignores the cell's state 0.946). Seeded: the
    same inputs give the same value."""
    below = (samples < observed[None]).mean(axis=0)
    at_or_below = (samples <= observed[None]).mean(axis=0)
    pit = below + np.random.default_rng(seed).random(observed.shape) * (at_or_below - below)
    tail = (1 - level) / 2
    return float(((pit >= tail) & (pit <= 1 - tail)).mean())
