"""Helpers of the learning checks that hold for any data (the checks themselves: test_science.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vcell.evaluate.metrics import cell_type_means


@settings(max_examples=60, deadline=None)
@given(
    n_reference=st.integers(1, 40), n_cells=st.integers(0, 30), width=st.integers(1, 4),
    n_types=st.integers(1, 6), seed=st.integers(0, 2**16),
)
def test_each_cell_gets_the_mean_of_its_types_reference_cells(n_reference, n_cells, width, n_types, seed):
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(n_reference, width))
    reference_types = rng.integers(0, n_types, n_reference)
    types = rng.integers(0, n_types + 1, n_cells)  # type n_types never occurs in the reference
    means = cell_type_means(reference, reference_types, types)
    assert means.shape == (n_cells, width)
    for row, cell_type in zip(means, types):
        members = reference[reference_types == cell_type]
        expected = members.mean(0) if len(members) else reference.mean(0)  # an unseen type: the overall mean
        np.testing.assert_allclose(row, expected)
