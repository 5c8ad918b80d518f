"""Memory per worker of a run under each data-parallel strategy: what `vcell train --dry-run` prints.

    parts = memory_parts(config, parameters=103e6, n_genes=20000, stage=2, offload=False)   # bytes by part

The formula (P parameters, N workers, b cells per worker, bytes per value in brackets):

    DDP         weights 4P + gradients 4P + AdamW moments 8P              (fp32 throughout; bf16-mixed
                                                                          autocasts activations only)
    ZeRO-s      fp32:  weights 4P/N(s=3) + gradients 4P/N(s>=2) + moments 8P/N
                bf16:  weights 2P/N(s=3) + gradients 2P/N(s>=2) + moments 8P/N + fp32 master 4P/N
                (DeepSpeed trains bf16 weights and keeps the fp32 master copy with the optimiser)
    + offload   moments and master copy (stage 3: the weights too) move to CPU memory: not on the device

plus activations and the loader's buffers. Activations, per worker:

    MLP          b x (8 G + 6 H) x 4 bytes   (x, counts, masks, predictions and their gradients over
                                              all G genes; the hidden layers)
    transformer  b x L x T x W x 34 x a/2 bytes   (Korthikanti et al. 2022: what backward keeps per
                 block, without their 5 A T^2 term of attention maps: the fused attention kernels of
                 GPUs and of torch's CPU build keep none; a = 2 bytes in bf16, 4 in fp32; T tokens
                 at a full context, the worst batch; W width, L blocks)
                 with activation checkpointing: b x L x T x W x a (each block's input) + one block's
                 + the decoder's b x 8 G x 4 bytes

An estimate to plan with (allocator slack, fragmentation and DeepSpeed's buckets come on top).
"""

from __future__ import annotations

from vcell.config.schema import VCellConfig
from vcell.models.flops import context_tokens

STRATEGIES: dict[str, tuple[int, bool]] = {  # name -> (ZeRO stage, 0 = DDP; offload)
    "ddp": (0, False), "zero1": (1, False), "zero2": (2, False), "zero3": (3, False),
    "zero2+offload": (2, True), "zero3+offload": (3, True),
}


def state_parts(parameters: int, workers: int, stage: int, offload: bool, bf16: bool) -> dict[str, float]:
    """Bytes per worker on the device of weights, gradients, optimiser moments, fp32 master weights."""
    shard = lambda sharded: workers if sharded else 1  # noqa: E731
    if stage == 0:  # DDP: everything replicated, fp32
        return {"weights": 4.0 * parameters, "gradients": 4.0 * parameters, "optimiser": 8.0 * parameters, "master": 0.0}
    width = 2.0 if bf16 else 4.0
    parts = {
        "weights": width * parameters / shard(stage >= 3),
        "gradients": width * parameters / shard(stage >= 2),
        "optimiser": 8.0 * parameters / workers,
        "master": (4.0 * parameters / workers) if bf16 else 0.0,
    }
    if offload:  # to CPU memory: off the device
        parts.update(optimiser=0.0, master=0.0, **({"weights": 0.0} if stage >= 3 else {}))
    return parts


def activation_bytes(config: VCellConfig, n_genes: int, bf16: bool) -> float:
    """Activations backward keeps for one worker's batch (see module doc)."""
    model, batch = config.model, config.loader.batch_size
    hidden = model.dimensions()[0]
    dense = batch * 8 * n_genes * 4.0  # the decoder's (B, G) outputs, targets and their gradients
    if model.encoder == "mlp":
        return dense + batch * 6 * hidden * 4.0
    width, n_blocks, _ = model.transformer.shape()
    tokens = context_tokens(model, n_genes) + 1
    size = 2.0 if bf16 else 4.0
    per_block = batch * tokens * width * 34 * size / 2
    if model.transformer.activation_checkpointing:
        return dense + n_blocks * batch * tokens * width * size + per_block
    return dense + n_blocks * per_block


def loader_bytes(config: VCellConfig, n_genes: int) -> float:
    """Two sparse shuffle buffers (value + index, <= 15% non-zeros) and a few dense batches in flight."""
    loader, batch = config.loader, config.loader.batch_size
    return 2 * loader.buffer_cells * n_genes * 0.15 * 8 + (loader.prefetch_batches + 2) * batch * n_genes * 4


def memory_parts(config: VCellConfig, parameters: int, n_genes: int, stage: int, offload: bool,
                 precision: str) -> dict[str, float]:
    """Bytes per worker by part under ZeRO `stage` (0 = DDP) with or without offload."""
    bf16 = precision == "bf16-mixed"
    return {**state_parts(parameters, config.scaling.workers, stage, offload, bf16),
            "activations": activation_bytes(config, n_genes, bf16), "loader": loader_bytes(config, n_genes)}


def memory_by_strategy(config: VCellConfig, parameters: int, n_genes: int, precision: str) -> dict[str, float]:
    """Strategy name -> GB per worker on the device (the loader's buffers live in host memory)."""
    return {name: round(sum(v for k, v in memory_parts(config, parameters, n_genes, stage, offload, precision).items()
                            if k != "loader") / 2**30, 3)
            for name, (stage, offload) in STRATEGIES.items()}
