"""`AtlasLoader`: the streaming, rank-sharded, exactly-once, resumable loader.

    loader = AtlasLoader("data/demo.zarr", config.loader, split="train")   # rank from the environment
    for batch in loader:            # dicts of tensors, see below
        ...
    state = loader.state_dict()     # at any batch; load_state_dict(state) resumes exactly there
    loader.resume(states)           # every rank's state, in rank order: also on another number of ranks

A batch holds: `x` (batch, genes) float32, normalised (or `x` as a sparse CSR tensor with
`loader.sparse`); `library_size` (batch,) raw counts per cell over all genes; `cell_index`
(batch,) atlas row; `valid` (batch,) bool, false for the padding that tops up the epoch's
last batch; `counts` (batch, genes) with `loader.keep_counts`; and one tensor per requested
label column (categories as int64 codes of the atlas's global categories, -1 = missing).

The plan (`vcell.data.epoch_plan`) says which rows form each batch; this module reads each
shuffle-buffer window once, and assembles batches in background threads (`vcell.data.prefetch`;
numpy and the decoders release the GIL), or in DataLoader worker processes with `loader.processes`.
The stream is the same whatever the number of threads or workers.
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from vcell.atlas.store import Atlas, open_atlas
from vcell.config.schema import LoaderConfig
from vcell.data.epoch_plan import Blocks, EpochPlan, Layout, MemberLookup, Resize
from vcell.data.prefetch import prefetched
from vcell.data.reader import AtlasReader, RowBlock, read_window
from vcell.data.resolve import resolve_normalization, select_genes
from vcell.data.split import SPLITS, assign_splits, split_summary
from vcell.data.transform import BatchAssembler
from vcell.errors import VCellError

# torch flags sparse CSR as beta on every construction; our tensors are valid by construction.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
RESERVED_KEYS = {"x", "x_indptr", "x_indices", "x_values", "counts", "library_size", "cell_index", "valid"}
STATE_VERSION = 2  # 2 added `resizes`; a version-1 state reads as one without resizes


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else RANK/WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass
class Window:
    """One shuffle buffer, read and shuffled: batch k is rows [k*B, (k+1)*B) of `data`."""

    data: RowBlock  # float32 CSR, rows in shuffled order
    library: np.ndarray  # (cells,) library size of each row
    rows: np.ndarray  # (cells,) atlas row of each row of `data`
    valid: np.ndarray  # (cells,) False for padding


def fills_a_batch(split_cells: int, world_size: int, batch_size: int) -> bool:
    """Whether every rank gets at least one whole batch of a split (else the loader refuses it)."""
    return split_cells // world_size >= batch_size


def resolve_threads(setting: int | str) -> int:
    """`loader.threads`, with 'auto' = 1 if this process has >= 2 cores to itself, else 0."""
    if setting != "auto":
        return int(setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return 1 if cores // processes >= 2 else 0


def pooled_arrays(config: LoaderConfig, threads: int) -> int:
    """Arrays the assembler recycles: the dense ones of the batches in flight, the one yielded,
    one the consumer still holds and one being assembled (`x` and, with `keep_counts`, `counts`),
    and three per shuffled window (indices, stored values, float32 values) for up to four
    windows: the one batches are cut from, the one before (its last batch may still be held),
    the next one and the one being read."""
    in_flight = max(config.prefetch_batches, threads)
    per_batch = int(not config.sparse) + int(config.keep_counts)
    return (in_flight + 3) * per_batch + 3 * 4


def to_tensors(batch: dict[str, np.ndarray], n_genes: int) -> dict[str, torch.Tensor]:
    tensors = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in batch.items()}
    if "x_indptr" in tensors:  # sparse output: one CSR tensor
        indptr, indices, values = tensors.pop("x_indptr"), tensors.pop("x_indices"), tensors.pop("x_values")
        tensors["x"] = torch.sparse_csr_tensor(
            indptr, indices, values, size=(len(indptr) - 1, n_genes), check_invariants=False
        )
    return tensors


class AtlasLoader:
    """An iterable of batches over one split of an atlas, for one rank (see module doc)."""

    def __init__(
        self, atlas: str | Path | Atlas, config: LoaderConfig, split: str = "train", *, seed: int = 0,
        rank: int | None = None, world_size: int | None = None, shuffle: bool | None = None,
        split_codes: np.ndarray | None = None,
    ):
        self.atlas = atlas if isinstance(atlas, Atlas) else open_atlas(atlas)
        self.config, self.split, self.seed = config, split, seed
        if split not in SPLITS:
            raise VCellError(f"split '{split}' is not one of {', '.join(SPLITS)}")
        clashes = RESERVED_KEYS & set(config.labels)
        if clashes:
            raise VCellError(f"loader.labels: {sorted(clashes)} are names the loader uses itself", hint="rename the obs column")
        default_rank, default_world = distributed_rank()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise VCellError(f"rank {self.rank} is outside a world of {self.world_size} ranks")
        self.shuffle = split == "train" if shuffle is None else shuffle
        self.reader = AtlasReader(self.atlas, list(config.labels))
        self.threads = resolve_threads(config.threads)
        self.genes = select_genes(self.atlas, config.genes)
        self.assembler = BatchAssembler(
            self.atlas.n_genes, self.genes, resolve_normalization(self.atlas, config.normalize, self.genes),
            dense=not config.sparse, keep_counts=config.keep_counts,
            pooled_arrays=pooled_arrays(config, self.threads),
        )
        self.split_codes = assign_splits(self.atlas, config.split) if split_codes is None else split_codes
        self.blocks = Blocks.from_shards(
            [s["start"] for s in self.atlas.shards], [s["n_cells"] for s in self.atlas.shards], config.block_cells
        )
        self.members = MemberLookup(self.blocks, self.split_codes, SPLITS.index(split))
        window_batches = max(1, config.buffer_cells // config.batch_size)
        self.layout = Layout(
            self.blocks, self.members.counts(), config.batch_size, window_batches, config.remainder,
            seed, self.rank, self.world_size, self.shuffle,
        )
        self.check_size()
        self.epoch, self.next_batch = 0, 0
        # (epoch, resizes): how that epoch's plan was re-planned by `resume`. Kept past the epoch's
        # end: a trainer that fetched ahead still checkpoints a position in it.
        self.resized: tuple[int, tuple[Resize, ...]] = (-1, ())
        # (epoch, batch) of each batch yielded and not yet claimed by `claim()`: lets a trainer
        # that fetches ahead (Lightning does) checkpoint the position of the batch it consumed.
        self.yielded: deque[tuple[int, int]] = deque(maxlen=1024)  # bounded when nobody claims

    @property
    def n_genes(self) -> int:
        return self.assembler.n_out

    @property
    def split_cells(self) -> int:
        return int(self.layout.member_counts.sum())

    def check_size(self) -> None:
        per_rank = self.split_cells // self.world_size
        if not fills_a_batch(self.split_cells, self.world_size, self.config.batch_size):
            raise VCellError(
                f"loader.batch_size={self.config.batch_size} is larger than the {self.split_cells:,} cells "
                f"of the '{self.split}' split shared by {self.world_size} rank(s) ({per_rank:,} each)",
                hint="lower loader.batch_size, use fewer ranks, or a larger split",
            )

    def summary(self) -> dict:
        return split_summary(self.split_codes, self.atlas.n_cells, self.config.split)

    def plan(self, epoch: int | None = None) -> EpochPlan:
        epoch = self.epoch if epoch is None else epoch
        return EpochPlan(self.layout, self.members, epoch, self.resizes(epoch))

    def resizes(self, epoch: int) -> tuple[Resize, ...]:
        return self.resized[1] if self.resized[0] == epoch else ()

    def __len__(self) -> int:
        """Batches in the current epoch (the same on every rank)."""
        return self.plan().n_batches

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its first batch (each epoch has its own order)."""
        self.epoch, self.next_batch = int(epoch), 0

    # -- state ---------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        """What must match for a saved position to mean the same cells."""
        return {
            "atlas_cells": self.atlas.n_cells, "split": self.split, "split_cells": self.split_cells,
            "batch_size": self.config.batch_size, "block_cells": self.config.block_cells,
            "window_batches": self.layout.window_batches, "remainder": self.config.remainder,
            "seed": self.seed, "shuffle": self.shuffle,
        }

    def state_dict(self, position: tuple[int, int] | None = None) -> dict:
        """The position after the last batch yielded, or after batch `position` = (epoch, index)."""
        epoch, next_batch = (self.epoch, self.next_batch) if position is None else (position[0], position[1] + 1)
        return {
            "version": STATE_VERSION, "epoch": epoch, "next_batch": next_batch,
            "rank": self.rank, "world_size": self.world_size, "fingerprint": self.fingerprint(),
            "resizes": [resize.as_dict() for resize in self.resizes(epoch)],
        }

    def claim(self) -> tuple[int, int] | None:
        """(epoch, index) of the oldest yielded batch not yet claimed, in yield order."""
        return self.yielded.popleft() if self.yielded else None

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` was taken; refuse anything that would repeat or skip cells."""
        self.check_state(state)
        epoch, next_batch = int(state["epoch"]), int(state["next_batch"])
        if state["world_size"] != self.world_size and (0 < next_batch or state.get("resizes")):
            raise VCellError(
                f"the run stopped in the middle of epoch {epoch} with {state['world_size']} rank(s); "
                f"resuming one rank's position with {self.world_size} would repeat or skip cells of that epoch",
                hint="pass every rank's state to `resume` (it re-plans the rest of the epoch), "
                "or resume from a checkpoint taken at an epoch boundary",
            )
        if state["world_size"] == self.world_size and state["rank"] != self.rank:
            raise VCellError(f"loader state of rank {state['rank']} loaded on rank {self.rank}")
        self.epoch, self.next_batch = epoch, next_batch
        self.resized = (epoch, tuple(Resize.from_dict(r) for r in state.get("resizes", ())))
        self.yielded.clear()

    def resume(self, states: list[dict]) -> None:
        """Continue from every rank's state of the interrupted run (rank order). The same world
        size: this rank's own position. Another one mid-epoch: the cells the old ranks had not
        yet delivered are re-divided over this world (`epoch_plan`, "resize"), exactly once."""
        if not states:
            raise VCellError("no saved loader state to resume from")
        if states[0].get("world_size") == self.world_size:
            return self.load_state_dict(states[self.rank])
        for rank, state in enumerate(states):
            self.check_state(state)
            if (state["rank"], state["world_size"]) != (rank, len(states)):
                raise VCellError(f"loader state {rank} of {len(states)} was written by rank {state['rank']} of "
                                 f"{state['world_size']}", hint="pass every rank's state of one checkpoint, in rank order")
        epochs = {int(s["epoch"]) for s in states}
        chains = {repr(s.get("resizes", [])) for s in states}
        if len(epochs) != 1 or len(chains) != 1:
            raise VCellError(f"the saved loader states disagree on the epoch ({sorted(epochs)}) or its earlier resizes",
                             hint="resume from a checkpoint all ranks wrote together")
        positions = tuple(int(s["next_batch"]) for s in states)
        self.set_epoch(epochs.pop())
        earlier = tuple(Resize.from_dict(r) for r in states[0].get("resizes", ()))
        self.resized = (self.epoch, (*earlier, Resize(len(states), positions)) if earlier or any(positions) else ())
        if self.plan().n_batches == 0:  # nothing of the epoch was left: the next one starts plainly
            self.set_epoch(self.epoch + 1)
        self.yielded.clear()

    def check_state(self, state: dict) -> None:
        """A saved state's version and fingerprint fit this loader."""
        if state.get("version") not in (1, STATE_VERSION):
            raise VCellError(f"loader state version {state.get('version')} is not {STATE_VERSION}")
        differences = {
            key: (value, self.fingerprint().get(key)) for key, value in state["fingerprint"].items()
            if self.fingerprint().get(key) != value
        }
        if differences:
            shown = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differences.items())
            raise VCellError(
                f"the saved loader position does not fit this loader ({shown})",
                hint="resume with the same data, split and loader settings as the interrupted run",
            )

    # -- iteration -----------------------------------------------------------------------
    def __iter__(self):
        plan = self.plan()
        if self.next_batch >= plan.n_batches:  # the previous epoch finished: move on
            self.set_epoch(self.epoch + 1)
            plan = self.plan()
        source = self.worker_batches(plan) if self.config.processes else self.thread_batches(plan, self.next_batch)
        self.yielded.clear()  # batches fetched ahead by an abandoned pass were never used
        for batch in source:
            self.yielded.append((self.epoch, self.next_batch))
            self.next_batch += 1
            yield batch
        self.set_epoch(self.epoch + 1)

    def make_batch(self, index: int, window: Window) -> dict[str, torch.Tensor]:
        size = self.layout.batch_size
        start = (index % self.layout.window_batches) * size
        batch = self.assembler(window.data, window.library, start, start + size)
        batch["cell_index"] = window.rows[start: start + size].copy()
        batch["valid"] = window.valid[start: start + size].copy()
        return to_tensors(batch, self.n_genes)

    def load_window(self, plan: EpochPlan, window: int) -> Window:
        rows, valid, permutation = plan.window(window)
        data, local = read_window(self.reader, self.blocks, rows)
        shuffled, library = self.assembler.shuffle(data, local[permutation])
        return Window(shuffled, library, rows[permutation], valid[permutation])

    def thread_batches(self, plan: EpochPlan, start: int, step: int = 1):
        """Batches start, start+step, ... of `plan`, assembled ahead in background threads."""
        indices = range(start, plan.n_batches, step)
        if self.threads == 0:
            windows: dict[int, Window] = {}
            for index in indices:
                window = index // plan.layout.window_batches
                if window not in windows:
                    windows = {window: self.load_window(plan, window)}
                yield self.make_batch(index, windows[window])
            return
        yield from prefetched(
            indices, per_window=plan.layout.window_batches, n_windows=plan.n_windows,
            load_window=partial(self.load_window, plan), make_batch=self.make_batch,
            threads=self.threads, ahead=self.config.prefetch_batches,
        )

    def worker_batches(self, plan: EpochPlan):
        """DataLoader worker processes; worker w assembles batches w, w+n, ... (round-robin order)."""
        dataset = _WorkerStream(self, plan.epoch, self.next_batch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=self.config.processes, prefetch_factor=self.config.prefetch_batches,
        )
        yield from loader


class _WorkerStream(torch.utils.data.IterableDataset):
    """One epoch from a start batch, split across DataLoader workers by batch index."""

    def __init__(self, loader: AtlasLoader, epoch: int, start: int):
        self.loader, self.epoch, self.start = loader, epoch, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        plan = self.loader.plan(self.epoch)
        return self.loader.thread_batches(plan, self.start + worker, workers)
