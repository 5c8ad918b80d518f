"""The stochastic enhancement's dispersion: how fast it learns, what the expected counts learn at, and that
older weights keep their meaning."""

from __future__ import annotations

import torch

from vcell.models.blocks import negative_binomial_log_prob
from vcell.models.enhancements.stochastic import (
    DISPERSION_STEP_SCALE, LEGACY_DISPERSION_STEP_SCALE, MEAN_FIT_DISPERSION, NegativeBinomialLikelihood,
)
from vcell.models.inputs import Prediction
from vcell.train.schedule import warmup_cosine


def test_dispersion_reaches_bursty_counts_within_the_demo_budget():
    """From its near-Poisson start (theta = 100), every gene's theta reaches strongly overdispersed
    counts (theta = 0.2, what the demo atlas's bursty genes need) in the demo's 300 steps at the
    default learning rate and schedule, lowly expressed genes (weak gradients) included."""
    torch.manual_seed(0)
    likelihood = NegativeBinomialLikelihood(n_genes=40, latent=4, zero_inflated=False)
    true_theta = 0.2
    mean = torch.logspace(-0.5, 1.5, 40).expand(512, 40)  # 0.3 to 30 counts per cell
    optimizer = torch.optim.AdamW(likelihood.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(300))
    for _ in range(300):
        counts = torch.poisson(torch.distributions.Gamma(true_theta, true_theta / mean).sample())
        loss = -likelihood.log_prob(counts, Prediction(expression=torch.log1p(mean), mean=mean)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    theta = likelihood().detach()
    assert ((theta > true_theta / 1.5) & (theta < true_theta * 1.5)).all(), theta


def test_weights_saved_on_the_old_step_scale_load_as_the_same_dispersion():
    likelihood = NegativeBinomialLikelihood(n_genes=3, latent=4, zero_inflated=False)
    theta = torch.tensor([0.1, 2.0, 50.0])
    legacy = {"log_dispersion": torch.log(theta) / LEGACY_DISPERSION_STEP_SCALE}
    likelihood.load_state_dict(legacy, strict=True)
    torch.testing.assert_close(likelihood().detach(), theta)
    assert set(likelihood.state_dict()) == {"scaled_log_dispersion"}
    # today's weights round-trip under their own name
    reloaded = NegativeBinomialLikelihood(n_genes=3, latent=4, zero_inflated=False)
    reloaded.load_state_dict(likelihood.state_dict(), strict=True)
    torch.testing.assert_close(reloaded().detach(), theta)


def test_the_loss_is_the_exact_likelihood_but_the_mean_learns_at_the_floored_dispersion():
    likelihood = NegativeBinomialLikelihood(n_genes=3, latent=4, zero_inflated=False)
    with torch.no_grad():
        likelihood.scaled_log_dispersion.copy_(torch.log(torch.tensor([0.1, 1.0, 100.0])) / DISPERSION_STEP_SCALE)
    theta = likelihood().detach()
    counts = torch.tensor([[0.0, 7.0, 30.0], [12.0, 1.0, 25.0]])
    mean = torch.tensor([[3.0, 4.0, 20.0], [3.0, 4.0, 20.0]], requires_grad=True)
    value = likelihood.log_prob(counts, Prediction(expression=torch.log1p(mean), mean=mean))
    torch.testing.assert_close(value, negative_binomial_log_prob(counts, mean, theta))
    value.sum().backward()
    floored = mean.detach().clone().requires_grad_(True)
    negative_binomial_log_prob(counts, floored, theta.clamp(min=MEAN_FIT_DISPERSION)).sum().backward()
    torch.testing.assert_close(mean.grad, floored.grad)
    exact = torch.autograd.grad(
        negative_binomial_log_prob(counts, mean.detach(), likelihood()).sum(), likelihood.scaled_log_dispersion)[0]
    likelihood.zero_grad()
    likelihood.log_prob(counts, Prediction(expression=mean.detach(), mean=mean.detach())).sum().backward()
    torch.testing.assert_close(likelihood.scaled_log_dispersion.grad, exact)
