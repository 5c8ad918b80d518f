"""Regulatory: a gene regulatory network prior decides how genes explain one another.

Every gene is decoded from the latent state (as in `base`), so the network does not have to
carry the cell's state. The network W (signed weights on the prior's regulator -> gene edges)
is learned from two kinds of evidence:

* observational: each regulated gene's observed level is regressed on its prior regulators'
  observed levels, x_t ~ b_t + sum_s W_st x_s, over every cell of the batch (the
  `grn_regression` term), with an L1 shrinkage prior on W (`grn_shrinkage`). Like neighbourhood
  selection / partial correlation, a regulator only gets weight for what the target's other
  candidate regulators do not already explain.
* interventional: a perturbation of gene g changes g's measured level by a learned log-fold
  change (`knock`) and drives the network from g by `a` (the knock itself, or a learned activity
  change: `drive`); `steps` rounds of

      d = W^T d + a e_g,    levels = decoded + d - a e_g + knock e_g

  carry it that many layers down the network; the response loss compares the result with the
  perturbed cells, so a knocked-down regulator's targets must move and its decoys must not.

W lives on the scale of *measured* regulator levels, the scale the observational regression
fits, and the propagation carries changes of a regulator's *true* level: counting noise dilutes
an observed slope by the regulator's reliability r (the share of its variance that is not
counting noise; regression dilution), so a change d of regulator s moves its targets by
W_st d / r_s (`dilution_correction`: r floored at 1 - it, x5 at most by default; 0 = off). Both
kinds of evidence then agree on one W: before, the responses pulled a barely measured knocked
regulator's edges to the true effect while the regression pulled them to the diluted one, and
the cascades below a knock-down came out at a third of the truth on the demo atlas (README,
"Regulatory.").

`drive`: what a perturbation feeds the network. `knock` (the default): its gene's own learned
change, so d starts from knock e_g. `activity`: a second learned number, its activity change (a
shared typical value, which an unseen perturbation gets, plus its own deviation). A knocked-down
TF acts on its targets as if switched off whatever its measured level does, and TFs are measured
poorly, so with `knock` the network carries effects smaller than the true ones; `activity`
discriminates perturbations better but an unseen regulator's edges, learned from observation
only, overshoot (README, "The models": the demo's numbers for both).

`saturation` (1.0 by default; null = linear): each step's change of a gene, cap x tanh(change /
cap), with a learned per-gene cap starting there (regulation saturates: a target switched fully
on or off moves no further). It bounds what the dilution correction can overshoot: an unseen
regulator's edges are learned from observation alone, and undiluted by up to x5 a noisy slope
raised one target by 3.0 (log1p) where the truth raises it by 0.87, which took share from every
other gene (demo atlas, unseen MAE 0.0099 linear, 0.0023 saturated; no change 0.0030). With
`activity` it removes that drive's overshoot too; `activity` is not the default because it costs
the network on an independent simulator (SERGIO AUPRC 0.517 vs `knock`'s 0.545).

The two kinds of evidence pull one W: `regression_weight` sets the balance over all edges, and
`reliability_weighting` (on by default) sets it per regulator. Adam moves a weight by about the
same step whatever its gradient's size, so the smooth, every-cell regression gradient drowns the
noisier response gradient of a perturbed regulator's edges unless its share is cut. Observed
slopes of a barely measured regulator are diluted by counting noise, so there the interventions
should win; where every regulator -> gene pair is a candidate and a knocked-down master regulator
moves everything downstream (SERGIO), only conditioning on the intermediate regulators says which
edges are direct, so there observation should win. Reliability weighting gives the edges of a
regulator whose perturbed cells training has seen the regression's gradient times its measured
signal-to-noise ratio r / (1 - r), capped at 1, with r = 1 - (counting noise) / (variance) across
basal cells (`vcell.models.grn.measurement_reliability`; forward values unchanged). Any other
regulator keeps the full gradient: observation is all there is to learn its edges from. The
README ("Regulatory.") has what this gained and what was tried instead. It still pays with the
dilution correction on (science AUPRC 0.489 with it, 0.471 without; SERGIO 0.533 either way);
cutting the regression off a perturbed regulator entirely gains on vcell's simulator (0.514) and
loses SERGIO (0.182), where the interventions cannot tell direct edges from indirect ones.

Why not decode targets from their regulators' *decoded* levels (the earlier design)? Decoded
levels are functions of a low-dimensional latent state, so the regulators' columns are nearly
collinear (rank <= latent size) and W is not identified: any regulator that tracks the cell
state explains a target as well as its true regulator, and the edge weights ranked true edges
below chance.

`outside_prior=exclude`: W has weights only on prior edges. `penalize`: W covers every
regulator (any prior source) -> regulated gene pair, with an L1 penalty off the prior.

Statistics (spec.grn order): edge_weight (E,) the learned signed weight of each prior edge;
edge_score (E,) the ranking of the learned network: the |standardised weight| |W_st| sd_s / sd_t
(sd_t at least SCORE_SD_FLOOR x the median gene's), against its regulator's and its target's other
prior edges: sqrt(v / rms_s x v / rms_t) (`grn.background_corrected`). Why: how strongly a
regulator's weights come out depends on the regulator as a whole (its measurement noise
attenuates every slope it has, reliability weighting rescales all its edges, it was knocked down or
not), and a target's on how much of it the network explains; an edge is a true one when it stands
out among its regulator's and its target's candidates, as CLR (Faith et al. 2007) reads mutual
information. Science atlas AUPRC 0.488 -> 0.530 (seed 0; 0.530 / 0.536 at seeds 1 / 2), SERGIO
0.533 -> 0.565. Dividing by rms_s x rms_t whole ranked worse (0.483 / SERGIO 0.559), as did the
regulator's rms alone (0.519 / 0.515) and CLR's z-scores (0.498 / 0.540); the target's rms alone
did better on SERGIO (0.576) but worse here (0.479). The same correction of the baselines helps co-expression everywhere and partial
correlation on SERGIO, so every baseline is scored both ways (`vcell.evaluate.edges`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from vcell.config.model import ModelConfig
from vcell.config.section import Section
from vcell.models.axes import Axis
from vcell.models.blocks import EdgeLinear, load_rescaled
from vcell.models.grn import background_corrected, measurement_reliability, scale_gradient
from vcell.models.inputs import CellInputs, Conditions
from vcell.models.registry import Enhancement
from vcell.models.residual import ConditionResidual
from vcell.models.slots import Slots, condition_shift
from vcell.models.spec import ModelSpec


SD_MOMENTUM = 0.05  # running estimate of each gene's sd: ~the last 20 batches
# Edge scores divide by the target's sd, floored at this share of the median gene's: a target that
# barely varies (detected in a handful of cells) leaves W ~0 and unconstrained, and dividing by its
# sd (~1e-5) put such edges, weights ~1e-4, at the top of the demo's ranking
SCORE_SD_FLOOR = 0.1
INITIAL_KNOCK = -2.0  # a perturbation's starting change of its own gene's level: x0.14 as a log-fold change
# Knock-downs learn through `scaled_knock` x this. An optimiser step moves a parameter by about the
# learning rate whatever its gradient (Adam), so at 1e-3 a perturbation's own change could move ~0.3
# in the demo's 300 steps and stayed near its start while the simulator's knock-downs are x0.1-0.3
# or knock-outs; the predicted deltas of seen perturbations were ~1/5 of the true ones.
KNOCK_STEP_SCALE = 25.0
# The typical activity learns 4x faster than each perturbation's deviation from it: Adam moves every
# parameter by about the same step, so at equal scales the typical would take only a share of what
# the seen perturbations have in common, and unseen ones would get that share.
TYPICAL_STEP_SCALE = 4 * KNOCK_STEP_SCALE


class RegulatoryConfig(Section):
    """A gene regulatory network prior constrains how perturbation effects spread."""

    edges: str | None = Field(None, description="TSV source, target[, sign, weight]; null = <atlas>/annotations/grn_edges.tsv")
    steps: int = Field(3, ge=1, le=10, description="propagation steps (regulatory layers an effect crosses)")
    outside_prior: Literal["exclude", "penalize"] = Field(
        "exclude", description="'exclude': only prior edges exist; 'penalize': every regulator->gene pair, L1 off the prior"
    )
    penalty: float = Field(1e-3, ge=0, description="L1 weight on edges outside the prior (outside_prior=penalize)")
    regression_weight: float = Field(
        1.0, ge=0, description="weight of the observational term: regulated genes' observed levels regressed on their "
                               "prior regulators' observed levels through W (0 = interventional evidence only)"
    )
    shrinkage: float = Field(1e-3, ge=0, description="L1 (sparsity) prior on every edge weight: mean |W| x this")
    reliability_weighting: bool = Field(
        True, description="for a regulator that training has seen perturbed, the observational term moves its edges "
                          "only as far as its measurement is reliable: by its signal-to-counting-noise ratio, capped "
                          "at 1 (from the counts of basal cells; see the module doc); false: every regulator's edges "
                          "get the full term"
    )
    drive: Literal["knock", "activity"] = Field(
        "knock", description="what a perturbation feeds the network: 'knock', its gene's learned measured change; "
                             "'activity', a learned activity change of the gene (typical value + its own deviation): "
                             "better discrimination, larger errors (see the module doc)"
    )
    saturation: float | None = Field(
        1.0, gt=0, description="each gene's change carried by the network saturates, cap x tanh(change / cap), at a "
                                "learned per-gene cap starting here (log units; 1.0 = x2.7); null: linear. It "
                                "stops overshoots of undiluted or activity drives (see the module doc)")
    dilution_correction: float = Field(
        0.8, ge=0, lt=1, description="the network carries a regulator's true change: its edges, fitted on its "
                                     "measured level, move targets by W / r, r its measurement's reliability floored "
                                     "at 1 - this (0.8: at most x5), undoing the dilution of observed slopes by "
                                     "counting noise; 0 = off (see the module doc)"
    )
    residual_rank: int = Field(
        0, ge=0, le=64, description="rank of a learned residual of each seen network-routed perturbation: what its "
                                    "cells at rest show beyond the network, fitted only to what the network leaves "
                                    "(its gradient never reaches W), on two halves of the cells and kept as far as "
                                    "they agree; their responses then no longer train the control cells' decoding. "
                                    "For screens with hundreds of cells per perturbation and effects the network "
                                    "cannot carry (SERGIO); it costs the demo atlas (vcell.models.residual); 0 = off"
    )
    weight_gain: float = Field(
        10.0, gt=0, description="W = gain x its parameter: Adam moves a parameter ~ the learning rate per step, and "
                                "edge weights are O(1) in log expression, so without a gain a few hundred steps cannot reach them"
    )


class RegulatoryPropagation(nn.Module):
    STATS: dict = {}
    # buffers each training batch updates from its own cells: under data parallelism every rank
    # sees other cells, so the trainer averages them across ranks after each step (OR for a bool)
    RUNNING_STATISTICS = ("level_sd", "level_reliability", "intervened")

    def __init__(self, spec: ModelSpec, config: ModelConfig) -> None:
        super().__init__()
        self.AXES = {"scaled_knock": (Axis("perturbation"),)}
        settings, edges, n_genes = config.regulatory, spec.grn, spec.n_genes
        self.steps, self.mode, self.gain = settings.steps, settings.outside_prior, settings.weight_gain
        self.drive = settings.drive
        source, target = edges.source, edges.target  # numpy: works while building on the meta device
        self.register_buffer("edge_source", torch.as_tensor(source, dtype=torch.long))
        self.register_buffer("edge_target", torch.as_tensor(target, dtype=torch.long))
        regulated = np.isin(np.arange(n_genes), target)
        self.register_buffer("regulated", torch.as_tensor(regulated))
        if self.mode == "exclude":
            self.edges = EdgeLinear(source, target, n_genes, n_genes, bias=False, init_scale=1e-3, axes=("gene", "gene"))
        else:
            regulators = np.unique(source)
            row = np.searchsorted(regulators, source)
            prior = np.zeros((len(regulators), n_genes), dtype=bool)
            prior[row, target] = True
            buffers = {"regulators": regulators, "prior": prior, "prior_row": row, "prior_target": target}
            for name, value in buffers.items():
                self.register_buffer(name, torch.as_tensor(value))
            self.dense = nn.Parameter(torch.randn(len(regulators), n_genes) * 1e-3)
            self.AXES["dense"] = (Axis("gene", index="regulators"), Axis("gene"))
        # running per-gene sd of observed levels (the regression's cells): puts edge scores on one scale
        self.register_buffer("level_sd", torch.ones(n_genes))
        # running per-gene share of its variance across basal cells that is not counting noise (1: no counts seen)
        self.register_buffer("level_reliability", torch.ones(n_genes))
        # genes whose perturbed cells training has seen: their edges also learn from interventions
        self.register_buffer("intervened", torch.zeros(n_genes, dtype=torch.bool))
        self.reliability_weighting, self.control_code = settings.reliability_weighting, spec.control_code
        self.reliability_floor = 1.0 - settings.dilution_correction
        self.register_buffer("perturbation_gene", torch.as_tensor(spec.perturbation_gene, dtype=torch.long))
        if settings.saturation is not None:
            start = torch.full((n_genes,), float(settings.saturation))
            self.raw_cap = nn.Parameter(torch.log(torch.expm1(start)))  # cap = softplus(raw_cap) starts at `saturation`
            self.AXES["raw_cap"] = (Axis("gene"),)
        else:
            self.raw_cap = None
        # learned log-fold change of each perturbation on its own gene (none without perturbation data)
        self.scaled_knock = (nn.Parameter(torch.full((spec.n_perturbations,), INITIAL_KNOCK / KNOCK_STEP_SCALE))
                             if spec.n_perturbations else None)
        if self.drive == "activity" and spec.n_perturbations:
            # activity of perturbation p = typical + its own deviation (each on its step scale); an
            # unseen perturbation's deviation never trains, so it acts with the typical activity
            self.scaled_typical_activity = nn.Parameter(torch.tensor(INITIAL_KNOCK / TYPICAL_STEP_SCALE))
            self.scaled_activity = nn.Parameter(torch.zeros(spec.n_perturbations))
            self.AXES["scaled_activity"] = (Axis("perturbation"),)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Weights saved before the step scale hold `knock` itself: read as the same knock-downs."""
        load_rescaled(state_dict, prefix, "knock", "scaled_knock", 1.0 / KNOCK_STEP_SCALE)
        # saved before they existed: fully reliable, nothing intervened (the module as it was then)
        state_dict.setdefault(prefix + "level_reliability", torch.ones_like(self.level_reliability))
        state_dict.setdefault(prefix + "intervened", torch.zeros_like(self.intervened))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def propagate(self, levels: torch.Tensor, gradient_share: torch.Tensor | None = None) -> torch.Tensor:
        """One step along the network: regulator levels (B, G) -> regulated genes' input (B, G).
        `gradient_share` (G,): the share of the gradient that each regulator's edges receive (same values)."""
        if self.mode == "exclude":
            weight = None if gradient_share is None else scale_gradient(self.edges.weight, gradient_share[self.edge_source])
            return self.gain * self.edges(levels, weight)
        dense = self.dense if gradient_share is None else scale_gradient(self.dense, gradient_share[self.regulators, None])
        return levels[:, self.regulators] @ (self.gain * dense * self.regulated)  # genes without prior regulators stay free

    def edge_weight(self) -> torch.Tensor:
        """(E,) learned weight of each prior edge, in the spec's edge order."""
        if self.mode == "exclude":
            return self.gain * self.edges.weight
        return self.gain * self.dense[self.prior_row, self.prior_target]

    def standardised_weight(self) -> torch.Tensor:
        """(E,) signed W_st sd_s / sd_t: the change of the target in its own sd per sd of the regulator,
        comparable across edges (raw W is in each target's units); sd_t at least SCORE_SD_FLOOR x the
        median gene's sd."""
        sd = self.level_sd
        floor = (SCORE_SD_FLOOR * sd.median()).clamp(min=1e-6)
        return self.edge_weight() * sd[self.edge_source] / sd[self.edge_target].clamp(min=floor)

    def edge_score(self) -> torch.Tensor:
        """(E,) the ranking of the learned network: |standardised weight| against its regulator's and its
        target's other prior edges (`vcell.models.grn.background_corrected`, see the module doc)."""
        return background_corrected(self.standardised_weight().abs(), self.edge_source, self.edge_target,
                                    n_nodes=len(self.level_sd))

    def outside_prior_penalty(self) -> torch.Tensor:
        if self.mode == "exclude":
            return self.edge_weight().new_zeros(())
        return self.gain * self.dense.abs().masked_fill(self.prior, 0.0).mean()

    @torch.no_grad()
    def track_levels(self, cells: CellInputs) -> None:
        """Update the running sd of each gene's observed level (cells.x, B x G) and, where the batch
        has raw counts, the running reliability of its measurement over the basal cells (their
        spread is natural variation, not the perturbations')."""
        self.level_sd.lerp_(cells.x.std(0), SD_MOMENTUM)
        perturbation = None if cells.conditions is None else cells.conditions.perturbation
        if perturbation is not None and len(self.perturbation_gene):
            gene = self.perturbation_gene[perturbation[perturbation >= 0]]
            self.intervened[gene[gene >= 0]] = True
        basal = None if cells.conditions is None else cells.conditions.is_basal(self.control_code)
        rows = torch.ones(len(cells.x), dtype=torch.bool, device=cells.x.device) if basal is None else basal
        if cells.counts is not None and int(rows.sum()) > 1:
            self.level_reliability.lerp_(measurement_reliability(cells.counts[rows], cells.library[rows]), SD_MOMENTUM)

    def regression_share(self) -> torch.Tensor | None:
        """(G,) the share of the observational gradient each regulator's edges get: for a regulator
        whose perturbations training has seen, its measurement's signal-to-noise ratio r / (1 - r),
        capped at 1; for any other, 1 (observation is all there is to learn its edges from). None:
        reliability weighting is off."""
        if not self.reliability_weighting:
            return None
        reliability = self.level_reliability
        ratio = (reliability / (1 - reliability).clamp(min=1e-6)).clamp(max=1.0)
        return torch.where(self.intervened, ratio, torch.ones_like(ratio))

    def dilution_boost(self) -> torch.Tensor:
        """(G,) what a change of each gene's true level is multiplied by before it crosses the
        network: 1 / r, its measurement's reliability r floored at 1 - dilution_correction (edges
        fitted on measured levels are diluted by r). 1 for a gene whose counts training never saw."""
        return 1.0 / self.level_reliability.clamp(min=self.reliability_floor)

    def regression_error(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared error of regulated genes' observed levels x (B, G) predicted from their
        regulators' observed levels, sum_s W_st x_s, both centred on the batch mean (the
        observational evidence on W; centring stands in for intercepts a few hundred optimiser
        steps could not fit, which W would otherwise absorb from any regulator with a high mean)."""
        centred = x - x.mean(0)
        residual = (centred - self.propagate(centred, self.regression_share()))[:, self.regulated]  # (B, regulated genes)
        return residual.pow(2).mean()

    def knockdown(self, scores: torch.Tensor, conditions: Conditions | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, G) each perturbed gene's learned change of its own measured level, and (B, G) its
        learned activity change, the network's drive (both 0 at other genes and without a perturbation)."""
        delta = torch.zeros_like(scores)
        if conditions is None or conditions.perturbation is None or self.scaled_knock is None:
            return delta, delta
        code = conditions.perturbation.clamp(min=0)
        gene = self.perturbation_gene[code]
        rows = torch.nonzero((conditions.perturbation >= 0) & (gene >= 0))[:, 0]
        at = (rows, gene[rows])
        knock = delta.index_put(at, KNOCK_STEP_SCALE * self.scaled_knock[code[rows]])
        if self.drive == "knock":
            return knock, knock
        activity = TYPICAL_STEP_SCALE * self.scaled_typical_activity + KNOCK_STEP_SCALE * self.scaled_activity[code[rows]]
        return knock, delta.index_put(at, activity)

    def saturate(self, change: torch.Tensor) -> torch.Tensor:
        """(B, G) each gene's change from its regulators, bounded by its learned cap (`saturation`;
        unchanged without one): regulation saturates, a target fully switched on or off moves no further."""
        if self.raw_cap is None:
            return change
        cap = nn.functional.softplus(self.raw_cap)  # (G,)
        return cap * torch.tanh(change / cap)

    def forward(self, scores: torch.Tensor, z: torch.Tensor, conditions: Conditions | None) -> torch.Tensor:
        """scores (B, G): decoded levels -> levels after a perturbation's effect crossed the network
        (unchanged without one: the network carries deviations from the decoded state)."""
        knock, drive = self.knockdown(scores, conditions)
        deviation, boost = drive, self.dilution_boost()
        for _ in range(self.steps):  # each step carries deviations one regulatory layer further
            deviation = self.saturate(self.propagate(deviation * boost)) + drive
        return scores + deviation - drive + knock  # the perturbed gene's own level moves by its knock


class RegulatoryPrior(nn.Module):
    """The auxiliary slot's view of the network: the observational regression on the cells'
    observed levels, the shrinkage and outside-prior penalties, and the edge weights."""

    STATS = {"edge_weight": ("E",), "edge_score": ("E",)}

    def __init__(self, propagation: RegulatoryPropagation, settings: RegulatoryConfig) -> None:
        super().__init__()
        self.view = [propagation]  # a plain list: the module is registered once, as a gene term
        self.settings = settings

    def forward(self, z: torch.Tensor, cells: CellInputs) -> tuple[dict, dict]:
        propagation, settings = self.view[0], self.settings
        losses = {}
        if self.training:
            propagation.track_levels(cells)
        if settings.regression_weight > 0:
            losses["grn_regression"] = settings.regression_weight * propagation.regression_error(cells.x)
        if settings.shrinkage > 0:
            losses["grn_shrinkage"] = settings.shrinkage * propagation.edge_weight().abs().mean()
        if propagation.mode == "penalize":
            losses["grn_penalty"] = settings.penalty * propagation.outside_prior_penalty()
        return losses, {"edge_weight": propagation.edge_weight(), "edge_score": propagation.edge_score()}


def install(slots: Slots, config: ModelConfig, spec: ModelSpec) -> None:
    propagation = RegulatoryPropagation(spec, config)
    slots.gene_terms.insert(0, propagation)  # before other terms: they add to the network's output
    slots.auxiliary.append(RegulatoryPrior(propagation, config.regulatory))
    # perturbations of vocabulary genes travel along the GRN instead of the latent shift
    routed = spec.perturbation_gene >= 0
    condition_shift(slots.dynamics).route_elsewhere(routed)
    rank = config.regulatory.residual_rank
    if rank and spec.n_perturbations and routed.any():
        slots.residuals.append(ConditionResidual(routed, spec.n_genes, rank))


ENHANCEMENT = Enhancement(
    name="regulatory",
    title="Regulatory-constrained",
    summary="perturbation effects travel along a GRN prior over k steps; learned edge weights",
    config=RegulatoryConfig,
    install=install,
    needs=frozenset({"grn"}),
    input_files=("edges",),
    evaluation="vcell.evaluate.enhancement_metrics:regulatory",
    figure="vcell.evaluate.figures:regulatory_figure",
    science_check="vcell.evaluate.science_checks:check_regulatory",
)
