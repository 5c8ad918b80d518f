"""model.batch_covariate: each cell is decoded with its batch's per-gene offset and encoded with it taken
off; unknown batches go without one; older weights keep their offsets; the spec keeps its batches."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.models.test_zoo import SPEC, random_batch
from vcell.config.model import ModelConfig
from vcell.models.covariates import OFFSET_STEP_SCALE, BatchOffset
from vcell.models.spec import spec_from_dict, spec_to_dict
from vcell.models.zoo import build_model

BATCHES = ["donor_a", "donor_b", "donor_c"]


def batch_model(name: str, *, offsets: bool = False) -> torch.nn.Module:
    """A tiny catalogue model reading the batch; `offsets`: random batch offsets, as if trained."""
    torch.manual_seed(0)
    spec = dataclasses.replace(SPEC, batch_names=list(BATCHES))
    model = build_model(ModelConfig(name=name, size="tiny", batch_covariate=True), spec)
    if offsets:
        with torch.no_grad():
            model.batch_offset.scaled_offset.normal_(0.0, 0.05)
    return model


def with_batches(seed: int) -> dict[str, torch.Tensor]:
    batch = random_batch(seed)
    batch["batch"] = torch.arange(len(batch["x"])) % len(BATCHES)
    return batch


def test_codes_outside_the_batches_add_nothing():
    offset = BatchOffset(2, 3)
    with torch.no_grad():
        offset.scaled_offset.copy_(torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]) / OFFSET_STEP_SCALE)
    scores = torch.zeros(4, 3)
    moved = offset(scores, torch.tensor([0, 1, -1, 2]))
    assert moved.tolist() == [[1, 2, 3], [10, 20, 30], [0, 0, 0], [0, 0, 0]]
    assert offset(scores, None) is scores


@pytest.mark.parametrize("name", ["base", "full"])
def test_the_batch_moves_the_decoded_cell_and_the_encoder_reads_it_with_its_offset_taken_off(name):
    model = batch_model(name, offsets=True)
    batch = with_batches(0)
    batch["x"][:, :5] = 0.0  # unmeasured genes stay unmeasured: a zero is never shifted
    offsets = OFFSET_STEP_SCALE * model.batch_offset.scaled_offset.detach()[batch["batch"]]  # (B, G)
    corrected = batch["x"] - offsets * (batch["x"] != 0)
    unknown = {**batch, "batch": torch.full_like(batch["batch"], -1)}
    seen, by_hand = model.describe(batch), model.describe({**unknown, "x": corrected})
    torch.testing.assert_close(seen.latent, by_hand.latent)  # what the encoder reads: the corrected cell
    encoder_input = model.batch_offset(batch["x"], batch["batch"], encoder_input=True)
    torch.testing.assert_close(encoder_input[:, :5], batch["x"][:, :5])
    assert not torch.allclose(seen.expression, by_hand.expression)  # decoded in its batch vs without one
    other = {**batch, "batch": (batch["batch"] + 1) % len(BATCHES)}
    assert not torch.allclose(model.describe(other).expression, seen.expression)
    with torch.no_grad():
        model.batch_offset.scaled_offset.zero_()
    torch.testing.assert_close(model.describe(unknown).expression, model.describe(batch).expression)
    torch.testing.assert_close(model.describe(unknown).latent, model.describe(batch).latent)


def test_under_a_z_score_the_encoder_takes_the_offset_off_the_genes_a_cell_shows_only():
    """A z-scored zero count is not 0 (`ModelSpec.zero_level`): it is no measurement either, so the
    batch's offset stays on it, as on a zero without a z-score."""
    model = batch_model("base", offsets=True)
    level = -torch.linspace(0.5, 1.5, model.spec.n_genes)
    model.zero_level.copy_(level)
    batch = with_batches(0)
    zero = batch["x"] == 0
    batch["x"] = torch.where(zero, level.expand_as(batch["x"]), batch["x"])  # zero counts as the z-score gives them
    offsets = OFFSET_STEP_SCALE * model.batch_offset.scaled_offset.detach()[batch["batch"]]
    corrected = batch["x"] - offsets * ~zero
    unknown = {**batch, "batch": torch.full_like(batch["batch"], -1)}
    torch.testing.assert_close(model.describe(batch).latent, model.describe({**unknown, "x": corrected}).latent)


@pytest.mark.parametrize("name", ["hierarchical", "full"])
def test_read_outs_describe_the_cell_not_the_batch_it_was_measured_in(name):
    model = batch_model(name, offsets=True)
    batch = with_batches(2)
    seen = model.describe(batch)
    encoded = {**batch, "x": model.batch_offset(batch["x"], batch["batch"], encoder_input=True)}
    unknown = model.describe({**encoded, "batch": torch.full_like(batch["batch"], -1)})  # the same state, no offset
    torch.testing.assert_close(seen.latent, unknown.latent)
    assert not torch.allclose(seen.expression, unknown.expression)  # the reconstruction is measured in its batch
    torch.testing.assert_close(seen.stats["pathway_activity"], unknown.stats["pathway_activity"])
    torch.testing.assert_close(seen.stats["compartment_activity"], unknown.stats["compartment_activity"])
    cell = model.reconstruct(batch, batch_effect=False).expression  # what the read-out projects
    torch.testing.assert_close(cell, unknown.expression)
    torch.testing.assert_close(model.denoise(batch), unknown.expression)  # `vcell embed`'s denoised layer
    assert not torch.allclose(model.reconstruct(batch).expression, cell)


@pytest.mark.parametrize("name", ["base", "stochastic", "full"])
@pytest.mark.parametrize("reads_batch", [True, False])
def test_describe_gives_the_denoised_and_imputed_cells_of_its_one_encoding(name, reads_batch):
    model = batch_model(name, offsets=True) if reads_batch else build_model(ModelConfig(name=name, size="tiny"), SPEC)
    batch = with_batches(3) if reads_batch else random_batch(3)
    output = model.describe(batch, denoised=True, imputed=True)
    torch.testing.assert_close(output.views["denoised"], model.denoise(batch))
    torch.testing.assert_close(output.views["imputed"], model.impute(batch))
    assert model.describe(batch).views == {} and set(model.describe(batch, imputed=True).views) == {"imputed"}


def test_offsets_saved_before_the_step_scale_load_as_the_same_offsets():
    offset = BatchOffset(2, 3)
    legacy = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.5, -0.4]])
    offset.load_state_dict({"offset": legacy}, strict=True)
    torch.testing.assert_close(offset.rows(torch.tensor([0, 1])).detach(), legacy)
    assert set(offset.state_dict()) == {"scaled_offset"}


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
    offsets = OFFSET_STEP_SCALE * model.batch_offset.scaled_offset.detach()
    assert float((offsets[1] - offsets[[0, 2]].mean(0)).mean()) > 0.5


def test_the_spec_keeps_its_batches_through_an_export():
    spec = dataclasses.replace(SPEC, batch_names=list(BATCHES))
    assert spec_from_dict(spec_to_dict(spec)).batch_names == BATCHES
    older = spec_to_dict(SPEC)
    del older["batch_names"]  # an export written before batch covariates existed
    assert spec_from_dict(older).batch_names == []
