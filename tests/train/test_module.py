"""The training step puts every parameter in the graph, so DDP can run without unused-parameter
detection (its per-step graph walk and its warning)."""

from __future__ import annotations

import pytest
import torch

from tests.models.test_zoo import SPEC, random_batch
from vcell.config import load_config
from vcell.train.module import VCellModule


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_every_parameter_gets_a_gradient_in_a_batch_without_perturbed_cells():
    config = load_config(None, ["model.size=tiny"])
    batch = random_batch()
    batch["perturbation"].zero_(), batch["time"].zero_(), batch["hours_since_pulse"].fill_(float("nan"))  # all basal
    idle, losses = {}, {}
    for strategy in ("deepspeed", "ddp"):
        torch.manual_seed(0)
        module = VCellModule(config.model, SPEC, config.train.model_copy(update={"strategy": strategy}))
        torch.manual_seed(1)
        loss = module.training_step(batch, 0)
        loss.backward()
        idle[strategy] = [name for name, parameter in module.named_parameters() if parameter.grad is None]
        losses[strategy] = loss.detach()
    assert idle["deepspeed"], "the batch should leave the response path idle (else this test proves nothing)"
    assert idle["ddp"] == []  # DDP's strategy has find_unused_parameters=False: every parameter must take part
    assert torch.equal(losses["ddp"], losses["deepspeed"])  # the term adds exactly nothing
