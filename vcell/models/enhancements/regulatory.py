"""Regulatory: a gene regulatory network prior decides how genes explain one another.

Genes the prior says are regulated and that regulate nothing themselves (targets) are not
decoded from the latent state: their level is a learned baseline plus the weighted levels of
their regulators, s_t = b_t + sum_s W_st s_s. Regulators are decoded from the state as usual
(so are genes the prior says nothing about); a regulator that is itself regulated moves with
its regulators' deviations from their decoded levels. So W has to explain how targets
co-vary with their regulators across cells, and how effects travel: a perturbation of gene g
adds a learned log-fold change to g's level, and `steps` rounds of

    s = anchor + W^T (s - decoded) + knock          (anchor: decoded, or b + W^T decoded for targets)

carry it that many layers down the network, to nothing the prior does not connect.

`outside_prior=exclude`: W has weights only on prior edges. `penalize`: W covers every
regulator (any prior source) -> regulated gene pair, with an L1 penalty off the prior.

Statistics: edge_weight (E,) the learned signed weight of each prior edge (spec.grn order).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import nn

from vcell.config.model import ModelConfig
from vcell.config.section import Section
from vcell.models.blocks import MLP, EdgeLinear
from vcell.models.inputs import CellInputs, Conditions
from vcell.models.registry import Enhancement
from vcell.models.slots import Slots, condition_shift
from vcell.models.spec import ModelSpec


class RegulatoryConfig(Section):
    """A gene regulatory network prior constrains how perturbation effects spread."""

    edges: str | None = Field(None, description="TSV source, target[, sign, weight]; null = <atlas>/annotations/grn_edges.tsv")
    steps: int = Field(3, ge=1, le=10, description="propagation steps (regulatory layers an effect crosses)")
    outside_prior: Literal["exclude", "penalize"] = Field(
        "exclude", description="'exclude': only prior edges exist; 'penalize': every regulator->gene pair, L1 off the prior"
    )
    penalty: float = Field(1e-3, ge=0, description="L1 weight on edges outside the prior (outside_prior=penalize)")


class FreeGeneDecoder(nn.Module):
    """Latent -> scores of the genes without prior regulators; regulated genes' columns are 0."""

    def __init__(self, latent: int, hidden: int, n_layers: int, dropout: float, free: np.ndarray, n_genes: int) -> None:
        super().__init__()
        self.n_genes = n_genes
        self.register_buffer("free", torch.as_tensor(free, dtype=torch.long))
        self.network = MLP(latent, [hidden] * n_layers, len(free), dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        scores = z.new_zeros(len(z), self.n_genes)
        return scores.index_copy(1, self.free, self.network(z))


class RegulatoryPropagation(nn.Module):
    STATS: dict = {}

    def __init__(self, spec: ModelSpec, config: ModelConfig) -> None:
        super().__init__()
        settings, edges, n_genes = config.regulatory, spec.grn, spec.n_genes
        self.steps, self.mode = settings.steps, settings.outside_prior
        source, target = edges.source, edges.target  # numpy: works while building on the meta device
        regulated = np.isin(np.arange(n_genes), target)
        self.register_buffer("target_only", torch.as_tensor(regulated & ~np.isin(np.arange(n_genes), source)))
        self.baseline = nn.Parameter(torch.zeros(n_genes))
        if self.mode == "exclude":
            self.edges = EdgeLinear(source, target, n_genes, n_genes, bias=False, init_scale=0.01)
        else:
            regulators = np.unique(source)
            row = np.searchsorted(regulators, source)
            prior = np.zeros((len(regulators), n_genes), dtype=bool)
            prior[row, target] = True
            buffers = {"regulators": regulators, "prior": prior, "prior_row": row, "prior_target": target,
                       "regulated": regulated}
            for name, value in buffers.items():
                self.register_buffer(name, torch.as_tensor(value))
            self.dense = nn.Parameter(torch.randn(len(regulators), n_genes) * 0.01)
        self.register_buffer("perturbation_gene", torch.as_tensor(spec.perturbation_gene, dtype=torch.long))
        # learned log-fold change of each perturbation on its own gene (none without perturbation data)
        self.knock = nn.Parameter(torch.full((spec.n_perturbations,), -1.0)) if spec.n_perturbations else None

    def propagate(self, levels: torch.Tensor) -> torch.Tensor:
        """One step along the network: regulator levels (B, G) -> regulated genes' input (B, G)."""
        if self.mode == "exclude":
            return self.edges(levels)
        return levels[:, self.regulators] @ (self.dense * self.regulated)  # genes without prior regulators stay free

    def edge_weight(self) -> torch.Tensor:
        """(E,) learned weight of each prior edge, in the spec's edge order."""
        if self.mode == "exclude":
            return self.edges.weight
        return self.dense[self.prior_row, self.prior_target]

    def outside_prior_penalty(self) -> torch.Tensor:
        if self.mode == "exclude":
            return self.edge_weight().new_zeros(())
        return self.dense.abs().masked_fill(self.prior, 0.0).mean()

    def knockdown(self, scores: torch.Tensor, conditions: Conditions | None) -> torch.Tensor:
        """(B, G) the learned change of each perturbed gene's own level (0 elsewhere)."""
        delta = torch.zeros_like(scores)
        if conditions is None or conditions.perturbation is None or self.knock is None:
            return delta
        code = conditions.perturbation.clamp(min=0)
        gene = self.perturbation_gene[code]
        rows = torch.nonzero((conditions.perturbation >= 0) & (gene >= 0))[:, 0]
        return delta.index_put((rows, gene[rows]), self.knock[code[rows]])

    def forward(self, scores: torch.Tensor, z: torch.Tensor, conditions: Conditions | None) -> torch.Tensor:
        """scores (B, G): decoded levels (targets' columns are 0) -> levels after the network."""
        delta = self.knockdown(scores, conditions)
        anchor = torch.where(self.target_only, self.baseline + self.propagate(scores), scores)
        levels = anchor + delta
        for _ in range(self.steps):  # each step carries deviations one regulatory layer further
            levels = anchor + self.propagate(levels - scores) + delta
        return levels


def edge_table(propagation: RegulatoryPropagation, spec: ModelSpec) -> pd.DataFrame:
    """The learned network as a table: source, target (gene IDs), prior_sign, weight (signed),
    strongest first; `to_csv(path, sep="\t")` gives a file `model.regulatory.edges` can read back."""
    ids = np.asarray(spec.gene_ids)
    weight = propagation.edge_weight().detach().cpu().numpy()
    sign = spec.grn.sign if spec.grn.sign is not None else np.ones(len(weight), dtype=int)
    table = pd.DataFrame({
        "source": ids[spec.grn.source], "target": ids[spec.grn.target], "prior_sign": sign, "weight": weight,
    })
    return table.reindex(table["weight"].abs().sort_values(ascending=False).index).reset_index(drop=True)


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
    hidden, n_layers, latent = config.dimensions()
    propagation = RegulatoryPropagation(spec, config)
    targets = np.isin(np.arange(spec.n_genes), spec.grn.target) & ~np.isin(np.arange(spec.n_genes), spec.grn.source)
    free = np.flatnonzero(~targets)  # regulators and unannotated genes are decoded from the state
    slots.decoder = FreeGeneDecoder(latent, hidden, n_layers, config.dropout, free, spec.n_genes)
    slots.gene_terms.insert(0, propagation)  # before other terms: they add to the network's output
    slots.auxiliary.append(RegulatoryPrior(propagation, config.regulatory.penalty))
    # perturbations of vocabulary genes travel along the GRN instead of the latent shift
    condition_shift(slots.dynamics).route_elsewhere(spec.perturbation_gene >= 0)


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
