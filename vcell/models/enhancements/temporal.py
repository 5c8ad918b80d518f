"""Temporal: per-gene response kinetics after a stimulus, in expression space.

Each gene g relaxes from its basal level towards its stimulated level at its own rate,
dx_g/dt = ln2 / tau_g * (x_g^stimulated - x_g), whose exact solution adds to the decoded scores

    scores_g(t) = scores_g(0) + (1 - 2^(-t / tau_g)) * effect_g(z)

with effect_g(z) the full stimulated effect in the cell's (perturbed) state z (a small network:
it differs by cell type) and tau_g the gene's half-time in hours. Why not a latent ODE: with a
rate per latent direction and a decoder that mixes directions nonlinearly, no parameter is a
gene's half-time, and the response loss pins the mixture down poorly (the old latent ODE scored
a Pearson of ~0 on the held-out change and ~0.1 on half-times). Here half-times are read off
directly, identifiable from a handful of time points, and shared by every cell, so the model
pools all stimulated cells (every type, perturbed or not) instead of averaging per time point.

A memory of an earlier pulse (the memory enhancement) attaches through `attach_memory` and
adds the share of the effect a pulse leaves behind. The term sits in the model's gene terms
(`contracts.GeneTerm`): it sees the conditions, and a cell's own state (conditions None) is
decoded untouched.

Statistics: response_half_time (G,) hours until a gene has made half of its move.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field
from torch import nn

from vcell.config.model import ModelConfig
from vcell.config.section import Section
from vcell.models.axes import Axis
from vcell.models.blocks import MLP
from vcell.models.contracts import MemoryHook
from vcell.models.inputs import CellInputs, Conditions
from vcell.models.registry import Enhancement
from vcell.models.slots import Slots
from vcell.models.spec import ModelSpec


class TemporalConfig(Section):
    """Per-gene kinetics: each gene moves 1 - 2^(-t / tau_g) of the way to its stimulated level."""

    initial_half_time: float = Field(2.0, gt=0, description="hours; every gene's half-time before training")
    half_time_step_scale: float = Field(
        30.0, gt=0, description="log half-times are stored divided by this, so each optimiser step moves them this "
        "many times further (a 50x range of half-times is reachable in a few hundred steps)",
    )
    effect_step_scale: float = Field(
        0.1, gt=0, description="the effect network's output is multiplied by this: below 1 each optimiser step moves "
        "the effect less, so genes the stimulus does not move stay near 0 instead of following the pairs' noise",
    )
    effect_hidden: int | None = Field(
        None, ge=1, description="hidden width of the stimulated-effect network; null = the model's hidden width"
    )


class StimulusResponse(nn.Module):
    """scores += share (B, G) x effect(z) (B, G); share = 1 - 2^(-t / tau_g) (+ a memory's)."""

    STATS: dict[str, tuple[str, ...]] = {}  # its read-out (`KineticsReadout`) declares them
    AXES = {"scaled_log_half_time": (Axis("gene"),)}  # the network's outputs: declared by its MLP

    def __init__(self, latent: int, hidden: int, n_genes: int, settings: TemporalConfig) -> None:
        super().__init__()
        self.scale, self.effect_scale = settings.half_time_step_scale, settings.effect_step_scale
        self.network = MLP(latent, [hidden], n_genes, output_axis="gene")
        nn.init.normal_(self.network[-1].weight, std=1e-3 / self.effect_scale)  # start with (almost) no response
        nn.init.zeros_(self.network[-1].bias)
        self.scaled_log_half_time = nn.Parameter(torch.full((n_genes,), math.log(settings.initial_half_time) / self.scale))
        self.memory: MemoryHook | None = None  # see attach_memory

    def attach_memory(self, memory: MemoryHook) -> None:
        """The hook through which a memory of an earlier pulse adds to the share of the
        stimulated effect a cell shows (`contracts.AcceptsMemory`)."""
        self.memory = memory

    def effect(self, z: torch.Tensor) -> torch.Tensor:
        """(B, G) full stimulated effect on each gene's score in state z (B, D)."""
        return self.network(z) * self.effect_scale

    def half_time(self) -> torch.Tensor:
        """(G,) hours until each gene has made half of its move to the stimulated level."""
        return torch.exp(self.scaled_log_half_time * self.scale)

    def share(self, conditions: Conditions, like: torch.Tensor) -> torch.Tensor | None:
        """(B, G) share of each gene's stimulated effect under `conditions`; None: nothing moves."""
        share = None
        if conditions.time is not None:
            hours = torch.nan_to_num(conditions.time, nan=0.0).clamp(min=0).unsqueeze(-1)  # (B, 1)
            share = 1.0 - torch.exp2(-hours / self.half_time())
        if self.memory is not None and conditions.hours_since_pulse is not None:
            share = self.memory(like.new_zeros(like.shape) if share is None else share, conditions)
        return share

    def forward(self, scores: torch.Tensor, z: torch.Tensor, conditions: Conditions | None) -> torch.Tensor:
        if conditions is None:  # a cell's own state: its measured expression already shows any stimulus
            return scores
        share = self.share(conditions, scores)
        return scores if share is None else scores + share * self.effect(z)


class KineticsReadout(nn.Module):
    """The per-gene half-times as statistics of every pass (`describe` too): what `vcell embed`
    writes into var (vcell_response_half_time)."""

    STATS = {"response_half_time": ("G",)}

    def __init__(self, response: StimulusResponse) -> None:
        super().__init__()
        self.view = [response]  # registered once, as a gene term

    def forward(self, z: torch.Tensor, cells: CellInputs) -> tuple[dict, dict]:
        return {}, {"response_half_time": self.view[0].half_time()}


def response_half_times(trajectory: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """(G,) hours until each gene has made half of its move from hours[0] to hours[-1].

    trajectory (T, G) predicted mean expression over the increasing `hours`; linear
    interpolation between grid points; NaN for genes that do not move.
    """
    change = trajectory - trajectory[0]
    final = change[-1]
    progress = np.divide(change, final, out=np.zeros_like(change), where=np.abs(final) > 1e-6)
    half = np.full(trajectory.shape[1], np.nan)
    for gene in np.flatnonzero(np.abs(final) > 1e-6):
        above = np.flatnonzero(progress[:, gene] >= 0.5)
        first = above[0]
        if first == 0:
            half[gene] = hours[0]
            continue
        before, after = progress[first - 1, gene], progress[first, gene]
        share = (0.5 - before) / max(after - before, 1e-12)
        half[gene] = hours[first - 1] + share * (hours[first] - hours[first - 1])
    return half


def install(slots: Slots, config: ModelConfig, spec: ModelSpec) -> None:
    hidden, _, latent = config.dimensions()
    settings = config.temporal
    response = StimulusResponse(latent, settings.effect_hidden or hidden, spec.n_genes, settings)
    slots.gene_terms.append(response)
    slots.auxiliary.append(KineticsReadout(response))


def stimulus_response(slots: Slots) -> StimulusResponse | None:
    """The temporal gene term among the slots' gene terms (None without temporal)."""
    return next((term for term in slots.gene_terms if isinstance(term, StimulusResponse)), None)


ENHANCEMENT = Enhancement(
    name="temporal",
    title="Temporal dynamics",
    summary="per-gene response kinetics (1 - 2^(-t/tau_g)) after a stimulus; predicts unseen times, half-times",
    config=TemporalConfig,
    install=install,
    needs=frozenset({"time"}),
    evaluation="vcell.evaluate.enhancement_metrics:temporal",
    figure="vcell.evaluate.figures:temporal_figure",
    science_check="vcell.evaluate.science_time:check_temporal",
)
