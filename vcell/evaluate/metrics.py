"""Metric functions on arrays (numpy), shared by evaluation and the learning checks."""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve (step-wise average precision); ties broken pessimistically."""
    labels = np.asarray(labels, dtype=bool)
    if not labels.any():
        return float("nan")
    order = np.lexsort((labels, -np.asarray(scores)))  # by score descending, negatives first among ties
    hits = labels[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / hits.sum())


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two flattened arrays; 0 when either is constant."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def column_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(k,) Pearson correlation of each column pair of two (n, k) arrays."""
    return np.array([pearson(a[:, k], b[:, k]) for k in range(a.shape[1])])


def relative_error(predicted: np.ndarray, observed: np.ndarray) -> float:
    """||predicted - observed|| / ||observed||: 1 for predicting no change, 0 for perfect."""
    return float(np.linalg.norm(np.ravel(predicted) - np.ravel(observed)) / max(np.linalg.norm(observed), 1e-12))


def discretized_normal_log_prob(counts: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """log P(count) under a normal on the count scale, integrated over [k - 0.5, k + 0.5]
    (everything below 0.5 for zeros): a Gaussian model's likelihood on counts."""
    upper = ndtr((counts + 0.5 - mean) / sd)
    lower = np.where(counts < 0.5, 0.0, ndtr((counts - 0.5 - mean) / sd))
    return np.log(np.maximum(upper - lower, 1e-30))


def moment_dispersion(counts: np.ndarray, library: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene (fraction of the library, NB inverse dispersion) by the method of moments,
    ignoring everything about a cell but its library size: the 'no cell state' reference."""
    fraction = counts.sum(0) / max(library.sum(), 1.0)
    mean = library[:, None] * fraction[None, :]
    excess = ((counts - mean) ** 2 - mean).mean(0)
    theta = np.where(excess > 1e-9, (mean**2).mean(0) / np.maximum(excess, 1e-9), 1e6)
    return fraction, np.clip(theta, 1e-3, 1e6)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(a true edge scores above a decoy), ties count half."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_true, n_false = int(labels.sum()), int((~labels).sum())
    if n_true == 0 or n_false == 0:
        return float("nan")
    return float((ranks[labels].sum() - n_true * (n_true + 1) / 2) / (n_true * n_false))
