"""The LightningModule's handling of padding: a batch that is all padding (a rank whose share of
the epoch ended a batch early) must not turn the loss or the gradients into NaN."""

from __future__ import annotations

import pytest
import torch

from tests.models.test_zoo import SPEC, random_batch
from vcell.config.model import ModelConfig
from vcell.config.train import TrainConfig
from vcell.train.module import VCellModule


@pytest.mark.parametrize("name", ["base", "full"])
def test_an_all_padding_batch_gives_a_zero_loss_and_zero_gradients(name):
    torch.manual_seed(0)
    module = VCellModule(ModelConfig(name=name, size="tiny"), SPEC, TrainConfig())
    batch = random_batch()
    batch["valid"] = torch.zeros(len(batch["x"]), dtype=torch.bool)
    loss = module.training_step(batch, 0)
    loss.backward()
    assert loss.item() == 0.0
    gradients = [p.grad for p in module.parameters() if p.grad is not None]
    assert gradients and all(torch.equal(g, torch.zeros_like(g)) for g in gradients)
    assert module.cells_in_step == 0


def test_padding_rows_are_left_out_of_a_partly_padded_batch():
    torch.manual_seed(0)
    module = VCellModule(ModelConfig(name="base", size="tiny"), SPEC, TrainConfig())
    batch = random_batch()
    batch["valid"] = torch.arange(len(batch["x"])) < 20
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and module.cells_in_step == 20
