"""Technical covariates the decoder reads and the encoder never does (`model.batch_covariate`).

scVI's answer to batch effects: decode each cell with its batch, so the latent state need not
carry the batch to reconstruct the cell. Here the batch enters as a learned offset of every
gene's score, per batch: an additive shift of normalised log expression (the Gaussian head), a
multiplicative factor of the composition (the count heads, whose scores are log-rates), which is
exactly a batch's per-gene capture effect. The encoder reads the measured expression only, so a
cell of a batch the model never saw embeds as any other; it decodes without an offset.
"""

from __future__ import annotations

import torch
from torch import nn

from vcell.models.axes import Axis


class BatchOffset(nn.Module):
    """scores (B, G) + offset[batch] (B, G); batch codes outside [0, n_batches) add nothing."""

    AXES = {"offset": (Axis("batch"), Axis("gene"))}  # rows follow the batch names when fine-tuning
    STATS: dict[str, tuple[str, ...]] = {}

    def __init__(self, n_batches: int, n_genes: int) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(n_batches, n_genes))  # no batch effect before training

    def forward(self, scores: torch.Tensor, batch: torch.Tensor | None) -> torch.Tensor:
        if batch is None:
            return scores
        known = (batch >= 0) & (batch < len(self.offset))
        rows = self.offset[batch.clamp(0, len(self.offset) - 1)]  # (B, G)
        return scores + rows * known.unsqueeze(-1).to(rows.dtype)
