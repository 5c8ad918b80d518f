"""`AtlasDataModule`: the loader for Lightning, inside or outside Ray Train workers.

Rank and world size come from the attached Trainer (which Ray Train's TorchTrainer has set
up), so each worker reads its own share. The split is computed once and shared by the
train/val/test loaders. Lightning stores `state_dict()` in its checkpoints; the position it
records is that of the last batch a training step received (Lightning fetches one batch
ahead, so the loader's own count would skip a batch on resume).
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from vcell.atlas.store import open_atlas
from vcell.config.schema import LoaderConfig
from vcell.data.loader import AtlasLoader, distributed_rank
from vcell.data.split import assign_splits, save_split
from vcell.errors import VCellError


def evaluation_batch_size(split_cells: int, world_size: int, batch_size: int) -> int:
    """Batch size of a validation or test loader: loader.batch_size, or smaller when the split
    holds fewer cells per rank (a small atlas still validates; no gradient depends on it).
    0 when there is not one cell per rank."""
    return min(batch_size, split_cells // world_size)


class AtlasDataModule(pl.LightningDataModule):
    def __init__(self, atlas: str | Path, config: LoaderConfig, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, lightning_state: bool = True):
        super().__init__()
        # False: Lightning's checkpoints (rank 0's only, under DDP) leave the position out; the
        # distributed trainer saves every rank's own (`train_position`) and resumes it (`resume_from`).
        self.lightning_state = lightning_state
        self.atlas_path, self.config, self.seed = Path(atlas), config, seed
        self.rank, self.world_size = rank, world_size
        self.loaders: dict[str, AtlasLoader] = {}
        self.split_codes = None
        self.consumed: tuple[int, int] | None = None
        self.pending_state: dict | None = None
        self.pending_resume: list[dict] | None = None

    def distributed_position(self) -> tuple[int, int]:
        """Given explicitly, else from the attached Trainer, else as the loader finds it."""
        if self.rank is not None:
            return self.rank, self.world_size if self.world_size is not None else distributed_rank()[1]
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return distributed_rank()

    def setup(self, stage: str | None = None) -> None:
        if self.loaders:
            return
        atlas = open_atlas(self.atlas_path)
        self.split_codes = assign_splits(atlas, self.config.split)
        rank, world = self.distributed_position()
        self.loaders["train"] = AtlasLoader(
            atlas, self.config, "train", seed=self.seed, rank=rank, world_size=world, split_codes=self.split_codes
        )
        counts = self.loaders["train"].summary()["cells"]
        for split in ("val", "test"):  # an empty split (or fewer cells than ranks) gets no loader
            batch_size = evaluation_batch_size(counts[split], world, self.config.batch_size)
            if batch_size:
                config = self.config.model_copy(update={"batch_size": batch_size})
                self.loaders[split] = AtlasLoader(
                    atlas, config, split, seed=self.seed, rank=rank, world_size=world, split_codes=self.split_codes
                )
        if self.pending_state is not None:
            self.loaders["train"].load_state_dict(self.pending_state)
            self.pending_state = None
        if self.pending_resume is not None:
            self.loaders["train"].resume(self.pending_resume)
            self.pending_resume = None

    def loader(self, split: str) -> AtlasLoader:
        if not self.loaders:
            self.setup()
        return self.loaders[split]

    def train_dataloader(self):
        return self.loader("train") if self.lightning_state else LoaderView(self.loader("train"))

    def val_dataloader(self):
        if "val" not in self.loaders:
            return []
        return LoaderView(self.loaders["val"], from_start=True)

    def test_dataloader(self):
        if "test" not in self.loaders:
            raise VCellError(
                "the test split has fewer cells than there are ranks reading it",
                hint="raise loader.split.test_fraction, or hold out a group with loader.split.holdout",
            )
        return self.loaders["test"]

    def save_split(self, directory: str | Path) -> None:
        """Record the split beside a run so evaluation reproduces it exactly."""
        save_split(directory, self.split_codes, self.loader("train").summary())

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training and "train" in self.loaders:
            self.consumed = self.loaders["train"].claim() or self.consumed
        return batch

    def train_position(self) -> dict:
        """The training loader's state after the last batch a training step received."""
        return self.loader("train").state_dict(self.consumed)

    def resume_from(self, loader_state: dict) -> None:
        """Continue the training stream at this rank's `loader_state` (applied at setup if not yet set up)."""
        if "train" in self.loaders:
            self.loaders["train"].load_state_dict(loader_state)
        else:
            self.pending_state = loader_state

    def replan_from(self, loader_states: list[dict]) -> None:
        """Continue from every rank's saved position of a run with another number of ranks (rank
        order; applied at setup if not yet set up): the rest of the epoch re-planned over this world."""
        if "train" in self.loaders:
            self.loaders["train"].resume(loader_states)
        else:
            self.pending_resume = loader_states

    def state_dict(self) -> dict:
        if "train" not in self.loaders or not self.lightning_state:
            return {}
        return {"train": self.train_position()}

    def load_state_dict(self, state: dict) -> None:
        if "train" not in state or not self.lightning_state:
            return
        if "train" in self.loaders:
            self.loaders["train"].load_state_dict(state["train"])
        else:  # Lightning restores before setup() on some paths: apply once the loader exists
            self.pending_state = state["train"]


class LoaderView:
    """The loader as Lightning sees it: sized and iterable, without `state_dict`. (Lightning saves
    a stateful loader's position in rank 0's checkpoint and restores that on every rank; the
    distributed trainer saves each rank's own.) `from_start`: every pass starts over, so each
    validation (often cut short by limit_val_batches) reads the same cells, also after a resume."""

    def __init__(self, loader: AtlasLoader, from_start: bool = False) -> None:
        self.loader, self.from_start = loader, from_start

    def __len__(self) -> int:
        return self.loader.plan(0).n_batches if self.from_start else len(self.loader)

    def __iter__(self):
        if self.from_start:
            self.loader.set_epoch(0)
        return iter(self.loader)
