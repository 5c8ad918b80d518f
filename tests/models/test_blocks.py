"""Shared layers: sparse annotation layers, count likelihoods against torch.distributions, RK4."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from vcell.models.blocks import (
    EdgeLinear, integrate, negative_binomial_log_prob, poisson_log_prob, zero_inflated_negative_binomial_log_prob,
)

DOUBLE = torch.float64


def random_edges(n_in: int, n_out: int, n_edges: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (source, target) pairs drawn without replacement from the n_in x n_out grid."""
    flat = np.random.default_rng(seed).choice(n_in * n_out, n_edges, replace=False)
    return flat // n_out, flat % n_out


# -- EdgeLinear -----------------------------------------------------------------------------------
def test_edge_linear_has_weights_only_on_annotated_pairs():
    torch.manual_seed(0)
    source, target = random_edges(30, 12, 40, seed=1)
    layer = EdgeLinear(source, target, n_in=30, n_out=12)
    assert layer.weight.numel() == 40  # one parameter per annotated pair, not 30 x 12
    dense = layer.dense_weight().detach()
    annotated = np.zeros((30, 12), dtype=bool)
    annotated[source, target] = True
    assert torch.equal(dense != 0, torch.as_tensor(annotated))
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(5, 30)
    torch.testing.assert_close(layer(x), x @ dense + layer.bias)


def test_edge_linear_target_ignores_inputs_it_is_not_annotated_to():
    torch.manual_seed(0)
    source, target = random_edges(20, 8, 30, seed=2)
    layer = EdgeLinear(source, target, n_in=20, n_out=8)
    connected = np.zeros((20, 8), dtype=bool)
    connected[source, target] = True
    gene = int(source[0])
    unrelated = np.flatnonzero(~connected[gene])
    related = np.flatnonzero(connected[gene])
    assert len(unrelated) and len(related)
    x = torch.randn(4, 20)
    changed = x.clone()
    changed[:, gene] += 5.0
    before, after = layer(x).detach(), layer(changed).detach()
    torch.testing.assert_close(after[:, unrelated], before[:, unrelated], rtol=0, atol=0)
    assert (after[:, related] - before[:, related]).abs().min() > 0


def test_edge_linear_mean_init_gives_member_means():
    members = {0: [1, 4, 7], 1: [0, 2], 2: [3, 4, 5, 6, 8]}  # pathway -> genes; gene 4 is in two
    gene = np.concatenate([np.array(genes) for genes in members.values()])
    pathway = np.concatenate([np.full(len(genes), p) for p, genes in members.items()])
    layer = EdgeLinear(gene, pathway, n_in=9, n_out=3, init="mean")
    x = torch.randn(6, 9, generator=torch.Generator().manual_seed(0))
    expected = torch.stack([x[:, genes].mean(1) for genes in members.values()], dim=1)
    torch.testing.assert_close(layer(x), expected)


def test_edge_linear_refuses_unequal_edge_lists():
    with pytest.raises(ValueError, match="3 sources but 2 targets"):
        EdgeLinear([0, 1, 2], [0, 1], n_in=3, n_out=2)


# -- count likelihoods ----------------------------------------------------------------------------
def count_parameters(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Means 0.1..200 and inverse dispersions 0.05..100 (log-uniform), with NB-drawn counts."""
    torch.manual_seed(seed)
    mean = torch.exp(torch.empty(n, dtype=DOUBLE).uniform_(np.log(0.1), np.log(200.0)))
    theta = torch.exp(torch.empty(n, dtype=DOUBLE).uniform_(np.log(0.05), np.log(100.0)))
    counts = torch.poisson(torch.distributions.Gamma(theta, theta / mean).sample())
    return counts, mean, theta


def reference_negative_binomial(counts, mean, theta) -> torch.Tensor:
    logits = torch.log(mean) - torch.log(theta)
    return torch.distributions.NegativeBinomial(total_count=theta, logits=logits).log_prob(counts)


def test_negative_binomial_matches_torch_distributions():
    counts, mean, theta = count_parameters(4000, seed=0)
    assert (counts == 0).any() and (counts > 100).any()  # zeros and large counts both covered
    reference = reference_negative_binomial(counts, mean, theta)
    exact = negative_binomial_log_prob(counts, mean, theta, eps=0.0)
    torch.testing.assert_close(exact, reference, rtol=1e-10, atol=1e-10)
    # the default eps (guarding log 0) moves values by far less than any likelihood difference that matters
    torch.testing.assert_close(negative_binomial_log_prob(counts, mean, theta), reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "mean, theta, zero_logit", [(0.5, 0.3, -1.0), (5.0, 2.0, 0.0), (50.0, 0.5, 1.5), (200.0, 10.0, -3.0)]
)
def test_zero_inflated_probabilities_sum_to_one(mean, theta, zero_logit):
    counts = torch.arange(0, 2001, dtype=DOUBLE)
    log_prob = zero_inflated_negative_binomial_log_prob(
        counts, torch.tensor(mean, dtype=DOUBLE), torch.tensor(theta, dtype=DOUBLE), torch.tensor(zero_logit, dtype=DOUBLE)
    )
    assert abs(log_prob.exp().sum().item() - 1.0) < 1e-6
    # the extra zeros add exactly pi to P(0)
    pi = torch.sigmoid(torch.tensor(zero_logit, dtype=DOUBLE))
    nb_zero = (theta / (theta + mean)) ** theta  # NB probability of a zero
    torch.testing.assert_close(log_prob[0].exp().item(), (pi + (1 - pi) * nb_zero).item(), rtol=1e-6, atol=1e-9)


def test_zero_inflated_without_inflation_is_negative_binomial():
    counts, mean, theta = count_parameters(2000, seed=1)
    never = torch.full_like(mean, -float("inf"))
    torch.testing.assert_close(
        zero_inflated_negative_binomial_log_prob(counts, mean, theta, never),
        negative_binomial_log_prob(counts, mean, theta), rtol=1e-12, atol=1e-12,
    )


def test_poisson_matches_torch_distributions():
    counts, mean, _ = count_parameters(4000, seed=2)
    reference = torch.distributions.Poisson(mean).log_prob(counts)
    torch.testing.assert_close(poisson_log_prob(counts, mean, eps=0.0), reference, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(poisson_log_prob(counts, mean), reference, rtol=1e-6, atol=1e-6)


# -- RK4 ------------------------------------------------------------------------------------------
def stable_system(seed: int, dim: int = 4) -> torch.Tensor:
    """A = -(symmetric positive definite, eigenvalues 0.5..1.5) + a small rotation: every mode decays."""
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=DOUBLE, generator=generator))
    decay = torch.rand(dim, dtype=DOUBLE, generator=generator) + 0.5
    skew = 0.25 * torch.randn(dim, dim, dtype=DOUBLE, generator=generator)
    return -rotation @ torch.diag(decay) @ rotation.T + (skew - skew.T)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_integrate_solves_a_linear_system_with_per_row_durations(seed):
    matrix = stable_system(seed)
    assert torch.linalg.eigvals(matrix).real.max() < 0
    start = torch.randn(6, 4, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed + 10))
    duration = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.5, 2.0], dtype=DOUBLE)
    exact = torch.stack([torch.linalg.matrix_exp(matrix * t) @ z for t, z in zip(duration, start)])

    def derivative(time, state):
        return state @ matrix.T

    def error(n_steps: int) -> torch.Tensor:
        solved = integrate(derivative, start, duration, n_steps)
        return ((solved - exact).norm(dim=-1) / exact.norm(dim=-1)).max()

    assert error(32) < 1e-5
    assert error(8) / error(16) > 10  # fourth order: halving the step divides the error by ~16
    assert torch.equal(integrate(derivative, start, duration, 32)[0], start[0])  # zero duration: unchanged


def test_integrate_passes_each_rows_own_time():
    # dz/dt = 3 t^2 -> z(T) = z0 + T^3; RK4 (Simpson's rule in t) is exact for cubic time dependence
    start = torch.randn(4, 3, dtype=DOUBLE, generator=torch.Generator().manual_seed(0))
    duration = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=DOUBLE)
    solved = integrate(lambda time, state: 3 * time**2 * torch.ones_like(state), start, duration, n_steps=5)
    torch.testing.assert_close(solved, start + duration.pow(3).unsqueeze(-1), rtol=1e-12, atol=1e-12)


def test_integrate_trajectory_has_every_step():
    matrix = stable_system(3)
    start = torch.randn(5, 4, dtype=DOUBLE, generator=torch.Generator().manual_seed(0))
    duration = torch.linspace(0, 1, 5, dtype=DOUBLE)
    trajectory = integrate(lambda time, state: state @ matrix.T, start, duration, n_steps=7, trajectory=True)
    assert trajectory.shape == (8, 5, 4)
    assert torch.equal(trajectory[0], start)
    torch.testing.assert_close(trajectory[-1], integrate(lambda time, state: state @ matrix.T, start, duration, 7))
    assert torch.equal(trajectory[:, 0], start[0].expand(8, 4))  # the zero-duration row never moves


@settings(max_examples=60, deadline=None)
@given(log_theta=st.floats(np.log(1e-4), np.log(2e5)), log_mean=st.floats(np.log(1e-3), np.log(1e4)), seed=st.integers(0, 100))
def test_negative_binomial_in_float32_keeps_its_digits_at_any_dispersion(log_theta, log_mean, seed):
    """A gene with no excess variance learns a theta up to 1.6e5, where a float32 lgamma(counts +
    theta) - lgamma(theta) was ~0.1 nats off per entry (the demo's held-out log-likelihood by 7 nats
    per cell). Against float64: within float32's resolution of the value's own terms."""
    theta, mean = torch.tensor([np.exp(log_theta)] * 64), torch.tensor([np.exp(log_mean)] * 64)
    counts = torch.poisson(torch.distributions.Gamma(theta, theta / mean).sample(), generator=torch.Generator().manual_seed(seed))
    reference = negative_binomial_log_prob(counts.double(), mean.double(), theta.double())
    single = negative_binomial_log_prob(counts.float(), mean.float(), theta.float()).double()
    scale = 1.0 + counts.double() * torch.log1p(counts.double() + mean.double()) + mean.double()  # the terms' size
    assert ((single - reference).abs() <= 2e-6 * scale + 1e-4).all(), (single - reference).abs().max()
