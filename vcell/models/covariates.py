"""Technical covariates: the batch a cell was measured in (`model.batch_covariate`).

scVI's answer to batch effects: decode each cell with its batch, so the latent state need not
carry the batch to reconstruct the cell. Here the batch enters as a learned offset of every
gene's score, per batch: an additive shift of normalised log expression (the Gaussian head), a
multiplicative factor of the composition (the count heads, whose scores are log-rates), which is
exactly a batch's per-gene capture effect.

The encoder reads each cell's measured expression with its batch's offset taken off (the measured,
non-zero values only: a zero stays a zero). A decoder offset alone did not mix batches: nothing made
the deterministic latent drop what the offset explains, and the encoder kept reading batch-shifted
expression (batch kNN accuracy of `full` on the demo atlas 0.378 with the offset, 0.380 without).
scVI gets that pressure from its KL term, which at the demo's 300 steps blurred the cell types
instead (ARI 0.87, batch kNN 0.421). The offset is taken off with its gradient stopped: it
learns only as the decoder's batch effect, never as a way to move the encoder's input.

The offsets learn through `scaled_offset` x OFFSET_STEP_SCALE: an optimiser step moves a parameter
by about the learning rate, so at 1e-3 an offset could move ~0.2 in 300 steps, no more than the
batch effects themselves (the simulator's per-gene effects have sd 0.2 on the log scale). With the
step scale and the encoder's correction, batch kNN accuracy fell to 0.357 (0.337 is perfect mixing);
with the step scale alone it was 0.389.

A cell of a batch the model never saw is encoded and decoded without an offset.
"""

from __future__ import annotations

import torch
from torch import nn

from vcell.models.axes import Axis
from vcell.models.blocks import load_rescaled

OFFSET_STEP_SCALE = 10.0


class BatchOffset(nn.Module):
    """A learned per-batch, per-gene offset (see the module doc); batch codes outside [0, n_batches) have none."""

    AXES = {"scaled_offset": (Axis("batch"), Axis("gene"))}  # rows follow the batch names when fine-tuning
    STATS: dict[str, tuple[str, ...]] = {}

    def __init__(self, n_batches: int, n_genes: int) -> None:
        super().__init__()
        self.scaled_offset = nn.Parameter(torch.zeros(n_batches, n_genes))  # no batch effect before training

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Weights saved before the step scale hold `offset` itself: read as the same offsets."""
        load_rescaled(state_dict, prefix, "offset", "scaled_offset", 1.0 / OFFSET_STEP_SCALE)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def rows(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, G) each cell's batch offset; zeros for codes outside the batches."""
        known = (batch >= 0) & (batch < len(self.scaled_offset))
        rows = OFFSET_STEP_SCALE * self.scaled_offset[batch.clamp(0, len(self.scaled_offset) - 1)]
        return rows * known.unsqueeze(-1).to(rows.dtype)

    def forward(self, values: torch.Tensor, batch: torch.Tensor | None, encoder_input: bool = False,
                shown: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded scores (B, G) plus their batch's offset; with `encoder_input`, the encoder's input
        (B, G) with the offset taken off the values it shows (`shown` (B, G) bool; None: the non-zero
        ones, which under a z-score are all), the offset read but not trained there (see the module
        doc). Always through a call: engines that shard parameters (DeepSpeed ZeRO-3) gather them
        only around a module's forward."""
        if batch is None:
            return values
        if encoder_input:
            shown = values != 0 if shown is None else shown
            return values - self.rows(batch).detach().to(values.dtype) * shown.to(values.dtype)
        return values + self.rows(batch)
