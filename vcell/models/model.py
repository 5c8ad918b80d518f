"""`VirtualCell`: the one model, assembled from slots that enhancements fill.

    model = VirtualCell(ModelConfig(name="temporal+memory"), spec)
    output = model(batch)                 # ModelOutput(latent, expression, losses, stats)
    output.loss.backward()
    prediction = model.predict(batch, Conditions(time=torch.full((n,), 4.0)))   # counterfactual

A forward pass does two things. Reconstruction: hide some measured genes, encode, decode the
cell itself. Response: pair each perturbed / stimulated / primed cell with a random basal
cell (control, unstimulated, naive) of the same context, move the basal cell's state through
the dynamics to the target's conditions and decode it; the loss compares it with the target
cell. Basal cells are targets too (model.response_basal_targets): their conditions change
nothing, so they anchor the decoded start of every response to measured cells. `predict` does
the same for any conditions, seen or not.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from torch import nn

from vcell.config.model import ModelConfig
from vcell.errors import VCellError
from vcell.models.blocks import MLP, Float32Statistics
from vcell.models.covariates import BatchOffset
from vcell.models.flops import training_flops_per_cell
from vcell.models.enhancements import install_enhancements
from vcell.models.inputs import CellInputs, Conditions, ModelOutput, Prediction
from vcell.models.knock import GeneKnock, Knock
from vcell.models.slots import (
    ConditionShift, CountHead, DeterministicLatent, GaussianHead, MLPEncoder, Slots, condition_shift, detected_genes,
    hide_genes, pair_cells,
)
from vcell.models.spec import ModelSpec
from vcell.models.transformer import TransformerEncoder


def base_slots(config: ModelConfig, spec: ModelSpec, control_code: int) -> Slots:
    hidden, n_layers, latent = config.dimensions()
    if config.encoder == "transformer":
        encoder: nn.Module = TransformerEncoder(spec.n_genes, config.transformer)
    else:
        encoder = MLPEncoder(spec.n_genes, hidden, n_layers, config.dropout)
    return Slots(
        encoder=encoder,
        latent=DeterministicLatent(hidden, latent),
        dynamics=ConditionShift(spec.n_perturbations, latent, control_code),
        decoder=MLP(latent, [hidden] * n_layers, spec.n_genes, config.dropout, output_axis="gene"),
        head=GaussianHead(spec.n_genes if config.detected_level else 0, spec.zero_level),
    )


def start_decoder_at(decoder: MLP, start) -> None:
    """Start the decoder's scores (B, G) at each gene's typical value (G,): its mean where scores
    are expression (a Gaussian head), the log of its typical share of the counts where they are log
    composition (a count head).

    From 0, a highly expressed gene (log1p cp10k ~7) climbs towards its level for hundreds of
    steps, and meanwhile the response's gene terms learn the missing level of stimulated cells as
    a response to the stimulus (temporal: a change of +0.3 at 4 h on genes the stimulus leaves
    alone, and a held-out change Pearson of 0.66 instead of 0.84 after 300 steps). A count model
    started from a uniform composition spent its first steps learning the genes' shares through
    whatever could move many genes at once: with the pathway decoder term that was a few latent
    directions, and the latent collapsed onto them (`full` on the 6,000-cell science atlas, 300
    steps: kNN accuracy of cell type 0.90 / 0.91 over seeds 0 / 1, below PCA's 0.94)."""
    with torch.no_grad():
        decoder[-1].bias.copy_(torch.as_tensor(start, dtype=decoder[-1].bias.dtype))


class VirtualCell(Float32Statistics):
    """The composable model (see module doc). Single-device: no distributed code in here.

    `zero_level` (G,): what a zero count reads as in the loader's values (`ModelSpec.zero_level`; 0
    without a z-score), against which `CellInputs.detected` is taken. Not saved (the spec, or a saved
    model's normalisation, gives it) and float32 under a bf16 cast (`Float32Statistics`): the comparison
    with the loader's float32 values must stay exact."""

    FLOAT32_BUFFERS = ("zero_level",)

    def __init__(self, config: ModelConfig, spec: ModelSpec) -> None:
        super().__init__()
        self.config, self.spec = config, spec
        self.control_code = spec.control_code
        slots = base_slots(config, spec, self.control_code)
        install_enhancements(slots, config, spec)
        starts = {GaussianHead: spec.gene_mean, CountHead: spec.gene_log_share}  # what each head's scores are
        start = starts.get(type(slots.head))
        if start is not None:
            start_decoder_at(slots.decoder, start)
        self.encoder, self.latent, self.dynamics = slots.encoder, slots.latent, slots.dynamics
        self.decoder, self.head = slots.decoder, slots.head
        self.gene_terms, self.auxiliary = nn.ModuleList(slots.gene_terms), nn.ModuleList(slots.auxiliary)
        self.readouts = nn.ModuleList(slots.readouts)
        self.residuals = nn.ModuleList(slots.residuals)
        reads_batch = config.batch_covariate and spec.n_batches > 0  # auto: the spec has batches where the atlas does
        self.batch_offset = BatchOffset(spec.n_batches, spec.n_genes) if reads_batch else None
        zero = torch.zeros(spec.n_genes) if spec.zero_level is None else torch.as_tensor(spec.zero_level, dtype=torch.float32)
        self.register_buffer("zero_level", zero, persistent=False)
        # a gene perturbation left on the shift (no network carries it) can be knocked in silico when unseen
        knocks = config.in_silico_knock and bool((condition_shift(self.dynamics).routed & (spec.perturbation_gene >= 0)).any())
        self.gene_knock = GeneKnock(spec.perturbation_gene, self.control_code, spec.n_genes) if knocks else None

    # -- the pieces ---------------------------------------------------------------------------
    def encode(self, x_in: torch.Tensor, cells: CellInputs) -> tuple[torch.Tensor, dict, dict]:
        """(z (B, D), losses, stats) of cells whose visible expression is x_in."""
        if self.batch_offset is not None:
            shown = cells.detected if cells.hidden is None or cells.detected is None else cells.detected & ~cells.hidden
            x_in = self.batch_offset(x_in, cells.batch, encoder_input=True, shown=shown)  # the batch's learned effect taken off
        h, losses, stats = self.encoder(x_in, cells)
        z, latent_losses, latent_stats = self.latent(h)
        return z, {**losses, **latent_losses}, {**stats, **latent_stats}

    def decode(
        self, z: torch.Tensor, basal: torch.Tensor, library: torch.Tensor, conditions: Conditions | None = None,
        batch: torch.Tensor | None = None, knock: Knock | None = None,
    ) -> Prediction:
        """Expression of states z (B, D) under `conditions`, measured in `batch` (B,) codes (read by
        model.batch_covariate; None: no batch offset); `basal` (B, D) is the state before any
        condition (z itself when decoding a cell as it is): heads that predict how the total
        counts move (resource) compare the two cells' gene scores. `knock`: each cell's perturbed
        gene read at its share of its level in `basal`'s decoding (`in_silico`)."""
        scores = self.gene_scores(z, conditions, batch)
        needs_basal = self.head.predicts_total and (basal is not z or conditions is not None)
        basal_scores = self.gene_scores(basal, None, batch) if needs_basal else scores
        knocks = getattr(self.head, "knock", None)  # optional for a head (`contracts.Head`)
        if knock is not None and knocks is not None:
            basal_scores = basal_scores if needs_basal else self.gene_scores(basal, None, batch)
            reference = self.head.predict(basal_scores, basal, basal_scores, library)  # the cell before it
            current = self.head.predict(scores, z, basal_scores, library)
            scores = knocks(scores, current, reference, knock, self.zero_level)
        return self.head.predict(scores, z, basal_scores, library)

    def in_silico(self, conditions: Conditions) -> Knock | None:
        """The in-silico knock of each cell's perturbed gene (`vcell.models.knock`): perturbations on
        the latent shift's route whose code names a gene; None: no cell has one, or none measured."""
        code = conditions.perturbation
        if self.gene_knock is None or code is None:
            return None
        shift = condition_shift(self.dynamics)
        return self.gene_knock.plan(code, shift.rows(code) >= 0, shift.untrained(code))

    def gene_scores(
        self, z: torch.Tensor, conditions: Conditions | None, batch: torch.Tensor | None = None, residual: bool = True,
    ) -> torch.Tensor:
        """(B, G) the decoder's scores of states z plus every gene term's (and the batch's offset);
        with `residual`, plus the residual routes' correction of seen conditions (`vcell.models.residual`)."""
        scores = self.decoder(z)
        for term in self.gene_terms:
            scores = term(scores, z, conditions)
        correction = self.residual_scores(conditions) if residual else None
        scores = scores if correction is None else scores + correction
        return scores if self.batch_offset is None else self.batch_offset(scores, batch)

    def residual_scores(self, conditions: Conditions | None, half: torch.Tensor | None = None) -> torch.Tensor | None:
        """(B, G) the residual routes' summed correction under `conditions`; None when there is none.
        `half` (B,): each cell's half of the split the routes learn on (training); None: prediction."""
        parts = [part for part in (route(conditions, half) for route in self.residuals) if part is not None]
        return torch.stack(parts).sum(0) if parts else None

    # -- training forward -----------------------------------------------------------------------
    def inputs(self, batch: dict[str, torch.Tensor]) -> CellInputs:
        cells = CellInputs.from_batch(batch, self.config.columns, self.zero_level)
        check_conditions(cells.conditions, self.spec)
        return cells

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        cells = self.inputs(batch)
        x_in, hidden = hide_genes(cells, self.config.mask_fraction, self.training)
        z, prediction, losses, stats = self.cell_pass(x_in, dataclasses.replace(cells, hidden=hidden))
        response_losses, response_stats = self.response(z, x_in is cells.x, cells)
        if self.training:
            self.latent.tick()
            if self.gene_knock is not None:
                self.gene_knock.observe(cells, self.zero_level)
        losses.update(response_losses)
        stats.update(response_stats)
        return ModelOutput(latent=z, expression=prediction.expression, losses=losses, stats=stats)

    def cell_pass(self, x_in: torch.Tensor, cells: CellInputs) -> tuple[torch.Tensor, Prediction, dict, dict]:
        """Each cell on its own: (z, its reconstruction, losses, statistics); no pairing of cells."""
        z, losses, stats = self.encode(x_in, cells)
        # decode(z, z, library, batch=cells.batch) in two steps: the scores before the batch's
        # offset are kept for the read-outs (decoding twice would run the decoder twice)
        scores = self.gene_scores(z, None)  # (B, G) the cell itself, before its batch's offset
        measured = scores if self.batch_offset is None else self.batch_offset(scores, cells.batch)
        prediction = self.head.predict(measured, z, measured, cells.library)
        losses["reconstruction"] = self.head.loss(prediction, cells)
        if self.training:
            self.head.fit_statistics(prediction, cells)
        stats.update(self.head.statistics(prediction))
        for auxiliary in self.auxiliary:
            auxiliary_losses, auxiliary_stats = auxiliary(z, cells)
            losses.update(auxiliary_losses)
            stats.update(auxiliary_stats)
        if self.readouts:
            # read-outs describe the cell, not the batch it was measured in: decoded without the
            # batch's offset (science atlas, pathway activity vs truth: 0.599 with it, 0.611 without)
            with torch.no_grad():
                cell = prediction if measured is scores else self.head.predict(scores, z, scores, cells.library)
                # what the decoder left of the measured cell (B, G), for read-outs that shrink it in
                # (only they are handed it: a read-out written as (prediction, cells) still works)
                asking = [getattr(readout, "reads_residual", False) for readout in self.readouts]
                residual = self.whole_residual(cells, prediction) if any(asking) else None
            for readout, asks in zip(self.readouts, asking):
                stats.update(readout(cell, cells, residual) if asks else readout(cell, cells))
        return z, prediction, losses, stats

    @torch.no_grad()
    def whole_residual(self, cells: CellInputs, prediction: Prediction) -> torch.Tensor:
        """(B, G) measured minus decoded-as-measured, the cells decoded from their whole expression
        as in evaluation. In training `prediction` comes from the masked encoding (and a sampled
        latent), whose residuals share more of each pathway's deviation than a whole cell's do: the
        read-out's reliabilities estimated on them were 0.02-0.09 too high (science atlas, seeds 0 / 1 / 2:
        pathway activity 0.627 / 0.623 / 0.624, now 0.629 / 0.625 / 0.626). So a training step that asks
        decodes its batch once more, whole, in evaluation mode (no random draw, the same loss; ~4% of `full`'s
        step time, on every `DEVIATION_EVERY`-th step)."""
        if cells.hidden is None and not self.training:
            return cells.x - self.head.measured(prediction)
        with self.evaluating():
            z = self.encode(cells.x, cells)[0]
            measured = self.gene_scores(z, None, cells.batch)
            return cells.x - self.head.measured(self.head.predict(measured, z, measured, cells.library))

    def response(self, z: torch.Tensor, unmasked: bool, cells: CellInputs) -> tuple[dict, dict]:
        """The response loss over (basal, target) pairs of this batch (empty when none pair).

        Basal cells are encoded from their whole expression, as `predict` will see them: starting
        the dynamics from masked encodings in training but whole ones at inference lets the
        learned response drift with the masking."""
        basal = cells.conditions.is_basal(self.control_code)
        # evaluation pairs the same cells on every call (a fresh seeded generator on z's device)
        generator = None if self.training else torch.Generator(device=z.device).manual_seed(0)
        pairs = pair_cells(cells.context, basal, generator, self.config.response_basal_targets)
        if pairs is None or self.config.response_weight == 0:
            return {}, {}
        basal_rows, target_rows = pairs
        targets, basal_cells = cells.take(target_rows), cells.take(basal_rows)
        start = z[basal_rows] if unmasked else self.encode(basal_cells.x, basal_cells)[0]
        state, stats = self.dynamics(start, targets.conditions)
        # decoded in the target's batch: the cell it is compared with was measured there
        scores = self.gene_scores(state, targets.conditions, targets.batch, residual=False)
        covered = self.residual_rows(targets.conditions)
        # the start's own decoding: for heads that predict the total from it, and for covered targets
        needs_start = self.head.predicts_total or covered is not None
        start_scores = self.gene_scores(start, None, targets.batch) if needs_start else scores
        mechanism, anchored = split_start(scores, start_scores, covered)
        prediction = self.head.predict(mechanism, state, anchored, targets.library)
        losses = {}
        reference = basal_log_library(cells, basal)[target_rows] if self.head.predicts_total else None
        if reference is not None:
            prediction, losses["response_total"] = at_observed_total(prediction, targets.library, reference)
        losses["response"] = self.head.loss(prediction, targets)
        moved = targets.conditions.perturbed_at_rest(self.control_code) if self.config.latent_response_weight else None
        if moved is not None:
            losses["response_latent"] = self.config.latent_response_weight * latent_gap(z[target_rows], state, moved)
        if covered is not None:
            losses["response_residual"] = self.residual_loss(scores, start_scores, state, targets, reference, covered)
        return {name: self.config.response_weight * loss for name, loss in losses.items()}, stats

    def residual_rows(self, conditions: Conditions) -> torch.Tensor | None:
        """(n,) the response targets a residual route covers (None: none; `vcell.models.residual`)."""
        covers = [route.covers(conditions) for route in self.residuals]
        rows = torch.nonzero(torch.stack(covers).any(0))[:, 0] if covers and len(covers[0]) else None
        return None if rows is None or not len(rows) else rows

    def residual_loss(
        self, scores: torch.Tensor, start_scores: torch.Tensor, state: torch.Tensor, targets: CellInputs,
        reference: torch.Tensor | None, rows: torch.Tensor,
    ) -> torch.Tensor:
        """The covered targets' response loss scored a second time (see `vcell.models.residual`):
        their prediction (R, G), held fixed, plus the residual routes. Its gradient reaches the
        routes and the head's own parameters only."""
        targets = targets.take(rows)
        corrected = scores[rows].detach() + self.residual_scores(targets.conditions, targets.split_half())
        prediction = self.head.predict(corrected, state[rows].detach(), start_scores[rows].detach(), targets.library)
        if reference is not None:
            prediction, _ = at_observed_total(prediction, targets.library, reference[rows])
        return self.head.loss(prediction, targets)

    # -- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor], conditions: Conditions) -> Prediction:
        """Expression of the batch's cells moved to `conditions` (each (B,) or None = as basal)."""
        with self.evaluating():
            cells = self.inputs(batch)
            check_conditions(conditions, self.spec)
            z, _, _ = self.encode(cells.x, cells)
            knock = self.in_silico(conditions)
            # a perturbation the shift never trained: the cell as the encoder reads it with its gene knocked
            unseen = knock is not None and bool(knock.unseen.any())
            start = self.encode(knock.inputs(cells.x, self.zero_level), cells)[0] if unseen else z
            state, _ = self.dynamics(start, conditions)
            return self.decode(state, z, cells.library, conditions, cells.batch, knock)

    @torch.no_grad()
    def predict_measured(self, batch: dict[str, torch.Tensor], conditions: Conditions) -> torch.Tensor:
        """(B, G) the batch's cells moved to `conditions`, as the mean of what measuring such cells
        gives (log1p counts per 10,000): the value to average over cells and compare with observed
        pseudobulks. For a count model this is the expectation under its likelihood, not
        `predict(...).expression` (log1p of the expected counts: see `CountHead.measured`)."""
        return self.head.measured(self.predict(batch, conditions))

    @torch.no_grad()
    def trajectory(self, batch: dict[str, torch.Tensor], hours: list[float], conditions: Conditions | None = None) -> torch.Tensor:
        """(T, B, G) expression of the batch's cells at each of `hours` after a stimulus (other
        conditions from `conditions`); `temporal.response_half_times` reads kinetics off it."""
        conditions = conditions or Conditions()
        n = len(batch["x"])
        return torch.stack([
            self.predict(batch, Conditions(conditions.perturbation, torch.full((n,), float(t)), conditions.hours_since_pulse)).expression
            for t in hours
        ])

    @torch.no_grad()
    def reconstruct(self, batch: dict[str, torch.Tensor], *, batch_effect: bool = True) -> Prediction:
        """The batch's cells decoded from their own (unmasked) state: as measured in their batch, or
        with `batch_effect=False` without its learned offset (what read-outs describe)."""
        return self.decoded(batch, batch_effect)[1]

    @torch.no_grad()
    def decoded(self, batch: dict[str, torch.Tensor], batch_effect: bool = True) -> tuple[CellInputs, Prediction]:
        """`reconstruct`, with the cells as the model read them."""
        with self.evaluating():
            cells = self.inputs(batch)
            z, _, _ = self.encode(cells.x, cells)
            return cells, self.decode(z, z, cells.library, batch=cells.batch if batch_effect else None)

    @torch.no_grad()
    def denoise(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, G) each cell's denoised expression (log1p per 10,000) without its batch's learned
        offset: what the cell's state says, free of counting noise and of the batch it was measured
        in (a count model: log1p of its expected counts per 10,000)."""
        return self.reconstruct(batch, batch_effect=False).expression

    @torch.no_grad()
    def impute(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, G) each gene's value (log1p counts per 10,000) were it detected in the cell, from
        the genes the cell shows: what a measured but missing (hidden) value is. With
        model.detected_level, the learned detected level (`DetectedLevel`; a count model: for the
        genes hidden in training, `CountHead.detected`); without one, a count model takes the
        expectation over detections (counts > 0) under its likelihood, and a Gaussian model, which
        has no model of detection, gives its reconstruction. `batch["withheld"]` (B, G) bool, optional: measured genes withheld
        from the model (their x set to 0), which the cell still counts among its detected genes;
        `batch["unmeasured"]`: genes the input lacks (`vcell.evaluate.cells`; see `detected_genes`)."""
        cells, prediction = self.decoded(batch)
        return self.head.detected(prediction, detected_genes(cells))

    @torch.no_grad()
    def sample(self, batch: dict[str, torch.Tensor], conditions: Conditions | None = None) -> torch.Tensor:
        """(B, G) counts drawn from the model for the batch's cells (under `conditions`)."""
        if self.head.likelihood is None:
            raise ValueError("sampling counts needs a count model (the stochastic or resource enhancement)")
        prediction = self.predict(batch, conditions or Conditions())
        return self.head.likelihood.sample(prediction)

    @torch.no_grad()
    def embed(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """Latent, reconstruction and statistics of the batch's cells, without masking."""
        with self.evaluating():
            return self(batch)

    @torch.no_grad()
    def describe(self, batch: dict[str, torch.Tensor], *, denoised: bool = False, imputed: bool = False) -> ModelOutput:
        """Latent, reconstruction and the per-cell and per-gene statistics of the batch's cells,
        each cell on its own (no response pass): what `vcell embed` writes, ~10x cheaper than `embed`.
        `denoised` / `imputed`: also `views` of the same cells as `denoise` / `impute` give them, from
        this one encoding (each of those methods encodes the cells again)."""
        with self.evaluating():
            cells = self.inputs(batch)
            z, prediction, losses, stats = self.cell_pass(cells.x, cells)  # prediction: as `reconstruct` decodes
            views = {}
            if denoised:  # decoded without the batch's offset
                cell = prediction if self.batch_offset is None else self.decode(z, z, cells.library)
                views["denoised"] = cell.expression
            if imputed:
                views["imputed"] = self.head.detected(prediction, detected_genes(cells))
            return ModelOutput(latent=z, expression=prediction.expression, losses=losses, stats=stats, views=views)

    def training_flops(self, output: ModelOutput) -> float:
        """FLOPs of the training step that gave `output` (forward + backward; `vcell.models.flops`),
        from each cell's own gene tokens (transformer: attention grows with their square)."""
        tokens = output.stats.get("gene_tokens")
        if tokens is None:  # the MLP reads every gene: the same for every cell
            return len(output.latent) * training_flops_per_cell(self.config, self.spec.n_genes)
        return float(training_flops_per_cell(self.config, self.spec.n_genes, tokens.double()).sum())

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Evaluation mode inside, the previous mode restored after (inference inside training)."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    def stat_shapes(self) -> dict[str, tuple[str, ...]]:
        """Every statistic this model emits -> its symbolic shape (B cells, G genes, P pathways,
        C compartments, D latent, E prior edges, S scales, M memory, R cells moved by the dynamics):
        the `STATS` of every slot module and of the parts they hold (layers inside them have none)."""
        shapes: dict[str, tuple[str, ...]] = {}
        for module in self.modules():
            shapes.update(getattr(module, "STATS", {}))  # nn.Linear & co. declare nothing
        return shapes



def split_start(
    scores: torch.Tensor, start_scores: torch.Tensor, rows: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(target scores, start scores), both (R, G), with the start's decoding detached at `rows`, the
    targets a residual route covers (perturbed cells at rest whose perturbation a gene term
    carries): their response teaches the mechanism only, and `residual_loss` what it leaves.
    Unchanged without such rows.

    Why: a response target's gradient on the start pulls the control cell's decoding towards the
    target by whatever the mechanism leaves. On SERGIO, 6 of 7 targets knocked down and a network
    that cannot carry its cascades, `regulatory` decoded control cells at their type's mean over
    all conditions (slope 0.9 of the gap): the seen deltas inherited it and knocked-down cells were
    embedded among controls; detached, slope 0.1. Letting those targets teach the start again in
    the residual's scoring brought the pull back (slope 0.97: the decoder learns the leftover
    common to all perturbations faster than each perturbation's residual does)."""
    if rows is None:
        return scores, start_scores
    detached = torch.zeros(len(scores), 1, dtype=torch.bool, device=scores.device)
    detached[rows] = True
    anchored = torch.where(detached, start_scores.detach(), start_scores)
    return scores - start_scores + anchored, anchored


def latent_gap(target_latent: torch.Tensor, state: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between the targets' own encodings (R, D) and the states (R, D) the
    mechanism moved their starts to, over the `moved` (R,) targets (`model.latent_response_weight`:
    perturbed cells at rest); 0 without any.

    Why: the response loss scores a target only after decoding, so nothing asks a perturbed cell's
    encoding to agree with the state the mechanism gives its context's control cells (a latent
    shift, or none where the network carries the perturbation). On SERGIO knocked-down cells were
    embedded among other cell types. Basal targets are left out (their pull would cluster cells by
    the context label alone), and so are stimulated and primed ones: their mechanisms (temporal,
    memory) read the state the pull would move, and pulling them too did no better on the demo
    atlas (memory read-out 0.743 / 0.734 against 0.745 / 0.731 at rest only, 0.758 / 0.753 without)."""
    if not moved.any():
        return 0.0 * (target_latent.sum() + state.sum())  # in the graph, so every rank's loss has the same terms
    return (target_latent[moved] - state[moved]).pow(2).sum(-1).mean()


def at_observed_total(
    prediction: Prediction, target_library: torch.Tensor, basal_log_library: torch.Tensor
) -> tuple[Prediction, torch.Tensor]:
    """(the prediction at the target's own observed total, the loss of the predicted total shift).

    Pairs are random cells, whose depths differ far more than a condition moves the total:
    scoring the target's counts at the basal cell's total would make the count model absorb that
    depth noise (and widen every gene's dispersion). So the counts are scored as a composition at
    the target's total, and the shift of the total in log space against the mean log total of
    the basal cells of its context (`basal_log_library`), where the depth noise averages out.
    Not against the paired basal cell's own total: its depth would be predictable from its
    state, and the latent learned to encode depth to predict it (kNN accuracy 0.27 in `full`)."""
    log_ratio = prediction.extra["log_total_ratio"]  # (R,) log(predicted total / basal total)
    observed = torch.log(target_library.clamp(min=1.0)) - basal_log_library
    mean = prediction.mean * torch.exp(-log_ratio).unsqueeze(-1)
    return dataclasses.replace(prediction, mean=mean), (log_ratio - observed).pow(2).mean()


def basal_log_library(cells: CellInputs, basal: torch.Tensor) -> torch.Tensor:
    """(B,) for each cell, the mean log library size of the batch's basal cells of its context."""
    context = torch.zeros_like(basal, dtype=torch.long) if cells.context is None else cells.context.clamp(min=0)
    n_groups = int(context.max()) + 1
    log_library = torch.log(cells.library.clamp(min=1.0)) * basal
    sums = log_library.new_zeros(n_groups).index_add_(0, context, log_library)
    counts = log_library.new_zeros(n_groups).index_add_(0, context, basal.to(log_library.dtype))
    return (sums / counts.clamp(min=1.0))[context]


def check_conditions(conditions: Conditions, spec: ModelSpec) -> None:
    """Perturbation codes must be categories the model was built for (-1 = missing)."""
    code = conditions.perturbation
    if code is None or not len(code):
        return
    largest = int(code.max())
    if largest >= spec.n_perturbations:
        raise VCellError(
            f"perturbation code {largest} is outside the {spec.n_perturbations} perturbation categories "
            "this model was built for",
            hint="encode perturbations with the training atlas's categories (the export's categories.json), "
            "or fine-tune with train.init_from to add new ones",
        )
