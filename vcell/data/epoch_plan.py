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
"""

from __future__ import annotations

from dataclasses import dataclass
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


class EpochPlan:
    """One rank's batches for one epoch: `plan.window(w)` -> the cells of shuffle window w.

    Batch i is rows [k*B, (k+1)*B) of window i // window_batches after its permutation,
    with k = i % window_batches.
    """

    def __init__(self, layout: Layout, members: MemberLookup, epoch: int):
        self.layout, self.members, self.epoch = layout, members, epoch
        rng = np.random.default_rng([layout.seed, BLOCK_ORDER_STREAM, epoch])
        self.order = rng.permutation(len(layout.blocks)) if layout.shuffle else np.arange(len(layout.blocks))
        self.offsets = np.concatenate([[0], np.cumsum(layout.member_counts[self.order])]).astype(np.int64)
        total, world, rank = int(self.offsets[-1]), layout.world_size, layout.rank
        base, extra = divmod(total, world)
        self.slice_start = rank * base + min(rank, extra)
        self.slice_cells = base + (rank < extra)
        if layout.remainder == "pad":
            largest = base + (extra > 0)
            self.n_batches = -(-largest // layout.batch_size)
        else:
            self.n_batches = base // layout.batch_size
        if self.n_batches and self.slice_cells == 0:
            raise VCellError(f"the split holds {total} cells, fewer than the {world} ranks reading it")
        self.used_cells = self.n_batches * layout.batch_size
        self.n_windows = -(-self.n_batches // layout.window_batches)

    def window_positions(self, window: int) -> tuple[np.ndarray, np.ndarray]:
        """Stream positions (global) of a window's cells in stream order, and their validity."""
        cells = self.layout.window_cells
        positions = np.arange(window * cells, min((window + 1) * cells, self.used_cells), dtype=np.int64)
        valid = positions < self.slice_cells
        if not valid.all():  # padding: wrap around to the start of this rank's own slice
            positions = np.where(valid, positions, (positions - self.slice_cells) % max(self.slice_cells, 1))
        return positions + self.slice_start, valid

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
        if self.layout.shuffle:
            rng = np.random.default_rng([self.layout.seed, WINDOW_SHUFFLE_STREAM, self.epoch, self.layout.rank, window])
            permutation = rng.permutation(len(rows))
        else:
            permutation = np.arange(len(rows))
        return rows, valid, permutation


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
