"""model.batch_covariate: each cell is decoded with its batch's per-gene offset, never encoded with
it; unknown batches decode without one; the batch column is checked against the atlas."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.models.test_zoo import SPEC, random_batch
from vcell.config.model import ModelConfig
from vcell.models.covariates import BatchOffset
from vcell.models.spec import spec_from_dict, spec_to_dict
from vcell.models.zoo import build_model

BATCHES = ["donor_a", "donor_b", "donor_c"]


def batch_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = dataclasses.replace(SPEC, batch_names=list(BATCHES))
    return build_model(ModelConfig(name=name, size="tiny", batch_covariate=True), spec)


def with_batches(seed: int) -> dict[str, torch.Tensor]:
    batch = random_batch(seed)
    batch["batch"] = torch.arange(len(batch["x"])) % len(BATCHES)
    return batch


def test_codes_outside_the_batches_add_nothing():
    offset = BatchOffset(2, 3)
    with torch.no_grad():
        offset.offset.copy_(torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]))
    scores = torch.zeros(4, 3)
    moved = offset(scores, torch.tensor([0, 1, -1, 2]))
    assert moved.tolist() == [[1, 2, 3], [10, 20, 30], [0, 0, 0], [0, 0, 0]]
    assert offset(scores, None) is scores


@pytest.mark.parametrize("name", ["base", "full"])
def test_the_batch_moves_the_decoded_cell_but_not_its_latent_state(name):
    model = batch_model(name)
    with torch.no_grad():
        model.batch_offset.offset.normal_(0.0, 0.5)
    batch = with_batches(0)
    other = {**batch, "batch": (batch["batch"] + 1) % len(BATCHES)}
    first, second = model.describe(batch), model.describe(other)
    torch.testing.assert_close(first.latent, second.latent)  # the encoder never reads the batch
    assert not torch.allclose(first.expression, second.expression)
    unknown = {**batch, "batch": torch.full_like(batch["batch"], -1)}
    with torch.no_grad():
        model.batch_offset.offset.zero_()
    torch.testing.assert_close(model.describe(unknown).expression, model.describe(batch).expression)


def test_training_learns_a_batch_effect_into_the_offsets():
    model = batch_model("base")
    batch = with_batches(1)
    shifted = batch["batch"] == 1
    batch["x"][shifted] += 1.0  # batch 1 reads every gene one unit higher
    optimiser = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(60):
        optimiser.zero_grad()
        model(batch).loss.backward()
        optimiser.step()
    offsets = model.batch_offset.offset.detach()
    assert float((offsets[1] - offsets[[0, 2]].mean(0)).mean()) > 0.5


def test_the_spec_keeps_its_batches_through_an_export():
    spec = dataclasses.replace(SPEC, batch_names=list(BATCHES))
    assert spec_from_dict(spec_to_dict(spec)).batch_names == BATCHES
    older = spec_to_dict(SPEC)
    del older["batch_names"]  # an export written before batch covariates existed
    assert spec_from_dict(older).batch_names == []
