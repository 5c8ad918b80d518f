"""The model's inputs and outputs: one batch view in, one output type out.

    cells = CellInputs.from_batch(batch, config.columns)   # the loader's dict of tensors
    output = model(batch)                                   # ModelOutput
    loss = output.loss                                      # sum of the named, weighted terms
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from vcell.config.model import ColumnsConfig


@dataclass
class Conditions:
    """What happened to a cell, each (B,) or None when the data does not say.

    perturbation: int64 category code (the control code or -1 = not perturbed); time: hours
    since the stimulus (0 = unstimulated); hours_since_pulse: hours since an earlier pulse
    (NaN = naive).
    """

    perturbation: torch.Tensor | None = None
    time: torch.Tensor | None = None
    hours_since_pulse: torch.Tensor | None = None

    def take(self, rows: torch.Tensor) -> Conditions:
        return Conditions(*(None if (value := getattr(self, f.name)) is None else value[rows] for f in fields(self)))

    def at_rest(self) -> torch.Tensor | None:
        """(B,) bool: unstimulated and naive, whatever the perturbation (None: no such columns)."""
        return Conditions(None, self.time, self.hours_since_pulse).is_basal(-1)

    def perturbed_at_rest(self, control_code: int) -> torch.Tensor | None:
        """(B,) bool: perturbed (a code other than the control's) and otherwise at rest (None: no
        perturbation column)."""
        if self.perturbation is None:
            return None
        perturbed = (self.perturbation >= 0) & (self.perturbation != control_code)
        at_rest = self.at_rest()
        return perturbed if at_rest is None else perturbed & at_rest

    def is_basal(self, control_code: int) -> torch.Tensor | None:
        """(B,) bool: unperturbed, unstimulated and naive (missing information counts as basal)."""
        flags = []
        if self.perturbation is not None:
            flags.append((self.perturbation == control_code) | (self.perturbation < 0))
        if self.time is not None:
            flags.append(~(self.time > 0))
        if self.hours_since_pulse is not None:
            flags.append(torch.isnan(self.hours_since_pulse))
        if not flags:
            return None
        basal = flags[0]
        for flag in flags[1:]:
            basal = basal & flag
        return basal


def detected_entries(values, zero_level=None):
    """(n, G) bool: the entries of values (n, G; torch or numpy, as zero_level) that are detections,
    those not at the value a zero count takes as the loader delivers it (`ModelSpec.zero_level`,
    (G,) or None: 0). Under loader.normalize.zscore a zero count reads as the gene's -mean/sd, so
    "x > 0" would count only the values above the gene's mean."""
    return values != (0 if zero_level is None else zero_level)


def known_entries(shown: torch.Tensor, withheld: torch.Tensor | None, unmeasured: torch.Tensor | None) -> dict:
    """CellInputs' detected, withheld and unmeasured masks: a withheld or unmeasured gene reads as 0,
    which under a z-score is no zero count's value, so it is never among the genes the cell shows."""
    masks = {"withheld": withheld, "unmeasured": unmeasured}
    masks = {name: None if mask is None else mask.to(device=shown.device, dtype=torch.bool) for name, mask in masks.items()}
    for mask in masks.values():
        shown = shown if mask is None else shown & ~mask
    return {"detected": shown, **masks}


@dataclass
class CellInputs:
    """One batch as the model sees it: x (B, G) normalised expression, counts (B, G) raw or
    None, library (B,) total counts, context (B,) pairing group code or None, conditions;
    hidden (B, G) bool: the genes hidden from the encoder in this pass (None: none); detected (B, G)
    bool: the genes the cell shows (`detected_entries`), neither withheld nor unmeasured; withheld
    (B, G) bool or None: measured genes set to 0 before the model sees them (as evaluation hides
    genes): detected, their values unknown; unmeasured (B, G) bool or None: genes the input lacks
    (`vcell.evaluate.cells`): nothing known."""

    x: torch.Tensor
    counts: torch.Tensor | None
    library: torch.Tensor
    context: torch.Tensor | None
    conditions: Conditions
    hidden: torch.Tensor | None = None
    batch: torch.Tensor | None = None  # (B,) int64 batch code (model.columns.batch), read by a batch covariate
    index: torch.Tensor | None = None  # (B,) the cell's atlas row (the loader's cell_index): a stable identity
    detected: torch.Tensor | None = None  # (B, G) bool, filled by `from_batch`
    withheld: torch.Tensor | None = None  # (B, G) bool: batch["withheld"]
    unmeasured: torch.Tensor | None = None  # (B, G) bool: batch["unmeasured"]

    @classmethod
    def from_batch(cls, batch: dict[str, torch.Tensor], columns: ColumnsConfig,
                   zero_level: torch.Tensor | None = None) -> CellInputs:
        """The loader's dict of tensors (optional "withheld" and "unmeasured" masks, see the class doc);
        `zero_level` (G,): what a zero count reads as (`detected_entries`)."""
        x = batch["x"]
        if x.layout != torch.strided:  # the loader's sparse CSR option
            x = x.to_dense()

        def column(name: str | None, dtype: torch.dtype) -> torch.Tensor | None:
            return batch[name].to(dtype) if name and name in batch else None

        library = batch.get("library_size")
        return cls(
            x=x.float(),
            counts=None if batch.get("counts") is None else batch["counts"].float(),
            library=(x.new_ones(len(x)) if library is None else library.float()),
            context=column(columns.context, torch.long),
            conditions=Conditions(
                perturbation=column(columns.perturbation, torch.long),
                time=column(columns.time, torch.float32),
                hours_since_pulse=column(columns.history, torch.float32),
            ),
            batch=column(columns.batch, torch.long),
            index=None if batch.get("cell_index") is None else torch.as_tensor(batch["cell_index"], device=x.device),
            **known_entries(detected_entries(x, zero_level), batch.get("withheld"), batch.get("unmeasured")),
        )

    def take(self, rows: torch.Tensor) -> CellInputs:
        return CellInputs(
            x=self.x[rows],
            counts=None if self.counts is None else self.counts[rows],
            library=self.library[rows],
            context=None if self.context is None else self.context[rows],
            conditions=self.conditions.take(rows),
            hidden=None if self.hidden is None else self.hidden[rows],
            batch=None if self.batch is None else self.batch[rows],
            index=None if self.index is None else self.index[rows],
            **{name: None if getattr(self, name) is None else getattr(self, name)[rows]
               for name in ("detected", "withheld", "unmeasured")},
        )

    def split_half(self) -> torch.Tensor:
        """(B,) each cell's half (0 or 1) of a fixed split of the cells: the parity of its atlas row,
        or without one a hash of its measured expression. The same cell lands in the same half on
        every visit, so what two halves learn apart is measured on different cells."""
        if self.index is not None:
            return (self.index % 2).long()
        return torch.floor(self.x.double().sum(-1) * 1e4).long() % 2


@dataclass
class Prediction:
    """Decoded cells: expression (B, G) in the loader's normalised log space; mean (B, G)
    expected raw counts for count models (else None); extra (head-specific tensors)."""

    expression: torch.Tensor
    mean: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class ModelOutput:
    """latent (B, D) cell embeddings; expression (B, G) reconstructed cells; losses: named,
    already weighted scalar terms (the training loop sums them); stats: named tensors a
    biologist reads (documented per enhancement in `VirtualCell.stat_shapes`)."""

    latent: torch.Tensor
    expression: torch.Tensor
    losses: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor]
    views: dict[str, torch.Tensor] = field(default_factory=dict)  # (B, G) "denoised" / "imputed", when asked for

    @property
    def loss(self) -> torch.Tensor:
        return torch.stack(list(self.losses.values())).sum()
