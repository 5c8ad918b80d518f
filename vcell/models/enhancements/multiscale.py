"""Multi-scale: gene- and pathway-level views of a cell, fused by learned gates.

The gene view is the encoder before it (the base MLP, or the hierarchical encoder); the
pathway view reads each gene set's level, log1p(mean normalised expression of its genes). A
softmax gate per cell weighs the two. The pathway scale also has a loss: the latent must
predict the cell's gene-set levels, besides the genes.

Why no cell-level view or loss (there was one): in sparse counts every whole-cell summary we
tried (library size, detected fraction, mean and spread of the log expression or of the gene-set
levels) measures sequencing depth more than biology, and a view of two or four numbers could
dominate the gated sum: the latent became a depth ruler (84% of its variance, r = 0.67 with log
library size; k-means ARI 0.02 in `full`, kNN accuracy 0.30). A set's mean normalised expression
before the log is unbiased whatever the depth, so the pathway scale keeps the biology. Without
gene-set annotations (hierarchical.missing=learned) the pathway view uses a fixed random
partition of the genes into `learned_pathways` modules.

Statistics: scale_weight (B, S=2) gate of the gene and pathway views.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from vcell.config.model import ModelConfig
from vcell.config.section import Section
from vcell.models.axes import Axis
from vcell.models.blocks import MLP, gene_set_means
from vcell.models.inputs import CellInputs
from vcell.models.registry import Enhancement
from vcell.models.slots import Slots
from vcell.models.spec import ModelSpec


class MultiscaleConfig(Section):
    """Gene-, pathway- and cell-level views of a cell fused by learned gates."""

    scale_loss_weight: float = Field(0.1, ge=0, description="weight of the pathway-level loss")



class GeneSets(nn.Module):
    """Fixed (B, G) log1p expression -> (B, n_sets) log1p(mean normalised expression of each set)
    (buffers only: nothing to learn)."""

    def __init__(self, spec: ModelSpec, n_modules: int) -> None:
        super().__init__()
        self.axis = "pathway" if spec.gene_pathway is not None else None  # random modules are positional
        if spec.gene_pathway is not None:
            gene, group = spec.gene_pathway.source, spec.gene_pathway.target
        else:
            gene = np.arange(spec.n_genes)
            group = np.random.default_rng(0).permutation(spec.n_genes) % n_modules
        gene, group = np.asarray(gene, dtype=np.int64), np.asarray(group, dtype=np.int64)
        self.register_buffer("gene", torch.as_tensor(gene))
        self.register_buffer("group", torch.as_tensor(group))
        self.register_buffer("size", torch.as_tensor(np.bincount(group).astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(gene_set_means(torch.expm1(x), self.gene, self.group, self.size))


class MultiscaleEncoder(nn.Module):
    STATS = {"scale_weight": ("B", "S")}

    def __init__(self, inner: nn.Module, gene_sets: GeneSets, hidden: int) -> None:
        super().__init__()
        self.inner, self.n_out, self.gene_sets = inner, inner.n_out, gene_sets
        self.pathway_view = MLP(len(gene_sets.size), [hidden], inner.n_out, input_axis=gene_sets.axis)
        self.gate = nn.Linear(2 * inner.n_out, 2)

    def forward(self, x: torch.Tensor, cells: CellInputs) -> tuple[torch.Tensor, dict, dict]:
        gene, losses, stats = self.inner(x, cells)
        pathway = self.pathway_view(self.gene_sets(x))
        views = torch.stack([gene, pathway], dim=1)  # (B, 2, H)
        weight = torch.softmax(self.gate(views.flatten(1)), dim=-1)  # (B, 2)
        return (weight.unsqueeze(-1) * views).sum(1), losses, {**stats, "scale_weight": weight}


class ScaleLosses(nn.Module):
    """The pathway-scale loss: the latent predicts the cell's gene-set levels."""

    STATS: dict = {}

    def __init__(self, latent: int, gene_sets: GeneSets, weight: float) -> None:
        super().__init__()
        self.view = [gene_sets]  # registered once, in the encoder
        self.weight = weight
        self.pathway_head = nn.Linear(latent, len(gene_sets.size))
        if gene_sets.axis is not None:
            self.AXES = {"pathway_head.weight": (Axis(gene_sets.axis), None), "pathway_head.bias": (Axis(gene_sets.axis),)}

    def forward(self, z: torch.Tensor, cells: CellInputs) -> tuple[dict, dict]:
        target = self.view[0](cells.x)
        return {"pathway_scale": self.weight * (self.pathway_head(z) - target).pow(2).mean()}, {}


def install(slots: Slots, config: ModelConfig, spec: ModelSpec) -> None:
    hidden, _, latent = config.dimensions()
    gene_sets = GeneSets(spec, config.hierarchical.learned_pathways)
    slots.encoder = MultiscaleEncoder(slots.encoder, gene_sets, hidden)
    slots.auxiliary.append(ScaleLosses(latent, gene_sets, config.multiscale.scale_loss_weight))


ENHANCEMENT = Enhancement(
    name="multiscale",
    title="Multi-scale",
    summary="gene- and pathway-level views fused by gates; the latent also predicts gene-set levels",
    config=MultiscaleConfig,
    install=install,
    needs=frozenset({"gene_sets"}),
    evaluation="vcell.evaluate.enhancement_metrics:multiscale",
    figure="vcell.evaluate.figures:multiscale_figure",
)
