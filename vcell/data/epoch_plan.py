"""The epoch plan: which cells each rank reads, in which order, batch by batch. No I/O.

Everything here is arithmetic on (seed, epoch, rank, world size), so any process can
recompute any batch of any epoch: resuming is "recompute the plan, skip to batch k".

  blocks    contiguous row ranges of the atlas (never crossing a shard), `block_cells` long
  stream    the epoch's blocks in a seeded random order, each contributing its split's cells
            in row order; M cells in all
  rank r    the contiguous slice [r*M/W, (r+1)*M/W) of the stream (sizes differ by <= 1)
  window    `window_cells` consecutive cells of a rank's slice: what the shuffle buffer holds;
            its cells are permuted (seeded by epoch, rank, window) and cut into batches
  remainder 'pad': every rank yields ceil(max slice / batch) full batches, topping up with
            cells from the start of its own slice, flagged valid=False (so every cell is seen
            exactly once as valid); 'drop': every rank yields floor(min slice / batch) batches
            and the rest of the epoch's cells are skipped. Both give every rank the same
            number of batches, so collective operations never wait for a rank that stopped.
  resize    a run that stopped mid-epoch on W ranks and resumes on W' != W (nodes come and go):
            the cells each old rank had not yet delivered as valid (everything after its
            position, less the cells already taken from its current window) form the rest of
            the epoch, in old-rank order; the W' ranks divide that rest as above (slices,
            windows, the same remainder policy; a rank whose slice is empty pads from the start
            of the rest). Resizes chain (2 -> 1 -> 3): each re-plans the rest of the previous
            plan. The next epoch is the plain plan of the new world size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from vcell.errors import VCellError

# Distinct stream ids keep the random sequences of different purposes independent.
BLOCK_ORDER_STREAM = 101
WINDOW_SHUFFLE_STREAM = 202


@dataclass(frozen=True)
class Blocks:
    """Contiguous row ranges of the atlas; a block never crosses a shard boundary."""

    starts: np.ndarray  # (n_blocks,) int64, first atlas row
    stops: np.ndarray  # (n_blocks,) int64, one past the last row

    @classmethod
    def from_shards(cls, shard_starts: list[int], shard_sizes: list[int], block_cells: int) -> Blocks:
        starts, stops = [], []
        for shard_start, size in zip(shard_starts, shard_sizes):
            first = np.arange(shard_start, shard_start + size, block_cells, dtype=np.int64)
            starts.append(first)
            stops.append(np.minimum(first + block_cells, shard_start + size))
        return cls(np.concatenate(starts), np.concatenate(stops))

    def __len__(self) -> int:
        return len(self.starts)


@dataclass(frozen=True)
class Layout:
    """What a rank's stream depends on, apart from the epoch."""

    blocks: Blocks
    member_counts: np.ndarray  # (n_blocks,) cells of the split in each block
    batch_size: int
    window_batches: int  # batches per shuffle-buffer window
    remainder: Literal["pad", "drop"]
    seed: int
    rank: int
    world_size: int
    shuffle: bool = True  # False: blocks in atlas order, no buffer shuffle (evaluation)

    @property
    def window_cells(self) -> int:
        return self.window_batches * self.batch_size


@dataclass(frozen=True)
class Resize:
    """The run left its epoch on `world_size` ranks, rank r before its batch `next_batches[r]`."""

    world_size: int
    next_batches: tuple[int, ...]

    def as_dict(self) -> dict:
        return {"world_size": self.world_size, "next_batches": list(self.next_batches)}

    @classmethod
    def from_dict(cls, value: dict) -> Resize:
        return cls(int(value["world_size"]), tuple(int(n) for n in value["next_batches"]))


@dataclass(frozen=True)
class Segments:
    """An ordered list of stream positions as runs [start, start + length): the rest of an epoch.
    Index i of the rest is the i-th position, counting through the runs in order."""

    starts: np.ndarray  # (n_runs,) int64
    lengths: np.ndarray  # (n_runs,) int64, all > 0

    @classmethod
    def run(cls, start: int, stop: int) -> Segments:
        """Positions start .. stop-1 (none when stop <= start)."""
        if stop <= start:
            return cls(np.empty(0, np.int64), np.empty(0, np.int64))
        return cls(np.array([start], np.int64), np.array([stop - start], np.int64))

    @classmethod
    def of_positions(cls, positions: np.ndarray) -> Segments:
        """Runs of consecutive positions, in the given order."""
        if len(positions) == 0:
            return cls.run(0, 0)
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        firsts = np.concatenate([[0], breaks])
        return cls(positions[firsts].astype(np.int64), np.diff(np.concatenate([firsts, [len(positions)]])).astype(np.int64))

    @classmethod
    def concat(cls, parts: list[Segments]) -> Segments:
        return cls(np.concatenate([p.starts for p in parts]).astype(np.int64),
                   np.concatenate([p.lengths for p in parts]).astype(np.int64))

    @cached_property  # read for every window: up to ranks x window cells runs after a resize
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.lengths.sum())

    def positions(self, index: np.ndarray) -> np.ndarray:
        offsets = self.offsets
        run = np.searchsorted(offsets, index, side="right") - 1
        return self.starts[run] + (index - offsets[run])

    def take(self, start: int, stop: int) -> Segments:
        """Indices [start, stop) of the rest, as runs of stream positions."""
        if stop <= start:
            return Segments.run(0, 0)
        offsets = self.offsets
        first, last = np.searchsorted(offsets, [start, stop - 1], side="right") - 1
        starts, lengths = self.starts[first:last + 1].copy(), self.lengths[first:last + 1].copy()
        skip = start - offsets[first]
        starts[0] += skip
        lengths[0] -= skip
        lengths[-1] -= offsets[last + 1] - stop
        return Segments(starts, lengths)


class RankSlice:
    """One rank's share of a stream of `total` cells: its slice, batch count and windows, in the
    stream's own indices (0 .. total-1). Generation 0 is the epoch's plain plan; generation g
    the plan after the g-th resize (its windows are shuffled with their own seeds)."""

    def __init__(self, layout: Layout, total: int, rank: int, world: int, generation: int):
        self.layout, self.total, self.rank, self.generation = layout, total, rank, generation
        base, extra = divmod(total, world)
        self.slice_start = rank * base + min(rank, extra)
        self.slice_cells = base + (rank < extra)
        if layout.remainder == "pad":
            self.n_batches = -(-(base + (extra > 0)) // layout.batch_size)
        else:
            self.n_batches = base // layout.batch_size
        if self.n_batches and self.slice_cells == 0 and generation == 0:
            raise VCellError(f"the split holds {total} cells, fewer than the {world} ranks reading it")
        self.used_cells = self.n_batches * layout.batch_size
        self.n_windows = -(-self.n_batches // layout.window_batches)

    def window_indices(self, window: int) -> tuple[np.ndarray, np.ndarray]:
        """Stream indices of a window's cells in stream order, and their validity."""
        cells = self.layout.window_cells
        local = np.arange(window * cells, min((window + 1) * cells, self.used_cells), dtype=np.int64)
        valid = local < self.slice_cells
        if not valid.all():  # padding: wrap around to the start of this rank's own slice
            if self.slice_cells == 0:  # (after a resize, a slice can be empty: wrap around the whole rest)
                return local % self.total, valid
            local = np.where(valid, local, (local - self.slice_cells) % self.slice_cells)
        return local + self.slice_start, valid

    def permutation(self, epoch: int, window: int, n_cells: int) -> np.ndarray:
        if not self.layout.shuffle:
            return np.arange(n_cells)
        key = [self.layout.seed, WINDOW_SHUFFLE_STREAM, epoch, self.rank, window]
        return np.random.default_rng(key + ([self.generation] if self.generation else [])).permutation(n_cells)

    def undelivered(self, epoch: int, next_batch: int) -> tuple[np.ndarray, tuple[int, int]]:
        """What this rank has yet to deliver as valid when it stands before batch `next_batch`:
        the cells of its current window not yet taken (stream indices, in stream order) and
        the index range after that window."""
        batch, per_window = self.layout.batch_size, self.layout.window_batches
        window, taken = divmod(min(next_batch, self.n_batches), per_window)
        end = self.slice_start + min(self.slice_cells, self.used_cells)
        if not taken:
            return np.empty(0, np.int64), (self.slice_start + window * self.layout.window_cells, end)
        indices, valid = self.window_indices(window)
        left = self.permutation(epoch, window, len(indices))[taken * batch:]
        after = self.slice_start + min((window + 1) * self.layout.window_cells, self.used_cells)
        return np.sort(indices[left][valid[left]]), (after, end)


class EpochPlan:
    """One rank's batches for one epoch: `plan.window(w)` -> the cells of shuffle window w.

    Batch i is rows [k*B, (k+1)*B) of window i // window_batches after its permutation,
    with k = i % window_batches. `resizes`: the world sizes and positions the run left this
    epoch at, oldest first (see the module doc); `plan.rest` is then the epoch's rest.
    """

    def __init__(self, layout: Layout, members: MemberLookup, epoch: int, resizes: tuple[Resize, ...] = ()):
        self.layout, self.members, self.epoch = layout, members, epoch
        rng = np.random.default_rng([layout.seed, BLOCK_ORDER_STREAM, epoch])
        self.order = rng.permutation(len(layout.blocks)) if layout.shuffle else np.arange(len(layout.blocks))
        self.offsets = np.concatenate([[0], np.cumsum(layout.member_counts[self.order])]).astype(np.int64)
        self.rest: Segments | None = None  # None: the whole stream
        for generation, resize in enumerate(resizes):
            self.rest = self.rest_after(resize, generation)
        total = int(self.offsets[-1]) if self.rest is None else len(self.rest)
        self.share = RankSlice(layout, total, layout.rank, layout.world_size, len(resizes))
        self.slice_start, self.slice_cells = self.share.slice_start, self.share.slice_cells
        self.n_batches, self.used_cells, self.n_windows = self.share.n_batches, self.share.used_cells, self.share.n_windows

    def stream_positions(self, indices: np.ndarray) -> np.ndarray:
        return indices if self.rest is None else self.rest.positions(indices)

    def stream_range(self, start: int, stop: int) -> Segments:
        """Indices [start, stop) of this plan's stream, as runs of stream positions."""
        if self.rest is not None:
            return self.rest.take(start, stop)
        return Segments.run(start, stop)

    def rest_after(self, resize: Resize, generation: int) -> Segments:
        """The cells of the current stream that the `resize.world_size` old ranks had not yet
        delivered as valid, old rank by old rank: the stream of the next generation."""
        total = int(self.offsets[-1]) if self.rest is None else len(self.rest)
        if len(resize.next_batches) != resize.world_size:
            raise VCellError(f"a resize from {resize.world_size} ranks lists {len(resize.next_batches)} positions")
        parts = []
        for rank, next_batch in enumerate(resize.next_batches):
            share = RankSlice(self.layout, total, rank, resize.world_size, generation)
            loose, (start, stop) = share.undelivered(self.epoch, next_batch)
            parts += [Segments.of_positions(self.stream_positions(loose)), self.stream_range(start, stop)]
        return Segments.concat(parts)

    def window_positions(self, window: int) -> tuple[np.ndarray, np.ndarray]:
        """Stream positions (global) of a window's cells in stream order, and their validity."""
        indices, valid = self.share.window_indices(window)
        return self.stream_positions(indices), valid

    def window(self, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(atlas rows in stream order, valid mask, shuffle permutation) of one window."""
        positions, valid = self.window_positions(window)
        slot = np.searchsorted(self.offsets, positions, side="right") - 1  # index into self.order
        rows = np.empty(len(positions), dtype=np.int64)
        for position_slot in np.unique(slot):
            where = slot == position_slot
            block = int(self.order[position_slot])
            rank_in_block = positions[where] - self.offsets[position_slot]
            rows[where] = self.members.rows(block)[rank_in_block]
        return rows, valid, self.share.permutation(self.epoch, window, len(rows))


class MemberLookup:
    """Which rows of each block belong to the split being read (all rows when unsplit)."""

    def __init__(self, blocks: Blocks, codes: np.ndarray | None, code: int):
        self.blocks, self.codes, self.code = blocks, codes, code

    def counts(self) -> np.ndarray:
        if self.codes is None:
            return self.blocks.stops - self.blocks.starts
        # Blocks tile the atlas in row order, so one reduceat counts every block (1 byte per cell).
        return np.add.reduceat(self.codes == self.code, self.blocks.starts, dtype=np.int64)

    def rows(self, block: int) -> np.ndarray:
        start, stop = int(self.blocks.starts[block]), int(self.blocks.stops[block])
        if self.codes is None:
            return np.arange(start, stop, dtype=np.int64)
        return start + np.flatnonzero(self.codes[start:stop] == self.code)
