"""What every trainer optimises and how fast: the trainable parameter groups, and the learning-rate
schedule (linear warm-up, then cosine decay to a floor)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def warmup_cosine(steps: int, warmup_fraction: float = 0.05, final_fraction: float = 0.1) -> Callable[[int], float]:
    """step -> multiplier of the peak rate (for `torch.optim.lr_scheduler.LambdaLR`)."""
    warmup = max(1, round(steps * warmup_fraction))

    def multiplier(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup)
        progress = min(step, steps) / steps
        return ramp * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))

    return multiplier


def parameter_groups(model: torch.nn.Module, weight_decay: float, no_weight_decay: set[str]) -> list[dict]:
    """The trainable parameters (frozen ones left out), those in `no_weight_decay` without decay
    (partly frozen parameters: decoupled decay would move their fixed entries). `decay` marks
    the group whose weight decay follows the config."""
    trainable = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    groups = [{"params": [p for n, p in trainable if n not in no_weight_decay], "weight_decay": weight_decay, "decay": True},
              {"params": [p for n, p in trainable if n in no_weight_decay], "weight_decay": 0.0, "decay": False}]
    return [group for group in groups if group["params"]]
