"""Regulatory: a gene regulatory network prior constrains how effects spread between genes.

A perturbation of gene g starts as a learned log-fold change on g alone and travels along
the prior's edges for `steps` steps (delta_k = delta_{k-1} W, effect = sum_k delta_k), so a
knocked-down regulator moves only what it regulates, directly or through other regulators.
Perturbations of genes in the vocabulary take this path instead of the latent shift. On the
reconstruction path, visible genes' deviations from the model's prediction propagate one step
to their targets: what the regulators of a hidden gene do informs its reconstruction.

`outside_prior=exclude`: W has weights only on prior edges. `penalize`: W covers every
regulator (any prior source) -> gene pair, with an L1 penalty on pairs outside the prior.

Statistics: edge_weight (E,) the learned signed weight of each prior edge (spec.grn order).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vcell.config.model import ModelConfig
from vcell.models.blocks import EdgeLinear
from vcell.models.inputs import CellInputs, Conditions
from vcell.models.slots import DecodeContext, Slots, condition_shift
from vcell.models.spec import ModelSpec


class RegulatoryPropagation(nn.Module):
    STATS: dict = {}

    def __init__(self, spec: ModelSpec, config: ModelConfig) -> None:
        super().__init__()
        settings, edges, n_genes = config.regulatory, spec.grn, spec.n_genes
        self.steps, self.mode = settings.steps, settings.outside_prior
        source, target = edges.source, edges.target  # numpy: works while building on the meta device
        if self.mode == "exclude":
            self.edges = EdgeLinear(source, target, n_genes, n_genes, bias=False, init_scale=0.01)
        else:
            regulators = np.unique(source)
            row = np.searchsorted(regulators, source)
            prior = np.zeros((len(regulators), n_genes), dtype=bool)
            prior[row, target] = True
            for name, value in (("regulators", regulators), ("prior", prior), ("prior_row", row), ("prior_target", target)):
                self.register_buffer(name, torch.as_tensor(value))
            self.dense = nn.Parameter(torch.randn(len(regulators), n_genes) * 0.01)
        self.register_buffer("perturbation_gene", torch.as_tensor(spec.perturbation_gene, dtype=torch.long))
        # learned log-fold change of each perturbation on its own gene (none without perturbation data)
        self.knock = nn.Parameter(torch.full((spec.n_perturbations,), -1.0)) if spec.n_perturbations else None

    def propagate(self, delta: torch.Tensor) -> torch.Tensor:
        """One step along the network: (B, G) -> (B, G)."""
        if self.mode == "exclude":
            return self.edges(delta)
        return delta[:, self.regulators] @ self.dense

    def edge_weight(self) -> torch.Tensor:
        """(E,) learned weight of each prior edge, in the spec's edge order."""
        if self.mode == "exclude":
            return self.edges.weight
        return self.dense[self.prior_row, self.prior_target]

    def outside_prior_penalty(self) -> torch.Tensor:
        if self.mode == "exclude":
            return self.edge_weight().new_zeros(())
        return self.dense.abs().masked_fill(self.prior, 0.0).mean()

    def perturbation_effect(self, scores: torch.Tensor, conditions: Conditions) -> torch.Tensor:
        code = conditions.perturbation.clamp(min=0)
        gene = self.perturbation_gene[code]
        active = (conditions.perturbation >= 0) & (gene >= 0)
        delta = torch.zeros_like(scores)
        rows = torch.nonzero(active)[:, 0]
        delta = delta.index_put((rows, gene[rows]), self.knock[code[rows]])
        total = delta
        for _ in range(self.steps):
            delta = self.propagate(delta)
            total = total + delta
        return total

    def forward(self, scores: torch.Tensor, z: torch.Tensor, context: DecodeContext) -> torch.Tensor:
        conditions = context.conditions
        if conditions is not None and conditions.perturbation is not None and self.knock is not None:
            return scores + self.perturbation_effect(scores, conditions)
        if context.observed is not None:
            # deviations of visible genes from the prediction, one step to their targets
            expected = context.head.expression_of(scores).detach()
            residual = (context.observed - expected) * context.visible
            return scores + self.propagate(residual)
        return scores


class RegulatoryPrior(nn.Module):
    """The auxiliary slot's view of the propagation: its prior penalty and edge weights."""

    STATS = {"edge_weight": ("E",)}

    def __init__(self, propagation: RegulatoryPropagation, penalty: float) -> None:
        super().__init__()
        self.view = [propagation]  # a plain list: the module is registered once, as a gene term
        self.penalty = penalty

    def forward(self, z: torch.Tensor, cells: CellInputs) -> tuple[dict, dict]:
        propagation = self.view[0]
        losses = {}
        if propagation.mode == "penalize":
            losses["grn_penalty"] = self.penalty * propagation.outside_prior_penalty()
        return losses, {"edge_weight": propagation.edge_weight()}


def install(slots: Slots, config: ModelConfig, spec: ModelSpec) -> None:
    propagation = RegulatoryPropagation(spec, config)
    slots.gene_terms.append(propagation)
    slots.auxiliary.append(RegulatoryPrior(propagation, config.regulatory.penalty))
    # perturbations of vocabulary genes travel along the GRN instead of the latent shift
    condition_shift(slots.dynamics).route_elsewhere(spec.perturbation_gene >= 0)
