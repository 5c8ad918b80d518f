"""Stochastic: cell-to-cell variability.

The latent becomes variational (a Gaussian per cell, KL to N(0, I) with a warm-up) and the
head scores raw counts with a negative binomial (optionally zero-inflated) whose mean is the
library size x composition (or capacity x allocation with `resource`) and whose inverse
dispersion theta is learned per gene. The model can sample cells (`VirtualCell.sample`).

Statistics: dispersion (G,) theta per gene; extrinsic_variance_fraction (G,): of each gene's
count variance across the batch's cells, the share from differences in expected counts
(cell state and size) rather than sampling noise: Var(m) / (Var(m) + E[m + m^2 / theta]).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from vcell.config.model import ModelConfig
from vcell.config.section import Section
from vcell.models.blocks import negative_binomial_log_prob, zero_inflated_negative_binomial_log_prob
from vcell.models.inputs import Prediction
from vcell.models.registry import Enhancement
from vcell.models.slots import Slots, count_head
from vcell.models.spec import ModelSpec


class StochasticConfig(Section):
    """Variational latent and a count likelihood with per-gene dispersion."""

    likelihood: Literal["nb", "zinb"] = Field("nb", description="negative binomial, or zero-inflated NB")
    kl_weight: float = Field(1.0, ge=0, description="weight of the KL term after warm-up")
    kl_warmup_steps: int = Field(1000, ge=0, description="training steps over which the KL weight ramps from 0")


INITIAL_LOG_VARIANCE = -4.0
DISPERSION_STEP_SCALE = 20.0


class VariationalLatent(nn.Module):
    STATS: dict = {}

    def __init__(self, n_in: int, latent: int, n_genes: int, settings: StochasticConfig) -> None:
        super().__init__()
        self.project = nn.Linear(n_in, 2 * latent)
        # start nearly deterministic (posterior sd ~0.1): with unit noise from step 0 the encoder
        # can only beat the noise along one direction, and the latent trains as a 1-D ruler for
        # hundreds of steps (k-means ARI 0.35 at 300 steps, vs 0.9+ deterministic); the KL term
        # widens the posteriors as it warms up
        nn.init.constant_(self.project.bias[latent:], INITIAL_LOG_VARIANCE)
        self.settings, self.n_genes = settings, n_genes
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # drives the KL warm-up; checkpointed

    def kl_weight(self) -> torch.Tensor:
        """Ramps linearly over the first kl_warmup_steps training forwards (a tensor: no device sync)."""
        warmup = self.settings.kl_warmup_steps
        ramp = torch.ones(()) if warmup == 0 else (self.steps.float() / warmup).clamp(max=1.0)
        return self.settings.kl_weight * ramp.to(self.steps.device)

    def tick(self) -> None:
        """One training step done (the model calls this once per training forward)."""
        self.steps += 1

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
        mean, log_variance = self.project(h).chunk(2, dim=-1)
        log_variance = log_variance.clamp(-10.0, 10.0)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_variance) if self.training else mean
        kl = 0.5 * (mean.pow(2) + log_variance.exp() - 1.0 - log_variance).sum(-1).mean()
        weight = self.kl_weight()
        # divided by the gene count: the likelihood is a mean over genes, so this keeps the ELBO's balance
        return z, {"kl": weight * kl / self.n_genes}, {}


class NegativeBinomialLikelihood(nn.Module):
    STATS = {"dispersion": ("G",), "extrinsic_variance_fraction": ("G",)}

    def __init__(self, n_genes: int, latent: int, zero_inflated: bool) -> None:
        super().__init__()
        # log theta: steps in log space move a small theta (bursty genes, ~0.05) as fast as a large
        # one; stored divided by DISPERSION_STEP_SCALE, as Adam moves a parameter ~learning rate
        # per step whatever its gradient: unscaled, 300 steps at 1e-3 left theta within 0.74-1.35
        # of its start, and the model lost to a per-gene NB that only knows library sizes
        self.log_dispersion = nn.Parameter(torch.zeros(n_genes))
        self.zero_logits = nn.Linear(latent, n_genes) if zero_inflated else None

    def forward(self) -> torch.Tensor:
        """(G,) dispersion theta. Read through a call (`self()`), never the attribute: engines that
        shard parameters (DeepSpeed ZeRO-3) gather a module's parameters only around its forward."""
        return torch.exp((DISPERSION_STEP_SCALE * self.log_dispersion).clamp(-12.0, 12.0))

    def extras(self, z: torch.Tensor) -> dict:
        return {} if self.zero_logits is None else {"zero_logits": self.zero_logits(z)}

    def log_prob(self, counts: torch.Tensor, prediction: Prediction) -> torch.Tensor:
        theta = self()
        if self.zero_logits is None:
            return negative_binomial_log_prob(counts, prediction.mean, theta)
        return zero_inflated_negative_binomial_log_prob(counts, prediction.mean, theta, prediction.extra["zero_logits"])

    def sample(self, prediction: Prediction) -> torch.Tensor:
        """Counts drawn as Poisson(Gamma(theta, theta / mean)), zeroed by the inflation if any
        (seed with torch.manual_seed)."""
        theta = self()
        mean = prediction.mean.clamp(min=1e-8)
        rate = torch.distributions.Gamma(theta.expand_as(mean), theta / mean).sample()
        counts = torch.poisson(rate)
        if self.zero_logits is not None:
            dropped = torch.rand_like(counts) < torch.sigmoid(prediction.extra["zero_logits"])
            counts = counts.masked_fill(dropped, 0.0)
        return counts

    def statistics(self, prediction: Prediction) -> dict:
        theta, mean = self().detach(), prediction.mean.detach()
        intrinsic = (mean + mean.pow(2) / theta).mean(0)
        extrinsic = mean.var(0, unbiased=False)
        return {"dispersion": theta.detach(), "extrinsic_variance_fraction": extrinsic / (extrinsic + intrinsic + 1e-12)}


def install(slots: Slots, config: ModelConfig, spec: ModelSpec) -> None:
    hidden, _, latent = config.dimensions()
    slots.latent = VariationalLatent(hidden, latent, spec.n_genes, config.stochastic)
    count_head(slots).likelihood = NegativeBinomialLikelihood(spec.n_genes, latent, config.stochastic.likelihood == "zinb")


ENHANCEMENT = Enhancement(
    name="stochastic",
    title="Stochastic",
    summary="variational latent + negative-binomial counts; dispersion, intrinsic/extrinsic variance",
    config=StochasticConfig,
    install=install,
    needs=frozenset({"counts"}),
    evaluation="vcell.evaluate.enhancement_metrics:stochastic",
    figure="vcell.evaluate.figures:stochastic_figure",
    science_check="vcell.evaluate.science_checks:check_stochastic",
)
