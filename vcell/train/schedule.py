"""The learning-rate schedule every trainer uses: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(steps: int, warmup_fraction: float = 0.05, final_fraction: float = 0.1) -> Callable[[int], float]:
    """step -> multiplier of the peak rate (for `torch.optim.lr_scheduler.LambdaLR`)."""
    warmup = max(1, round(steps * warmup_fraction))

    def multiplier(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup)
        progress = min(step, steps) / steps
        return ramp * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))

    return multiplier
