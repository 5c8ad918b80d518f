"""Training throughput on CPU: a plain PyTorch loop vs. `vcell train` (Ray Train + Lightning).

    python benchmarks/train.py                 # demo atlas, full model (small), 60 steps of 256 cells
    python benchmarks/train.py --steps 100 --model base

Same atlas, model, batch and loader in every row; each row is measured in this run:

  plain loop       one process: AtlasLoader -> VirtualCell -> AdamW, no Ray, no Lightning
  vcell ddp x1     `python launch.py train` with 1 worker (DDP strategy)
  vcell zero2 x1   the same with DeepSpeed ZeRO-2 (our CPU strategy)
  vcell ddp x2     2 workers on the 2 cores (each its own batch: twice the cells per step)

Steady state = median cells/s over the second half of the steps (history.csv for vcell);
"to first step" = seconds from launching the command (for the plain loop: this script, its
imports included) to the end of the first step.
Targets: vcell within 10% of the plain loop in steady state; first step within 30 s.
"""

from __future__ import annotations

import time

STARTED = time.time()  # the plain loop's "to first step" counts its imports, as a command's does

import argparse  # noqa: E402
import csv  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from vcell.config import load_config  # noqa: E402
from vcell.data.loader import AtlasLoader  # noqa: E402
from vcell.models.zoo import build_model  # noqa: E402
from vcell.train.module import valid_rows  # noqa: E402
from vcell.train.training_plan import model_spec, steady_state, with_model_inputs  # noqa: E402
from vcell.train.ray_train import prepare_atlas  # noqa: E402
from vcell.train.schedule import warmup_cosine  # noqa: E402


def overrides(args, workers: int, strategy: str) -> list[str]:
    return [
        f"model.name={args.model}", f"model.size={args.size}", f"loader.batch_size={args.batch_size}",
        f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}", "train.validate_every=null",
        f"train.strategy={strategy}", f"scaling.workers={workers}", "scaling.cpus_per_worker=1",
        f"scaling.storage_path={args.workdir}", "evaluate.at_end=false",  # training alone is measured
    ]


def plain_loop(args) -> dict:
    """The reference: the same step in one process with one torch thread (as one worker has)."""
    torch.set_num_threads(1)
    config = load_config(None, overrides(args, 1, "ddp"))
    atlas = prepare_atlas(config)
    config = with_model_inputs(config, atlas)
    torch.manual_seed(config.seed)
    model = build_model(config.model, model_spec(config, atlas))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.learning_rate, weight_decay=config.train.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(args.steps))
    loader = AtlasLoader(atlas, config.loader, "train", seed=config.seed, rank=0, world_size=1)
    rates, first_step, last = [], None, time.perf_counter()
    model.train()
    while len(rates) < args.steps:
        for batch in loader:
            batch = valid_rows(batch)
            loss = model(batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.gradient_clip)
            optimizer.step()
            schedule.step()
            now = time.perf_counter()
            rates.append(len(batch["x"]) / (now - last))
            last = now
            first_step = first_step or time.time() - STARTED
            if len(rates) == args.steps:
                break
    return {"cells_per_s": steady_state(rates), "first_step_s": first_step}


def vcell_run(args, name: str, workers: int, strategy: str) -> dict:
    command = [sys.executable, "launch.py", "train", "--name", f"bench-{name}", "--restart", *overrides(args, workers, strategy)]
    started = time.time()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL if not args.verbose else None,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    with open(Path(args.workdir) / f"bench-{name}" / "history.csv") as stream:
        rows = list(csv.DictReader(stream))
    return {"cells_per_s": steady_state([float(r["cells_per_s"]) for r in rows]), "first_step_s": float(rows[0]["time"]) - started,
            "data_wait": steady_state([float(r["data_wait_fraction"]) for r in rows])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--model", default="full")
    parser.add_argument("--size", default="small")
    parser.add_argument("--workdir", default=str(ROOT / "benchmarks" / ".work" / "runs"))
    parser.add_argument("--verbose", action="store_true", help="show the runs' output")
    args = parser.parse_args()
    rows = {"plain loop": plain_loop(args)}
    print(f"# plain loop: {rows['plain loop']['cells_per_s']:,.0f} cells/s", flush=True)
    for label, name, workers, strategy in (("vcell ddp x1", "ddp1", 1, "ddp"), ("vcell zero2 x1", "zero2", 1, "deepspeed"),
                                           ("vcell ddp x2", "ddp2", 2, "ddp")):
        rows[label] = vcell_run(args, name, workers, strategy)
        print(f"# {label}: {rows[label]['cells_per_s']:,.0f} cells/s", flush=True)
    reference = rows["plain loop"]["cells_per_s"]
    print(f"\nmodel '{args.model}' ({args.size}), demo atlas, {args.steps} steps of {args.batch_size} cells per worker, "
          f"1 CPU thread per process, {os.cpu_count()} cores\n")
    print("| contender      | cells/s (steady) | vs plain loop | to first step (s) | data wait |")
    print("|:---------------|-----------------:|--------------:|------------------:|----------:|")
    for label, row in rows.items():
        wait = f"{row['data_wait']:.1%}" if "data_wait" in row else "-"
        print(f"| {label:<14} | {row['cells_per_s']:>16,.0f} | {row['cells_per_s'] / reference:>13.2f} "
              f"| {row['first_step_s']:>17.1f} | {wait:>9} |")


if __name__ == "__main__":
    main()
