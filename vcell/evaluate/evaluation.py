"""`vcell evaluate`: metrics against baselines, plots and embeddings of a finished run.

    results = evaluate_run("runs/quickstart")     # adds "evaluation" to metrics.json, writes plots/

Writes into the run folder (or an export folder): `metrics.json` gains an "evaluation" key
(embedding, reconstruction, perturbation and per-enhancement sections, each with the
model's value, baselines beside it and a definition; skipped metrics say why), `plots/*.png`,
`embeddings.h5ad` (see `vcell.evaluate.embed`) and, with the enhancements evaluated, the
inferred biology as TSV files in `biology/` (see `vcell.evaluate.biology`). The training job calls this at its end
(`evaluate_finished`, handed to `vcell.train.ray_train.train` by `vcell train` and campaign trials).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ValidationError

from vcell.evaluate.embed import checked_expression, expression_warnings, write_embeddings
from vcell.evaluate.enhancement_metrics import enhancement_metrics
from vcell.evaluate.export import open_trained
from vcell.evaluate.heldout import held_out_cells
from vcell.evaluate.perturbation import perturbation_metrics
from vcell.evaluate.representation import embedding_metrics, reconstruction_metrics
from vcell.errors import VCellError
from vcell.files import atomic_write, h5ad_not_ours

log = logging.getLogger(__name__)


def evaluation_settings(evaluate: BaseModel, overrides: dict) -> BaseModel:
    """The run's evaluate section with `overrides`, validated as the config is (model_copy is not)."""
    try:
        return type(evaluate).model_validate({**evaluate.model_dump(), **overrides})
    except ValidationError as error:
        problems = "; ".join(f"evaluate.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise VCellError(f"invalid evaluation settings: {problems}") from None


def evaluate_run(run: str | Path, atlas: str | Path | None = None, *, progress: bool = True,
                 overrides: dict | None = None) -> dict:
    """Score a finished run on held-out cells; returns the "evaluation" section it wrote."""
    started = time.perf_counter()
    trained = open_trained(run)
    settings = evaluation_settings(trained.config.evaluate, overrides or {})
    folder = trained.run_folder or trained.directory
    data = held_out_cells(trained, atlas, max_cells=settings.max_cells, seed=trained.config.seed)
    results: dict = {"data": data.description, "notes": data.notes}
    arrays: dict = {}
    stages = [("embedding", embedding_metrics), ("reconstruction", lambda d: (reconstruction_metrics(d), {})),
              ("perturbation", perturbation_metrics)]
    if settings.enhancements:
        stages.append(("enhancements", enhancement_metrics))
    for name, stage in stages:
        tick = time.perf_counter()
        results[name], arrays[name] = stage(data)
        say(progress, f"evaluate: {name} scored in {time.perf_counter() - tick:.1f} s")
    if settings.enhancements:
        results["biology"] = write_run_biology(trained, data, folder, progress)
    if settings.plots:
        results["plots"] = write_figures_logged(data, results, arrays, folder, settings, progress)
    if settings.embeddings != "none":
        results["embeddings"] = write_run_embeddings(trained, data, folder, settings, progress)
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_metrics(folder / "metrics.json", results)
    return results


def forget_evaluation(folder: Path) -> None:
    """Remove what an evaluation wrote into the run `folder` (figures, biology/, embeddings.h5ad),
    when it restarts as another run: those describe the model that is gone. What vcell did not
    write stays (each remover checks); metrics.json goes with the run's own files."""
    from vcell.evaluate.biology import remove_biology
    from vcell.evaluate.figures import remove_stale_plots

    remove_stale_plots(folder / "plots")
    remove_biology(folder / "biology")
    embeddings = folder / "embeddings.h5ad"
    if embeddings.is_file() and h5ad_not_ours(embeddings) is None:
        embeddings.unlink()


def say(progress: bool, message: str) -> None:
    log.info(message)
    if progress:
        print(message, flush=True)


def write_figures_logged(data, results, arrays, folder: Path, settings, progress: bool) -> list[str]:
    from vcell.evaluate.figures import write_figures

    tick = time.perf_counter()
    paths = write_figures(data, results, arrays, folder / "plots", settings)
    say(progress, f"evaluate: {len(paths)} plots in {time.perf_counter() - tick:.1f} s")
    return paths


def write_run_biology(trained, data, folder: Path, progress: bool) -> dict:
    from vcell.evaluate.biology import biology_tables, write_biology

    tick = time.perf_counter()
    tables, skipped = biology_tables(trained, data)
    try:
        paths = write_biology(folder / "biology", tables, skipped)
    except VCellError as error:  # a user's files in biology/: keep them, and still write the metrics
        say(progress, f"evaluate: biology/ not written: {error}")
        return {"files": [], "skipped": skipped, "error": str(error)}
    if paths or skipped:
        say(progress, f"evaluate: {len(paths)} biology files in biology/ in {time.perf_counter() - tick:.1f} s")
    return {"files": [str(path.relative_to(folder)) for path in paths], "skipped": skipped}


def write_run_embeddings(trained, data, folder: Path, settings: BaseModel, progress: bool) -> str:
    """<run>/embeddings.h5ad: every atlas cell or the scored held-out ones (`settings.embeddings`),
    with the expression layers `settings.expression` names."""
    from vcell.evaluate.cells import open_cells

    rows = None if settings.embeddings == "all" else data.test["cell_index"].numpy()
    stream = open_cells(data.atlas, trained, rows=rows)
    expression = checked_expression(settings.expression)
    for warning in expression_warnings(trained, expression):
        log.warning(warning)
        data.notes.append(f"embeddings: {warning}")
    path = write_embeddings(trained, stream, folder / "embeddings.h5ad", progress=progress, expression=expression)
    return str(path.relative_to(folder))


def baseline_rows(results: dict) -> list[tuple[str, dict[str, float]]]:
    """(metric, {method: value}) for every section with a model value and baselines."""
    rows = []

    def add(prefix: str, section: dict) -> None:
        if not isinstance(section, dict) or "model" not in section or "baselines" not in section:
            return
        for metric, value in section["model"].items():
            scores = {"model": value}
            scores.update({name: values.get(metric, np.nan) for name, values in section["baselines"].items()})
            rows.append((f"{prefix}: {metric}", scores))

    add("embedding", results.get("embedding", {}))
    add("reconstruction", results.get("reconstruction", {}))
    likelihood = results.get("reconstruction", {}).get("log_likelihood")
    if isinstance(likelihood, dict):  # one number per method: the same shape as the other sections
        add("reconstruction", {"model": {"log_likelihood": likelihood["model"]},
                               "baselines": {name: {"log_likelihood": value} for name, value in likelihood["baselines"].items()}})
    perturbation = results.get("perturbation", {})
    groups = [("unseen perturbations", perturbation.get("unseen_perturbations")),
              ("seen perturbations", perturbation.get("seen_perturbations")),
              ("combination perturbations", perturbation.get("additive"))]  # "A+B": vs the sum of the singles
    for label, group in groups:
        if isinstance(group, dict):  # the truth first: a few held-out cells per perturbation are mostly noise
            add(f"{label} vs truth", group.get("vs_truth", {}))
            add(label, group.get("vs_observed", {}))
    for name, section in results.get("enhancements", {}).items():
        add(name, section)
    return rows


def comparison_rows(evaluations: dict[str, dict], metrics: list[str] | None = None) -> list[tuple[str, dict[str, float]]]:
    """(metric, {run: value, baseline: value}) over several runs' evaluations (run name -> "evaluation"
    section) scored on the same held-out cells: each run's model value under its name, then the
    baselines (the first run that reports a baseline gives its value: on the same cells they agree).
    `metrics` keeps those metrics, in that order; a metric a run lacks is NaN for it."""
    merged: dict[str, dict[str, float]] = {}
    for run, evaluation in evaluations.items():
        for metric, scores in baseline_rows(evaluation):
            row = merged.setdefault(metric, {})
            row[run] = scores.pop("model")
            for name, value in scores.items():
                row.setdefault(name, value)
    chosen = list(merged) if metrics is None else [metric for metric in metrics if metric in merged]
    runs = list(evaluations)
    return [(metric, {**{run: merged[metric].get(run, np.nan) for run in runs},
                      **{name: value for name, value in merged[metric].items() if name not in runs}})
            for metric in chosen]


def summary_lines(results: dict) -> list[str]:
    """A readable table: each metric, the model's value and each baseline's."""
    lines = [f"held-out cells: {results['data'].get('held_out_cells', 0):,} ({results['data'].get('held_out_split')}); "
             f"{results.get('seconds', 0):.0f} s", f"{'metric':<52} {'model':>9}  baselines"]
    for metric, scores in baseline_rows(results):
        model = scores.pop("model")
        others = ", ".join(f"{name} {readable(value)}" for name, value in scores.items() if value is not None and value == value)
        lines.append(f"{metric:<52} {readable(model if model is not None else float('nan')):>9}  {others}")
    lines += [f"note: {note}" for note in results.get("notes", [])]
    lines += [f"note: {name}: {warning}" for name, warning in noise_warnings(results)]
    if results.get("plots"):
        lines.append(f"plots: {len(results['plots'])} PNG files in plots/")
    return lines


def readable(value: float) -> str:
    """Three decimals, or three significant digits below 0.01 (an MAE of 0.00094 against 0.00148
    would read 0.001 against 0.001)."""
    return f"{value:.3g}" if value == value and 0 < abs(value) < 0.01 else f"{value:.3f}"


def noise_warnings(results: dict) -> list[tuple[str, str]]:
    """(section, warning) for each comparison the held-out data are too noisy to decide."""
    sections = [*results.get("perturbation", {}).items(), *results.get("enhancements", {}).items()]
    return [(name.replace("_", " "), section["noise_bound"]) for name, section in sections
            if isinstance(section, dict) and section.get("noise_bound")]


def finite(value):
    """JSON has no NaN: undefined values are written as null."""
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return finite(value.tolist())
    return value


def write_metrics(path: Path, evaluation: dict) -> None:
    """metrics.json with "evaluation" added (training's keys kept), written whole."""
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics["evaluation"] = evaluation
    text = json.dumps(finite(metrics), indent=2, allow_nan=False).encode()  # JSON has no NaN: null
    atomic_write(path, lambda stream: stream.write(text))


def evaluate_finished(directory: Path, progress: bool) -> None:
    """`vcell evaluate` on the run just trained (`RunHooks.evaluate` of a training job); a failure keeps the trained model and says how to retry."""
    try:
        results = evaluate_run(directory, progress=progress)
    except Exception as error:
        log.exception("evaluation failed")
        raise VCellError(f"training finished and the model is saved in {directory}/model, but evaluation failed: {error}",
                         hint=f"fix the cause, then run `vcell evaluate {directory}` (or the same `vcell train` again)") from error
    if progress:
        print("\n".join(summary_lines(results)))
