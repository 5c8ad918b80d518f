"""External shuffle: route each cell to its output shard on disk, then assemble shards in order.

Pass 1 appends a cell's values to the spill files of the shard its shuffled position falls
in (raw binary, sequential writes). Pass 2 reads one shard's spill (bounded by shard size),
puts the rows in position order and hands back a CSR block. Memory never exceeds one shard.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

FIELDS = ("positions", "row_nnz", "indices", "data")


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

    def append(self, matrix: sp.csr_matrix, positions: np.ndarray) -> None:
        """Route rows of `matrix` (global vocabulary) to the shards of their output `positions`."""
        shard_of_row = positions // self.shard_cells
        order = np.argsort(shard_of_row, kind="stable")
        boundaries = np.searchsorted(shard_of_row[order], np.arange(len(self._handles) + 1))
        row_nnz = np.diff(matrix.indptr).astype(np.int32)
        for shard in np.unique(shard_of_row):
            rows = order[boundaries[shard] : boundaries[shard + 1]]
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

    def assemble(self, shard: int, n_genes: int) -> sp.csr_matrix:
        """The shard's cells as CSR with row r = output position shard*shard_cells + r."""
        arrays = {field: np.fromfile(self._path(shard, field), dtype=self.dtypes[field]) for field in FIELDS}
        local = arrays["positions"] - shard * self.shard_cells
        n_rows = len(local)
        if n_rows and (local.min() < 0 or local.max() >= n_rows or len(np.unique(local)) != n_rows):
            raise RuntimeError(f"spill of shard {shard} is inconsistent (positions not a permutation)")
        arrival_start = np.concatenate([[0], np.cumsum(arrays["row_nnz"], dtype=np.int64)[:-1]])
        order = np.argsort(local)  # arrival row for each output row
        nnz = arrays["row_nnz"][order].astype(np.int64)
        indptr = np.concatenate([[0], np.cumsum(nnz)])
        # Gather index of every value: arrival start of its row + offset within the row.
        gather = np.repeat(arrival_start[order] - indptr[:-1], nnz) + np.arange(indptr[-1])
        matrix = sp.csr_matrix(
            (arrays["data"][gather], arrays["indices"][gather].astype(np.int32), indptr), shape=(n_rows, n_genes)
        )
        for field in FIELDS:
            self._path(shard, field).unlink()
        return matrix
