"""Rows of an atlas as CSR pieces plus encoded labels, read block by block.

Labels come out encoded with the atlas's global categories (int64 codes, -1 for missing),
numbers as float32 and booleans as bool, so every rank and every shard agrees on what code 3
means. Arrays are read with the fast chunk reader; zarr-python is the fallback for layouts
it does not handle.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from vcell.atlas.chunks import ChunkedArrayReader, DecodedChunkCache, RecordedFiles, UnsupportedLayout, check_chunk_files
from vcell.atlas.store import Atlas
from vcell.data.buffers import ArrayPool
from vcell.data.epoch_plan import Blocks
from vcell.errors import VCellError

SMALL_ARRAY_CACHE_BYTES = 64 << 20  # decoded indptr / label chunks kept for re-use
WINDOW_ARRAYS = 12  # pooled raw window arrays: 3 per window, up to 4 windows read at once


@dataclass
class RowBlock:
    """Consecutive atlas rows: CSR arrays (indptr starts at 0) and one array per label."""

    indptr: np.ndarray  # (n_rows + 1,) int64
    indices: np.ndarray  # (nnz,) uint16/uint32, gene index in the atlas vocabulary
    data: np.ndarray  # (nnz,) the stored value type (uint16 counts, float32 or float64)
    labels: dict[str, np.ndarray]  # name -> (n_rows,)


class ZarrRangeReader:
    """The fallback: range reads through zarr-python (any valid layout, slower); a recorded chunk
    file that is gone raises instead of reading as the fill value."""

    def __init__(self, array: zarr.Array, directory: Path | None = None, recorded: RecordedFiles | None = None):
        self.array, self.directory, self.recorded = array, directory, recorded

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        if self.directory is not None:
            check_chunk_files(self.array, self.directory, self.recorded, start, stop)
        values = np.asarray(self.array[start:stop])
        if out is None:
            return values
        out[:] = values
        return out


def open_range_reader(atlas: Atlas, path: str, cache: DecodedChunkCache | None):
    recorded = atlas.recorded_files(path)
    try:
        return ChunkedArrayReader(atlas.path / path, cache, recorded)
    except UnsupportedLayout:
        return ZarrRangeReader(atlas.root[path], atlas.path / path, recorded)


def label_kinds(atlas: Atlas, columns: list[str]) -> dict[str, str]:
    """'category', 'float32', 'bool', ... per requested column; a clear error for the rest."""
    known = atlas.attrs["obs_columns"]
    kinds = {}
    for column in columns:
        if column not in known:
            raise VCellError(
                f"{atlas.path}: the atlas has no obs column '{column}'",
                hint=f"available columns: {', '.join(sorted(known))}",
            )
        kind = known[column]
        if kind not in ("category", "bool") and not np.issubdtype(np.dtype(kind), np.number):
            raise VCellError(
                f"{atlas.path}: obs column '{column}' holds {kind} values, not categories or numbers",
                hint="labels must be categorical (e.g. cell type) or numeric (e.g. time)",
            )
        kinds[column] = kind
    return kinds


class AtlasReader:
    """Reads row ranges (within one shard) of an atlas; `read_window` assembles a buffer from them."""

    def __init__(self, atlas: Atlas, label_columns: list[str]):
        self.atlas = atlas
        self.kinds = label_kinds(atlas, label_columns)
        self.shard_starts = np.array([s["start"] for s in atlas.shards], dtype=np.int64)
        self.shard_sizes = np.array([s["n_cells"] for s in atlas.shards], dtype=np.int64)
        self.cache = DecodedChunkCache(SMALL_ARRAY_CACHE_BYTES)
        # A window's stored values and indices, recycled (`vcell.data.buffers`): a few windows
        # are read at a time, three arrays each.
        self.pool = ArrayPool(WINDOW_ARRAYS)
        self.opened: dict[int, dict] = {}
        self.lock = threading.Lock()

    def shard_of(self, row: int) -> int:
        return int(np.searchsorted(self.shard_starts, row, side="right") - 1)

    def shard_readers(self, shard: int) -> dict:
        """Open a shard's arrays once (thread-safe): X's three arrays and the label columns."""
        with self.lock:
            if shard not in self.opened:
                self.opened[shard] = self.open_shard(shard)
            return self.opened[shard]

    def open_shard(self, shard: int) -> dict:
        name = self.atlas.shards[shard]["name"]
        prefix = f"shards/{name}"
        readers = {
            "indptr": open_range_reader(self.atlas, f"{prefix}/X/indptr", self.cache),
            "indices": open_range_reader(self.atlas, f"{prefix}/X/indices", None),
            "data": open_range_reader(self.atlas, f"{prefix}/X/data", None),
            "labels": {},
        }
        for column, kind in self.kinds.items():
            path = f"{prefix}/obs/{column}" + ("/codes" if kind == "category" else "")
            remap = self.category_remap(prefix, column) if kind == "category" else None
            readers["labels"][column] = (open_range_reader(self.atlas, path, self.cache), remap)
        return readers

    def category_remap(self, prefix: str, column: str) -> np.ndarray | None:
        """Shard code -> global code, when a shard's categories differ from the atlas's."""
        shard_categories = [str(name) for name in self.atlas.root[f"{prefix}/obs/{column}/categories"][:].tolist()]
        global_categories = self.atlas.attrs["obs_categories"][column]
        if shard_categories == global_categories:
            return None
        position = {name: code for code, name in enumerate(global_categories)}
        return np.array([position[name] for name in shard_categories], dtype=np.int64)

    def locate_rows(self, start: int, stop: int) -> tuple[int, int, int]:
        """(shard, first row, one past the last row) within the shard of atlas rows [start, stop)."""
        shard = self.shard_of(start)
        local_start, local_stop = start - int(self.shard_starts[shard]), stop - int(self.shard_starts[shard])
        if local_stop > self.shard_sizes[shard]:
            raise IndexError(f"rows [{start}, {stop}) cross the end of shard {shard}")
        return shard, local_start, local_stop

    def row_pointers(self, start: int, stop: int) -> np.ndarray:
        """indptr of atlas rows [start, stop) (n + 1 values, offsets into the shard's X arrays)."""
        shard, local_start, local_stop = self.locate_rows(start, stop)
        return self.shard_readers(shard)["indptr"].read(local_start, local_stop + 1)

    def read_values(self, start: int, pointers: np.ndarray, data_out: np.ndarray, indices_out: np.ndarray) -> None:
        """Decode the stored values of rows starting at atlas row `start` straight into the outputs."""
        readers = self.shard_readers(self.shard_of(start))
        first, last = int(pointers[0]), int(pointers[-1])
        readers["data"].read(first, last, data_out)
        readers["indices"].read(first, last, indices_out)

    def read_labels_of_rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        shard, local_start, local_stop = self.locate_rows(start, stop)
        return {
            column: self.encode(column, reader.read(local_start, local_stop), remap)
            for column, (reader, remap) in self.shard_readers(shard)["labels"].items()
        }

    def index_dtype(self) -> np.dtype:
        return self.shard_readers(0)["indices"].dtype

    def value_dtype(self) -> np.dtype:
        return self.shard_readers(0)["data"].dtype

    def encode(self, column: str, values: np.ndarray, remap: np.ndarray | None) -> np.ndarray:
        kind = self.kinds[column]
        if kind == "category":
            codes = values.astype(np.int64)
            if remap is not None:
                codes = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1)
            return codes
        if kind == "bool":
            return values.astype(bool)
        return values.astype(np.float32)

    def read_labels(self, column: str) -> np.ndarray:
        """One label column for every cell of the atlas (for splits and evaluation)."""
        reader = AtlasReader(self.atlas, [column]) if column not in self.kinds else self
        parts = []
        for shard, size in enumerate(self.shard_sizes):
            column_reader, remap = reader.shard_readers(shard)["labels"][column]
            parts.append(reader.encode(column, column_reader.read(0, int(size)), remap))
        return np.concatenate(parts) if parts else np.empty(0)


def read_window(reader: AtlasReader, blocks: Blocks, rows: np.ndarray) -> tuple[RowBlock, np.ndarray]:
    """Read atlas rows (any order, repeats allowed) as one CSR piece, each block they touch once.

    A block is read as one span, from its first to its last requested row: the loader's
    windows ask for most rows of few blocks, so this decodes little waste. No assumption is
    made about the order of `rows` (padding wraps a rank's stream back into a block it has
    already visited; evaluation samples rows at random). Returns the piece and, per entry of
    `rows`, its row in the piece.
    """
    rows = np.asarray(rows, dtype=np.int64)
    spans, span_of_row = block_spans(blocks, rows)
    pointers = [reader.row_pointers(first, last) for first, last in spans]
    # Where each span's rows and values go in the window; values decode straight into place.
    row_offsets = np.cumsum([0] + [last - first for first, last in spans]).astype(np.int64)
    value_offsets = np.cumsum([0] + [int(p[-1] - p[0]) for p in pointers]).astype(np.int64)
    data = reader.pool.take(value_offsets[-1], reader.value_dtype())
    indices = reader.pool.take(value_offsets[-1], reader.index_dtype())
    indptr = np.zeros(row_offsets[-1] + 1, dtype=np.int64)
    labels: dict[str, list[np.ndarray]] = {name: [] for name in reader.kinds}
    for span, ((first, last), pointer) in enumerate(zip(spans, pointers)):
        low, high = value_offsets[span], value_offsets[span + 1]
        reader.read_values(first, pointer, data[low:high], indices[low:high])
        indptr[row_offsets[span] + 1: row_offsets[span + 1] + 1] = pointer[1:] - pointer[0] + low
        for name, values in reader.read_labels_of_rows(first, last).items():
            labels[name].append(values)
    span_starts = np.array([first for first, _ in spans], dtype=np.int64)
    local = rows - span_starts[span_of_row] + row_offsets[:-1][span_of_row]
    small = value_offsets[-1] < 2**31  # scipy's int32 index type when it fits
    wide_indices = reader.pool.take(len(indices), np.int32 if small else np.int64)
    wide_indices[:] = indices
    window = RowBlock(
        indptr=indptr.astype(np.int32) if small else indptr,
        indices=wide_indices,
        data=data,
        labels={name: np.concatenate(parts) if parts else np.empty(0, dtype=np.int64) for name, parts in labels.items()},
    )
    return window, local


def block_spans(blocks: Blocks, rows: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray]:
    """([first, last + 1) per block touched, span of each entry of `rows`).

    The training stream visits each block as one increasing run of rows: its runs are its spans
    (no sort). Anything else (padding that wraps into a visited block, sampled evaluation rows)
    is sorted first, so a block is still read once.
    """
    block_of = np.searchsorted(blocks.starts, rows, side="right") - 1
    run_starts = np.flatnonzero(np.diff(block_of, prepend=-1) != 0)
    in_one_run = len(np.unique(block_of[run_starts])) == len(run_starts)
    if in_one_run and bool((np.diff(rows)[np.diff(block_of) == 0] > 0).all()):
        run_stops = np.append(run_starts[1:], len(rows))
        spans = [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(run_starts.tolist(), run_stops.tolist())]
        return spans, np.cumsum(np.diff(block_of, prepend=-1) != 0) - 1
    ordered = np.unique(rows)  # sorted: the rows of a block are consecutive entries
    ordered_blocks = np.searchsorted(blocks.starts, ordered, side="right") - 1
    firsts = np.flatnonzero(np.diff(ordered_blocks, prepend=-1) != 0)
    lasts = np.append(firsts[1:], len(ordered)) - 1
    spans = [(int(ordered[a]), int(ordered[b]) + 1) for a, b in zip(firsts.tolist(), lasts.tolist())]
    return spans, np.searchsorted(ordered[firsts], rows, side="right") - 1
