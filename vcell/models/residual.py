"""What a seen perturbation does beyond what the model's mechanism says: a learned residual.

A mechanism that carries a perturbation (the regulatory enhancement: a knock-down travels along a
linear, saturating network) is right about unseen perturbations only as far as it is constrained,
and that same constraint stops it from fitting a perturbation it has seen thousands of cells of:
on SERGIO (Hill-function regulation, 200 cells per knock-down) `regulatory`'s seen perturbations
scored Pearson delta 0.75 against their own training cells' 0.95. Loosening the mechanism (also
giving those perturbations the latent shift) fitted them (0.92) but the shift took over what the
network had learned from the interventions, and on the demo atlas unseen perturbations fell from
0.84 to 0.65 against the truth.

`ConditionResidual` fits what the mechanism leaves, apart from it: the model's response pass
scores each perturbed cell twice, once as the mechanism predicts it (the loss that trains every
other parameter, unchanged) and once with this residual added to those *detached* scores (a loss
whose gradient reaches only the residual, and a count head's noise parameters, which then describe
the cells as they will be predicted). So the network learns from interventions exactly what
it learned before, and a seen perturbation's prediction adds what its cells show beyond it.

The residual is low rank: a perturbation's `loading` (rank numbers) times a shared `basis` (rank x
genes). A perturbation no training cell carried keeps its loading at 0 (it starts there and gets no
gradient), so unseen perturbations are the mechanism's alone.

It would fit whatever its cells show, noise included: fitted once on all cells, on the demo atlas
(~20 training cells per seen perturbation, small true deltas) seen vs truth fell 0.873 -> 0.354.
So it is fitted twice, on two fixed halves of the cells (`CellInputs.split_half`: by atlas row),
and predicts the halves' average shrunk by how well they agree (`split_half_reliability`): noise
does not replicate across halves, a perturbation's real residual does. Halves that agree no
better than chance give no residual at all (`NULL_SDS`).

With a residual route the responses of the cells it covers (a routed perturbation on a cell at
rest) no longer train the decoding of the control cells they start from (`split_start` in
`vcell.models.model`): that pull is what the network leaves, and on SERGIO it made `regulatory`
decode control cells at their type's mean over all conditions.

Measured (`regulatory.residual_rank: 4`, 300 steps): SERGIO's seen perturbations, Pearson delta
0.752 / 0.732 -> 0.912 / 0.908 over seeds 0 / 1 (0.816 / 0.786 from the detached start alone; their
training cells 0.953 / 0.936), kNN accuracy 0.947 / 0.941 -> 0.959 / 0.962, the GRN unchanged. It is
off by default because on the demo atlas (`full` in process, seed 0) it costs: without the
start's pull from the perturbed cells the stimulus kinetics come out worse (temporal change Pearson
0.795 -> 0.72-0.74, memory 0.758 -> 0.67-0.70; the pull carried signal there, where knock-downs
barely move cells), and whether the halves' agreement clears chance varied with the seed (seen vs
truth 0.870 -> 0.862 when no residual passed, 0.681 when some did, at 0.15-0.36 of their size:
an agreement that is not the true deltas', probably training-time effects common to all
perturbations). Turn it on where each seen perturbation has hundreds of cells and effects the
network cannot carry.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vcell.models.axes import Axis
from vcell.models.inputs import Conditions

# Both factors learn through a parameter x this step scale. Adam moves a parameter by ~ the learning
# rate per step whatever its gradient, and a knock-down's residual on SERGIO is O(1) in log
# expression while the random basis must turn towards it: unscaled, 300 steps moved the loadings
# ~5e-4 and fitted nothing (seen Pearson delta 0.816 -> 0.834); scaled by 10, 0.913.
RESIDUAL_GAIN = 10.0
# A residual whose halves agree no better than this many sds of chance is dropped, not shrunk: on the
# demo atlas (~20 training cells per seen perturbation, tiny true deltas) the halves' cosines were
# 0-0.045, at most 2 sds of chance for 2,000 genes, yet the clipped factor (<= 0.085) still let
# through residuals 3x the true deltas (seen vs truth 0.873 -> 0.762); on SERGIO they were 0.44-0.86.
NULL_SDS = 3.0


class ConditionResidual(nn.Module):
    """(B, G) a learned low-rank correction of each routed perturbation's cells (0 elsewhere), fitted
    twice on two fixed halves of the cells and shrunk by how well the halves agree."""

    STATS: dict[str, tuple[str, ...]] = {}
    AXES = {"loading": (None, Axis("perturbation"), None), "basis": (None, None, Axis("gene"))}

    def __init__(self, routed: np.ndarray, n_genes: int, rank: int) -> None:
        super().__init__()
        self.register_buffer("routed", torch.as_tensor(np.asarray(routed, dtype=bool)))
        # one factorisation per half of the cells; loadings 0: no residual until cells show one
        self.loading = nn.Parameter(torch.zeros(2, len(routed), rank))
        # a fixed generator: building the model draws nothing from the global one, so a model with
        # residual routes trains on the same masks and pairs as one without (drawn on the CPU, where the
        # generator lives, whatever device the model is built on, then moved)
        generator = torch.Generator().manual_seed(0)
        basis = torch.randn(2, rank, n_genes, generator=generator, device="cpu") / (rank ** 0.5 * RESIDUAL_GAIN)
        self.basis = nn.Parameter(basis.to(self.routed.device))

    def covers(self, conditions: Conditions | None) -> torch.Tensor:
        """(B,) bool: the cells this route corrects: a routed perturbation (seen or not) on a cell at
        rest otherwise (unstimulated, naive). A perturbed cell under a stimulus or a memory is left to
        the mechanisms: its response also trains the decoding of stimulated states, which the
        model's second scoring would hold back (`VirtualCell.residual_loss`)."""
        code = None if conditions is None else conditions.perturbation
        if code is None:
            return torch.zeros(0, dtype=torch.bool, device=self.routed.device)
        routed = (code >= 0) & self.routed[code.clamp(min=0, max=len(self.routed) - 1)]
        at_rest = conditions.at_rest()
        return routed if at_rest is None else routed & at_rest

    def forward(self, conditions: Conditions | None, half: torch.Tensor | None = None) -> torch.Tensor | None:
        """(B, G) the residual of each cell's perturbation, or None without perturbations. `half` (B,):
        each cell's half of the split (training: the half's own fit); None: the two fits averaged and
        shrunk by their split-half reliability (prediction)."""
        code = None if conditions is None else conditions.perturbation
        if code is None:
            return None
        known = code.clamp(min=0, max=len(self.routed) - 1)
        active = self.covers(conditions).unsqueeze(-1).to(self.loading.dtype)  # (B, 1)
        first, second = ((RESIDUAL_GAIN * self.loading[h, known] * active) @ (RESIDUAL_GAIN * self.basis[h])
                         for h in (0, 1))  # (B, G) each
        if half is not None:
            return torch.where(half.unsqueeze(-1) == 0, first, second)
        return split_half_reliability(first, second) * (first + second) / 2


def split_half_reliability(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(B, 1) the share of the two halves' average (each row: one perturbation's residual over genes)
    that is signal rather than noise: their cosine rho (the signal's share of one half's energy when
    the halves' noise is independent), clipped at 0, as Spearman-Brown's 2 rho / (1 + rho) for the
    average of two halves. The James-Stein-like factor |s|^2 / (|s|^2 + noise / 2), estimated from the
    data alone: no count of cells or noise level needed."""
    rho = (first * second).sum(-1) / (first.norm(dim=-1) * second.norm(dim=-1)).clamp(min=1e-12)
    chance = NULL_SDS / first.shape[-1] ** 0.5  # the cosine of independent G-vectors has sd 1 / sqrt(G)
    rho = torch.where(rho > chance, rho, torch.zeros_like(rho))
    return (2 * rho / (1 + rho)).unsqueeze(-1)
