"""Hierarchical: gene -> pathway -> compartment.

The encoder gains a pathway layer whose units see only their member genes (sparse, from the
GMT) and a compartment layer whose units see only their pathways (from the TSV); the decoder
gains the reverse path: per-cell pathway activities, read from the latent state, each raising
only its member genes.
With `missing=learned` and no annotation files, dense learned groups take their place.

Statistics: pathway_activity (B, P) each pathway's activity in each cell, read off the cell's
decoded expression (without its batch's learned offset: the cell, not where it was measured) by a
joint least-squares projection on the member genes (see `PathwayActivity`), compartment_activity
(B, C) their mean per compartment.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from vcell.config.model import ModelConfig
from vcell.config.section import Section
from vcell.models.axes import Axis, Stacked
from vcell.models.blocks import (
    PROJECTION_RIDGE, EdgeLinear, Float32Statistics, gene_set_means, gene_set_projector, project_on_gene_sets,
)
from vcell.models.inputs import CellInputs, Conditions, Prediction
from vcell.models.registry import Enhancement
from vcell.models.slots import Slots
from vcell.models.spec import ModelSpec


ANNOTATION_START = 0.01  # the annotation features' share of the encoder's usual random start (start_as_inner)
# The deviation moments are updated on every DEVIATION_EVERY-th training step: a count model's
# residual needs its expected measured expression, which is exact and costly (`vcell.models.expected`:
# every step it made `full`'s training steps 1.4-1.7x slower, every 8th ~1.08x; decoding the whole cells
# for it, `VirtualCell.whole_residual`, ~4% more). Their memory is ~1 /
# (1 - decay) updates (~80 steps, ~5,000 cells at 512 a step): short enough to follow the model as it
# fits (its residuals shrink), long enough that the reliabilities do not follow one batch.
DEVIATION_EVERY = 8
DEVIATION_DECAY = 0.9


class HierarchicalConfig(Section):
    """gene -> pathway -> compartment from annotation files aligned to the atlas vocabulary."""

    gene_sets: str | None = Field(None, description="GMT file of pathways; null = <atlas>/annotations/pathways.gmt")
    compartments: str | None = Field(
        None, description="TSV pathway -> compartment; null = <atlas>/annotations/pathway_compartments.tsv"
    )
    missing: Literal["error", "learned"] = Field(
        "error", description="no annotation files: 'error', or 'learned' groups trained from scratch"
    )
    learned_pathways: int = Field(64, ge=1, description="groups used by missing=learned (and compartments: /8)")
    min_genes: int = Field(3, ge=1, description="pathways with fewer genes in the vocabulary are dropped")
    observed_deviation: bool = Field(
        True, description="pathway activity adds the cell's measured member genes' shared deviation from its decoded "
        "expression, shrunk by its reliability (estimated in training); false: the decoded cell's projection alone"
    )


def pathway_layer(spec: ModelSpec, config: ModelConfig) -> nn.Module:
    """genes (B, G) -> pathways (B, P): member genes only, or dense learned groups."""
    if spec.gene_pathway is None:
        return nn.Linear(spec.n_genes, n_pathways(spec, config))
    edges = spec.gene_pathway
    return EdgeLinear(edges.source, edges.target, spec.n_genes, len(spec.pathway_names), init="mean",
                      axes=("gene", "pathway"))


def n_pathways(spec: ModelSpec, config: ModelConfig) -> int:
    return len(spec.pathway_names) or config.hierarchical.learned_pathways


class HierarchicalEncoder(nn.Module):
    """Adds annotation-shaped features: gene-set scores and their compartment summaries."""

    STATS: dict = {}

    def __init__(self, inner: nn.Module, spec: ModelSpec, config: ModelConfig) -> None:
        super().__init__()
        self.inner, self.n_out = inner, inner.n_out
        self.pathways = pathway_layer(spec, config)
        n_pathway = n_pathways(spec, config)
        if spec.pathway_compartment is not None:
            edges = spec.pathway_compartment
            self.compartments = EdgeLinear(edges.source, edges.target, n_pathway, len(spec.compartment_names), init="mean",
                                           axes=("pathway", "compartment"))
            n_compartment = len(spec.compartment_names)
        else:  # learned groups (spec.compartment_names names them)
            n_compartment = len(spec.compartment_names) or max(1, n_pathway // 8)
            self.compartments = nn.Linear(n_pathway, n_compartment)
        self.combine = nn.Linear(inner.n_out + n_pathway + n_compartment, inner.n_out)
        start_as_inner(self.combine, inner.n_out)
        # combine reads [the inner encoder's features, pathways, compartments] side by side
        self.AXES = {"combine.weight": (None, Stacked((None, Axis("pathway"), Axis("compartment"))))}
        for name, (rows, columns) in (("pathways", ("pathway", "gene")), ("compartments", ("compartment", "pathway"))):
            if isinstance(getattr(self, name), nn.Linear):  # dense learned groups (an EdgeLinear declares its own)
                self.AXES.update({f"{name}.weight": (Axis(rows), Axis(columns)), f"{name}.bias": (Axis(rows),)})

    def forward(self, x: torch.Tensor, cells: CellInputs) -> tuple[torch.Tensor, dict, dict]:
        h, losses, stats = self.inner(x, cells)
        pathway = self.pathways(x)  # (B, P)
        compartment = self.compartments(pathway)  # (B, C)
        return self.combine(torch.cat([h, pathway, compartment], dim=-1)), losses, stats


def start_as_inner(combine: nn.Linear, n_inner: int) -> None:
    """combine [inner features, pathways, compartments] starts as the identity on the inner
    features, with the annotation features' weights at 1% of their usual start (not 0: their own
    layers would get no gradient on the first step): the encoder begins as the one it wraps, and
    the annotation features enter as far as training finds them useful. From the usual random
    start their raw scale (gene-set means of log expression) set the features' geometry: with
    multiscale's gated views on top the latent barely told cell types apart (science atlas, 6,000
    cells, 300 steps, seed 0: hierarchical+multiscale kNN accuracy 0.68, ARI 0.23; from this start
    0.98 / 0.79)."""
    with torch.no_grad():
        combine.weight[:, n_inner:].mul_(ANNOTATION_START)
        combine.weight[:, :n_inner].copy_(torch.eye(n_inner))
        combine.bias.zero_()


class PathwayDecoderTerm(nn.Module):
    """scores += sum over a gene's pathways of loading x activity(z), loadings >= 0 and only on
    annotated (pathway, gene) pairs: an activity raises all its members, so it reads as the
    pathway's activity in the cell (the simulator's pathways act exactly so)."""

    STATS: dict = {}

    def __init__(self, latent: int, spec: ModelSpec, config: ModelConfig) -> None:
        super().__init__()
        n_pathway = n_pathways(spec, config)
        self.activity = nn.Linear(latent, n_pathway)
        self.AXES = {"activity.weight": (Axis("pathway"), None), "activity.bias": (Axis("pathway"),)}
        if spec.gene_pathway is None:
            self.to_genes: nn.Module = nn.Linear(n_pathway, spec.n_genes, bias=False)
            self.AXES["to_genes.weight"] = (Axis("gene"), Axis("pathway"))
        else:
            edges = spec.gene_pathway
            self.to_genes = EdgeLinear(
                edges.target, edges.source, n_pathway, spec.n_genes, bias=False, init_scale=0.1, positive=True,
                axes=("pathway", "gene"),
            )

    def forward(self, scores: torch.Tensor, z: torch.Tensor, conditions: Conditions | None) -> torch.Tensor:
        return scores + self.to_genes(self.activity(z))


class PathwayActivity(nn.Module):
    """Per-cell pathway activity read off the cell's decoded expression: the joint least-squares
    coordinates of the reconstruction on the pathways' member genes (annotated 0/1 membership, or
    the decoder term's learned loadings when there are no annotation files), plus (annotated,
    `hierarchical.observed_deviation`) the same coordinates of what the decoder left of the measured
    cell, shrunk by their reliability (`MemberDeviation`), and their mean per compartment.

    Why a projection of the decoded cell and not a unit of the latent: a pathway in these data
    acts as one shift shared by its member genes, and the decoder's expression is the model's
    denoised estimate of every gene; projecting it on the membership recovers that shift, while
    a free linear unit of z is not tied to it (measured on the science atlas, 300 steps: Pearson
    with the true activity 0.61 for the projection, 0.40 for the decoder's activity unit, 0.45
    for gene-set means of the observed cells). Joint, not per set: a gene in two pathways is
    shared out, so overlapping pathways stop echoing each other.

    Why the measured deviation as well: the decoder keeps little of a cell's own pathway activity.
    Twenty pathways each varying on their own within a cell type do not fit through a 32-number
    latent beside everything else (PCA's 32 components keep as little), and the response loss pulls
    each decoded cell towards its group's mean. Where pathways vary within types as much as between
    them (science atlas with the per-cell activity s.d. 0.6 instead of 0.3) the decoded cell's
    projection scored 0.52 against the measured cell's 0.60; the decoded cell plus the shrunk
    deviation 0.63 (README, "Hierarchical:")."""

    STATS = {"pathway_activity": ("B", "P"), "compartment_activity": ("B", "C")}

    def __init__(self, term: PathwayDecoderTerm, spec: ModelSpec, n_pathway: int, observed_deviation: bool) -> None:
        super().__init__()
        self.view = [term]  # registered once, as a gene term; its loadings serve learned groups
        self.annotated = spec.gene_pathway is not None
        self.deviation = None
        if self.annotated:
            gene, member_of = spec.gene_pathway.source, spec.gene_pathway.target
            # non-persistent: rebuilt from the spec, so exports made before this read-out still load
            self.register_buffer("gene", torch.as_tensor(gene, dtype=torch.long), persistent=False)
            self.register_buffer("member_of", torch.as_tensor(member_of, dtype=torch.long), persistent=False)
            self.register_buffer("projector", gene_set_projector(gene, member_of, n_pathway), persistent=False)
            if observed_deviation:
                self.deviation = MemberDeviation(gene, member_of, spec.n_genes, n_pathway)
        n_compartment = len(spec.compartment_names) or max(1, n_pathway // 8)
        if spec.pathway_compartment is not None:
            pathway, compartment = spec.pathway_compartment.source, spec.pathway_compartment.target
        else:  # learned compartments: a fixed partition of the pathways
            pathway, compartment = np.arange(n_pathway), np.arange(n_pathway) % n_compartment
        size = np.bincount(compartment, minlength=n_compartment).astype(np.float32)
        for name, value in (("pathway", pathway), ("compartment", compartment), ("size", size)):
            self.register_buffer(name, torch.as_tensor(value))

    @property
    def reads_residual(self) -> bool:
        """Whether the model should hand this call the measured residual: always in evaluation, on the
        steps that update the moments in training (training read-outs are not reported)."""
        return self.deviation is not None and (not self.training or self.deviation.due())

    @torch.no_grad()
    def forward(self, prediction: Prediction, cells: CellInputs, residual: torch.Tensor | None = None) -> dict:
        expression = prediction.expression  # (B, G)
        if self.annotated:
            activity = project_on_gene_sets(expression, self.gene, self.member_of, self.projector)
            if self.deviation is not None and self.training:
                self.deviation.step(residual)
            if self.deviation is not None and residual is not None:
                reliability = self.deviation.reliability().to(activity.dtype)  # (P,)
                activity = activity + reliability * project_on_gene_sets(residual, self.gene, self.member_of, self.projector)
        else:
            loadings = self.view[0].to_genes.weight  # (G, P)
            gram = loadings.T @ loadings + PROJECTION_RIDGE * torch.eye(loadings.shape[1], device=loadings.device)
            activity = torch.linalg.solve(gram, loadings.T @ expression.T).T  # (B, P)
        return {
            "pathway_activity": activity,
            "compartment_activity": gene_set_means(activity, self.pathway, self.compartment, self.size),
        }


class MemberDeviation(Float32Statistics):
    """How much of a pathway's measured deviation from the decoded cell is shared by its members.

    A cell's residual r_g (measured minus decoded, per gene) on the members of a pathway is a shift
    s they share (the activity the decoder missed) plus each gene's own noise e_g. The shift's
    variance S is the mean covariance between two different members' residuals; the members' mean
    residual has variance S + noise / n. The best linear estimate of s from that mean (the James-
    Stein / BLUP shrinkage) weighs it by reliability = S / var(mean), in [0, 1]: near 0 where the
    members' residuals are counting noise, near 1 where the shift dominates them.

    The moments come from training batches (every `DEVIATION_EVERY`-th, exponential average), each
    cell decoded from its whole expression as in evaluation (`VirtualCell.whole_residual`): no loss
    trains them and evaluation leaves them as they are, so a cell's activity does not depend on which
    cells share its batch. A model never trained has none: reliability 0, the decoded projection."""

    STATS: dict = {}
    # each rank folds in its own cells: the trainer averages these across ranks after every step (an
    # average of exponential averages updated in step is the exponential average of the global batch)
    RUNNING_STATISTICS = ("residual_mean", "sum_square", "square_sum")
    # moves with them (the first update replaces the zeros): kept with them when a step must not update
    RUNNING_COUNTERS = ("updates",)
    # reliability is a difference of two close moments: kept float32 under DeepSpeed's bf16 cast
    FLOAT32_BUFFERS = ("members", "residual_mean", "sum_square", "square_sum")

    def __init__(self, gene, member_of, n_genes: int, n_pathway: int) -> None:
        super().__init__()
        self.register_buffer("gene", torch.as_tensor(gene, dtype=torch.long), persistent=False)
        self.register_buffer("member_of", torch.as_tensor(member_of, dtype=torch.long), persistent=False)
        members = np.bincount(np.asarray(member_of), minlength=n_pathway).astype(np.float32)
        self.register_buffer("members", torch.as_tensor(members), persistent=False)
        self.register_buffer("residual_mean", torch.zeros(n_genes))  # E[r_g]
        self.register_buffer("sum_square", torch.zeros(n_pathway))  # E[(sum over members of r_g)^2]
        self.register_buffer("square_sum", torch.zeros(n_pathway))  # E[sum over members of r_g^2]
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        # training steps seen: saved with the weights, so a resumed run updates on the steps an
        # uninterrupted one does (and its moments are the same, bit for bit)
        self.register_buffer("training_steps", torch.zeros((), dtype=torch.long))

    def due(self) -> bool:
        """Whether this training step updates the moments."""
        return int(self.training_steps) % DEVIATION_EVERY == 0

    def step(self, residual: torch.Tensor | None) -> None:
        """A training step: fold in its residuals (B, G) when it is due and has them."""
        if residual is not None and self.due():
            self.update(residual)
        self.training_steps += 1

    def member_sums(self, values: torch.Tensor) -> torch.Tensor:
        """(..., P) sums over each pathway's members of values (..., G)."""
        return values.new_zeros(*values.shape[:-1], len(self.members)).index_add_(-1, self.member_of, values[..., self.gene])

    def update(self, residual: torch.Tensor) -> None:
        """Fold a batch's residuals (B, G) into the moments."""
        residual = residual.float()
        sums = self.member_sums(residual)  # (B, P)
        batch = (residual.mean(0), sums.pow(2).mean(0), self.member_sums(residual.pow(2)).mean(0))
        decay = DEVIATION_DECAY if int(self.updates) else 0.0
        for moment, value in zip((self.residual_mean, self.sum_square, self.square_sum), batch):
            moment.mul_(decay).add_((1.0 - decay) * value)
        self.updates += 1

    def reliability(self) -> torch.Tensor:
        """(P,) S / var(members' mean residual), clipped to [0, 1]."""
        n = self.members
        sum_variance = self.sum_square - self.member_sums(self.residual_mean).pow(2)  # var of the summed residual
        gene_variances = self.square_sum - self.member_sums(self.residual_mean.pow(2))  # its members' own variances
        shared = (sum_variance - gene_variances) / (n * (n - 1)).clamp(min=1.0)  # S: mean covariance of two members
        mean_variance = sum_variance / n.pow(2)
        return torch.where(mean_variance > 0, shared / mean_variance.clamp(min=1e-12), 0.0).clamp(0.0, 1.0)


def install(slots: Slots, config: ModelConfig, spec: ModelSpec) -> None:
    _, _, latent = config.dimensions()
    slots.encoder = HierarchicalEncoder(slots.encoder, spec, config)
    term = PathwayDecoderTerm(latent, spec, config)
    slots.gene_terms.append(term)
    slots.readouts.append(PathwayActivity(term, spec, n_pathways(spec, config), config.hierarchical.observed_deviation))


ENHANCEMENT = Enhancement(
    name="hierarchical",
    title="Hierarchical",
    summary="gene -> pathway -> compartment layers from annotations; pathway/compartment activity per cell",
    config=HierarchicalConfig,
    install=install,
    needs=frozenset({"gene_sets"}),
    input_files=("gene_sets", "compartments"),
    evaluation="vcell.evaluate.enhancement_metrics:hierarchical",
    figure="vcell.evaluate.figures:hierarchical_figure",
    science_check="vcell.evaluate.science_checks:check_hierarchical",
)
