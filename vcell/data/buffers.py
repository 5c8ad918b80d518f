"""Dense batch arrays that are recycled once nobody holds them any more.

A dense batch (4,096 cells x 2,000 genes float32 = 32 MiB) freshly allocated in a loader
thread is fresh memory: glibc serves it from a thread arena that trims itself when the
consumer frees the batch, so every batch page-faults and the kernel zeroes every page
before the loader overwrites it. Measured with `perf` on the loader at 4,096-cell batches
(background reading and assembling threads), the kernel's page clearing took ~30% of all the
loader's CPU time, more than decoding and densifying together.

The pool hands out an array it made before when no one else references it: not the
consumer's tensor (`torch.from_numpy` holds the array until the tensor and every view of it
are gone), not a `.numpy()` of it, not a batch still in flight. CPython's reference count
says so exactly, under the lock that also hands the array out, so two threads can never
receive the same array. Interpreters without that guarantee (free-threaded builds) get a
fresh array every time, as before.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

# References to a free pooled array while `take` looks at it: the pool's list, the loop
# variable and getrefcount's own argument (`best` only ever holds an array already found
# free, under the lock). A test pins this on every supported Python.
FREE_REFERENCES = 3


def reference_counts_are_exact() -> bool:
    """Whether sys.getrefcount tells who holds an object (not so on free-threaded CPython)."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    return is_gil_enabled is None or is_gil_enabled()


class ArrayPool:
    """`pool.take(shape, dtype)` -> an uninitialised array, recycled when it is free.

    Arrays are kept flat and handed out as views of their first elements, so a slightly
    smaller request (the next shuffle buffer's non-zeros) reuses the smallest free array that
    fits (never one more than twice too large: a dense batch is not spent on a window's
    values); new ones get
    `HEADROOM` so the next, slightly larger, request fits too. At most `capacity` arrays are
    kept (memory stays bounded); past that, a free one (else the oldest) is forgotten, and
    whoever still holds it keeps it alive, as without a pool.
    """

    HEADROOM = 1.25

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.arrays: list[np.ndarray] = []
        self.lock = threading.Lock()
        self.recycles = reference_counts_are_exact() and capacity > 0

    def take(self, shape: int | tuple[int, ...], dtype=np.float32) -> np.ndarray:
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(n) for n in shape)
        dtype, size = np.dtype(dtype), int(np.prod(shape))
        if not self.recycles:
            return np.empty(shape, dtype=dtype)
        with self.lock:
            best = None  # the smallest free array that fits, at most twice the size asked for
            for array in self.arrays:
                if array.dtype == dtype and size <= array.size <= 2 * size + 4096 \
                        and (best is None or array.size < best.size) and sys.getrefcount(array) == FREE_REFERENCES:
                    best = array
            if best is not None:
                return best[:size].reshape(shape)
            array = np.empty(size if len(shape) > 1 else int(size * self.HEADROOM), dtype=dtype)
            if len(self.arrays) >= self.capacity:
                self.forget_one()
            self.arrays.append(array)
            return array[:size].reshape(shape)

    def forget_one(self) -> None:
        for index in range(len(self.arrays)):
            if sys.getrefcount(self.arrays[index]) == FREE_REFERENCES - 1:  # the list and the argument
                del self.arrays[index]
                return
        del self.arrays[0]

    def __getstate__(self) -> dict:
        """A copy (e.g. in a DataLoader worker started by spawn) starts with an empty pool."""
        return {"capacity": self.capacity}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["capacity"])
