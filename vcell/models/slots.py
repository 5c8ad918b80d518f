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
from vcell.models.blocks import MLP, Float32Statistics, negative_binomial_log_prob, poisson_log_prob
from vcell.models.detected_level import DETECTED_DECAY, DetectedLevel
from vcell.models.expected import at_entries, expected_log1p
from vcell.models.contracts import (
    Auxiliary, CountLikelihood, Decoder, Dynamics, Encoder, GeneTerm, Head, Latent, MeanModel, Readout, Residual,
)
from vcell.models.inputs import CellInputs, Conditions, Prediction
from vcell.models.knock import Knock, knock_entries

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

    A perturbation no training cell carried (one held out of training, or a category of the atlas
    the training split never drew) moves nothing: its row is still its random start, which says
    nothing about it, and decoded it gave each such perturbation a random response (tutorial
    atlas, `base`: Pearson delta -0.039 against the truth, MAE 0.027 against no change's 0.025).
    `trained_cells` counts the training cells each row has moved.
    """

    STATS: dict[str, tuple[str, ...]] = {}
    AXES = {"embedding.weight": (Axis("perturbation", rows="row"), None)}  # a row per routed perturbation
    # each rank counts its own cells; averaged across ranks after every step (only > 0 is read)
    RUNNING_STATISTICS = ("trained_cells",)

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
        self.register_buffer("trained_cells", torch.zeros(int(routed.sum())))
        self.embedding = nn.Embedding(int(routed.sum()), self.latent) if routed.any() else None
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, std=0.01)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """A model saved before the rows were counted: every row taken as trained, as it was used."""
        state_dict.setdefault(prefix + "trained_cells", torch.ones_like(self.trained_cells))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def route_elsewhere(self, elsewhere: np.ndarray) -> None:
        self.route(self.routed & ~np.asarray(elsewhere, dtype=bool))

    @torch.no_grad()
    def weights_transferred(self, fresh: dict[str, torch.Tensor]) -> None:
        """Rows copied from a pretrained model carry what it learned: they count as trained."""
        rows = fresh.get("embedding.weight")
        if rows is not None:
            copied = ~rows.all(-1)  # (rows,)
            self.trained_cells.copy_(torch.where(copied, self.trained_cells.clamp(min=1.0), self.trained_cells))

    def moves(self, code: int) -> bool:
        """Whether a perturbation code moves a cell on this route: false for one with a row that no
        training cell carried (true for control and for codes another route carries)."""
        return not bool(self.untrained(torch.tensor([code], device=self.row.device))[0])

    def rows(self, code: torch.Tensor) -> torch.Tensor:
        """(B,) each code's embedding row (-1: none: control, a code another route carries, none given)."""
        return torch.where(code >= 0, self.row[code.clamp(min=0, max=len(self.row) - 1)], -1)

    def untrained(self, code: torch.Tensor) -> torch.Tensor:
        """(B,) bool: codes (B,) whose row no training cell carried, so that they move nothing here."""
        if self.embedding is None:
            return torch.zeros_like(code, dtype=torch.bool)
        row = self.rows(code)
        return (row >= 0) & (self.trained_cells[row.clamp(min=0)] <= 0)

    def shift(self, z: torch.Tensor, conditions: Conditions) -> torch.Tensor:
        code = conditions.perturbation
        if code is None or self.embedding is None:
            return z
        row = self.rows(code)
        active = row >= 0
        if self.training:
            with torch.no_grad():  # every row added, inactive ones as 0: no boolean indexing (a GPU sync)
                self.trained_cells.index_add_(0, row.clamp(min=0), active.to(self.trained_cells.dtype))
        else:
            active = active & (self.trained_cells[row.clamp(min=0)] > 0)
        return z + self.embedding(row.clamp(min=0)) * active.unsqueeze(-1)

    def forward(self, z: torch.Tensor, conditions: Conditions) -> tuple[torch.Tensor, dict]:
        return self.shift(z, conditions), {}


class GaussianHead(nn.Module):
    """Base likelihood: squared error on normalised log expression (scores are expression).

    With `n_genes` (model.detected_level) it also keeps each gene's value where it is detected
    (`DetectedLevel`): the reconstruction is the gene's mean over cells like this one, its dropouts
    included, so a gene known to be detected (a hidden measured gene) sits above it."""

    STATS: dict[str, tuple[str, ...]] = {}
    likelihood: CountLikelihood | None = None  # no count model: it cannot sample counts
    predicts_total = False

    def __init__(self, n_genes: int = 0, zero_level: np.ndarray | None = None) -> None:
        super().__init__()
        self.detected_level = DetectedLevel(n_genes, zero_level) if n_genes else None

    def predict(self, scores: torch.Tensor, z: torch.Tensor, basal_scores: torch.Tensor, library: torch.Tensor) -> Prediction:
        # the library size rides along for the detected level (the expression does not depend on it)
        return Prediction(expression=scores, extra={"library": library} if self.detected_level is not None else {})

    def loss(self, prediction: Prediction, target: CellInputs) -> torch.Tensor:
        return (prediction.expression - target.x).pow(2).mean()

    def knock(self, scores: torch.Tensor, current: Prediction, reference: Prediction, knock: Knock,
              zero_level: torch.Tensor) -> torch.Tensor:
        """`scores` with each cell's perturbed gene at its share of its level above zero in
        `reference`, the cell before the perturbation (`vcell.models.knock`): the scores are levels."""
        return knock_entries(scores, knock.genes, knock.fractions, zero_level, reference.expression)

    def fit_statistics(self, prediction: Prediction, cells: CellInputs) -> None:
        """A training step's reconstruction of its own cells, from their masked input: fold the hidden
        genes into the detected level."""
        if self.detected_level is not None and cells.hidden is not None:
            self.detected_level.update(prediction.expression.detach(), cells.x, cells.library, cells.hidden,
                                       detected_genes(cells))

    def measured(self, prediction: Prediction) -> torch.Tensor:
        return prediction.expression  # fitted by squared error to measured values: already their mean

    def detected(self, prediction: Prediction, detected_genes: torch.Tensor) -> torch.Tensor:
        """(B, G) each gene's value were it detected: the learned detected level, or (without one) the
        reconstruction, the mean over all cells being the best guess a model of no detection has.
        `detected_genes` (B,): how many genes each cell shows, withheld ones included."""
        if self.detected_level is None:
            return prediction.expression
        return self.detected_level(prediction.expression, prediction.extra["library"], detected_genes)

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


class PoissonLikelihood(Float32Statistics):
    """Poisson counts around the mean model's expected counts, with each gene's overdispersion
    measured from the fit's residuals (quasi-Poisson), for the read-outs.

    The training objective is the Poisson log-likelihood: its estimating equation gives consistent
    means whatever the counts' variance, and it has no dispersion to learn. But counts are
    overdispersed, and a Poisson understates how often a gene is missed and how far its measured
    values spread: its E[log1p(counts per 10,000)] ran high for every gene seen as more than a few
    counts, and with it the imputation's floor (`CountHead.detected`; tutorial atlas, `resource`:
    the floor bound at 17% of hidden entries, squared error 0.866 against the depth baseline's
    0.801). So the read-outs (`expected_log1p`, `sample`) take the NB with the same mean and each
    gene's moment estimate 1 / theta = sum(w ((counts - mean)^2 - mean)) / sum(w mean^2) over recent
    training cells (running sums, like `DetectedLevel`'s; Poisson for a gene with no excess, and
    before any training step). w = (1 + mean / theta)^-2, at the current estimate, weighs each cell
    by the inverse square of its variance relative to its mean's (the moment equation's efficient
    weights); unweighted, the cells with the most counts set the estimate: the floor still bound at
    3% of the entries (0.674 / 0.729 / 0.824), weighted at 0.2% (0.679 / 0.730 / 0.802). The
    objective's gradient stays the Poisson's; its value, and so the held-out log-likelihood, is
    that of the NB the read-outs use (tutorial atlas: -372.5 nats per cell, where the Poisson's
    -1,682.5 lost to the library-size NB's -397.7)."""

    STATS: dict[str, tuple[str, ...]] = {}
    # each rank sums its own cells: averaged across ranks after every step (their ratio is unchanged)
    RUNNING_STATISTICS = ("moments",)
    FLOAT32_BUFFERS = ("moments",)

    def __init__(self, n_genes: int) -> None:
        super().__init__()
        # per gene, over recent training cells: the sum of (counts - mean)^2 - mean, and of mean^2
        self.register_buffer("moments", torch.zeros(2, n_genes))
        # whether any training step fitted the moments, kept on the host: asking the buffer (.any())
        # on every call cost two GPU syncs per training step
        self.measured = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """A model saved before the dispersion was measured: zeros, read as a Poisson, as it was."""
        saved = state_dict.setdefault(prefix + "moments", torch.zeros_like(self.moments))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.measured = saved.device.type != "meta" and bool((saved[1] > 0).any())  # once, at load

    def extras(self, z: torch.Tensor) -> dict:
        return {}

    def log_prob(self, counts: torch.Tensor, prediction: Prediction) -> torch.Tensor:
        """(B, G) log-likelihood of counts. Its value is the NB's at the measured dispersion (the
        Poisson's before any), what the model says the counts are; its gradient the Poisson's."""
        poisson = poisson_log_prob(counts, prediction.mean)
        theta = self.dispersion()
        if theta is None:
            return poisson
        with torch.no_grad():
            value = negative_binomial_log_prob(counts, prediction.mean, theta)
        return value.to(poisson.dtype) + (poisson - poisson.detach())

    @torch.no_grad()
    def fit(self, counts: torch.Tensor, prediction: Prediction) -> None:
        """Fold a training batch's counts and expected counts (B, G) into the moments."""
        mean, counts = prediction.mean.float(), counts.float()
        theta = self.dispersion()
        weight = torch.ones_like(mean) if theta is None else (1 + mean / theta).pow(-2)
        terms = torch.stack([(weight * ((counts - mean).pow(2) - mean)).sum(0), (weight * mean.pow(2)).sum(0)])
        self.moments.mul_(DETECTED_DECAY).add_(terms)
        self.measured = True

    def dispersion(self) -> torch.Tensor | None:
        """(G,) each gene's measured theta (QUASI_DISPERSION_RANGE), or None before any training step."""
        if not self.measured:
            return None
        excess, square = self.moments
        low, high = QUASI_DISPERSION_RANGE
        return (square.clamp(min=1e-12) / excess.clamp(min=1e-30)).clamp(low, high)

    def sample(self, prediction: Prediction) -> torch.Tensor:
        """Counts drawn as Poisson(Gamma(theta, theta / mean)) at the measured dispersion (Poisson
        before any; seed with torch.manual_seed)."""
        theta = self.dispersion()
        if theta is None:
            return torch.poisson(prediction.mean)
        mean = prediction.mean.clamp(min=1e-8)
        return torch.poisson(torch.distributions.Gamma(theta.expand_as(mean), theta / mean).sample())

    def expected_log1p(self, prediction: Prediction, scale: torch.Tensor, detected: bool = False,
                       entries: torch.Tensor | None = None) -> torch.Tensor:
        return expected_log1p(*at_entries(entries, prediction.mean, scale, self.dispersion()), detected=detected)

    def statistics(self, prediction: Prediction) -> dict:
        return {}


# a measured theta's range: above 1e6 an NB is a Poisson to float64's digits; below 1e-2 a gene is
# nearly all zeros and single huge counts, which a few hundred training cells cannot tell apart
QUASI_DISPERSION_RANGE = (1e-2, 1e6)


class CountHead(nn.Module):
    """A likelihood on raw counts: `mean_model` gives expected counts, `likelihood` scores them.

    Enhancements fill the two parts: stochastic puts a negative binomial in `likelihood`,
    resource puts capacity x allocation in `mean_model`. `detected_level` (the Gaussian head's, kept
    when the head turns into this one): see `detected`.
    """

    STATS: dict[str, tuple[str, ...]] = {}  # its two parts declare theirs

    def __init__(self, mean_model: MeanModel, likelihood: CountLikelihood, detected_level: DetectedLevel | None = None) -> None:
        super().__init__()
        self.mean_model, self.likelihood = mean_model, likelihood
        self.detected_level = detected_level

    @property
    def predicts_total(self) -> bool:
        return self.mean_model.predicts_total

    def predict(self, scores, z, basal_scores, library) -> Prediction:
        mean, extra = self.mean_model(scores, basal_scores, library)
        composition = mean / mean.sum(-1, keepdim=True).clamp(min=1e-12)
        expression = torch.log1p(TARGET_SUM * composition)
        return Prediction(expression=expression, mean=mean, extra={**extra, **self.likelihood.extras(z), "library": library})

    def loss(self, prediction: Prediction, target: CellInputs) -> torch.Tensor:
        if target.counts is None:
            raise ValueError("a count likelihood needs batch['counts'] (loader.keep_counts=true)")
        # mean over genes and cells (not the sum over genes), so its scale matches the other terms
        return -self.likelihood.log_prob(target.counts, prediction).mean()

    def knock(self, scores: torch.Tensor, current: Prediction, reference: Prediction, knock: Knock,
              zero_level: torch.Tensor) -> torch.Tensor:
        """`scores` (log rates) with each cell's perturbed gene at its measured share of its counts in
        `reference`, the cell before the perturbation (`vcell.models.knock`): its share of the
        cell's expected counts times fold x reference share / current share (unchanged without folds)."""
        if knock.folds is None:
            return scores
        index = knock.genes.clamp(min=0).unsqueeze(1)  # (B, 1)
        before, now = (torch.expm1(p.expression.gather(1, index)) for p in (reference, current))  # counts per 10,000
        fold = knock.folds.unsqueeze(1) * before / now.clamp(min=1e-12)
        log_fold = torch.log(fold.clamp(min=1e-12)) * (knock.genes.unsqueeze(1) >= 0)
        return scores.scatter_add(1, index, log_fold)

    def measured(self, prediction: Prediction) -> torch.Tensor:
        """(B, G) E[log1p(counts per 10,000)] under the likelihood: what measured cells average to.
        `expression` is log1p of the expected counts per 10,000, the cell's denoised level; log1p is
        concave, so that overstates the measured mean of every gene seen as a few counts, and a
        change of such a gene's mean more still (`vcell.models.expected`)."""
        return self.likelihood.expected_log1p(prediction, self.scale(prediction))

    @torch.no_grad()
    def fit_statistics(self, prediction: Prediction, cells: CellInputs) -> None:
        """A training step's reconstruction of its own cells: the likelihood's running statistics,
        then the hidden genes into the detected level, against the likelihood's expectation over
        detections at those entries (computed there only: see `at_entries`)."""
        if cells.counts is not None:
            self.likelihood.fit(cells.counts, prediction)
        if self.detected_level is None or cells.hidden is None:
            return
        expected = torch.zeros_like(prediction.expression)  # read by the level only where hidden
        expected[cells.hidden] = self.likelihood.expected_log1p(prediction, self.scale(prediction), detected=True,
                                                                entries=cells.hidden).to(expected.dtype)
        self.detected_level.update(expected, cells.x, cells.library, cells.hidden, detected_genes(cells))

    def detected(self, prediction: Prediction, detected_genes: torch.Tensor | None = None) -> torch.Tensor:
        """(B, G) E[log1p(counts per 10,000) | counts > 0]: the value of a gene known to be detected
        in the cell whose value is missing (a hidden gene). It exceeds `measured` most for genes
        seen as a few counts, and depends on the cell's depth (one count is more per 10,000 in a
        shallow cell).

        With a detected level (model.detected_level, given `detected_genes` (B,)): the squared-error
        models' `DetectedLevel` with this expectation in the reconstruction's place, fitted on the
        genes hidden in training (`fit_statistics`), for every gene that was; the expectation itself
        for the others. The expectation alone inherits the likelihood's misfit (a dispersion, a mean
        off for rare genes) and lost on squared error to the type's detected mean moved along the
        cell's depth (tutorial atlas: full 0.811, stochastic 0.834, resource 0.986 against 0.801);
        corrected by the level: 0.790, 0.799, 0.866, per-cell and per-gene r up too (resource's
        per-cell r 0.669 against 0.675 until its Poisson's read-outs took a measured dispersion:
        `PoissonLikelihood`). (The level on the plug-in `expression` instead, which costs nothing
        in training, lost the demo's per-gene r: 0.794 -> 0.786.)"""
        expected = self.likelihood.expected_log1p(prediction, self.scale(prediction), detected=True)
        if self.detected_level is None or detected_genes is None:
            return expected
        # genes hidden in training: the level fitted on them (none in a model saved before count models had one)
        fitted = self.detected_level.sums[0] > 0
        if not bool(fitted.any()):
            return expected
        level = self.detected_level(expected, prediction.extra["library"], detected_genes)
        # a line extrapolates: never below what a detection is at least, the mean of all measurements
        # (E[x] = P(detected) E[x | detected] for x >= 0; a tiny model put 3% of entries up to 1.8 below it)
        return torch.where(fitted, torch.maximum(level, self.measured(prediction)), expected)

    @staticmethod
    def scale(prediction: Prediction) -> torch.Tensor:
        """(B, 1) counts -> counts per 10,000 of each predicted cell."""
        return TARGET_SUM / prediction.mean.sum(-1, keepdim=True).clamp(min=1e-12)

    def statistics(self, prediction: Prediction) -> dict:
        return {**self.mean_model.statistics(prediction), **self.likelihood.statistics(prediction)}


def hide_genes(cells: CellInputs, fraction: float, training: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the cells' x with, in training, each detected gene (`CellInputs.detected`) hidden (set to 0)
    with `fraction`, the (B, G) mask of hidden genes or None when nothing is hidden).

    The loss then covers every gene, hidden ones included: a hidden gene reads as 0 to the MLP
    encoder, like a true zero, so a loss on hidden genes alone would teach it to fill in every
    zero. The transformer encoder reads the mask: a hidden gene is a token without its value."""
    if not training or fraction <= 0:
        return cells.x, None
    hidden = cells.detected & (torch.rand_like(cells.x) < fraction)
    return cells.x.masked_fill(hidden, 0.0), hidden


def detected_genes(cells: CellInputs) -> torch.Tensor:
    """(B,) how many genes each cell detects: those it shows and those withheld (measured, detected,
    set to 0 before the model sees them, as evaluation hides genes); where the input lacks some genes
    (`cells.unmeasured`), scaled up to all G at the rate of the measured ones (counted as they are, a
    cell from an input with 60% of the genes would read as a shallow cell)."""
    count = (cells.detected if cells.withheld is None else cells.detected | cells.withheld).sum(-1)
    if cells.unmeasured is None:
        return count
    n_genes = cells.unmeasured.shape[-1]
    measured = (n_genes - cells.unmeasured.sum(-1)).clamp(min=1)
    return count * n_genes / measured


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



def count_head(slots: Slots, n_genes: int) -> CountHead:
    """The slots' count head, turning the base Gaussian head into library x composition + Poisson."""
    if not isinstance(slots.head, CountHead):
        slots.head = CountHead(LibraryMean(), PoissonLikelihood(n_genes), slots.head.detected_level)
    return slots.head


def condition_shift(dynamics: nn.Module) -> ConditionShift:
    """The base perturbation shift inside whatever dynamics module wraps it."""
    return dynamics if isinstance(dynamics, ConditionShift) else dynamics.shift
