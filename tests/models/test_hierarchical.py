"""Hierarchical read-out: pathway activity = the decoded cell's projection on the member genes plus the
measured deviation's projection shrunk by its reliability; the reliability estimator on residuals
with a known shared shift; training moves the moments, evaluation never does; older runs read out
as before."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.models.test_zoo import SPEC, random_batch
from vcell.config.model import ModelConfig
from vcell.models.blocks import project_on_gene_sets
from vcell.models.enhancements.hierarchical import DEVIATION_DECAY, DEVIATION_EVERY, MemberDeviation, PathwayActivity
from vcell.models.zoo import build_model


def read_out_of(model) -> PathwayActivity:
    return next(readout for readout in model.readouts if isinstance(readout, PathwayActivity))


def memberships(sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(gene, pathway) pairs of disjoint pathways of the given sizes."""
    gene = np.arange(sum(sizes))
    return gene, np.repeat(np.arange(len(sizes)), sizes)


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(3, 40), min_size=1, max_size=4),
    shift_sd=st.floats(0.0, 2.0),
    noise_sd=st.floats(0.2, 2.0),
    seed=st.integers(0, 2**16),
)
def test_reliability_is_the_shared_shifts_share_of_the_members_mean(sizes, shift_sd, noise_sd, seed):
    """Residuals r_g = s + e_g on each pathway's members (s shared, var S; e_g own, var t^2): the
    reliability is S / (S + t^2 / n), the weight that best predicts s from the members' mean."""
    rng = np.random.default_rng(seed)
    gene, pathway = memberships(sizes)
    cells = 20000
    shift = rng.normal(0.0, shift_sd, (cells, len(sizes)))
    residual = shift[:, pathway] + rng.normal(0.0, noise_sd, (cells, len(gene))) + rng.normal(0, 1, len(gene))  # + gene means
    moments = MemberDeviation(gene, pathway, len(gene), len(sizes))
    assert moments.reliability().tolist() == [0.0] * len(sizes)  # no moments yet: the decoded projection alone
    moments.update(torch.as_tensor(residual, dtype=torch.float32))
    n = np.asarray(sizes, dtype=float)
    expected = shift_sd**2 / (shift_sd**2 + noise_sd**2 / n)
    # sampling error of the pair covariance: ~ t^2 / sqrt(cells) against var(mean) (loose: 6 sd)
    tolerance = 6 * (noise_sd**2 + shift_sd**2) / np.sqrt(cells) / (shift_sd**2 + noise_sd**2 / n) + 1e-4
    reliability = moments.reliability().numpy()
    assert ((reliability >= 0) & (reliability <= 1)).all()
    np.testing.assert_array_less(np.abs(reliability - expected), tolerance)


def test_moments_follow_training_batches_with_an_exponential_memory():
    gene, pathway = memberships([4, 6])
    moments = MemberDeviation(gene, pathway, 10, 2)
    first, second = torch.randn(64, 10), torch.randn(64, 10) + 1.0
    moments.update(first)
    torch.testing.assert_close(moments.residual_mean, first.mean(0))
    moments.update(second)
    expected = DEVIATION_DECAY * first.mean(0) + (1 - DEVIATION_DECAY) * second.mean(0)
    torch.testing.assert_close(moments.residual_mean, expected)
    assert int(moments.updates) == 2


def trained_hierarchical(steps: int = 3, **overrides):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="hierarchical", size="tiny", **overrides), SPEC)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        model.train()
        output = model(random_batch(step))
        optimiser.zero_grad()
        output.loss.backward()
        optimiser.step()
    return model


def test_activity_is_the_decoded_projection_plus_the_shrunk_measured_deviation():
    model = trained_hierarchical(steps=DEVIATION_EVERY + 1)
    readout = read_out_of(model)
    assert int(readout.deviation.updates) == 2  # the first step and every DEVIATION_EVERY-th fold their batch in
    before = {name: value.clone() for name, value in readout.deviation.state_dict().items()}
    batch = random_batch(7)
    stats = model.describe(batch).stats
    for name, value in readout.deviation.state_dict().items():  # evaluation leaves the moments alone
        torch.testing.assert_close(value, before[name])
    reliability = readout.deviation.reliability()
    assert reliability.gt(0).any()  # a random batch's members share some deviation
    measured = model.reconstruct(batch)
    residual = batch["x"] - model.head.measured(measured)
    decoded = model.reconstruct(batch, batch_effect=False).expression
    project = lambda values: project_on_gene_sets(values, readout.gene, readout.member_of, readout.projector)  # noqa: E731
    torch.testing.assert_close(stats["pathway_activity"], project(decoded) + reliability * project(residual))
    # the read-out of a cell does not depend on the cells that share its batch
    alone = model.describe({name: value[:5] for name, value in batch.items()}).stats["pathway_activity"]
    torch.testing.assert_close(alone, stats["pathway_activity"][:5])


@pytest.mark.parametrize("name", ["hierarchical", "full"])
def test_without_observed_deviation_the_read_out_is_the_decoded_projection_and_older_weights_load(name):
    """Runs saved before `hierarchical.observed_deviation` read it as false (BEFORE_THE_KEY): no moments
    in their weights, the read-out they had."""
    torch.manual_seed(0)
    old = build_model(ModelConfig(name=name, size="tiny", hierarchical={"observed_deviation": False}), SPEC)
    assert not any("deviation" in key for key in old.state_dict())
    readout = read_out_of(old)
    assert readout.deviation is None and not readout.reads_residual
    batch = random_batch(3)
    decoded = old.reconstruct(batch, batch_effect=False).expression
    expected = project_on_gene_sets(decoded, readout.gene, readout.member_of, readout.projector)
    torch.testing.assert_close(old.describe(batch).stats["pathway_activity"], expected)
    reloaded = build_model(ModelConfig(name=name, size="tiny", hierarchical={"observed_deviation": False}), SPEC)
    reloaded.load_state_dict(old.state_dict())  # strict: nothing missing, nothing left over


def test_moments_stay_float32_when_the_model_is_cast_to_bf16():
    """DeepSpeed's bf16 casts every buffer; the moments' difference would cancel in bf16."""
    model = trained_hierarchical(steps=DEVIATION_EVERY + 1)
    readout = read_out_of(model)
    reliability = readout.deviation.reliability()
    model.to(torch.bfloat16)
    assert readout.deviation.sum_square.dtype == torch.float32
    assert readout.projector.dtype == torch.bfloat16  # the rest of the model is cast as asked
    torch.testing.assert_close(readout.deviation.reliability(), reliability)
    readout.deviation.update(torch.randn(16, SPEC.n_genes, dtype=torch.bfloat16))  # a bf16 model's residual
    assert readout.deviation.sum_square.dtype == torch.float32 and int(readout.deviation.updates) == 3
    assert torch.isfinite(readout.deviation.reliability()).all()


def test_training_asks_for_the_residual_only_on_the_steps_that_update_the_moments():
    model = trained_hierarchical(steps=0)
    readout = read_out_of(model)
    model.train()
    asked = []
    for step in range(2 * DEVIATION_EVERY):
        asked.append(readout.reads_residual)
        model(random_batch(step))
    assert [index for index, wanted in enumerate(asked) if wanted] == [0, DEVIATION_EVERY]
    assert int(readout.deviation.updates) == 2
    model.eval()
    assert readout.reads_residual  # evaluation always reads it


class TwoArgumentReadout(torch.nn.Module):
    """A read-out written against the (prediction, cells) protocol, as an enhancement outside vcell may be."""

    STATS = {"mean_expression": ("B",)}

    def forward(self, prediction, cells) -> dict:
        return {"mean_expression": prediction.expression.mean(-1)}


def test_read_outs_that_do_not_ask_for_the_residual_are_called_as_before():
    model = trained_hierarchical(steps=1)
    model.readouts.append(TwoArgumentReadout())
    batch = random_batch(4)
    stats = model.describe(batch).stats
    torch.testing.assert_close(stats["mean_expression"], model.reconstruct(batch, batch_effect=False).expression.mean(-1))
    assert stats["pathway_activity"].shape == (len(batch["x"]), len(SPEC.pathway_names))
    model.train()
    model(random_batch(5))  # a training step that does not update the moments calls both as well


def test_a_model_restored_from_its_weights_updates_the_moments_on_the_same_steps():
    """Resume parity: the step count travels with the weights, so stopping after 5 steps and going on
    from the saved state gives the moments of an uninterrupted run, bit for bit."""
    def train(model, steps: range) -> None:
        model.train()
        for step in steps:
            torch.manual_seed(step)  # the masks of step `step`, as a resumed run restores its random state
            model(random_batch(step))  # no optimiser: the moments are what is compared

    torch.manual_seed(0)
    uninterrupted = build_model(ModelConfig(name="hierarchical", size="tiny"), SPEC)
    saved = {name: value.clone() for name, value in uninterrupted.state_dict().items()}
    train(uninterrupted, range(2 * DEVIATION_EVERY + 3))
    stopped = build_model(ModelConfig(name="hierarchical", size="tiny"), SPEC)
    stopped.load_state_dict(saved)
    train(stopped, range(5))
    resumed = build_model(ModelConfig(name="hierarchical", size="tiny"), SPEC)
    resumed.load_state_dict(stopped.state_dict())
    train(resumed, range(5, 2 * DEVIATION_EVERY + 3))
    for name, value in read_out_of(uninterrupted).deviation.state_dict().items():
        assert torch.equal(read_out_of(resumed).deviation.state_dict()[name], value), name


@pytest.mark.parametrize("name", ["hierarchical", "full"])
def test_training_moments_come_from_whole_cells_as_evaluation_decodes_them(name):
    """The reliability weighs the residual of a whole, evaluated cell, so it is estimated on those: a
    training step's masked encoding (and `full`'s sampled latent) would leave more shared deviation. The
    extra decoding changes nothing else: the loss, the random stream and the training mode are as before."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, size="tiny", mask_fraction=0.5), SPEC)
    twin = copy.deepcopy(model)
    batch = random_batch(11)
    model.eval()
    whole = batch["x"] - model.head.measured(model.reconstruct(batch))
    model.train()
    folded = []
    read_out_of(model).deviation.update = folded.append  # the residual a due step folds in
    torch.manual_seed(5)
    loss = model(batch).loss
    after = torch.rand(1)
    assert all(module.training for module in model.modules())
    torch.testing.assert_close(folded[0], whole)
    # the twin hands its read-out the masked step's own residual, as before: the same masks, draws and loss
    twin.whole_residual = lambda cells, prediction: cells.x - twin.head.measured(prediction)
    twin.train()
    torch.manual_seed(5)
    torch.testing.assert_close(twin(batch).loss, loss, rtol=0, atol=0)
    assert torch.equal(torch.rand(1), after)
    assert not torch.allclose(read_out_of(twin).deviation.sum_square, folded[0].new_zeros(()))  # it did fold one in
