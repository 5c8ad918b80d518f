"""Pretraining throughput on CPU: cells/s per worker and scaling from 1 to 2 workers, DDP vs ZeRO-2 vs ZeRO-3.

    python benchmarks/pretrain.py                       # 10m preset, demo atlas, 12 steps of 8 cells per worker
    python benchmarks/pretrain.py --preset 3m --steps 40 --batch-size 64

Every row is `vcell train --config configs/experiments/pretrain.yaml` with the transformer at
`--preset`, one CPU thread per worker, run in this invocation, one after another:

  ddp    x1, x2     PyTorch DDP (gloo)
  zero2  x1, x2     DeepSpeed ZeRO-2 (optimiser states and gradients sharded)
  zero3  x1, x2     DeepSpeed ZeRO-3 (parameters too)

Steady state = median over the second half of the steps (history.csv). Scaling efficiency =
cells/s with 2 workers / (2 x cells/s with 1). FLOP/s are the model's formula (vcell/models/flops.py)
at each batch's own gene tokens. On a shared machine the numbers move with the neighbours' load:
compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vcell.train.training_plan import steady_state  # noqa: E402

CONTENDERS = (("ddp", "ddp", []), ("zero2", "deepspeed", ["train.deepspeed.stage=2"]),
              ("zero3", "deepspeed", ["train.deepspeed.stage=3"]))


def run(args, name: str, strategy: str, extra: list[str], workers: int) -> dict:
    """One training run (a second attempt if Ray fails to start on a loaded machine); its
    steady-state rates from history.csv. With --keep, a finished run of an earlier invocation."""
    run_name = f"bench-pretrain-{name}-x{workers}"
    history = Path(args.workdir) / run_name / "history.csv"
    if not (args.keep and finished(history, args.steps)):
        train(args, run_name, strategy, extra, workers)
    with open(history) as stream:
        rows = list(csv.DictReader(stream))
    column = lambda key: steady_state([float(r[key]) for r in rows if r.get(key)])  # noqa: E731
    return {"cells_per_s": column("cells_per_s"), "tokens_per_s": column("tokens_per_s"),
            "gflops_per_s": 1e3 * column("tflops_per_s"), "data_wait": column("data_wait_fraction")}


def finished(history: Path, steps: int) -> bool:
    if not history.is_file():
        return False
    with open(history) as stream:
        return sum(1 for _ in csv.DictReader(stream)) == steps


def train(args, run_name: str, strategy: str, extra: list[str], workers: int) -> None:
    command = [
        sys.executable, "launch.py", "train", "--config", "configs/experiments/pretrain.yaml", "--name", run_name, "--restart",
        f"model.transformer.size={args.preset}", f"loader.batch_size={args.batch_size}", f"train.steps={args.steps}",
        f"train.checkpoint_every={args.steps}", "train.validate_every=null", f"train.strategy={strategy}", *extra,
        f"scaling.workers={workers}", "scaling.cpus_per_worker=1", f"scaling.storage_path={args.workdir}",
        "wandb.mode=disabled", *([f"data.atlas={args.atlas}"] if args.atlas else []),
    ]
    for attempt in (1, 2):
        done = subprocess.run(command, cwd=ROOT, stdout=None if args.verbose else subprocess.DEVNULL,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode == 0:
            return
        print(f"# {run_name}: attempt {attempt} failed (exit {done.returncode})", flush=True)
    raise SystemExit(f"{run_name} failed twice; its log is under {args.workdir}/{run_name}/ray")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="10m", help="model.transformer.size (default: 10m)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8, help="cells per worker per step")
    parser.add_argument("--atlas", help="data.atlas (default: the pretraining config's, data/demo.zarr, made if missing)")
    parser.add_argument("--workdir", default=str(ROOT / "benchmarks" / ".work" / "runs"))
    parser.add_argument("--verbose", action="store_true", help="show the runs' output")
    parser.add_argument("--keep", action="store_true", help="reuse runs an earlier invocation finished (same settings)")
    args = parser.parse_args()
    rows = {}
    for name, strategy, extra in CONTENDERS:
        for workers in (1, 2):
            rows[name, workers] = run(args, name, strategy, extra, workers)
            print(f"# {name} x{workers}: {rows[name, workers]['cells_per_s']:,.1f} cells/s", flush=True)
    print(f"\npreset {args.preset}, demo atlas (2,000 genes), {args.steps} steps of {args.batch_size} cells per worker, "
          f"1 CPU thread per worker, {os.cpu_count()} cores (shared: noisy)\n")
    print("| strategy | workers | cells/s | cells/s per worker | scaling efficiency | gene tokens/s | model GFLOP/s | data wait |")
    print("|:---------|--------:|--------:|-------------------:|-------------------:|--------------:|--------------:|----------:|")
    for (name, workers), row in rows.items():
        single = rows[name, 1]["cells_per_s"]
        efficiency = row["cells_per_s"] / (workers * single)
        print(f"| {name:<8} | {workers:>7} | {row['cells_per_s']:>7,.1f} | {row['cells_per_s'] / workers:>18,.1f} "
              f"| {efficiency:>18.0%} | {row['tokens_per_s']:>13,.0f} | {row['gflops_per_s']:>13,.2f} | {row['data_wait']:>9.1%} |")


if __name__ == "__main__":
    main()
