"""The model's training step alone, timed: cells/s, gene tokens/s, TFLOP/s and MFU of a preset.

    result = measure_step(ModelConfig(encoder="transformer", transformer={"size": "100m"}),
                          n_genes=20000, batch_size=32, steps=20, device="cuda")

What `benchmarks/pretrain_gpu.sh` runs on one GPU: the step as a worker runs it (bf16 autocast,
AdamW, gradient clipping, `train.compile`'s regional compile), on synthetic cells that each express
`expressed` genes, so every cell fills the context (no loader, no Ray: the loader is measured by
benchmarks/loader.py; this is how well the model uses the chip). FLOPs are the model's own
formula (`vcell.models.flops`); MFU is against the device's bf16 dense peak (`PEAK_BF16`, also what training logs use).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from vcell.config.model import ModelConfig
from vcell.models.spec import reference_spec
from vcell.models.zoo import build_model, compile_regions, count_parameters


# Peak dense bf16 FLOP/s per GPU, for MFU (the first name that occurs in the device's name).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def peak_flops() -> float | None:
    """This GPU's peak dense bf16 FLOP/s, or None for a GPU not in `PEAK_BF16` (no MFU then)."""
    name = torch.cuda.get_device_name()
    return next((value for key, value in PEAK_BF16.items() if key in name), None)


@dataclass
class StepThroughput:
    parameters: int
    cells_per_s: float
    tokens_per_s: float
    tflops_per_s: float
    mfu: float | None  # None on CPU and on GPUs without a known peak
    step_s: float
    peak_memory_gb: float | None


def synthetic_cells(n_cells: int, n_genes: int, expressed: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Normalised log expression (B, G): `expressed` random genes per cell with values in [0.5, 4.5)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    scores = torch.rand(n_cells, n_genes, generator=generator, device=device)
    chosen = scores.topk(min(expressed, n_genes), dim=1).indices
    x = torch.zeros(n_cells, n_genes, device=device)
    x.scatter_(1, chosen, torch.rand(chosen.shape, generator=generator, device=device) * 4 + 0.5)
    return {"x": x, "library_size": torch.full((n_cells,), 2000.0, device=device)}


def measure_step(config: ModelConfig, *, n_genes: int, batch_size: int, steps: int, device: str = "cuda",
                 bf16: bool = True, compile_: bool = False, expressed: int | None = None, warmup: int = 3) -> StepThroughput:
    """Median over `steps` timed steps after `warmup` untimed ones (compilation, allocator)."""
    device_ = torch.device(device)
    if device_.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device_)
    torch.manual_seed(0)
    model = build_model(config, reference_spec(n_genes), device=device_).train()
    if compile_:
        compile_regions(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if device_.type == "cuda" else {}))
    expressed = expressed or min(n_genes, 2 * config.transformer.context_length)
    batches = [synthetic_cells(batch_size, n_genes, expressed, device_, seed) for seed in range(4)]
    times, flops, tokens = [], [], []
    for step in range(warmup + steps):
        synchronize(device_)
        started = time.perf_counter()
        with torch.autocast(device_.type, dtype=torch.bfloat16, enabled=bf16):
            output = model(batches[step % len(batches)])
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device_)
        if step >= warmup:
            times.append(time.perf_counter() - started)
            flops.append(model.training_flops(output))
            counted = output.stats.get("gene_tokens")
            tokens.append(0.0 if counted is None else float(counted.sum()))
    step_s = float(np.median(times))
    rate = float(np.median(flops)) / step_s
    peak = peak_flops() if device_.type == "cuda" else None
    return StepThroughput(
        parameters=count_parameters(model), cells_per_s=batch_size / step_s, tokens_per_s=float(np.median(tokens)) / step_s,
        tflops_per_s=rate / 1e12, mfu=None if peak is None else rate / peak, step_s=step_s,
        peak_memory_gb=torch.cuda.max_memory_allocated() / 2**30 if device_.type == "cuda" else None,
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
