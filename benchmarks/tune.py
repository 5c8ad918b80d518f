"""A fixed campaign with ASHA vs. without a scheduler: how much training early stopping saves.

    python benchmarks/tune.py                     # the example campaign (configs/tune/quickstart.yaml), 8 trials
    python benchmarks/tune.py --trials 4 train.steps=60

Both campaigns sample the same 8 configurations (the search is seeded) on the same atlas and
resources; each runs as `python launch.py tune` in its own process and Ray cluster. Reported:
wall time, trials stopped early, optimiser steps trained over all trials, and the best final
objective. Target: ASHA trains far fewer steps for (about) the same best objective.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def campaign(scheduler: str, args, workdir: Path) -> dict:
    name = f"bench-{scheduler}"
    command = [sys.executable, "launch.py", "tune", "--config", args.config, "--quiet", f"name={name}",
               f"tune.trials={args.trials}", f"tune.scheduler.name={scheduler}", f"scaling.storage_path={workdir}",
               "wandb.mode=disabled", *args.overrides]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    summary = json.loads((workdir / name / "summary.json").read_text())
    return {"seconds": seconds, "stopped": summary["stopped_early"], "steps": summary["steps_trained"],
            "best": summary["best"]["final_objective"] if summary["best"] else float("nan"),
            "trials": summary["trials"], "metric": summary["metric"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tune/quickstart.yaml", help="campaign config")
    parser.add_argument("--trials", type=int, default=8, help="trials per campaign")
    parser.add_argument("--workdir", help="where the campaigns' runs go (default: a temp folder)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for both campaigns")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="vcell-bench-tune-")).resolve()
    rows = {scheduler: campaign(scheduler, args, workdir) for scheduler in ("none", "asha")}
    none, asha = rows["none"], rows["asha"]
    print(f"{args.trials} trials of {args.config} ({' '.join(args.overrides) or 'as written'}); "
          f"objective {none['metric']} (lower is better unless the config says max)")
    print(f"{'':<22}{'no scheduler':>14}{'ASHA':>14}{'ASHA / none':>14}")
    for label, key, form in (("wall time (s)", "seconds", "{:.0f}"), ("trials stopped early", "stopped", "{:d}"),
                             ("steps trained", "steps", "{:,d}"), ("best objective", "best", "{:.4f}")):
        ratio = asha[key] / none[key] if none[key] else float("nan")
        print(f"{label:<22}{form.format(none[key]):>14}{form.format(asha[key]):>14}{ratio:>14.2f}")
    print(f"runs: {workdir}")


if __name__ == "__main__":
    main()
