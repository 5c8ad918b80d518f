"""External shuffle: route each cell to its output shard on disk, then assemble shards in order.

Pass 1 appends a cell's values to the spill files of the shard its shuffled position falls
in (raw binary, sequential writes). Pass 2 reads one shard's spill (bounded by shard size),
puts the rows in position order and hands back its CSR arrays. Memory never exceeds one shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

FIELDS = ("positions", "row_nnz", "indices", "data")


@dataclass
class CSRArrays:
    """A CSR matrix as its three arrays, in the dtypes they are stored with."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray  # int64, n_rows + 1

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])


def shard_groups(positions: np.ndarray, shard_cells: int) -> list[tuple[int, np.ndarray]]:
    """(shard, rows of the chunk that go to it, in arrival order) for a chunk's output `positions`."""
    shard_of_row = positions // shard_cells
    order = np.argsort(shard_of_row, kind="stable")
    shards, starts = np.unique(shard_of_row[order], return_index=True)
    stops = np.append(starts[1:], len(order))
    return [(int(shard), order[a:b]) for shard, a, b in zip(shards, starts, stops)]


class ShardSpill:
    """Append-only spill files per output shard under `directory`."""

    def __init__(self, directory: Path, n_shards: int, shard_cells: int, value_dtype: np.dtype, index_dtype: np.dtype):
        self.directory = directory
        self.shard_cells = shard_cells
        self.dtypes = {"positions": np.dtype(np.int64), "row_nnz": np.dtype(np.int32), "indices": index_dtype, "data": value_dtype}
        directory.mkdir(parents=True)
        self._handles = [
            {field: open(self._path(shard, field), "ab") for field in FIELDS} for shard in range(n_shards)
        ]

    def _path(self, shard: int, field: str) -> Path:
        return self.directory / f"{shard:05d}.{field}"

    def append(self, matrix: sp.csr_matrix, positions: np.ndarray, groups: list[tuple[int, np.ndarray]]) -> None:
        """Route rows of `matrix` (global vocabulary) to their shards; `groups` from `shard_groups(positions)`."""
        row_nnz = np.diff(matrix.indptr).astype(np.int32)
        for shard, rows in groups:
            block = matrix[rows]  # (rows, n_genes) CSR, rows in arrival order
            handles = self._handles[shard]
            positions[rows].astype(np.int64).tofile(handles["positions"])
            row_nnz[rows].tofile(handles["row_nnz"])
            block.indices.astype(self.dtypes["indices"], copy=False).tofile(handles["indices"])
            block.data.astype(self.dtypes["data"], copy=False).tofile(handles["data"])

    def close(self) -> None:
        for handles in self._handles:
            for handle in handles.values():
                handle.close()

    def assemble(self, shard: int, value_dtype: np.dtype, rows_per_slice: int = 1 << 16) -> CSRArrays:
        """The shard's cells as CSR (values in `value_dtype`), row r = output position shard*shard_cells + r.

        Memory: the spilled values are memory-mapped (the page cache holds them, not the heap)
        and the output is filled a slice of rows at a time, so the peak is the output arrays
        plus one slice's gather index (~10 bytes per stored value instead of ~26 gathering at once).
        """
        order = self.arrival_order(shard)
        row_nnz = np.fromfile(self._path(shard, "row_nnz"), dtype=self.dtypes["row_nnz"])
        n_rows = len(order)
        arrival_start = np.zeros(n_rows, dtype=np.int64)
        np.cumsum(row_nnz[:-1], out=arrival_start[1:])
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(row_nnz[order], out=indptr[1:])
        spilled = {field: self.mapped(shard, field) for field in ("indices", "data")}
        data = np.empty(int(indptr[-1]), dtype=value_dtype)
        indices = np.empty(int(indptr[-1]), dtype=self.dtypes["indices"])
        for first in range(0, n_rows, rows_per_slice):
            rows = order[first: first + rows_per_slice]
            low, high = int(indptr[first]), int(indptr[min(first + rows_per_slice, n_rows)])
            lengths = np.diff(indptr[first: first + len(rows) + 1])
            # Gather index of each value: arrival start of its row + offset within the row.
            gather = np.repeat(arrival_start[rows] - (indptr[first: first + len(rows)] - low), lengths)
            gather += np.arange(high - low, dtype=np.int64)
            data[low:high] = spilled["data"][gather]
            indices[low:high] = spilled["indices"][gather]
        del spilled
        for field in FIELDS:
            self._path(shard, field).unlink()
        return CSRArrays(data, indices, indptr)

    def arrival_order(self, shard: int) -> np.ndarray:
        """The arrival row of each output row of `shard` (obs and obsm are put in order with it too)."""
        local = np.fromfile(self._path(shard, "positions"), dtype=self.dtypes["positions"]) - shard * self.shard_cells
        n_rows = len(local)
        if n_rows and (local.min() < 0 or local.max() >= n_rows or len(np.unique(local)) != n_rows):
            raise RuntimeError(f"spill of shard {shard} is inconsistent (positions not a permutation)")
        return np.argsort(local)

    def mapped(self, shard: int, field: str) -> np.ndarray:
        path = self._path(shard, field)
        if path.stat().st_size == 0:
            return np.empty(0, dtype=self.dtypes[field])
        return np.memmap(path, dtype=self.dtypes[field], mode="r")
