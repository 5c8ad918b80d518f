"""The simulator's answer in a model's terms: expected normalised expression of a condition.

    profile = true_expression(data, cell_type=2, perturbation=5, time=4.0)   # (G,) model genes

Monte Carlo over fresh simulated cells of one type and condition (batches drawn at random),
normalised exactly as the model's input (library scaling, log1p, its genes, z-score), so a
model's predicted mean and the truth are directly comparable. Cached per condition.
"""

from __future__ import annotations

import numpy as np

from vcell.atlas.synth import sample_condition

TRUTH_CELLS = 512  # simulated cells per condition; conditions share random numbers, so differences are far
# more precise than each mean (the same simulated cells, only the condition changes)


def normalise_counts(counts: np.ndarray, normalization) -> np.ndarray:
    """(n, G_truth) counts -> the loader's normalised values (before gene selection)."""
    values = counts.astype(np.float64)
    if normalization.target_sum is not None:
        values = values / np.maximum(values.sum(1, keepdims=True), 1e-12) * normalization.target_sum
    return np.log1p(values) if normalization.log1p else values


def standardised(values: np.ndarray, normalization) -> np.ndarray:
    """(n, G) normalised values of the loader's genes -> z-scored and clipped as the loader does
    (unchanged without loader.normalize.zscore)."""
    if normalization.gene_mean is None:
        return values
    values = (values - normalization.gene_mean) * normalization.gene_scale
    return values if normalization.clip is None else np.clip(values, -normalization.clip, normalization.clip)


def true_expression(data, cell_type: int, *, perturbation: int = 0, time: float = 0.0,
                    hours_since_pulse: float = float("nan"), cells: int = TRUTH_CELLS) -> np.ndarray:
    """(G,) mean normalised expression of simulated cells, in the model's gene order."""
    cache = data.__dict__.setdefault("_truth_cache", {})
    key = (cell_type, perturbation, float(time), float(hours_since_pulse), cells)
    if key not in cache:
        rng = np.random.default_rng([data.seed, 7, cell_type])  # common random numbers across conditions
        counts = sample_condition(data.truth, cell_type, cells, rng, perturbation=perturbation, time=time,
                                  hours_since_pulse=hours_since_pulse, basal_cache=basal_cache(data))
        normalization = data.trained.normalization
        cache[key] = standardised(normalise_counts(counts, normalization)[:, data.truth_order], normalization).mean(0)
    return cache[key]


def basal_cache(holder) -> dict:
    """The basal cells behind `holder`'s truths (one entry per cell type, ~20 MB at 512 cells x 2,000
    genes): every condition of a type is coupled to the same cells, so they are drawn once
    (`sample_condition`); the science checks' 8,192-cell truths do without (few conditions a type)."""
    return holder.__dict__.setdefault("_basal_cache", {})


def truth_cell_type(data, code: int) -> int:
    """The simulator's index of the model's cell-type category `code` (matched by name)."""
    names = data.categories[data.column("context")]
    return list(data.truth.cell_type_names).index(names[code])
