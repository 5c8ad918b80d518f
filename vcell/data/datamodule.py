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
from vcell.data.loader import AtlasLoader, distributed_rank, fills_a_batch
from vcell.data.split import assign_splits, save_split
from vcell.errors import VCellError


class AtlasDataModule(pl.LightningDataModule):
    def __init__(self, atlas: str | Path, config: LoaderConfig, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None):
        super().__init__()
        self.atlas_path, self.config, self.seed = Path(atlas), config, seed
        self.rank, self.world_size = rank, world_size
        self.loaders: dict[str, AtlasLoader] = {}
        self.split_codes = None
        self.consumed: tuple[int, int] | None = None
        self.pending_state: dict | None = None

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
        for split in ("val", "test"):  # a split too small for one batch per rank gets no loader
            if fills_a_batch(counts[split], world, self.config.batch_size):
                self.loaders[split] = AtlasLoader(
                    atlas, self.config, split, seed=self.seed, rank=rank, world_size=world, split_codes=self.split_codes
                )
        if self.pending_state is not None:
            self.loaders["train"].load_state_dict(self.pending_state)
            self.pending_state = None

    def loader(self, split: str) -> AtlasLoader:
        if not self.loaders:
            self.setup()
        return self.loaders[split]

    def train_dataloader(self):
        return self.loader("train")

    def val_dataloader(self):
        return self.loaders.get("val", [])

    def test_dataloader(self):
        if "test" not in self.loaders:
            raise VCellError(
                f"the test split has fewer than loader.batch_size={self.config.batch_size} cells per rank",
                hint="raise loader.split.test_fraction or lower loader.batch_size",
            )
        return self.loaders["test"]

    def save_split(self, directory: str | Path) -> None:
        """Record the split beside a run so evaluation reproduces it exactly."""
        save_split(directory, self.split_codes, self.loader("train").summary())

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training and "train" in self.loaders:
            self.consumed = self.loaders["train"].claim() or self.consumed
        return batch

    def state_dict(self) -> dict:
        if "train" not in self.loaders:
            return {}
        return {"train": self.loaders["train"].state_dict(self.consumed)}

    def load_state_dict(self, state: dict) -> None:
        if "train" not in state:
            return
        if "train" in self.loaders:
            self.loaders["train"].load_state_dict(state["train"])
        else:  # Lightning restores before setup() on some paths: apply once the loader exists
            self.pending_state = state["train"]
