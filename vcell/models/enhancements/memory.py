"""Memory: what an earlier pulse of the stimulus leaves behind, gene by gene.

A primed cell (hours_since_pulse = h, NaN = naive) keeps a share of each gene's stimulated
effect that fades with the hours since the pulse,

    retained_g(h) = m_g * 2^(-h / tau_mem_g),

added to the share the temporal response shows now (`temporal.StimulusResponse`, through its
`attach_memory` hook): scores_g += (1 - 2^(-t / tau_g) + retained_g(h)) * effect_g(z). So a
primed cell sits partly stimulated at rest, and a primed cell stimulated again overshoots.
Why not the earlier GRU over the history: its memory state entered the latent drive, so the
primed - naive difference spread over every gene the decoder mixes (Pearson ~0.1 with the
truth); a per-gene retained share learns that only some genes remember, and reads out directly.

Statistics: memory_retained_fraction (G,) m_g in (0, 1), the share of a gene's stimulated effect
a pulse leaves at once (~0 = no memory); memory_half_time (G,) tau_mem_g, hours for it to halve.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from vcell.config.model import ModelConfig
from vcell.config.section import Section
from vcell.errors import VCellError
from vcell.models.axes import Axis
from vcell.models.enhancements.temporal import stimulus_response
from vcell.models.inputs import CellInputs, Conditions
from vcell.models.registry import Enhancement
from vcell.models.slots import Slots
from vcell.models.spec import ModelSpec


class MemoryConfig(Section):
    """A per-gene memory of an earlier pulse: a retained share of the effect that fades with time."""

    initial_half_time: float = Field(72.0, gt=0, description="hours; how fast every gene's memory fades before training")
    initial_retained_fraction: float = Field(
        0.01, gt=0, lt=1, description="every gene's retained share before training (~no memory until the data shows one)"
    )
    step_scale: float = Field(
        30.0, gt=0, description="the logits of retained shares and log half-times are stored divided by this, so each "
        "optimiser step moves them this many times further",
    )


class PulseMemory(nn.Module):
    """(share (B, G), conditions) -> share + retained_g(hours since the pulse); naive cells: + 0."""

    STATS: dict[str, tuple[str, ...]] = {}  # its read-out (`MemoryReadout`) declares them
    AXES = {"scaled_retained_logit": (Axis("gene"),), "scaled_log_half_time": (Axis("gene"),)}

    def __init__(self, n_genes: int, settings: MemoryConfig) -> None:
        super().__init__()
        self.scale = settings.step_scale
        # a logit well below 0: the optimiser's noise on genes without memory stays in the flat, ~0 part of
        # the sigmoid, while a consistent signal climbs out of it (a signed share random-walked instead)
        initial = math.log(settings.initial_retained_fraction / (1 - settings.initial_retained_fraction))
        self.scaled_retained_logit = nn.Parameter(torch.full((n_genes,), initial / self.scale))
        self.scaled_log_half_time = nn.Parameter(torch.full((n_genes,), math.log(settings.initial_half_time) / self.scale))

    def retained_fraction(self) -> torch.Tensor:
        return torch.sigmoid(self.scaled_retained_logit * self.scale)  # (G,) in (0, 1)

    def half_time(self) -> torch.Tensor:
        return torch.exp(self.scaled_log_half_time * self.scale)  # (G,) hours

    def forward(self, share: torch.Tensor, conditions: Conditions) -> torch.Tensor:
        hours = conditions.hours_since_pulse  # (B,)
        primed = ~torch.isnan(hours)
        fading = torch.exp2(-torch.nan_to_num(hours, nan=0.0).clamp(min=0).unsqueeze(-1) / self.half_time())  # (B, G)
        return share + primed.unsqueeze(-1) * self.retained_fraction() * fading


class MemoryReadout(nn.Module):
    """The memory's per-gene parameters as statistics of every pass (`vcell embed` writes them to var)."""

    STATS = {"memory_retained_fraction": ("G",), "memory_half_time": ("G",)}

    def __init__(self, memory: PulseMemory) -> None:
        super().__init__()
        self.view = [memory]  # registered once, inside the temporal response

    def forward(self, z: torch.Tensor, cells: CellInputs) -> tuple[dict, dict]:
        memory = self.view[0]
        return {}, {"memory_retained_fraction": memory.retained_fraction(), "memory_half_time": memory.half_time()}


def install(slots: Slots, config: ModelConfig, spec: ModelSpec) -> None:
    response = stimulus_response(slots)
    if response is None:  # the registry's `requires` installs temporal first
        raise VCellError("memory needs the temporal response among the gene terms", hint="add 'temporal'")
    memory = PulseMemory(spec.n_genes, config.memory)
    response.attach_memory(memory)
    slots.auxiliary.append(MemoryReadout(memory))


ENHANCEMENT = Enhancement(
    name="memory",
    title="Memory",
    summary="per-gene retained share of an earlier pulse's effect, fading with hours since it (hysteresis)",
    config=MemoryConfig,
    install=install,
    needs=frozenset({"time", "history"}),
    requires=("temporal",),
    requires_why="the memory is a retained share of the temporal response's stimulated effect; without it, it acts on nothing",
    evaluation="vcell.evaluate.enhancement_metrics:memory",
    figure="vcell.evaluate.figures:memory_figure",
    science_check="vcell.evaluate.science_time:check_memory",
)
