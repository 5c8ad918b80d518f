"""Property-based checks of the epoch plan (pure arithmetic, no I/O) over every size that matters:
atlases of 1..20,000 cells, shards and blocks smaller or larger than the split, batches larger
than a block or a window, 1-4 ranks, both remainder policies.

The loader-level tests (`test_loader_properties.py`) read real atlases; these cover the whole
size range cheaply, because a size that breaks the arithmetic breaks every atlas of that size.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcell.data.loader import fills_a_batch
from vcell.data.epoch_plan import Blocks, EpochPlan, Layout, MemberLookup
from vcell.errors import VCellError


@st.composite
def layouts(draw):
    """A random atlas shape, split membership and loader layout (one rank's view is built later)."""
    n_cells = draw(st.integers(1, 20_000))
    shard_cells = draw(st.one_of(st.integers(1, 64), st.integers(64, 25_000)))
    block_cells = draw(st.one_of(st.integers(1, 64), st.integers(64, 25_000)))
    batch_size = draw(st.one_of(st.integers(1, 16), st.integers(16, 4096)))
    window_batches = draw(st.integers(1, 8))
    world_size = draw(st.integers(1, 4))
    member_fraction = draw(st.sampled_from([1.0, 0.9, 0.5, 0.05, 0.0]))
    seed = draw(st.integers(0, 2**16))
    shard_starts = list(range(0, n_cells, shard_cells))
    shard_sizes = [min(shard_cells, n_cells - start) for start in shard_starts]
    blocks = Blocks.from_shards(shard_starts, shard_sizes, block_cells)
    codes = None
    if member_fraction < 1.0:  # code 0 = the split being read; the others belong to other splits
        codes = (np.random.default_rng(seed).random(n_cells) >= member_fraction).astype(np.uint8)
    return dict(
        blocks=blocks, members=MemberLookup(blocks, codes, 0), n_cells=n_cells, batch_size=batch_size,
        window_batches=window_batches, world_size=world_size, seed=seed,
        remainder=draw(st.sampled_from(["pad", "drop"])), shuffle=draw(st.booleans()), epoch=draw(st.integers(0, 3)),
    )


def rank_plan(setup: dict, rank: int) -> EpochPlan:
    layout = Layout(
        setup["blocks"], setup["members"].counts(), setup["batch_size"], setup["window_batches"],
        setup["remainder"], setup["seed"], rank, setup["world_size"], setup["shuffle"],
    )
    return EpochPlan(layout, setup["members"], setup["epoch"])


def split_rows(setup: dict) -> np.ndarray:
    members = setup["members"]
    return np.concatenate([members.rows(b) for b in range(len(setup["blocks"]))])


def rank_stream(plan: EpochPlan) -> tuple[np.ndarray, np.ndarray]:
    """(rows, valid) of one rank's whole epoch in the order its batches are cut."""
    rows, valid = [], []
    for window in range(plan.n_windows):
        window_rows, window_valid, permutation = plan.window(window)
        assert sorted(permutation.tolist()) == list(range(len(window_rows)))  # a permutation
        rows.append(window_rows[permutation])
        valid.append(window_valid[permutation])
    return np.concatenate(rows) if rows else np.empty(0, np.int64), np.concatenate(valid) if valid else np.empty(0, bool)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts())
def test_every_split_cell_exactly_once_per_epoch_on_every_rank_count(setup):
    expected = split_rows(setup)
    world, batch = setup["world_size"], setup["batch_size"]
    if not fills_a_batch(len(expected), world, batch):
        return  # the loader refuses these before planning (see test_loader_properties)
    plans = [rank_plan(setup, rank) for rank in range(world)]
    assert len({plan.n_batches for plan in plans}) == 1  # collectives never wait for a finished rank
    streams = [rank_stream(plan) for plan in plans]
    for plan, (rows, valid) in zip(plans, streams):
        assert len(rows) == plan.n_batches * batch  # whole batches only: fixed shapes
    valid_rows = np.concatenate([rows[valid] for rows, valid in streams])
    assert len(np.unique(valid_rows)) == len(valid_rows)  # never twice as valid
    assert np.isin(np.concatenate([rows for rows, _ in streams]), expected).all()  # never another split's cell
    if setup["remainder"] == "pad":
        assert np.array_equal(np.sort(valid_rows), expected)  # every cell exactly once
    else:
        assert all(valid.all() for _, valid in streams)
        assert len(valid_rows) == world * plans[0].n_batches * batch
        assert len(expected) - len(valid_rows) < world * batch  # only the remainder is dropped


@settings(max_examples=100, deadline=None)
@given(layouts(), st.integers(0, 2**16))
def test_the_plan_is_a_function_of_its_inputs(setup, rank_seed):
    """Recomputing a rank's plan (as a resumed process does) gives the same cells in the same order."""
    expected = split_rows(setup)
    if not fills_a_batch(len(expected), setup["world_size"], setup["batch_size"]):
        return
    rank = rank_seed % setup["world_size"]
    first, again = rank_stream(rank_plan(setup, rank)), rank_stream(rank_plan(setup, rank))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])


def test_fewer_cells_than_ranks_is_a_clear_error():
    blocks = Blocks.from_shards([0], [1], 8)
    layout = Layout(blocks, np.array([1]), 1, 1, "pad", 0, 1, 2)
    with pytest.raises(VCellError, match="fewer than the 2 ranks"):
        EpochPlan(layout, MemberLookup(blocks, None, 0), 0)
