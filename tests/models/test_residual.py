"""Residual routes and change-only responses: what a perturbation carried by gene terms (regulatory)
learns from its response targets, and what it may not touch."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.models.test_zoo import SPEC, random_batch, tiny, with_one_more_loss
from vcell.models import contracts
from vcell.models.inputs import Conditions
from vcell.models.residual import NULL_SDS, ConditionResidual, split_half_reliability

CONTROL = SPEC.control_code


def residual_model(rank: int = 3):  # off (0) by default
    return tiny("regulatory", ["regulatory"], regulatory={"residual_rank": rank})


def gradients(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward(retain_graph=True)
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_the_residual_learns_only_from_what_the_network_leaves():
    """The second scoring moves the residual (and a count head's noise; none for a Gaussian head),
    nothing else; the first, unchanged in value, never moves the residual."""
    model, plain = residual_model(), residual_model(rank=0)
    output = with_one_more_loss(model, plain, random_batch(), "response_residual")
    touched = gradients(model, output.losses["response_residual"])
    assert touched and all(name.startswith("residuals.") for name in touched), sorted(touched)
    others = gradients(model, sum(loss for name, loss in output.losses.items() if name != "response_residual"))
    assert not any(name.startswith("residuals.") for name in others)


def test_unseen_and_control_cells_get_no_residual_and_seen_ones_get_theirs():
    model = residual_model()
    (route,) = model.residuals
    assert isinstance(route, ConditionResidual) and isinstance(route, contracts.Residual)
    with torch.no_grad():
        route.loading[:, 2] = 1.0  # perturbation 2 was seen; every other loading is still at its start, 0
        route.basis[1] = route.basis[0]  # and both halves of its cells agree: nothing is shrunk
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
    """Regulatory: a knocked-down target's response reaches the network, never the decoder or the
    encoder that decode the control cell it starts from (the reconstruction's job); the residual
    learns what the network leaves. Without a residual route the response trains them as before."""
    batch = random_batch()
    basal = slice(0, 9)  # random_batch's basal cells; every other cell is knocked down, unstimulated, naive
    batch["time"].zero_()
    batch["hours_since_pulse"].fill_(float("nan"))
    perturbation = batch["perturbation"]
    perturbation[9:] = torch.where(perturbation[9:] == CONTROL, 1, perturbation[9:])
    assert (perturbation[basal] == CONTROL).all()
    regulatory = tiny("regulatory", ["regulatory"], response_basal_targets=False, regulatory={"residual_rank": 4})
    output = regulatory(batch)
    touched = gradients(regulatory, output.losses["response"])
    assert not any(name.startswith(("decoder.", "encoder.", "latent.")) for name in touched), sorted(touched)
    assert any(name.startswith("gene_terms.") for name in touched)
    without = tiny("regulatory", ["regulatory"], response_basal_targets=False)  # the default: no residual
    assert any(name.startswith("decoder.") for name in gradients(without, without(batch).losses["response"]))


def test_each_half_of_the_cells_trains_only_its_own_fit():
    model = residual_model()
    (route,) = model.residuals
    with torch.no_grad():
        route.loading.normal_()
    conditions = Conditions(perturbation=torch.tensor([2, 2, 5, 5]))
    half = torch.tensor([0, 1, 0, 1])
    fitted = route(conditions, half)
    (fitted[half == 0].sum()).backward()
    assert route.loading.grad[1].abs().sum() == 0 and route.basis.grad[1].abs().sum() == 0
    assert route.loading.grad[0, 2].abs().sum() > 0 and route.loading.grad[0, 5].abs().sum() > 0


def test_split_halves_are_fixed_per_cell():
    """The same cell is in the same half on every visit: by its atlas row, or without one by its expression."""
    batch = random_batch()
    cells = tiny("base").inputs(batch)
    halves = cells.split_half()
    assert set(halves.tolist()) == {0, 1}
    rows = torch.randperm(len(batch["x"]))
    torch.testing.assert_close(cells.take(rows).split_half(), halves[rows])
    batch["cell_index"] = torch.arange(100, 100 + len(batch["x"]))
    indexed = tiny("base").inputs(batch)
    torch.testing.assert_close(indexed.split_half(), batch["cell_index"] % 2)


@settings(max_examples=30, deadline=None)
@given(signal=st.floats(0.0, 3.0), noise=st.floats(0.1, 3.0), seed=st.integers(0, 10_000))
def test_split_half_reliability_estimates_the_signals_share_of_the_average(signal, noise, seed):
    """Two halves s + e1, s + e2 over many genes: the factor is |s|^2 / (|s|^2 + |e|^2 / 2), the
    shrinkage that minimises the error of the halves' average (James-Stein's), within sampling error;
    0 only for a signal faint enough to fall below the chance cut."""
    generator = torch.Generator().manual_seed(seed)
    genes = 20_000
    truth = signal * torch.randn(1, genes, generator=generator, dtype=torch.float64)
    first = truth + noise * torch.randn(1, genes, generator=generator, dtype=torch.float64)
    second = truth + noise * torch.randn(1, genes, generator=generator, dtype=torch.float64)
    factor = float(split_half_reliability(first, second))
    ideal = signal ** 2 / (signal ** 2 + noise ** 2 / 2)
    assert 0.0 <= factor <= 1.0
    chance = NULL_SDS / genes ** 0.5
    if factor == 0.0:  # the chance cut: a signal faint enough to fall below it by sampling reads as none
        assert ideal < 2 * chance / (1 + chance) + 0.05, (factor, ideal)
    else:
        assert abs(factor - ideal) < 0.05, (factor, ideal)


def test_halves_that_share_nothing_are_shrunk_away_and_identical_halves_kept():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(2, 3, 5000, generator=generator)
    assert split_half_reliability(first, second).max() < 0.1
    torch.testing.assert_close(split_half_reliability(first, first), torch.ones(3, 1))
    torch.testing.assert_close(split_half_reliability(first, -first), torch.zeros(3, 1))


def test_the_basis_learns_once_the_loadings_have_moved():
    """Loadings start at 0 (unseen perturbations stay at none), so the first step moves only them;
    from the second step on the basis learns too."""
    model = residual_model()
    (route,) = model.residuals
    optimizer = torch.optim.SGD(route.parameters(), lr=0.01)
    for step in range(2):
        optimizer.zero_grad()
        model(random_batch()).losses["response_residual"].backward()
        basis_moves = bool((route.basis.grad != 0).any())
        assert basis_moves == (step == 1)
        optimizer.step()
    assert route.loading[:, 1:].abs().sum() > 0 and (route.loading[:, CONTROL] == 0).all()


def test_a_perturbed_cell_under_a_stimulus_or_a_memory_is_left_to_the_mechanisms():
    model = residual_model()
    (route,) = model.residuals
    nan = float("nan")
    conditions = Conditions(perturbation=torch.tensor([CONTROL, 2, 2, 2, -1]), time=torch.tensor([0.0, 0.0, 4.0, 0.0, 0.0]),
                            hours_since_pulse=torch.tensor([nan, nan, nan, 12.0, nan]))
    assert route.covers(conditions).tolist() == [False, True, False, False, False]
    assert route.covers(Conditions(perturbation=torch.tensor([2, CONTROL]))).tolist() == [True, False]


def test_building_a_residual_route_draws_nothing_from_the_global_generator():
    """So turning it on changes no mask or pairing the rest of the model would have drawn."""
    draws = []
    for rank in (0, 3):
        residual_model(rank)  # seeds the global generator, then builds
        draws.append(torch.rand(4))
    torch.testing.assert_close(draws[0], draws[1])
