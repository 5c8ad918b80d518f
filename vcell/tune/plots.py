"""A campaign's figures (PNG, via the evaluation plots' Agg helpers).

    objective_vs_steps.png        the metric the scheduler acts on, per trial over steps: where
                                  ASHA stopped a trial its line ends in a cross; the best is bold
    objective_vs_parameters.png   the final objective against each searched key, one panel each
                                  (log axis for log-uniform keys, categories for listed values)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from vcell.evaluate.plots import cycled_colours, new_figure, outside_legend, panel_grid, save_figure
from vcell.tune.campaign_plan import CampaignPlan
from vcell.tune.results import COMPLETED, ERRORED, STOPPED, best_row, reported

STATUS_COLOURS = {COMPLETED: "#1f77b4", STOPPED: "#ff7f0e", ERRORED: "#d62728"}


def curves_figure(plan: CampaignPlan, grid, rows: list[dict], path: Path) -> Path:
    metric = plan.config.tune.metric if plan.config.tune.metric.startswith(("val/", "train/")) else plan.scheduler_metric
    by_trial = {Path(result.path).name: reported(result, metric) for result in grid}
    best = best_row(rows, plan.config.tune.mode)
    figure = new_figure(7.5, 4.2)
    axes = figure.add_subplot(1, 1, 1)
    colours = cycled_colours(len(rows))
    for colour, row in zip(colours, rows):
        series = by_trial.get(row["trial"], [])
        if not series:
            continue
        steps, values = np.array(series).T
        is_best = best is not None and row["trial"] == best["trial"]
        axes.plot(steps, values, color=colour, linewidth=2.6 if is_best else 1.2, marker="o", markersize=3,
                  label=f"{row['trial']}{' (best)' if is_best else ''}")
        if row["status"] == STOPPED:
            axes.plot(steps[-1], values[-1], marker="x", color="black", markersize=8, linestyle="none")
    stopped = sum(row["status"] == STOPPED for row in rows)
    axes.set(xlabel="step", ylabel=metric,
             title=f"{plan.config.name}: {metric} per trial ({stopped} of {len(rows)} stopped early, marked x)")
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        outside_legend(axes, handles, labels)
    return save_figure(figure, path)


def parameter_panel(axes, plan: CampaignPlan, rows: list[dict], key: str) -> None:
    dimension = next(d for d in plan.space.dimensions if d.key == key)
    scored = [r for r in rows if isinstance(r["final_objective"], float) and math.isfinite(r["final_objective"])]
    colours = [STATUS_COLOURS[r["status"]] for r in scored]
    objective = [r["final_objective"] for r in scored]
    if dimension.listed:
        labels = [str(value) for value in dimension.values]
        positions = [labels.index(str(r[key])) if str(r[key]) in labels else -1 for r in scored]
        axes.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
        axes.scatter(positions, objective, c=colours, s=36, zorder=3)
        axes.set_xlim(-0.5, len(labels) - 0.5)
    else:
        axes.scatter([float(r[key]) for r in scored], objective, c=colours, s=36, zorder=3)
        if dimension.kind == "loguniform":
            axes.set_xscale("log")
    axes.set(xlabel=key, ylabel=plan.config.tune.metric)
    axes.grid(alpha=0.3)


def parameters_figure(plan: CampaignPlan, rows: list[dict], path: Path) -> Path:
    keys = plan.space.keys
    columns = min(3, len(keys))
    figure = new_figure(3.6 * columns + 1.6, 3.2 * math.ceil(len(keys) / columns))
    panels = panel_grid(figure, len(keys), columns)
    for axes, key in zip(panels, keys):
        parameter_panel(axes, plan, rows, key)
    handles = [panels[-1].scatter([], [], c=colour) for colour in STATUS_COLOURS.values()]
    outside_legend(panels[-1], handles, list(STATUS_COLOURS))
    figure.suptitle(f"{plan.config.name}: final {plan.config.tune.metric} ({plan.config.tune.mode}) per searched value")
    return save_figure(figure, path)


def campaign_plots(plan: CampaignPlan, grid, rows: list[dict], directory: Path) -> list[Path]:
    if not rows:
        return []
    return [curves_figure(plan, grid, rows, directory / "objective_vs_steps.png"),
            parameters_figure(plan, rows, directory / "objective_vs_parameters.png")]
