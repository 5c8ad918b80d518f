"""Pairing cells for the response loss (`slots.pair_cells`)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vcell.models.blocks import negative_binomial_log_prob, poisson_log_prob
from vcell.models.expected import expected_log1p
from vcell.models.inputs import Prediction
from vcell.models.slots import QUASI_DISPERSION_RANGE, PoissonLikelihood, pair_cells

CONTEXT = torch.tensor([0, 0, 0, 1, 1, 1, 2, -1])
BASAL = torch.tensor([True, False, False, True, False, True, False, True])


def test_each_condition_cell_gets_a_basal_partner_of_its_context():
    partners, targets = pair_cells(CONTEXT, BASAL, torch.Generator().manual_seed(0))
    # row 6: context 2 has no basal cell; row 7: unknown context
    assert targets.tolist() == [1, 2, 4]
    assert partners[:2].tolist() == [0, 0] and partners[2].item() in (3, 5)


def test_basal_targets_are_paired_too_within_their_context():
    seen = set()
    for seed in range(20):
        partners, targets = pair_cells(CONTEXT, BASAL, torch.Generator().manual_seed(seed), basal_targets=True)
        assert targets.tolist() == [0, 1, 2, 3, 4, 5]
        assert all(BASAL[partners]) and torch.equal(CONTEXT[partners], CONTEXT[targets])
        seen.add(tuple(partners.tolist()))
    assert len(seen) > 1  # random partners, not a fixed map


def test_no_pairs_without_both_kinds_of_cell():
    assert pair_cells(CONTEXT, torch.ones(8, dtype=torch.bool), basal_targets=True) is None
    assert pair_cells(CONTEXT, torch.zeros(8, dtype=torch.bool)) is None


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n_cells=st.integers(1, 40), n_contexts=st.integers(1, 5), basal_targets=st.booleans())
def test_pairs_hold_on_any_batch(data, n_cells, n_contexts, basal_targets):
    """Any batch: each target appears once, with a basal partner of its own context; every known
    cell whose context has a basal cell is a target (basal ones only with `basal_targets`)."""
    context = torch.tensor(data.draw(st.lists(st.integers(-1, n_contexts - 1), min_size=n_cells, max_size=n_cells)))
    basal = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n_cells, max_size=n_cells)))
    pairs = pair_cells(context, basal, torch.Generator().manual_seed(0), basal_targets=basal_targets)
    has_basal = {int(c) for c in context[basal & (context >= 0)].tolist()}
    expected = [i for i in range(n_cells) if int(context[i]) in has_basal and (basal_targets or not basal[i])]
    if basal.all() or not basal.any() or pairs is None:
        assert pairs is None and (basal.all() or not basal.any() or not expected)
        return
    partners, targets = pairs
    assert targets.tolist() == expected
    assert basal[partners].all() and torch.equal(context[partners], context[targets])


# ---- the Poisson count likelihood (resource alone): its dispersion measured from the residuals

def negative_binomial_counts(mean: torch.Tensor, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    rate = torch.distributions.Gamma(theta.expand_as(mean), theta / mean).sample()
    return torch.poisson(rate, generator=generator)


def fitted_poisson(theta: torch.Tensor, steps: int, seed: int) -> PoissonLikelihood:
    """A Poisson likelihood that has seen `steps` training batches of NB(theta) counts around known means."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    likelihood = PoissonLikelihood(len(theta))
    for _ in range(steps):
        mean = torch.exp(torch.randn(256, len(theta)) * 0.8 + 0.5)  # (cells, genes) ~0.3 .. 10 counts
        likelihood.fit(negative_binomial_counts(mean, theta, generator), Prediction(expression=mean.log1p(), mean=mean))
    return likelihood


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_the_poisson_measures_each_genes_overdispersion_from_its_residuals(seed):
    theta = torch.tensor([0.1, 0.5, 2.0, 10.0, 1e9])  # the last gene: Poisson counts
    measured = fitted_poisson(theta, steps=150, seed=seed).dispersion()
    ratio = measured[1:4] / theta[1:4]
    assert ((ratio > 0.65) & (ratio < 1.4)).all(), ratio  # 40 seeds: 0.71 .. 1.13
    # so heavy a tail makes a moment estimate noisy (40 seeds: 0.02 .. 0.15), but always the most dispersed
    assert measured[0] < 0.2 and measured[0] < measured[1:].min()
    assert measured[4] > 50  # no excess variance: read as (nearly) a Poisson


def test_a_poisson_never_trained_or_saved_before_the_dispersion_reads_as_a_plain_poisson():
    mean = torch.exp(torch.randn(4, 5))
    prediction, scale = Prediction(expression=mean.log1p(), mean=mean), torch.full((4, 1), 3.0)
    fresh = PoissonLikelihood(5)
    assert fresh.dispersion() is None
    torch.testing.assert_close(fresh.expected_log1p(prediction, scale), expected_log1p(mean, scale))
    fitted = fitted_poisson(torch.full((5,), 0.5), steps=5, seed=0)
    assert not torch.allclose(fitted.expected_log1p(prediction, scale), expected_log1p(mean, scale))
    old = PoissonLikelihood(5)
    old.load_state_dict({})  # strict: a state saved without the moments
    assert old.dispersion() is None
    reloaded = PoissonLikelihood(5)
    reloaded.load_state_dict(fitted.state_dict())  # measured is a host flag, set again from the moments
    torch.testing.assert_close(reloaded.dispersion(), fitted.dispersion())


def test_a_measured_dispersion_near_its_top_is_a_poisson_to_the_read_outs():
    mean, scale = torch.exp(torch.randn(3, 6) * 2), torch.full((3, 1), 2.0)
    high = torch.full((6,), QUASI_DISPERSION_RANGE[1])
    for detected in (False, True):
        torch.testing.assert_close(expected_log1p(mean, scale, high, detected=detected),
                                   expected_log1p(mean, scale, detected=detected), atol=1e-5, rtol=0)


def test_the_poisson_scores_counts_by_its_measured_nb_and_learns_by_the_poisson():
    """The held-out log-likelihood is that of the distribution the read-outs use; the gradient, the
    Poisson's estimating equation, is untouched."""
    likelihood = fitted_poisson(torch.tensor([0.2, 3.0, 1e9]), steps=40, seed=3)
    theta = likelihood.dispersion()
    mean = torch.tensor([[0.5, 4.0, 20.0], [2.0, 0.1, 7.0]], requires_grad=True)
    counts = torch.tensor([[0.0, 9.0, 23.0], [5.0, 0.0, 4.0]])
    value = likelihood.log_prob(counts, Prediction(expression=mean.detach().log1p(), mean=mean))
    expected = negative_binomial_log_prob(counts.double(), mean.detach().double(), theta.double())
    torch.testing.assert_close(value.double(), expected, atol=1e-5, rtol=0)
    value.sum().backward()
    torch.testing.assert_close(mean.grad, counts / mean.detach() - 1)  # d/dmean of the Poisson's log-likelihood
    torch.testing.assert_close(value[:, 2], poisson_log_prob(counts, mean.detach())[:, 2], atol=1e-4, rtol=0)


# ---- the perturbation shift: a row no training cell carried moves nothing

def test_a_perturbation_no_training_cell_carried_predicts_no_change():
    from tests.models.test_zoo import SPEC, random_batch
    from vcell.config.model import ModelConfig
    from vcell.models.inputs import Conditions
    from vcell.models.slots import condition_shift
    from vcell.models.zoo import build_model

    torch.manual_seed(0)
    # without the in-silico knock-down of an unseen gene perturbation (tests/models/test_knock.py)
    model = build_model(ModelConfig(name="base", size="tiny", in_silico_knock=False), SPEC)
    batch = random_batch(0)
    batch["perturbation"] = torch.where(batch["perturbation"] == 5, 4, batch["perturbation"])  # 5: never in training
    saved = {key: value for key, value in model.state_dict().items() if not key.endswith("trained_cells")}
    model.train()
    model(batch)
    model.eval()
    shift = condition_shift(model.dynamics)
    assert shift.moves(4) and not shift.moves(5) and shift.moves(0)

    def under(code: int) -> torch.Tensor:
        return model.predict(batch, Conditions(perturbation=torch.full((len(batch["x"]),), code))).expression

    torch.testing.assert_close(under(5), under(0))  # no change, where its random start used to move it
    assert not torch.allclose(under(4), under(0))
    old = build_model(ModelConfig(name="base", size="tiny"), SPEC)
    old.load_state_dict(saved)  # saved before rows were counted: every row moves, as it did
    assert condition_shift(old.dynamics).moves(5)
