"""Pairing cells for the response loss (`slots.pair_cells`)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vcell.models.slots import pair_cells

CONTEXT = torch.tensor([0, 0, 0, 1, 1, 1, 2, -1])
BASAL = torch.tensor([True, False, False, True, False, True, False, True])


def test_each_condition_cell_gets_a_basal_partner_of_its_context():
    partners, targets = pair_cells(CONTEXT, BASAL, torch.Generator().manual_seed(0))
    # row 6: context 2 has no basal cell; row 7: unknown context
    assert targets.tolist() == [1, 2, 4]
    assert partners[:2].tolist() == [0, 0] and partners[2].item() in (3, 5)


def test_basal_targets_are_paired_too_within_their_context():
    seen = set()
    for seed in range(20):
        partners, targets = pair_cells(CONTEXT, BASAL, torch.Generator().manual_seed(seed), basal_targets=True)
        assert targets.tolist() == [0, 1, 2, 3, 4, 5]
        assert all(BASAL[partners]) and torch.equal(CONTEXT[partners], CONTEXT[targets])
        seen.add(tuple(partners.tolist()))
    assert len(seen) > 1  # random partners, not a fixed map


def test_no_pairs_without_both_kinds_of_cell():
    assert pair_cells(CONTEXT, torch.ones(8, dtype=torch.bool), basal_targets=True) is None
    assert pair_cells(CONTEXT, torch.zeros(8, dtype=torch.bool)) is None


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n_cells=st.integers(1, 40), n_contexts=st.integers(1, 5), basal_targets=st.booleans())
def test_pairs_hold_on_any_batch(data, n_cells, n_contexts, basal_targets):
    """Any batch: each target appears once, with a basal partner of its own context; every known
    cell whose context has a basal cell is a target (basal ones only with `basal_targets`)."""
    context = torch.tensor(data.draw(st.lists(st.integers(-1, n_contexts - 1), min_size=n_cells, max_size=n_cells)))
    basal = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n_cells, max_size=n_cells)))
    pairs = pair_cells(context, basal, torch.Generator().manual_seed(0), basal_targets=basal_targets)
    has_basal = {int(c) for c in context[basal & (context >= 0)].tolist()}
    expected = [i for i in range(n_cells) if int(context[i]) in has_basal and (basal_targets or not basal[i])]
    if basal.all() or not basal.any() or pairs is None:
        assert pairs is None and (basal.all() or not basal.any() or not expected)
        return
    partners, targets = pairs
    assert targets.tolist() == expected
    assert basal[partners].all() and torch.equal(context[partners], context[targets])
