"""Resource: finite cellular resources.

Expected counts = capacity x allocation: the cell's capacity C (total transcripts it can
make) comes from its basal state, and genes compete for shares of it,

    mean_j = C * softmax([scores, free])_j

with a `free` slot for capacity left unused. Knocking down a highly expressed gene lowers
its score; its share is freed and split between the other genes and the unused pool, so the
others rise (compensation) but the total falls: the capacity coupling a library-size model
cannot express. With the stochastic enhancement the counts are negative binomial around this
mean, otherwise Poisson.

Statistics: capacity (B,), free_share (B,) unused share, pathway_allocation (B, P) share of
the capacity spent on each pathway's genes (when pathway annotations are in the spec).
"""

from __future__ import annotations

import math

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
    """Expression = capacity x allocation: genes share a finite, cell-state-dependent pool."""

    free_pool: bool = Field(True, description="part of the capacity may stay unused (a freed share is not all re-used)")


class CapacityAllocation(nn.Module):
    def __init__(self, latent: int, hidden: int, spec: ModelSpec, free_pool: bool) -> None:
        super().__init__()
        self.capacity = MLP(latent, [hidden], 1)
        nn.init.constant_(self.capacity[-1].bias, math.log(2.0 * spec.mean_library))  # a typical cell uses half
        self.free = MLP(latent, [hidden], 1) if free_pool else None
        self.STATS = {"capacity": ("B",), "free_share": ("B",)}
        if spec.gene_pathway is not None:
            self.register_buffer("member_gene", torch.as_tensor(spec.gene_pathway.source))
            self.register_buffer("member_pathway", torch.as_tensor(spec.gene_pathway.target))
            self.n_pathways = len(spec.pathway_names)
            self.STATS["pathway_allocation"] = ("B", "P")

    def forward(self, scores: torch.Tensor, capacity_state: torch.Tensor, library: torch.Tensor) -> tuple[torch.Tensor, dict]:
        capacity = torch.exp(self.capacity(capacity_state)[:, 0])  # (B,)
        if self.free is not None:
            shares = torch.softmax(torch.cat([scores, self.free(capacity_state)], dim=-1), dim=-1)  # (B, G + 1)
            gene_shares, free_share = shares[:, :-1], shares[:, -1]
        else:
            gene_shares, free_share = torch.softmax(scores, dim=-1), scores.new_zeros(len(scores))
        return capacity.unsqueeze(-1) * gene_shares, {"capacity": capacity, "free_share": free_share}

    def statistics(self, prediction: Prediction) -> dict:
        stats = {"capacity": prediction.extra["capacity"].detach(), "free_share": prediction.extra["free_share"].detach()}
        if "pathway_allocation" in self.STATS:
            shares = prediction.mean.detach() / prediction.extra["capacity"].detach().unsqueeze(-1)
            allocation = shares.new_zeros(len(shares), self.n_pathways)
            stats["pathway_allocation"] = allocation.index_add_(1, self.member_pathway, shares[:, self.member_gene])
        return stats


def install(slots: Slots, config: ModelConfig, spec: ModelSpec) -> None:
    hidden, _, latent = config.dimensions()
    count_head(slots).mean_model = CapacityAllocation(latent, hidden, spec, config.resource.free_pool)


ENHANCEMENT = Enhancement(
    name="resource",
    title="Resource-constrained",
    summary="expression = capacity x allocation (genes compete for a finite pool); capacity per cell",
    config=ResourceConfig,
    install=install,
    needs=frozenset({"counts"}),
    evaluation="vcell.evaluate.enhancement_metrics:resource",
    figure="vcell.evaluate.figures:resource_figure",
    science_check="vcell.evaluate.science_checks:check_resource",
)
