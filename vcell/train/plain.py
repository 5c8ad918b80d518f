"""A plain PyTorch training loop over cells in memory: one process, one device.

    history = fit(model, cells, steps=1500, batch_size=256, learning_rate=1e-3, seed=0)

For learning checks and small experiments; the model's forward returns named loss terms and
this loop only sums them, as the distributed trainer does.
"""

from __future__ import annotations

import torch
from torch import nn

from vcell.data.memory import select
from vcell.train.schedule import parameter_groups, warmup_cosine


def fit(
    model: nn.Module, cells: dict[str, torch.Tensor], *, steps: int, batch_size: int = 256,
    learning_rate: float = 1e-3, seed: int = 0, clip: float = 5.0, no_weight_decay: set[str] = frozenset(),
) -> list[dict[str, float]]:
    """Train on random batches of `cells` (with replacement across steps); per-step loss terms.
    Frozen parameters (`requires_grad=False`) are left out; `no_weight_decay` names partly frozen ones."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(parameter_groups(model, 1e-4, set(no_weight_decay)), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps))
    n_cells = len(cells["x"])
    history = []
    model.train()
    for _ in range(steps):
        rows = torch.randperm(n_cells, generator=generator)[:batch_size]
        output = model(select(cells, rows))
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        schedule.step()
        history.append({name: float(value.detach()) for name, value in output.losses.items()})
    model.eval()
    return history
