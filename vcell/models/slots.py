"""The slots of the VirtualCell and the base model's module in each.

    encoder   (x_in (B, G), cells) -> (h (B, H), losses, stats)   MLPEncoder or TransformerEncoder
    latent    h -> (z (B, D), losses, stats)                   DeterministicLatent
    dynamics  (z, conditions) -> (z', stats)                   ConditionShift
    decoder   z -> gene scores (B, G)                          MLP
    gene_terms  [(scores, z, conditions) -> scores]            (enhancements add terms)
    head      scores -> Prediction, losses, stats              GaussianHead or CountHead
    auxiliary [(z, cells) -> losses]                           (enhancements add losses)
    readouts  [(prediction, cells) -> stats]                   (enhancements add read-outs)
    residuals [conditions -> gene scores (B, G) or None]       (enhancements add residual routes)

An enhancement replaces or wraps a slot's module, or appends to a list slot. What a module in
each slot must provide, its shapes and optional capabilities (`tick`, `likelihood`, a memory
hook) and the `STATS` declaration are the protocols of `vcell.models.contracts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from vcell.models.axes import Axis
from vcell.models.blocks import MLP, poisson_log_prob
from vcell.models.expected import expected_log1p
from vcell.models.contracts import (
    Auxiliary, CountLikelihood, Decoder, Dynamics, Encoder, GeneTerm, Head, Latent, MeanModel, Readout, Residual,
)
from vcell.models.inputs import CellInputs, Conditions, Prediction

TARGET_SUM = 1e4  # expression is log1p(counts per 10,000), as the loader's default normalisation


@dataclass
class Slots:
    """The model being built: each field holds an nn.Module meeting that slot's protocol."""

    encoder: Encoder
    latent: Latent
    dynamics: Dynamics
    decoder: Decoder
    head: Head
    gene_terms: list[GeneTerm] = field(default_factory=list)
    auxiliary: list[Auxiliary] = field(default_factory=list)
    readouts: list[Readout] = field(default_factory=list)
    residuals: list[Residual] = field(default_factory=list)


class MLPEncoder(nn.Module):
    """Genes -> hidden features (the base encoder)."""

    STATS: dict[str, tuple[str, ...]] = {}

    def __init__(self, n_genes: int, hidden: int, n_layers: int, dropout: float) -> None:
        super().__init__()
        self.n_out = hidden
        self.network = MLP(n_genes, [hidden] * n_layers, hidden, dropout, input_axis="gene")

    def forward(self, x: torch.Tensor, cells: CellInputs) -> tuple[torch.Tensor, dict, dict]:
        return self.network(x), {}, {}


class DeterministicLatent(nn.Module):
    STATS: dict[str, tuple[str, ...]] = {}

    def __init__(self, n_in: int, latent: int) -> None:
        super().__init__()
        self.project = nn.Linear(n_in, latent)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, dict, dict]:
        return self.project(h), {}, {}

    def tick(self) -> None:
        """Nothing to schedule (see `contracts.Latent.tick`)."""


class ConditionShift(nn.Module):
    """z' = z + e_p: each perturbation moves the cell state by a learned vector (control: 0).

    Additive in latent space, so a perturbation seen in one cell type transfers to another
    (the counterfactual). Perturbations another mechanism carries (regulatory: along the GRN)
    are taken off this route by `route_elsewhere`, so no embedding sits unused.
    """

    STATS: dict[str, tuple[str, ...]] = {}
    AXES = {"embedding.weight": (Axis("perturbation", rows="row"), None)}  # a row per routed perturbation

    def __init__(self, n_perturbations: int, latent: int, control_code: int) -> None:
        super().__init__()
        self.control_code, self.latent = control_code, latent
        routed = np.ones(n_perturbations, dtype=bool)
        if 0 <= control_code < n_perturbations:
            routed[control_code] = False
        self.route(routed)

    def route(self, routed: np.ndarray) -> None:
        """Give an embedding row to each perturbation code where `routed` (K,) is true."""
        self.routed = routed  # kept in numpy: the model may be built on the meta device
        row = np.full(len(routed), -1, dtype=np.int64)
        row[routed] = np.arange(int(routed.sum()))
        self.register_buffer("row", torch.as_tensor(row))
        self.embedding = nn.Embedding(int(routed.sum()), self.latent) if routed.any() else None
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, std=0.01)

    def route_elsewhere(self, elsewhere: np.ndarray) -> None:
        self.route(self.routed & ~np.asarray(elsewhere, dtype=bool))

    def shift(self, z: torch.Tensor, conditions: Conditions) -> torch.Tensor:
        code = conditions.perturbation
        if code is None or self.embedding is None:
            return z
        row = torch.where(code >= 0, self.row[code.clamp(min=0, max=len(self.row) - 1)], -1)
        active = (row >= 0).unsqueeze(-1)
        return z + self.embedding(row.clamp(min=0)) * active

    def forward(self, z: torch.Tensor, conditions: Conditions) -> tuple[torch.Tensor, dict]:
        return self.shift(z, conditions), {}


class GaussianHead(nn.Module):
    """Base likelihood: squared error on normalised log expression (scores are expression)."""

    STATS: dict[str, tuple[str, ...]] = {}
    likelihood: CountLikelihood | None = None  # no count model: it cannot sample counts
    predicts_total = False

    def predict(self, scores: torch.Tensor, z: torch.Tensor, basal_scores: torch.Tensor, library: torch.Tensor) -> Prediction:
        return Prediction(expression=scores)

    def loss(self, prediction: Prediction, target: CellInputs) -> torch.Tensor:
        return (prediction.expression - target.x).pow(2).mean()

    def measured(self, prediction: Prediction) -> torch.Tensor:
        return prediction.expression  # fitted by squared error to measured values: already their mean

    def detected(self, prediction: Prediction) -> torch.Tensor:
        return prediction.expression  # no model of detection: its mean over all cells is its best guess

    def statistics(self, prediction: Prediction) -> dict:
        return {}


class LibraryMean(nn.Module):
    """Expected counts = observed library size x composition (the scVI parametrisation)."""

    STATS: dict[str, tuple[str, ...]] = {}
    predicts_total = False  # the cell's observed total is given; only the composition is modelled

    def forward(self, scores, basal_scores, library) -> tuple[torch.Tensor, dict]:
        return library.unsqueeze(-1) * torch.softmax(scores, dim=-1), {}

    def statistics(self, prediction: Prediction) -> dict:
        return {}


class PoissonLikelihood(nn.Module):
    STATS: dict[str, tuple[str, ...]] = {}

    def extras(self, z: torch.Tensor) -> dict:
        return {}

    def log_prob(self, counts: torch.Tensor, prediction: Prediction) -> torch.Tensor:
        return poisson_log_prob(counts, prediction.mean)

    def sample(self, prediction: Prediction) -> torch.Tensor:
        return torch.poisson(prediction.mean)

    def expected_log1p(self, prediction: Prediction, scale: torch.Tensor, detected: bool = False) -> torch.Tensor:
        return expected_log1p(prediction.mean, scale, detected=detected)

    def statistics(self, prediction: Prediction) -> dict:
        return {}


class CountHead(nn.Module):
    """A likelihood on raw counts: `mean_model` gives expected counts, `likelihood` scores them.

    Enhancements fill the two parts: stochastic puts a negative binomial in `likelihood`,
    resource puts capacity x allocation in `mean_model`.
    """

    STATS: dict[str, tuple[str, ...]] = {}  # its two parts declare theirs

    def __init__(self, mean_model: MeanModel, likelihood: CountLikelihood) -> None:
        super().__init__()
        self.mean_model, self.likelihood = mean_model, likelihood

    @property
    def predicts_total(self) -> bool:
        return self.mean_model.predicts_total

    def predict(self, scores, z, basal_scores, library) -> Prediction:
        mean, extra = self.mean_model(scores, basal_scores, library)
        composition = mean / mean.sum(-1, keepdim=True).clamp(min=1e-12)
        expression = torch.log1p(TARGET_SUM * composition)
        return Prediction(expression=expression, mean=mean, extra={**extra, **self.likelihood.extras(z)})

    def loss(self, prediction: Prediction, target: CellInputs) -> torch.Tensor:
        if target.counts is None:
            raise ValueError("a count likelihood needs batch['counts'] (loader.keep_counts=true)")
        # mean over genes and cells (not the sum over genes), so its scale matches the other terms
        return -self.likelihood.log_prob(target.counts, prediction).mean()

    def measured(self, prediction: Prediction) -> torch.Tensor:
        """(B, G) E[log1p(counts per 10,000)] under the likelihood: what measured cells average to.
        `expression` is log1p of the expected counts per 10,000, the cell's denoised level; log1p is
        concave, so that overstates the measured mean of every gene seen as a few counts, and a
        change of such a gene's mean more still (`vcell.models.expected`)."""
        return self.likelihood.expected_log1p(prediction, self.scale(prediction))

    def detected(self, prediction: Prediction) -> torch.Tensor:
        """(B, G) E[log1p(counts per 10,000) | counts > 0]: the value of a gene known to be detected
        in the cell whose value is missing (a hidden gene). It exceeds `measured` most for genes
        seen as a few counts, and depends on the cell's depth (one count is more per 10,000 in a
        shallow cell)."""
        return self.likelihood.expected_log1p(prediction, self.scale(prediction), detected=True)

    @staticmethod
    def scale(prediction: Prediction) -> torch.Tensor:
        """(B, 1) counts -> counts per 10,000 of each predicted cell."""
        return TARGET_SUM / prediction.mean.sum(-1, keepdim=True).clamp(min=1e-12)

    def statistics(self, prediction: Prediction) -> dict:
        return {**self.mean_model.statistics(prediction), **self.likelihood.statistics(prediction)}


def hide_genes(x: torch.Tensor, fraction: float, training: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x with, in training, each measured (non-zero) gene hidden (set to 0) with `fraction`,
    the (B, G) mask of hidden genes or None when nothing is hidden).

    The loss then covers every gene, hidden ones included: a hidden gene reads as 0 to the MLP
    encoder, like a true zero, so a loss on hidden genes alone would teach it to fill in every
    zero. The transformer encoder reads the mask: a hidden gene is a token without its value."""
    if not training or fraction <= 0:
        return x, None
    hidden = (x > 0) & (torch.rand_like(x) < fraction)
    return x.masked_fill(hidden, 0.0), hidden


def pair_cells(
    context: torch.Tensor | None, basal: torch.Tensor | None, generator: torch.Generator | None = None,
    basal_targets: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(basal rows, target rows): each non-basal cell (and each basal one, with `basal_targets`)
    gets a random basal cell of its context (a basal target may draw itself).

    The response loss then asks the model to turn the basal cell into the target's condition;
    with random partners its minimiser is the condition's mean response, per context.
    """
    if basal is None or basal.all() or not basal.any():
        return None
    if context is None:
        context = torch.zeros_like(basal, dtype=torch.long)
    known = context >= 0
    targets = known if basal_targets else ~basal & known
    basal_rows, target_rows = torch.nonzero(basal & known)[:, 0], torch.nonzero(targets)[:, 0]
    groups, order = torch.sort(context[basal_rows])
    target_groups = context[target_rows]
    start = torch.searchsorted(groups, target_groups, right=False)
    count = torch.searchsorted(groups, target_groups, right=True) - start
    has_partner = count > 0
    if not has_partner.any():
        return None
    draw = torch.rand(len(target_rows), generator=generator, device=context.device)
    pick = start + (draw * count).long().clamp(max=count.clamp(min=1) - 1)
    return basal_rows[order[pick[has_partner]]], target_rows[has_partner]



def count_head(slots: Slots) -> CountHead:
    """The slots' count head, turning the base Gaussian head into library x composition + Poisson."""
    if not isinstance(slots.head, CountHead):
        slots.head = CountHead(LibraryMean(), PoissonLikelihood())
    return slots.head


def condition_shift(dynamics: nn.Module) -> ConditionShift:
    """The base perturbation shift inside whatever dynamics module wraps it."""
    return dynamics if isinstance(dynamics, ConditionShift) else dynamics.shift
