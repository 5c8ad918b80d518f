"""Stochastic: cell-to-cell variability.

The head scores raw counts with a negative binomial (optionally zero-inflated) whose mean is the
library size x composition (or the resource pool's expected counts with `resource`) and whose
inverse dispersion theta is learned per gene. The model can sample cells (`VirtualCell.sample`).
`variational: true` also makes the latent a Gaussian per cell (KL to N(0, I) with a warm-up).

Why the variational latent is off by default: at the training budgets of the catalogue (the
demo's 300 steps) it made the representation fragile. A VAE's posteriors collapse onto a few
directions early, and in `full` those directions followed sequencing depth and whatever the other
enhancements' losses pulled on: on the demo atlas at 300 steps, k-means ARI of cell types 0.67
and kNN accuracy 0.92, against 0.96 and 0.999 for the same model with a deterministic latent
(PCA: 0.99 / 0.99). The count likelihood, which is what this enhancement is scored on, does not
need it (held-out log-likelihood -309 nats per cell vs -330 for a per-gene NB).

Statistics: dispersion (G,) theta per gene; extrinsic_variance_fraction (G,): of each gene's
count variance across the batch's cells, the share from differences in expected counts
(cell state and size) rather than sampling noise: Var(m) / (Var(m) + E[m + m^2 / theta]).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from vcell.config.model import ModelConfig
from vcell.config.section import Section
from vcell.models.axes import Axis
from vcell.models.blocks import load_rescaled, negative_binomial_log_prob, zero_inflated_negative_binomial_log_prob
from vcell.models.expected import at_entries, expected_log1p
from vcell.models.inputs import Prediction
from vcell.models.registry import Enhancement
from vcell.models.slots import Slots, count_head
from vcell.models.spec import ModelSpec


class StochasticConfig(Section):
    """A count likelihood with per-gene dispersion (and optionally a variational latent)."""

    likelihood: Literal["nb", "zinb"] = Field("nb", description="negative binomial, or zero-inflated NB")
    variational: bool = Field(
        False, description="a variational latent (Gaussian per cell, KL to N(0, I)); off: see the module doc for why"
    )
    kl_weight: float = Field(1.0, ge=0, description="weight of the KL term after warm-up (variational only)")
    kl_warmup_steps: int = Field(
        1000, ge=0, description="training steps over which the KL weight ramps from 0 (variational only)"
    )


INITIAL_LOG_VARIANCE = -4.0
# Dispersions start near-Poisson (theta = 100) and take scaled steps. A small theta flattens the
# likelihood of a highly expressed gene (its gradient shrinks by theta / (theta + mean)); starting
# at theta = 1, the encoder learnt from weak gradients and cell types mixed in `full`'s latent
# (k-means ARI 0.55-0.79); from theta = 100 it learns the cell states first while theta falls to
# what the counts need. Stored divided by the step scale, as Adam moves a parameter ~learning rate
# per step: unscaled, 300 steps at 1e-3 move log theta by < 0.3. The scale was 50: in `full` on
# the demo atlas theta then ended 300 steps at a median of 19 while the bursty counts need ~0.13,
# and the held-out log-likelihood (-633 nats per cell) lost to the library-size NB's (-624; the
# same means with theta refit: -594). At 200 theta reaches what the counts need (median 0.11, -595).
INITIAL_DISPERSION = 100.0
DISPERSION_STEP_SCALE = 200.0
# The expected counts learn as if theta were at least this: with theta ~0.1 a gene's gradient
# shrinks by theta / (theta + mean), and the cell states were learnt from so weak a signal that
# k-means ARI fell from 0.99 to 0.80-0.86 (`full`, demo atlas, 300 steps). Theta itself learns
# from the exact likelihood, and the loss's value is the exact likelihood.
MEAN_FIT_DISPERSION = 20.0
LEGACY_DISPERSION_STEP_SCALE = 50.0  # of `log_dispersion` in checkpoints and exports made before


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
    AXES = {"scaled_log_dispersion": (Axis("gene"),), "zero_logits.weight": (Axis("gene"), None), "zero_logits.bias": (Axis("gene"),)}

    def __init__(self, n_genes: int, latent: int, zero_inflated: bool) -> None:
        super().__init__()
        # log theta: steps in log space move a small theta (bursty genes, ~0.05) as fast as a large
        # one; see INITIAL_DISPERSION for the start and the step scale
        self.scaled_log_dispersion = nn.Parameter(
            torch.full((n_genes,), math.log(INITIAL_DISPERSION) / DISPERSION_STEP_SCALE))
        self.zero_logits = nn.Linear(latent, n_genes) if zero_inflated else None

    def forward(self) -> torch.Tensor:
        """(G,) dispersion theta. Read through a call (`self()`), never the attribute: engines that
        shard parameters (DeepSpeed ZeRO-3) gather a module's parameters only around its forward."""
        return torch.exp((DISPERSION_STEP_SCALE * self.scaled_log_dispersion).clamp(-12.0, 12.0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Weights saved before the step scale changed hold `log_dispersion` (log theta / 50):
        read as the same theta, not reinterpreted on the new scale."""
        load_rescaled(state_dict, prefix, "log_dispersion", "scaled_log_dispersion",
                      LEGACY_DISPERSION_STEP_SCALE / DISPERSION_STEP_SCALE)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extras(self, z: torch.Tensor) -> dict:
        return {} if self.zero_logits is None else {"zero_logits": self.zero_logits(z)}

    def fit(self, counts: torch.Tensor, prediction: Prediction) -> None:
        """Nothing to fold in: the dispersion is learned with the rest."""

    def log_prob(self, counts: torch.Tensor, prediction: Prediction) -> torch.Tensor:
        """(B, G) log-likelihood of counts. Its value is the NB's; its gradient trains theta at the
        expected counts as they are, and the expected counts at theta floored at MEAN_FIT_DISPERSION."""
        theta, mean = self(), prediction.mean
        if not torch.is_grad_enabled():
            return self.log_prob_at(counts, mean, theta, prediction)
        for_theta = self.log_prob_at(counts, mean.detach(), theta, prediction)
        for_mean = self.log_prob_at(counts, mean, theta.detach().clamp(min=MEAN_FIT_DISPERSION), prediction)
        return for_theta + (for_mean - for_mean.detach())

    def log_prob_at(self, counts: torch.Tensor, mean: torch.Tensor, theta: torch.Tensor, prediction: Prediction) -> torch.Tensor:
        if self.zero_logits is None:
            return negative_binomial_log_prob(counts, mean, theta)
        return zero_inflated_negative_binomial_log_prob(counts, mean, theta, prediction.extra["zero_logits"])

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

    def expected_log1p(self, prediction: Prediction, scale: torch.Tensor, detected: bool = False,
                       entries: torch.Tensor | None = None) -> torch.Tensor:
        zero_logits = prediction.extra.get("zero_logits")
        zero_probability = None if zero_logits is None else torch.sigmoid(zero_logits)
        return expected_log1p(*at_entries(entries, prediction.mean, scale, self().detach(), zero_probability),
                              detected=detected)

    def statistics(self, prediction: Prediction) -> dict:
        theta, mean = self().detach(), prediction.mean.detach()
        intrinsic = (mean + mean.pow(2) / theta).mean(0)
        extrinsic = mean.var(0, unbiased=False)
        return {"dispersion": theta.detach(), "extrinsic_variance_fraction": extrinsic / (extrinsic + intrinsic + 1e-12)}


def install(slots: Slots, config: ModelConfig, spec: ModelSpec) -> None:
    hidden, _, latent = config.dimensions()
    if config.stochastic.variational:
        slots.latent = VariationalLatent(hidden, latent, spec.n_genes, config.stochastic)
    count_head(slots, spec.n_genes).likelihood = NegativeBinomialLikelihood(spec.n_genes, latent, config.stochastic.likelihood == "zinb")


ENHANCEMENT = Enhancement(
    name="stochastic",
    title="Stochastic",
    summary="negative-binomial counts (optional variational latent); dispersion, intrinsic/extrinsic variance",
    config=StochasticConfig,
    install=install,
    needs=frozenset({"counts"}),
    evaluation="vcell.evaluate.enhancement_metrics:stochastic",
    figure="vcell.evaluate.figures:stochastic_figure",
    science_check="vcell.evaluate.science_checks:check_stochastic",
)
