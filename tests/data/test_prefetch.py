"""Batches assembled ahead in threads (vcell.data.prefetch): order, each window read once, errors, early stops."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcell.data.prefetch import Once, prefetched


def test_a_window_is_computed_once_whichever_threads_ask():
    calls = []
    window = Once(lambda: calls.append(1) or len(calls))
    with ThreadPoolExecutor(4) as pool:
        values = list(pool.map(lambda _: window(), range(16)))
    assert values == [1] * 16 and calls == [1]


def test_a_failed_window_raises_for_every_caller():
    window = Once(lambda: 1 / 0)
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            window()


class Counting:
    """Windows of `per_window` batches; records every window read (from any thread)."""

    def __init__(self, per_window: int):
        self.per_window, self.reads, self.lock = per_window, [], threading.Lock()

    def load_window(self, window: int) -> list[int]:
        with self.lock:
            self.reads.append(window)
        return list(range(window * self.per_window, (window + 1) * self.per_window))

    def make_batch(self, index: int, window: list[int]) -> tuple[int, int]:
        return index, window[index % self.per_window]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 60), per_window=st.integers(1, 7), start=st.integers(0, 5), step=st.integers(1, 3),
       threads=st.integers(1, 4), ahead=st.integers(0, 9))
def test_batches_come_in_order_and_each_window_is_read_once(n, per_window, start, step, threads, ahead):
    source = Counting(per_window)
    n_windows = -(-n // per_window)
    indices = range(start, n, step)
    batches = list(prefetched(indices, per_window=per_window, n_windows=n_windows, load_window=source.load_window,
                              make_batch=source.make_batch, threads=threads, ahead=ahead))
    assert batches == [(index, index) for index in indices]  # batch i holds row i of its window
    assert len(source.reads) == len(set(source.reads))  # no window read twice
    assert set(source.reads) >= {index // per_window for index in indices}
    assert all(window < n_windows for window in source.reads)  # never past the last window


def test_an_error_in_a_batch_reaches_the_consumer():
    def make_batch(index, window):
        if index == 5:
            raise ValueError("batch 5 is broken")
        return index

    with pytest.raises(ValueError, match="batch 5"):
        list(prefetched(range(10), per_window=4, n_windows=3, load_window=lambda w: w, make_batch=make_batch,
                        threads=2, ahead=4))


def test_a_stream_abandoned_early_stops_without_reading_the_rest():
    source = Counting(per_window=2)
    stream = prefetched(range(1000), per_window=2, n_windows=500, load_window=source.load_window,
                        make_batch=source.make_batch, threads=2, ahead=4)
    assert [next(stream) for _ in range(3)] == [(0, 0), (1, 1), (2, 2)]
    stream.close()  # the pool shuts down; queued work is dropped
    assert max(source.reads) < 10  # a few windows ahead at most, not the whole epoch
