"""A plain PyTorch training loop over cells in memory: one process, one device.

    history = fit(model, cells, steps=1500, batch_size=256, learning_rate=1e-3, seed=0)
    history = fit(model, cells, steps=300, progress_every=50)     # a line every 50 steps (notebooks)

For learning checks, notebooks and small experiments; the model's forward returns named loss
terms and this loop only sums them, as the distributed trainer does. The optimiser and schedule
are the distributed trainer's (AdamW, linear warm-up then cosine decay), so `config.train`
means the same here (`vcell.evaluate.in_process.train_in_process` passes it through).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from vcell.data.memory import select
from vcell.train.schedule import parameter_groups, warmup_cosine


def fit(
    model: nn.Module, cells: dict[str, torch.Tensor], *, steps: int, batch_size: int = 256,
    learning_rate: float = 1e-3, seed: int = 0, clip: float = 5.0, weight_decay: float = 1e-4,
    warmup_fraction: float = 0.05, final_lr_fraction: float = 0.1, progress_every: int = 0,
    no_weight_decay: set[str] = frozenset(),
) -> list[dict[str, float]]:
    """Train on random batches of `cells` (with replacement across steps); per-step loss terms.
    Frozen parameters (`requires_grad=False`) are left out; `no_weight_decay` names partly frozen ones.
    `progress_every` > 0 prints the step, loss terms, learning rate and speed that often."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay, set(no_weight_decay)), lr=learning_rate,
                                  weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, warmup_fraction, final_lr_fraction))
    n_cells = len(cells["x"])
    history = []
    started = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        rows = torch.randperm(n_cells, generator=generator)[:batch_size]
        output = model(select(cells, rows))
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        rate = optimizer.param_groups[0]["lr"]  # the rate this step used
        optimizer.step()
        schedule.step()
        history.append({name: float(value.detach()) for name, value in output.losses.items()})
        if progress_every and (step % progress_every == 0 or step == steps):
            speed = len(rows) * step / (time.perf_counter() - started)
            print(progress_line(step, steps, history[-1], rate, speed), flush=True)
    model.eval()
    return history


def progress_line(step: int, steps: int, terms: dict[str, float], rate: float, cells_per_s: float) -> str:
    """'step 50/300  loss 0.812 (reconstruction 0.801, kl 0.011)  lr 9.8e-04  2,310 cells/s'."""
    parts = ", ".join(f"{name} {value:.3f}" for name, value in terms.items())
    return f"step {step}/{steps}  loss {sum(terms.values()):.3f} ({parts})  lr {rate:.1e}  {cells_per_s:,.0f} cells/s"
