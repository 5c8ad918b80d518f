"""Residual routes and change-only responses: what a perturbation carried by gene terms (regulatory)
learns from its response targets, and what it may not touch."""

from __future__ import annotations

import torch

from tests.models.test_zoo import SPEC, random_batch, tiny
from vcell.models import contracts
from vcell.models.inputs import Conditions
from vcell.models.residual import ConditionResidual

CONTROL = SPEC.control_code


def residual_model(rank: int = 3):
    return tiny("regulatory", ["regulatory"], regulatory={"residual_rank": rank})


def gradients(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward(retain_graph=True)
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_the_residual_learns_only_from_what_the_network_leaves():
    """Its loss moves the residual (and the head's noise, none for a Gaussian head) only; every other
    loss, and so every other parameter's training, is the model's without a residual."""
    model, plain = residual_model(), tiny("regulatory", ["regulatory"])
    batch = random_batch()
    torch.manual_seed(1)  # the same masks and pairs for both
    output = model(batch)
    torch.manual_seed(1)
    reference = plain(batch)
    assert set(output.losses) == set(reference.losses) | {"response_residual"}
    for name, loss in reference.losses.items():
        torch.testing.assert_close(output.losses[name], loss)
    touched = gradients(model, output.losses["response_residual"])
    assert touched and all(name.startswith("residuals.") for name in touched), sorted(touched)
    others = gradients(model, sum(loss for name, loss in output.losses.items() if name != "response_residual"))
    assert not any(name.startswith("residuals.") for name in others)


def test_unseen_and_control_cells_get_no_residual_and_seen_ones_get_theirs():
    model = residual_model()
    (route,) = model.residuals
    assert isinstance(route, ConditionResidual) and isinstance(route, contracts.Residual)
    with torch.no_grad():
        route.loading[2] = 1.0  # perturbation 2 was seen; every other loading is still at its start, 0
    batch = random_batch()
    n = len(batch["x"])
    predictions = {code: model.predict(batch, Conditions(perturbation=torch.full((n,), code))).expression
                   for code in (CONTROL, 2, 3)}
    with torch.no_grad():
        route.loading.zero_()
    without = {code: model.predict(batch, Conditions(perturbation=torch.full((n,), code))).expression
               for code in (CONTROL, 2, 3)}
    torch.testing.assert_close(predictions[CONTROL], without[CONTROL])
    torch.testing.assert_close(predictions[3], without[3])
    assert (predictions[2] - without[2]).abs().mean() > 0.1


def test_a_network_routed_response_does_not_pull_the_start_cells_decoding():
    """Regulatory: a knocked-down target's response loss reaches the network, never the decoder or the
    encoder that decode the control cell it starts from (the reconstruction's job); base's latent
    shift does train the decoder from its targets."""
    batch = random_batch()
    basal = slice(0, 9)  # random_batch's basal cells; every other cell is knocked down, unstimulated, naive
    batch["time"].zero_()
    batch["hours_since_pulse"].fill_(float("nan"))
    perturbation = batch["perturbation"]
    perturbation[9:] = torch.where(perturbation[9:] == CONTROL, 1, perturbation[9:])
    assert (perturbation[basal] == CONTROL).all()
    regulatory = tiny("regulatory", ["regulatory"], response_basal_targets=False)
    touched = gradients(regulatory, regulatory(batch).losses["response"])
    assert not any(name.startswith(("decoder.", "encoder.", "latent.")) for name in touched), sorted(touched)
    assert any(name.startswith("gene_terms.") for name in touched)
    base = tiny("base", response_basal_targets=False)
    assert any(name.startswith("decoder.") for name in gradients(base, base(batch).losses["response"]))
