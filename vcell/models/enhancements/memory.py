"""Memory: a recurrent state that remembers earlier stimuli, so history changes the response.

A cell's history is an ordered series of events; a GRU cell reads it: the earlier pulse
(stimulus on), then the rest since (its length in hours). Naive cells read nothing and keep a
zero memory. The memory shifts the resting state (what a pulse leaves behind) and joins the
stimulus in driving the temporal dynamics (a primed cell responds differently).

Statistics: memory_gate (R, M): for the R cells moved by the dynamics (the response pairs'
targets), how much of the memory each event wrote (1 - update gate), averaged over the
events; 0 for naive cells.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from vcell.config.model import ModelConfig
from vcell.config.section import Section
from vcell.errors import VCellError
from vcell.models.enhancements.temporal import TemporalDynamics
from vcell.models.inputs import Conditions
from vcell.models.registry import Enhancement
from vcell.models.slots import Slots
from vcell.models.spec import ModelSpec


class MemoryConfig(Section):
    """A recurrent memory of earlier stimuli (GRU over the cell's stimulus history)."""

    memory_dim: int | None = Field(None, ge=1, description="memory state size; null = the latent dimension")

REST_HOURS_SCALE = math.log1p(48.0)  # hours since the pulse enter as log1p(h) / this


class GatedRecurrentCell(nn.Module):
    """A GRU cell that also returns its update gate (torch's GRUCell hides it)."""

    def __init__(self, n_in: int, n_state: int) -> None:
        super().__init__()
        self.gates = nn.Linear(n_in + n_state, 2 * n_state)
        self.candidate_input, self.candidate_state = nn.Linear(n_in, n_state), nn.Linear(n_state, n_state)

    def forward(self, inputs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reset, keep = torch.sigmoid(self.gates(torch.cat([inputs, state], dim=-1))).chunk(2, dim=-1)
        candidate = torch.tanh(self.candidate_input(inputs) + reset * self.candidate_state(state))
        return keep * state + (1 - keep) * candidate, 1 - keep


class StimulusMemory(nn.Module):
    STATS = {"memory_gate": ("R", "M")}

    def __init__(self, latent: int, memory_dim: int) -> None:
        super().__init__()
        self.memory_dim = memory_dim
        self.cell = GatedRecurrentCell(2, memory_dim)
        self.rest_offset = nn.Linear(memory_dim, latent, bias=False)  # zero memory -> zero offset
        self.to_drive = nn.Linear(memory_dim, latent, bias=False)

    def events(self, hours_since_pulse: torch.Tensor) -> list[torch.Tensor]:
        """Per event (B, 2) inputs [stimulus on, log rest hours]: the pulse, then the rest."""
        primed = ~torch.isnan(hours_since_pulse)
        rest = torch.log1p(torch.nan_to_num(hours_since_pulse, nan=0.0).clamp(min=0)) / REST_HOURS_SCALE
        pulse = torch.stack([primed.float(), torch.zeros_like(rest)], dim=-1)
        return [pulse, torch.stack([torch.zeros_like(rest), rest], dim=-1)]

    def forward(
        self, start: torch.Tensor, stimulus: torch.Tensor, conditions: Conditions
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        n = len(start)
        memory = start.new_zeros(n, self.memory_dim)
        if conditions.hours_since_pulse is None:
            return start, stimulus, {"memory_gate": memory}
        primed = (~torch.isnan(conditions.hours_since_pulse)).float().unsqueeze(-1)
        gates = []
        for event in self.events(conditions.hours_since_pulse):
            updated, gate = self.cell(event, memory)
            memory = primed * updated + (1 - primed) * memory  # naive cells have no events
            gates.append(gate * primed)
        stats = {"memory_gate": torch.stack(gates).mean(0)}
        return start + self.rest_offset(memory), stimulus + self.to_drive(memory), stats


def install(slots: Slots, config: ModelConfig, spec: ModelSpec) -> None:
    _, _, latent = config.dimensions()
    if not isinstance(slots.dynamics, TemporalDynamics):  # the registry's `requires` installs temporal first
        raise VCellError("memory needs the temporal dynamics in the dynamics slot", hint="add 'temporal'")
    slots.dynamics.attach_memory(StimulusMemory(latent, config.memory.memory_dim or latent))


ENHANCEMENT = Enhancement(
    name="memory",
    title="Memory",
    summary="recurrent memory of earlier stimuli conditions the dynamics (hysteresis)",
    config=MemoryConfig,
    install=install,
    needs=frozenset({"time", "history"}),
    requires=("temporal",),
    requires_why="the memory state conditions the temporal dynamics; without them it acts on nothing",
    evaluation="vcell.evaluate.enhancement_metrics:memory",
    science_check="vcell.evaluate.science_checks:check_memory",
)
