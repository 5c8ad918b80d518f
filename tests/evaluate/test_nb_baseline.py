"""The library-size NB baselines of held-out count log-likelihood (`vcell.evaluate.metrics.library_size_nb`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vcell.evaluate.metrics import MIN_GROUP_CELLS, library_size_nb, nb_log_likelihood


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
