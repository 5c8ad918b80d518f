"""Resource: finite cellular resources.

A cell turns out transcripts from a finite pool. Genes compete for it: gene j's share of what
the cell makes is softmax(scores)_j, and the share of the pool in use is

    used = sigmoid(logsumexp(scores) - free)

with `free` (learned, per cell from its state) the pool's unused capacity in the same log
units as the gene scores. This is the simulator's and the textbook's saturable form: expression
e_j = C r_j / (K + sum_k r_k) with r = exp(scores), K = exp(free). Expected counts are

    mean_j = library x softmax(scores)_j x used(scores) / used(basal scores)

`library` is the observed total of the cell as it is (the basal cell, when predicting a
condition), so decoding a cell as it is gives exactly its library size x composition (the scVI
parametrisation: the latent state never has to encode sequencing depth), and a condition moves
the total only through the pool: knocking down a highly expressed gene lowers logsumexp(scores),
frees part of the pool, and the other genes rise (compensation) while the total falls, by as much
as the pool is saturated (a nearly full pool compensates fully; a nearly empty one not at all).
With the stochastic enhancement the counts are negative binomial around this mean, otherwise
Poisson.

Statistics: capacity (B,) the cell's full capacity in counts (library / used share),
free_share (B,) the unused share of the pool, pathway_allocation (B, P) share of the cell's
transcripts spent on each pathway's genes (when pathway annotations are in the spec).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from vcell.config.model import ModelConfig
from vcell.config.section import Section
from vcell.models.blocks import MLP
from vcell.models.inputs import Prediction
from vcell.models.registry import Enhancement
from vcell.models.slots import Slots, count_head
from vcell.models.spec import ModelSpec


class ResourceConfig(Section):
    """Expression = capacity x allocation: genes share a finite, saturable, cell-state-dependent pool."""

    free_pool: bool = Field(
        True, description="part of the capacity may stay unused (false: the pool is always full, totals never move)"
    )


class CapacityAllocation(nn.Module):
    predicts_total = True  # a condition can move the cell's total counts (through the pool)

    def __init__(self, hidden: int, spec: ModelSpec, free_pool: bool) -> None:
        super().__init__()
        # the unused capacity in gene-score units, from the cell's own basal scores (its state)
        self.free = MLP(N_POOL_FEATURES, [hidden], 1) if free_pool else None
        self.STATS = {"capacity": ("B",), "free_share": ("B",)}
        if spec.gene_pathway is not None:
            self.register_buffer("member_gene", torch.as_tensor(spec.gene_pathway.source))
            self.register_buffer("member_pathway", torch.as_tensor(spec.gene_pathway.target))
            self.n_pathways = len(spec.pathway_names)
            self.STATS["pathway_allocation"] = ("B", "P")

    def log_used(self, scores: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
        """(B,) log of the share of the pool in use."""
        return nn.functional.logsigmoid(torch.logsumexp(scores, dim=-1) - free)

    def forward(self, scores: torch.Tensor, basal_scores: torch.Tensor, library: torch.Tensor) -> tuple[torch.Tensor, dict]:
        composition = torch.softmax(scores, dim=-1)  # (B, G)
        if self.free is None:  # a full pool: every freed share is re-used, totals never move
            zero = torch.zeros_like(library)
            return library.unsqueeze(-1) * composition, {"capacity": library, "free_share": zero, "log_total_ratio": zero}
        free = self.free(pool_features(basal_scores))[:, 0]  # (B,)
        log_used, log_used_basal = self.log_used(scores, free), self.log_used(basal_scores, free)
        log_ratio = log_used - log_used_basal  # (B,) log(total / the basal cell's total)
        return (library * torch.exp(log_ratio)).unsqueeze(-1) * composition, {
            "capacity": library * torch.exp(-log_used_basal), "free_share": -torch.expm1(log_used),
            "log_total_ratio": log_ratio,
        }

    def statistics(self, prediction: Prediction) -> dict:
        stats = {"capacity": prediction.extra["capacity"].detach(), "free_share": prediction.extra["free_share"].detach()}
        if "pathway_allocation" in self.STATS:
            mean = prediction.mean.detach()
            shares = mean / mean.sum(-1, keepdim=True).clamp(min=1e-12)
            allocation = shares.new_zeros(len(shares), self.n_pathways)
            stats["pathway_allocation"] = allocation.index_add_(1, self.member_pathway, shares[:, self.member_gene])
        return stats


N_POOL_FEATURES = 2


def pool_features(scores: torch.Tensor) -> torch.Tensor:
    """(B, 2) what sets a cell's unused capacity: its total rate (logsumexp of the scores) and how
    concentrated its output is (the entropy of its composition)."""
    total = torch.logsumexp(scores, dim=-1)
    composition = torch.softmax(scores, dim=-1)
    entropy = -(composition * torch.log(composition.clamp(min=1e-12))).sum(-1)
    return torch.stack([total, entropy], dim=-1)


def install(slots: Slots, config: ModelConfig, spec: ModelSpec) -> None:
    hidden, _, _ = config.dimensions()
    count_head(slots, spec.n_genes).mean_model = CapacityAllocation(hidden, spec, config.resource.free_pool)


ENHANCEMENT = Enhancement(
    name="resource",
    title="Resource-constrained",
    summary="expression = capacity x allocation (genes compete for a saturable pool); knockdowns move the total",
    config=ResourceConfig,
    install=install,
    needs=frozenset({"counts"}),
    evaluation="vcell.evaluate.enhancement_metrics:resource",
    figure="vcell.evaluate.figures:resource_figure",
    science_check="vcell.evaluate.science_checks:check_resource",
)
