"""The loader under Lightning: exact mid-epoch resume through a Lightning checkpoint."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from tests.data.conftest import loader_config
from vcell.data.datamodule import AtlasDataModule


class Recorder(pl.LightningModule):
    """The smallest model: records which cells each training step received (valid ones: not top-up repeats)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(90, 1)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_index):
        self.seen.append(batch["cell_index"][batch["valid"]].tolist())
        return self.layer(batch["x"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(datamodule, max_steps, checkpoint=None, resume_from=None):
    model = Recorder()
    trainer = pl.Trainer(
        max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
    if checkpoint is not None:
        trainer.save_checkpoint(checkpoint)
    return model.seen


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
def test_lightning_resume_mid_epoch_replays_nothing_and_skips_nothing(atlas_path, tmp_path):
    config = loader_config(split={"val_fraction": 0.1})
    straight = fit(AtlasDataModule(atlas_path, config, seed=5), max_steps=25)  # 17 batches per epoch
    first = fit(AtlasDataModule(atlas_path, config, seed=5), max_steps=7, checkpoint=tmp_path / "step7.ckpt")
    rest = fit(AtlasDataModule(atlas_path, config, seed=5), max_steps=25, resume_from=tmp_path / "step7.ckpt")
    assert first + rest == straight


def test_datamodule_records_its_split(atlas_path, tmp_path):
    datamodule = AtlasDataModule(atlas_path, loader_config(split={"val_fraction": 0.1, "test_fraction": 0.1}))
    datamodule.setup()
    datamodule.save_split(tmp_path)
    assert (tmp_path / "split.json").is_file() and (tmp_path / "split_codes.npy").is_file()
    assert set(datamodule.loaders) == {"train", "val", "test"}


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
def test_a_datamodule_takes_over_the_epoch_of_two_ranks_alone(atlas_path):
    """Two ranks stopped before their batch 3; one process (replan_from before setup, as a resumed
    worker may) trains the rest of the epoch under Lightning: every train cell of it exactly once."""
    import numpy as np

    from vcell.data.loader import AtlasLoader
    from vcell.data.split import SPLITS

    config = loader_config(split={"val_fraction": 0.1})
    datamodule = AtlasDataModule(atlas_path, config, seed=5, rank=0, world_size=1, lightning_state=False)
    old = [AtlasLoader(atlas_path, config, seed=5, rank=rank, world_size=2) for rank in range(2)]
    consumed = [batch for loader in old for _, batch in zip(range(3), loader)]  # range first: no 4th fetch
    datamodule.replan_from([loader.state_dict() for loader in old])
    datamodule.setup()
    rest = len(datamodule.loader("train"))
    seen = fit(datamodule, max_steps=rest)
    cells = np.concatenate([b["cell_index"][b["valid"]].numpy() for b in consumed] + [np.array(s) for s in seen])
    train_cells = np.flatnonzero(datamodule.split_codes == SPLITS.index("train"))
    assert np.array_equal(np.sort(cells), train_cells)
