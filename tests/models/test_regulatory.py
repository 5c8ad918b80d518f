"""The regulatory enhancement's learned knock-downs: how fast they learn, and that older weights keep
their meaning."""

from __future__ import annotations

import torch

from vcell.config.model import ModelConfig
from vcell.models.enhancements.regulatory import INITIAL_KNOCK, KNOCK_STEP_SCALE, RegulatoryPropagation
from vcell.models.inputs import Conditions
from vcell.models.spec import reference_spec
from vcell.train.schedule import warmup_cosine

SPEC = reference_spec(60, n_perturbations=8)


def propagation() -> RegulatoryPropagation:
    torch.manual_seed(0)
    return RegulatoryPropagation(SPEC, ModelConfig(name="regulatory", size="tiny"))


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
        delta = module.knockdown(scores, Conditions(perturbation=perturbations))[rows, genes]  # (K,)
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
    delta = module.knockdown(torch.zeros(4, SPEC.n_genes), Conditions(perturbation=perturbation))
    genes = SPEC.perturbation_gene
    assert delta[0].abs().sum() == 0 and delta[3].abs().sum() == 0
    for row in (1, 2):
        assert delta[row, genes[row]] == INITIAL_KNOCK and (delta[row] != 0).sum() == 1


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
