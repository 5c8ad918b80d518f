"""The prior files' alignment (vcell.models.priors). Reading real GMT, compartment and GRN files
through `spec_from_atlas` is tested in test_spec.py; here, the merging of repeated GRN pairs
over any list of edges."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vcell.models.priors import unique_edges

edge_lists = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.sampled_from([-1, 0, 1])), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(edges=edge_lists)
def test_each_pair_is_kept_once_in_first_appearance_order_with_the_sign_its_lines_agree_on(edges):
    source, target, sign = (np.array(column, dtype=np.int64) for column in zip(*edges))
    merged_edges, merged = unique_edges(source, target, sign)
    expected: dict[tuple[int, int], set[int]] = {}  # insertion order = first appearance
    for s, t, g in edges:
        expected.setdefault((s, t), set()).add(g)
    assert list(zip(merged_edges.source.tolist(), merged_edges.target.tolist())) == list(expected)
    assert merged_edges.sign.tolist() == [next(iter(signs)) if len(signs) == 1 else 0 for signs in expected.values()]
    assert merged == len(edges) - len(expected)
    assert merged_edges.sign.dtype == sign.dtype and merged_edges.source.dtype == np.int64
