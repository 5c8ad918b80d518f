"""Property-based checks of re-planning an epoch for another number of ranks (pure arithmetic):
a run stops mid-epoch on W ranks, resumes on W', stops again, resumes on W'' and finishes the
epoch. Every cell of the epoch is delivered exactly once as valid ('pad'; at most once with
'drop'), every rank of each plan has the same number of batches, whatever the sizes and stops."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.data.test_epoch_plan_properties import layouts, rank_stream, split_rows
from vcell.data.epoch_plan import EpochPlan, Layout, Resize, Segments
from vcell.data.loader import fills_a_batch


def plan_of(setup: dict, rank: int, world: int, resizes: tuple[Resize, ...]) -> EpochPlan:
    layout = Layout(setup["blocks"], setup["members"].counts(), setup["batch_size"], setup["window_batches"],
                    setup["remainder"], setup["seed"], rank, world, setup["shuffle"])
    return EpochPlan(layout, setup["members"], setup["epoch"], resizes)


def small(setup: dict) -> bool:
    """Sizes whose whole epoch a test can walk batch by batch in milliseconds."""
    return setup["n_cells"] <= 4000 and setup["n_cells"] // setup["batch_size"] <= 400


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(layouts(), st.lists(st.integers(1, 5), min_size=1, max_size=2), st.data())
def test_a_resized_epoch_delivers_every_cell_once(setup, later_worlds, data):
    expected = split_rows(setup)
    batch = setup["batch_size"]
    assume(fills_a_batch(len(expected), setup["world_size"], batch) and small(setup))
    worlds = [setup["world_size"], *later_worlds]
    resizes: tuple[Resize, ...] = ()
    delivered, dropped_at_most = [], 0
    for stage, world in enumerate(worlds):
        plans = [plan_of(setup, rank, world, resizes) for rank in range(world)]
        n_batches = {plan.n_batches for plan in plans}
        assert len(n_batches) == 1  # collectives never wait for a finished rank
        n_batches = n_batches.pop()
        last = stage == len(worlds) - 1
        # each rank stops before its own batch (the trainer keeps them in step; the arithmetic need not)
        stops = [n_batches if last else data.draw(st.integers(0, n_batches)) for _ in range(world)]
        for plan, stop in zip(plans, stops):
            rows, valid = rank_stream(plan)
            assert len(rows) == n_batches * batch  # whole batches only
            delivered.append(rows[: stop * batch][valid[: stop * batch]])
            if setup["remainder"] == "drop":
                assert valid.all()
        dropped_at_most += world * batch
        resizes = (*resizes, Resize(world, tuple(stops)))
    cells = np.concatenate(delivered)
    assert len(np.unique(cells)) == len(cells)  # never twice as valid
    if setup["remainder"] == "pad":
        assert np.array_equal(np.sort(cells), expected)  # every cell of the epoch exactly once
    else:
        assert np.isin(cells, expected).all() and len(expected) - len(cells) < dropped_at_most


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(layouts(), st.integers(1, 5), st.data())
def test_the_rest_is_a_function_of_the_positions(setup, new_world, data):
    """A resumed process recomputes the same re-planned batches from (seed, epoch, positions)."""
    expected = split_rows(setup)
    assume(fills_a_batch(len(expected), setup["world_size"], setup["batch_size"]) and small(setup))
    n_batches = plan_of(setup, 0, setup["world_size"], ()).n_batches
    resize = Resize(setup["world_size"], tuple(data.draw(st.integers(0, n_batches)) for _ in range(setup["world_size"])))
    rank = data.draw(st.integers(0, new_world - 1))
    first, again = (rank_stream(plan_of(setup, rank, new_world, (resize,))) for _ in range(2))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert Resize.from_dict(resize.as_dict()) == resize


def test_segments_map_indices_through_runs_and_cut_ranges():
    rest = Segments.of_positions(np.array([3, 4, 5, 9, 12, 13]))
    assert rest.starts.tolist() == [3, 9, 12] and rest.lengths.tolist() == [3, 1, 2] and len(rest) == 6
    assert rest.positions(np.arange(6)).tolist() == [3, 4, 5, 9, 12, 13]
    cut = rest.take(1, 5)
    assert cut.positions(np.arange(len(cut))).tolist() == [4, 5, 9, 12]
    assert len(rest.take(4, 4)) == 0
