"""The regulatory enhancement's learned knock-downs and network drive: how fast they learn, what an
unseen perturbation does, and that older weights and runs keep their meaning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vcell.config.model import ModelConfig
from vcell.models.enhancements.regulatory import INITIAL_KNOCK, KNOCK_STEP_SCALE, TYPICAL_STEP_SCALE, RegulatoryPropagation
from vcell.models.inputs import CellInputs, Conditions
from vcell.models.spec import reference_spec
from vcell.train.schedule import warmup_cosine

SPEC = reference_spec(60, n_perturbations=8)


def propagation(spec=SPEC, drive: str = "activity", **settings) -> RegulatoryPropagation:
    torch.manual_seed(0)
    config = ModelConfig(name="regulatory", size="tiny", regulatory={"drive": drive, **settings})
    return RegulatoryPropagation(spec, config)


def regulator_spec():
    """SPEC with perturbations 1-3 knocking down the network's regulators (reference_spec's TFs are genes 0-2)."""
    genes = SPEC.perturbation_gene.copy()
    genes[1:4] = np.unique(SPEC.grn.source)[:3]
    return dataclasses.replace(SPEC, perturbation_gene=genes)


def test_knock_downs_reach_strong_knock_downs_within_the_demo_budget():
    """From their start (-1, x0.37) every perturbation's change of its own gene reaches what the
    simulator's knock-downs are (-1.6 to -3, x0.2 to x0.05) in the demo's 300 steps, at the
    default learning rate and schedule, from one noisy cell per perturbation per batch."""
    module = propagation()
    perturbations = torch.arange(1, SPEC.n_perturbations)  # code 0 is the control
    genes = torch.as_tensor(SPEC.perturbation_gene)[perturbations]
    truth = torch.linspace(-1.6, -3.0, len(perturbations))
    optimizer = torch.optim.AdamW([module.scaled_knock], lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(300))
    rows = torch.arange(len(perturbations))
    for _ in range(300):
        scores = torch.zeros(len(perturbations), SPEC.n_genes)
        delta = module.knockdown(scores, Conditions(perturbation=perturbations))[0][rows, genes]  # (K,)
        observed = truth + 0.5 * torch.randn(len(perturbations))  # one noisy cell each
        loss = (delta - observed).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    learned = KNOCK_STEP_SCALE * module.scaled_knock.detach()[perturbations]
    assert (learned - truth).abs().max() < 0.35, (learned, truth)


def test_knock_downs_start_at_the_initial_knock_and_move_only_the_perturbed_gene():
    module = propagation()
    perturbation = torch.tensor([0, 1, 2, -1])  # control, two perturbations, no perturbation column value
    delta, drive = module.knockdown(torch.zeros(4, SPEC.n_genes), Conditions(perturbation=perturbation))
    genes = SPEC.perturbation_gene
    assert delta[0].abs().sum() == 0 and delta[3].abs().sum() == 0
    for row in (1, 2):
        assert delta[row, genes[row]] == INITIAL_KNOCK and (delta[row] != 0).sum() == 1
        assert drive[row, genes[row]] == INITIAL_KNOCK and (drive[row] != 0).sum() == 1  # the typical activity


def test_weights_saved_before_the_step_scale_load_as_the_same_knock_downs():
    module = propagation()
    state = module.state_dict()
    knock = torch.linspace(-0.5, -2.5, SPEC.n_perturbations)
    legacy = {key: value for key, value in state.items() if key != "scaled_knock"} | {"knock": knock}
    module.load_state_dict(legacy, strict=True)
    torch.testing.assert_close(KNOCK_STEP_SCALE * module.scaled_knock.detach(), knock)
    assert "knock" not in module.state_dict()
    reloaded = propagation()
    reloaded.load_state_dict(module.state_dict(), strict=True)  # today's weights round-trip under their own name
    torch.testing.assert_close(reloaded.scaled_knock, module.scaled_knock)


def knocked(module: RegulatoryPropagation, perturbation: list[int]) -> torch.Tensor:
    """(B, G) levels of decoded-at-zero cells under `perturbation` codes."""
    codes = torch.tensor(perturbation)
    return module(torch.zeros(len(codes), SPEC.n_genes), None, Conditions(perturbation=codes))


def test_a_regulator_moves_its_targets_by_its_activity_while_its_own_level_moves_by_its_knock_down():
    """A knocked-down TF acts on its targets as if switched off whatever its measured level does: the
    network is driven by the perturbation's activity, the gene's own level moves by its knock-down."""
    spec = regulator_spec()
    module = propagation(spec, saturation=None)
    module.steps = 1  # one layer, linear: a target's change is exactly weight x activity
    with torch.no_grad():
        module.edges.raw_weight.normal_(0.0, 0.05)
        module.scaled_activity[1] = -1.0  # perturbation 1: activity -25 - 2 = -27
    regulator = spec.perturbation_gene[1]
    levels = knocked(module, [0, 1])
    assert levels[0].abs().sum() == 0  # the control moves nothing
    assert levels[1, regulator] == INITIAL_KNOCK  # own measured level: the knock-down only
    activity = TYPICAL_STEP_SCALE * module.scaled_typical_activity + KNOCK_STEP_SCALE * module.scaled_activity[1]
    out_edges = spec.grn.source == regulator
    targets = spec.grn.target[out_edges]
    per_edge = module.gain * module.edges.weight[out_edges] * activity
    expected = torch.zeros(spec.n_genes).index_add_(0, torch.as_tensor(targets), per_edge)  # repeated pairs add up
    torch.testing.assert_close(levels[1, targets], expected[targets].detach())
    untouched = np.setdiff1d(np.arange(spec.n_genes), np.append(targets, regulator))
    assert levels[1, untouched].abs().sum() == 0


def test_an_unseen_perturbation_acts_with_the_typical_activity_the_seen_ones_taught():
    """Training moves the shared typical activity; a perturbation that never trained (its deviation
    untouched) drives the network with it, so its targets move by the learned scale, not the start's."""
    spec = regulator_spec()
    module = propagation(spec)
    module.steps = 1
    with torch.no_grad():
        module.edges.raw_weight.fill_(0.01)
    seen, unseen = [1, 2], 3
    target_activity = -12.0
    optimizer = torch.optim.AdamW([module.scaled_typical_activity, module.scaled_activity], lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(300))
    for _ in range(300):
        drive = module.knockdown(torch.zeros(2, spec.n_genes), Conditions(perturbation=torch.tensor(seen)))[1]
        loss = (drive.sum(1) - target_activity).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    assert module.scaled_activity[unseen] == 0  # never trained
    unseen_drive = module.knockdown(torch.zeros(1, spec.n_genes), Conditions(perturbation=torch.tensor([unseen])))[1]
    start = INITIAL_KNOCK
    assert unseen_drive.sum() < start + 0.6 * (target_activity - start), unseen_drive.sum()  # most of the way


def test_the_observational_gradient_of_a_barely_measured_perturbed_regulators_edges_is_cut_by_its_signal_to_noise():
    """Regulator 0, perturbed in training, measured at reliability 0.2: its edges get 0.25 of the
    regression's gradient. Regulator 1, as poorly measured but never perturbed, keeps all of it
    (observation is all there is to learn its edges from); the others are measured well."""
    module = propagation()
    regulators = np.unique(SPEC.grn.source)
    reliability = torch.full((SPEC.n_genes,), 0.9)
    reliability[regulators[:2]] = 0.2  # signal / noise 0.25; 0.9 -> 9, capped at 1
    module.level_reliability.copy_(reliability)
    module.intervened[regulators[0]] = module.intervened[regulators[2]] = True
    x = torch.randn(64, SPEC.n_genes)
    gradients, values = [], []
    for weighting in (False, True):
        module.reliability_weighting = weighting
        module.zero_grad()
        loss = module.regression_error(x)
        loss.backward()
        values.append(loss.detach())
        gradients.append(module.edges.raw_weight.grad.clone())
    torch.testing.assert_close(values[0], values[1])  # the same fit; only how far each edge moves changes
    from_weak = torch.as_tensor(SPEC.grn.source == regulators[0])
    torch.testing.assert_close(gradients[1][from_weak], 0.25 * gradients[0][from_weak])
    torch.testing.assert_close(gradients[1][~from_weak], gradients[0][~from_weak])


def test_reliability_is_tracked_over_basal_cells_and_weights_saved_before_it_load_as_fully_reliable():
    module = propagation(regulator_spec())
    counts = torch.poisson(torch.full((32, SPEC.n_genes), 5.0))
    perturbation = torch.full((32,), SPEC.control_code)
    perturbation[:4] = 2  # four cells knock down a regulator: they mark it, but do not count for reliability
    counts[:4, module.perturbation_gene[2]] = 500.0
    cells = CellInputs(x=torch.randn(32, SPEC.n_genes), counts=counts, library=counts.sum(1), context=None,
                       conditions=Conditions(perturbation=perturbation))
    module.track_levels(cells)
    assert (module.level_reliability < 0.97).all()  # constant rates in basal cells: counting noise, moving towards 0
    assert module.intervened.tolist() == [gene == module.perturbation_gene[2] for gene in range(SPEC.n_genes)]
    state = {key: value for key, value in module.state_dict().items() if key not in ("level_reliability", "intervened")}
    module.load_state_dict(state, strict=True)
    assert (module.level_reliability == 1).all() and not module.intervened.any()


def test_saturation_bounds_each_gene_by_its_cap_and_its_cap_learns():
    """With `saturation`, a huge drive moves each target by less than its cap (tanh), a small one
    almost linearly; the caps take gradients from the response; on by default, null turns it off."""
    spec = regulator_spec()
    assert propagation(spec).raw_cap is not None  # on by default (1.0)
    linear = ModelConfig(name="regulatory", size="tiny", regulatory={"saturation": None})
    assert RegulatoryPropagation(spec, linear).raw_cap is None
    torch.manual_seed(0)
    config = ModelConfig(name="regulatory", size="tiny", regulatory={"drive": "activity", "saturation": 0.5})
    module = RegulatoryPropagation(spec, config)
    module.steps = 1
    with torch.no_grad():
        module.edges.raw_weight.normal_(0.0, 0.05)
        module.scaled_activity[1] = -1.0  # activity -27: far past any cap
    regulator = spec.perturbation_gene[1]
    targets = np.setdiff1d(spec.grn.target[spec.grn.source == regulator], [regulator])
    levels = knocked(module, [0, 1])
    cap = torch.nn.functional.softplus(module.raw_cap)
    assert torch.allclose(cap, torch.full_like(cap, 0.5))
    assert (levels[1, targets].abs() <= 0.5 + 1e-6).all() and (levels[1, targets].abs() > 0.4).any()
    small = torch.full((1, spec.n_genes), 0.01)
    torch.testing.assert_close(module.saturate(small), small, rtol=1e-3, atol=0)  # nearly linear near 0
    levels[1, targets].sum().backward()
    assert module.raw_cap.grad[targets].abs().sum() > 0



def test_a_regulator_carries_its_true_change_undiluted_by_its_counting_noise():
    """Counting noise dilutes the observed slopes on a barely measured regulator by its reliability r
    (regression dilution), and W is fitted on measured levels: the network moves a regulator's
    targets by W / r per unit of its change, r floored at 1 - dilution_correction (x5 at most);
    0 switches the correction off."""
    spec = regulator_spec()
    regulator = int(spec.perturbation_gene[1])
    responses = {}
    for correction, reliability in [(0.8, 1.0), (0.8, 0.25), (0.8, 0.05), (0.0, 0.25)]:
        module = propagation(spec, "knock", dilution_correction=correction, saturation=None)  # linear: exact ratios
        module.steps = 1
        with torch.no_grad():
            module.edges.raw_weight.normal_(0.0, 0.05)
        module.level_reliability[regulator] = reliability
        levels = knocked(module, [1]).detach()
        responses[correction, reliability] = levels[0, module.edge_target[module.edge_source == regulator]]
    undiluted = responses[0.8, 1.0]
    assert undiluted.abs().sum() > 0
    torch.testing.assert_close(responses[0.8, 0.25], undiluted / 0.25)
    torch.testing.assert_close(responses[0.8, 0.05], undiluted / 0.2)  # floored: x5, not x20
    torch.testing.assert_close(responses[0.0, 0.25], undiluted)


@settings(max_examples=25, deadline=None)
@given(reliability=arrays(np.float32, SPEC.n_genes, elements=st.floats(0, 1, width=32)),
       correction=st.floats(0, 0.95))
def test_the_dilution_boost_lies_between_1_and_its_cap_and_falls_as_reliability_rises(reliability, correction):
    config = ModelConfig(name="regulatory", size="tiny", regulatory={"dilution_correction": correction})
    module = RegulatoryPropagation(SPEC, config)
    module.level_reliability.copy_(torch.as_tensor(reliability))
    boost = module.dilution_boost().numpy()
    assert np.isfinite(boost).all()
    assert (boost >= 1).all() and (boost <= (1 + 1e-5) / (1 - correction)).all()
    assert (np.diff(boost[np.argsort(reliability)]) <= 1e-5).all()
    assert (boost[reliability == 1] == 1).all()


def test_a_model_saved_before_the_dilution_correction_loads_and_resumes_as_it_was_trained(tmp_path):
    """Runs and exports saved without `dilution_correction` propagated undiluted slopes as they are:
    loading reads the key as 0, and resuming with the new default is a named change, not an upgrade."""
    from vcell.config import load_config
    from vcell.config.schema import VCellConfig
    from vcell.errors import VCellError
    from vcell.train.run import as_saved, config_diff, read_saved_config

    config = load_config(None, ["model.size=tiny", "model.name=regulatory", "model.enhancements=[regulatory]"])
    saved = config.model_dump(mode="json")
    del saved["model"]["regulatory"]["dilution_correction"]
    assert VCellConfig.model_validate(as_saved(saved)).model.regulatory.dilution_correction == 0.0
    assert "dilution_correction" not in saved["model"]["regulatory"]  # the saved tree itself is left alone
    assert config_diff(saved, config) == ["model.regulatory.dilution_correction: 0.0 -> 0.8"]
    assert as_saved({"name": "x"}) == {"name": "x"}  # no model section: nothing added
    # every reader of a model folder (evaluate, export, predict, init_from) goes through one function
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert read_saved_config(tmp_path).model.regulatory.dilution_correction == 0.0
    (tmp_path / "config.yaml").write_text("")
    with pytest.raises(VCellError, match="config.yaml: not a vcell config"):
        read_saved_config(tmp_path)
    (tmp_path / "config.yaml").write_text("model: {name: [unclosed\n")
    with pytest.raises(VCellError, match="config.yaml: not valid YAML"):
        read_saved_config(tmp_path)
