"""The library-size NB baselines of held-out count log-likelihood (`vcell.evaluate.metrics.library_size_nb`) and of
a hidden gene's value (`detected_nb_levels`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vcell.evaluate.metrics as metrics
from vcell.evaluate.metrics import MIN_GROUP_CELLS, detected_nb_levels, library_size_nb, nb_log_likelihood


def typed_counts(rng: np.random.Generator, n: int, types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 30) NB counts whose composition depends on the cell type, and their library sizes."""
    shares = rng.dirichlet(np.full(30, 0.5), size=types.max() + 1)
    mean = rng.uniform(200, 2000, n)[:, None] * shares[types]
    counts = rng.negative_binomial(2.0, 2.0 / (2.0 + mean))
    return counts, counts.sum(1).astype(float)


def test_nb_log_likelihood_is_torchs_negative_binomial():
    counts, mean = np.array([[0, 3, 10]]), np.array([[0.5, 2.0, 12.0]])
    theta = np.array([0.3, 5.0, 100.0])
    expected = sum(torch.distributions.NegativeBinomial(torch.tensor(t), probs=torch.tensor(m / (m + t)))
                   .log_prob(torch.tensor(float(c))).item() for c, m, t in zip(counts[0], mean[0], theta))
    assert nb_log_likelihood(counts, mean, theta)[0] == pytest.approx(expected, rel=1e-5)


def test_knowing_the_cell_type_raises_the_likelihood_of_typed_counts():
    rng = np.random.default_rng(0)
    types = rng.integers(0, 4, 1200)
    counts, library = typed_counts(rng, 1200, types)
    reference, cells = (counts[:1000], library[:1000]), (counts[1000:], library[1000:])
    plain = library_size_nb(reference, cells)
    typed = library_size_nb(reference, cells, (types[:1000], types[1000:]))
    assert plain.shape == typed.shape == (200,)
    assert typed.mean() > plain.mean() + 5


@settings(max_examples=25, deadline=None)
@given(n_types=st.integers(1, 5), fitted_cells=st.integers(1, 60), seed=st.integers(0, 10_000))
def test_groups_too_small_or_missing_fall_back_to_the_fit_on_all_cells(n_types, fitted_cells, seed):
    """A held-out cell of a type with under MIN_GROUP_CELLS reference cells, never seen, or with a
    missing label (-1), scores exactly as without types; every score is finite."""
    rng = np.random.default_rng(seed)
    reference_types = rng.integers(0, n_types, fitted_cells)
    cell_types = np.concatenate([rng.integers(-1, n_types + 1, 40), [-1, n_types]])  # missing and unseen types
    counts, library = typed_counts(rng, fitted_cells + len(cell_types), np.clip(np.r_[reference_types, cell_types], 0, None))
    reference, cells = (counts[:fitted_cells], library[:fitted_cells]), (counts[fitted_cells:], library[fitted_cells:])
    plain = library_size_nb(reference, cells)
    typed = library_size_nb(reference, cells, (reference_types, cell_types))
    assert np.isfinite(typed).all()
    fitted = np.isin(cell_types, [t for t in range(n_types) if (reference_types == t).sum() >= MIN_GROUP_CELLS])
    np.testing.assert_array_equal(typed[~fitted], plain[~fitted])


def test_detected_levels_are_what_detected_counts_average_to_at_each_depth():
    """From a large reference of one type, the level of a detected gene matches the mean of
    log1p(counts per 10,000) over fresh cells of a given depth in which the gene is detected."""
    rng = np.random.default_rng(3)
    shares = rng.dirichlet(np.full(30, 0.5))
    counts = rng.negative_binomial(2.0, 2.0 / (2.0 + 800.0 * shares), size=(20_000, 30))
    levels = detected_nb_levels((counts, np.full(20_000, 800.0)), np.array([800.0, 3000.0]))
    for depth, level in zip((800.0, 3000.0), levels):
        fresh = rng.negative_binomial(2.0, 2.0 / (2.0 + depth * shares), size=(20_000, 30))
        values = np.log1p(1e4 * fresh / depth)
        seen = (fresh > 0).sum(0)
        sampled = values.sum(0) / np.maximum(seen, 1)
        usable = seen >= 500
        np.testing.assert_allclose(level[usable], sampled[usable], rtol=0.05)
    rare = 800.0 * shares < 1.0  # mostly seen as one count, which is more per 10,000 in the shallower cell
    assert rare.any() and (levels[0] > levels[1])[rare].all()


@settings(max_examples=15, deadline=None)
@given(n_types=st.integers(1, 4), fitted_cells=st.integers(1, 60), chunk=st.integers(1, 200), seed=st.integers(0, 10_000))
def test_detected_levels_fall_back_like_the_log_likelihood_and_do_not_depend_on_chunking(n_types, fitted_cells, chunk, seed):
    rng = np.random.default_rng(seed)
    reference_types = rng.integers(0, n_types, fitted_cells)
    cell_types = np.concatenate([rng.integers(-1, n_types + 1, 30), [-1, n_types]])
    counts, library = typed_counts(rng, fitted_cells + len(cell_types), np.clip(np.r_[reference_types, cell_types], 0, None))
    reference, library = (counts[:fitted_cells], library[:fitted_cells]), library[fitted_cells:]
    plain = detected_nb_levels(reference, library)
    typed = detected_nb_levels(reference, library, (reference_types, cell_types))
    assert typed.shape == (len(cell_types), 30) and np.isfinite(typed).all()
    assert (typed >= np.log1p(1e4 / library)[:, None] - 1e-5).all()  # at least one count
    fitted = np.isin(cell_types, [t for t in range(n_types) if (reference_types == t).sum() >= MIN_GROUP_CELLS])
    np.testing.assert_allclose(typed[~fitted], plain[~fitted], rtol=1e-6)  # rows computed in other groupings
    original = metrics.LEVEL_CHUNK_ENTRIES
    try:
        metrics.LEVEL_CHUNK_ENTRIES = chunk * 30
        np.testing.assert_allclose(detected_nb_levels(reference, library, (reference_types, cell_types)), typed, rtol=1e-6)
    finally:
        metrics.LEVEL_CHUNK_ENTRIES = original
