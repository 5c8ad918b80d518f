"""Recycled batch arrays: reused only when nobody holds them, never handed out twice at once."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.data.conftest import loader_config
from vcell.data.buffers import ArrayPool, reference_counts_are_exact
from vcell.data.loader import AtlasLoader

needs_exact_counts = pytest.mark.skipif(not reference_counts_are_exact(), reason="free-threaded CPython: no recycling")


def address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


@needs_exact_counts
def test_a_dropped_array_is_reused_and_a_held_one_is_not():
    pool = ArrayPool(4)
    first = pool.take((3, 5))
    first_address = address(first)
    second = pool.take((3, 5))
    assert address(second) != first_address  # `first` is still held
    del first
    assert address(pool.take((3, 5))) == first_address  # the FREE_REFERENCES pin on this Python


@needs_exact_counts
@pytest.mark.parametrize("hold", ["tensor", "tensor view", "numpy of tensor", "numpy view"])
def test_every_way_of_holding_a_batch_keeps_it(hold):
    pool = ArrayPool(4)
    array = pool.take((4, 6))
    array[:] = 7.0
    kept = {
        "tensor": lambda: torch.from_numpy(array),
        "tensor view": lambda: torch.from_numpy(array)[1:, 2:],
        "numpy of tensor": lambda: torch.from_numpy(array).numpy(),
        "numpy view": lambda: array[::2],
    }[hold]()
    held_address = address(array)
    del array
    for _ in range(3):  # none of these may come back while `kept` lives
        fresh = pool.take((4, 6))
        assert address(fresh) != held_address
        fresh[:] = -1.0
    assert (np.asarray(kept) == 7.0).all()
    del kept
    assert address(pool.take((4, 6))) == held_address  # free again: the first array pooled


@needs_exact_counts
def test_smaller_requests_reuse_a_larger_free_array_and_the_pool_stays_bounded():
    pool = ArrayPool(3)
    first = pool.take(1000, np.int32)
    base = address(first)
    del first
    smaller = pool.take(900, np.int32)
    assert address(smaller) == base and smaller.shape == (900,) and smaller.dtype == np.int32
    assert pool.take(900, np.uint16).dtype == np.uint16  # another dtype: another array
    held = [pool.take(2000, np.float32) for _ in range(5)]
    assert len(pool.arrays) <= 3 and len({address(a) for a in held}) == 5


def test_capacity_zero_always_gives_fresh_arrays():
    pool = ArrayPool(0)
    first = pool.take((2, 2))
    del first
    assert pool.arrays == [] and pool.take((2, 2)).shape == (2, 2)


@needs_exact_counts
@settings(max_examples=10, deadline=None)
@given(n_threads=st.integers(2, 6), capacity=st.integers(1, 4), rounds=st.integers(5, 40))
def test_threads_never_share_an_array(n_threads, capacity, rounds):
    """Each thread fills what it takes with its own number and checks it is still there."""
    pool, errors = ArrayPool(capacity), []

    def work(number: int) -> None:
        for _ in range(rounds):
            array = pool.take((64,))
            array[:] = number
            threading.Event().wait(0.0001)
            if not (array == number).all():
                errors.append(number)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(pool.arrays) <= capacity


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_batches_a_consumer_keeps_are_never_overwritten(atlas_path, threads):
    """Keep every batch of two epochs: each still equals a private copy taken when it came."""
    loader = AtlasLoader(atlas_path, loader_config(threads=threads, keep_counts=True), rank=0, world_size=1)
    kept, copies = [], []
    for _ in range(2):
        for batch in loader:
            kept.append(batch)
            copies.append({key: value.clone() for key, value in batch.items()})
    for batch, copy in zip(kept, copies):
        for key in copy:
            assert torch.equal(batch[key], copy[key]), key


@needs_exact_counts
def test_a_consumer_that_drops_its_batches_gets_recycled_memory(atlas_path):
    loader = AtlasLoader(atlas_path, loader_config(threads=1), rank=0, world_size=1)
    addresses = set()
    n_batches = 0
    for _ in range(3):
        for batch in loader:
            addresses.add(batch["x"].data_ptr())
            n_batches += 1
            del batch
    assert len(addresses) < n_batches  # recycled: far fewer distinct arrays than batches
    assert len(loader.assembler.pool.arrays) <= loader.assembler.pool.capacity
