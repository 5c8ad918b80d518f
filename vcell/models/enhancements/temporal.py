"""Temporal: response kinetics as an ODE in latent space.

A stimulated cell's state relaxes from its basal (perturbed) state z0 towards a
stimulus-dependent target, each latent direction at its own rate:

    dz/dt = rate * (z0 + drive([z0, u]) - z),   u = stimulus (+ memory, when present)

integrated by fixed-step RK4 (`blocks.integrate`) from 0 to the cell's time, so any time,
observed or not, can be asked for. `response_half_times` reads per-gene half-times off a
predicted trajectory.

Statistics: response_rate (D,) relaxation rate of each latent direction (1 / model time).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field
from torch import nn

from vcell.config.model import ModelConfig
from vcell.config.section import Section
from vcell.models.blocks import MLP, integrate
from vcell.models.contracts import MemoryHook
from vcell.models.inputs import Conditions
from vcell.models.registry import Enhancement
from vcell.models.slots import ConditionShift, Slots
from vcell.models.spec import ModelSpec


class TemporalConfig(Section):
    """Latent response kinetics: dz/dt = rate * (z0 + drive(z, stimulus) - z), fixed-step RK4."""

    n_steps: int = Field(8, ge=1, le=256, description="RK4 steps from t=0 to each cell's time")
    time_scale: float = Field(8.0, gt=0, description="hours per unit of model time (keeps rates near 1)")


class TemporalDynamics(nn.Module):
    STATS = {"response_rate": ("D",)}

    def __init__(self, shift: ConditionShift, latent: int, hidden: int, config: ModelConfig) -> None:
        super().__init__()
        self.shift, self.settings = shift, config.temporal
        self.stimulus = nn.Parameter(torch.randn(latent) * 0.1)
        self.drive = MLP(2 * latent, [hidden], latent)
        # start with (almost) no response, so only a consistent signal builds one
        nn.init.normal_(self.drive[-1].weight, std=1e-3)
        nn.init.zeros_(self.drive[-1].bias)
        # rates spread log-uniformly over 0.1-4 per unit of model time: fast and slow responders
        self.log_rate = nn.Parameter(torch.log(torch.expm1(torch.logspace(-1, math.log10(4.0), latent))))
        self.memory: MemoryHook | None = None  # see attach_memory

    def attach_memory(self, memory: MemoryHook) -> None:
        """The hook through which a memory of earlier stimuli conditions these dynamics
        (`contracts.AcceptsMemory`): it shifts the start and joins the stimulus drive."""
        self.memory = memory

    def forward(self, z: torch.Tensor, conditions: Conditions) -> tuple[torch.Tensor, dict]:
        start = self.shift.shift(z, conditions)
        stimulus = self.stimulus.expand_as(start)
        stats = {"response_rate": nn.functional.softplus(self.log_rate)}
        if self.memory is not None:
            start, stimulus, memory_stats = self.memory(start, stimulus, conditions)
            stats.update(memory_stats)
        if conditions.time is None:
            return start, stats
        duration = torch.nan_to_num(conditions.time, nan=0.0).clamp(min=0) / self.settings.time_scale
        rate = stats["response_rate"]

        target = start + self.drive(torch.cat([start, stimulus], dim=-1))  # where the stimulus leads this cell

        def derivative(time: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
            return rate * (target - state)

        return integrate(derivative, start, duration, self.settings.n_steps), stats


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
    slots.dynamics = TemporalDynamics(slots.dynamics, latent, hidden, config)


ENHANCEMENT = Enhancement(
    name="temporal",
    title="Temporal dynamics",
    summary="latent ODE of the response to a stimulus; predicts unseen times, per-gene half-times",
    config=TemporalConfig,
    install=install,
    needs=frozenset({"time"}),
    evaluation="vcell.evaluate.enhancement_metrics:temporal",
    figure="vcell.evaluate.figures:temporal_figure",
    science_check="vcell.evaluate.science_checks:check_temporal",
)
