"""MFU and cells/s of the transformer presets on one GPU, in bf16: the model's training step alone.

    bash benchmarks/pretrain_gpu.sh                     # 100m and 1b on GPU 0 (a few minutes)
    python benchmarks/pretrain_gpu.py --presets 100m --batch-size 32 --steps 30
    python benchmarks/pretrain_gpu.py --cpu-smoke       # 2 steps of the tiny preset on CPU (a test runs it)

Each preset: 20,000 genes, every cell filling the 2,048-token context, bf16 autocast, fused AdamW,
the transformer blocks compiled (`train.compile`), activation checkpointing for 1b. Step time is
the median of the timed steps after warm-up; FLOPs are the model's formula (vcell/models/flops.py,
forward + backward, 3 x forward); MFU against the GPU's bf16 dense peak
(vcell/train/throughput.py PEAK_BF16). Goal: >= 40% MFU for 100m.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vcell.config.model import ModelConfig  # noqa: E402
from vcell.train.throughput import measure_step  # noqa: E402

# preset -> (cells per step, activation checkpointing)
PRESETS = {"tiny": (4, False), "10m": (64, False), "100m": (32, False), "1b": (16, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["100m", "1b"], choices=list(PRESETS))
    parser.add_argument("--batch-size", type=int, help="cells per step (default: per preset)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per preset (after 3 warm-up steps)")
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--no-compile", action="store_true", help="eager blocks (compiling takes a minute or two)")
    parser.add_argument("--cpu-smoke", action="store_true", help="2 steps of the tiny preset on CPU, fp32: the script runs")
    args = parser.parse_args()
    if args.cpu_smoke:
        args.presets, args.steps, args.genes, args.context, args.no_compile = ["tiny"], 2, 200, 64, True
    device = "cpu" if args.cpu_smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: install a CUDA build of torch (make install TORCH_SPEC=... TORCH_INDEX=...) or pass --cpu-smoke")
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, {args.genes:,} genes, context {args.context:,}, "
          f"{'fp32' if args.cpu_smoke else 'bf16 autocast'}, compiled blocks: {not args.no_compile}\n")
    print("| preset | parameters | cells/step | checkpointing | step (s) | cells/s | gene tokens/s | TFLOP/s | MFU | peak GB |")
    print("|:-------|-----------:|-----------:|:-------------:|---------:|--------:|--------------:|--------:|----:|--------:|")
    for preset in args.presets:
        batch, checkpointing = PRESETS[preset]
        batch = args.batch_size or batch
        config = ModelConfig(name="base", encoder="transformer", response_weight=0.0, transformer={
            "size": preset, "context_length": args.context, "activation_checkpointing": checkpointing})
        result = measure_step(config, n_genes=args.genes, batch_size=batch, steps=args.steps, device=device,
                              bf16=not args.cpu_smoke, compile_=not args.no_compile)
        mfu = "-" if result.mfu is None else f"{result.mfu:.1%}"
        memory = "-" if result.peak_memory_gb is None else f"{result.peak_memory_gb:.1f}"
        print(f"| {preset:<6} | {result.parameters / 1e6:>9.1f}M | {batch:>10} | {'yes' if checkpointing else 'no':^13} "
              f"| {result.step_s:>8.3f} | {result.cells_per_s:>7,.0f} | {result.tokens_per_s:>13,.0f} "
              f"| {result.tflops_per_s:>7.2f} | {mfu:>3} | {memory:>7} |", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
