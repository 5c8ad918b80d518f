"""What a finished campaign leaves: results.csv, best.yaml, summary.json and plots/.

    summary = campaign_results(plan, result_grid, Path("runs/tune-quickstart"))

results.csv has one row per trial: its name, status (completed, stopped early, errored), the
searched values, the objective at its last report and its best over all reports, the steps it
trained, its wall time, and its run folder. best.yaml is the complete training config of the
best trial (by final objective among trials that trained to the end), which `vcell train
--config best.yaml` trains again as a run of its own.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from vcell.config.loader import dump_config, read_yaml_mapping
from vcell.config.schema import VCellConfig
from vcell.files import atomic_write
from vcell.train.run import as_saved
from vcell.tune.campaign_plan import STEP, CampaignPlan
from vcell.tune.trial import EXPLOITS_FILE

COMPLETED, STOPPED, ERRORED = "completed", "stopped early", "errored"


def reported(result, column: str) -> list[tuple[int, float]]:
    """(step, value) of every report of a trial that holds `column`."""
    frame = result.metrics_dataframe
    if frame is None or column not in frame or STEP not in frame:
        return []
    rows = frame[[STEP, column]].dropna()
    return [(int(step), float(value)) for step, value in zip(rows[STEP], rows[column])]


def trial_row(plan: CampaignPlan, result) -> dict:
    settings = plan.config.tune
    series = reported(result, settings.metric)
    values = [value for _, value in series if math.isfinite(value)]
    steps = int((result.metrics or {}).get(STEP, 0) or 0)
    status = ERRORED if result.error is not None else COMPLETED if steps >= plan.config.train.steps else STOPPED
    path = Path(result.path)
    lineage = path / EXPLOITS_FILE
    row = {"trial": path.name, "status": status}
    row.update({key: (result.config or {}).get(key) for key in plan.space.keys})
    row.update({
        "final_objective": series[-1][1] if series else math.nan,
        "best_objective": (min if settings.mode == "min" else max)(values) if values else math.nan,
        "steps": steps, "seconds": round(float((result.metrics or {}).get("time_total_s", math.nan)), 1),
        "exploits": len(json.loads(lineage.read_text())) if lineage.is_file() else 0,
        "error": str(result.error).splitlines()[0][:200] if result.error is not None else "",
        "run": str(path),
    })
    return row


def best_row(rows: list[dict], mode: str) -> dict | None:
    """The best final objective among trials that trained to the end (else among all that reported)."""
    for pool in ([r for r in rows if r["status"] == COMPLETED], [r for r in rows if r["status"] != ERRORED]):
        scored = [r for r in pool if math.isfinite(r["final_objective"])]
        if scored:
            key = (lambda r: r["final_objective"]) if mode == "min" else (lambda r: -r["final_objective"])
            return min(scored, key=key)
    return None


def write_csv(rows: list[dict], path: Path) -> Path:
    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]) if rows else ["trial"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, lambda stream: stream.write(text.getvalue().encode()))


def write_best_config(plan: CampaignPlan, best: dict, path: Path) -> Path:
    """The best trial's own config.yaml as a standalone run: named <campaign>-best, in the base's storage."""
    tree = as_saved(read_yaml_mapping(Path(best["run"]) / "config.yaml"))  # a campaign run by an older vcell
    tree.update(name=f"{plan.config.name}-best")
    tree["scaling"]["storage_path"] = plan.config.scaling.storage_path
    tree["wandb"]["group"] = plan.config.wandb.group
    config = VCellConfig.model_validate(tree)
    header = (f"# best trial of campaign '{plan.config.name}': {best['trial']}, {plan.config.tune.metric} = "
              f"{best['final_objective']:.6g} ({plan.config.tune.mode})\n"
              f"# train it again as its own run: vcell train --config {path}\n")
    if best["exploits"]:
        header += f"# PBT: its weights came from other trials at the steps listed in {best['run']}/{EXPLOITS_FILE}\n"
    text = (header + dump_config(config)).encode()
    return atomic_write(path, lambda stream: stream.write(text))


def format_table(rows: list[dict], plan: CampaignPlan) -> str:
    keys = plan.space.keys
    header = ["trial", "status", *keys, "final", "best", "steps", "seconds"]
    lines = [[r["trial"], r["status"], *[format_value(r[k]) for k in keys], format_value(r["final_objective"]),
              format_value(r["best_objective"]), str(r["steps"]), f"{r['seconds']:.0f}"] for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header, *lines])


def format_value(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def campaign_results(plan: CampaignPlan, grid, directory: Path, progress: bool = True) -> dict:
    """Write results.csv, best.yaml (when a trial succeeded), summary.json and plots; the summary."""
    from vcell.tune.plots import campaign_plots

    rows = sorted((trial_row(plan, result) for result in grid), key=lambda row: row["trial"])
    write_csv(rows, directory / "results.csv")
    best = best_row(rows, plan.config.tune.mode)
    summary = {
        "campaign": plan.config.name, "metric": plan.config.tune.metric, "mode": plan.config.tune.mode,
        "trials": len(rows), **{status.replace(" ", "_"): sum(r["status"] == status for r in rows)
                                for status in (COMPLETED, STOPPED, ERRORED)},
        "steps_trained": sum(r["steps"] for r in rows), "best": best,
        "results": str(directory / "results.csv"),
        "best_config": str(write_best_config(plan, best, directory / "best.yaml")) if best else None,
        "plots": [str(p) for p in campaign_plots(plan, grid, rows, directory / "plots")],
    }
    text = json.dumps(summary, indent=2, default=str).encode()
    atomic_write(directory / "summary.json", lambda stream: stream.write(text))
    if progress:
        print(format_table(rows, plan))
        print(f"campaign '{plan.config.name}': {summary['completed']} completed, {summary['stopped_early']} stopped "
              f"early, {summary['errored']} errored; {summary['steps_trained']:,} steps trained")
        if best:
            print(f"best: {best['trial']} with {plan.config.tune.metric} = {best['final_objective']:.6g}; "
                  f"train it again with: vcell train --config {summary['best_config']}")
        print(f"results: {summary['results']}, plots in {directory / 'plots'}/")
    return summary
