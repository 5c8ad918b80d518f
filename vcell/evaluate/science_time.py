"""The time-course learning checks (see `science.py`): kinetics after a stimulus (`temporal`) and
the memory of an earlier pulse (`temporal+memory`), with the observed-data baselines both use
(nearest time point, interpolation in log time, observed primed - naive) and the simulator's
mean log expression under any condition (`true_log_expression`).

    row = check_temporal(setup)       # ScienceRow(enhanced, base, baseline, baseline_name, reference)
"""

from __future__ import annotations

import numpy as np
import torch

from vcell.atlas.synth import sample_condition
from vcell.data.memory import select
from vcell.evaluate.metrics import pearson, relative_error
from vcell.evaluate.science import HELD_OUT_HOURS, ScienceRow, ScienceSetup, basal_rows, codes, predict_mean, trained
from vcell.models.inputs import Conditions

TRUTH_CELLS = 8192  # simulated cells per condition behind a true mean log expression


def check_temporal(setup: ScienceSetup) -> ScienceRow:
    """Error of the predicted change (held-out 4 h vs unstimulated) against the simulator's; the
    Pearson r of the change and the half-time Spearman of the model, base and baselines beside it."""
    control = codes(setup, "perturbation").index("control")
    names = ("temporal", "base", "interpolated_in_log_time", "nearest_time_point")
    changes: dict[str, list[np.ndarray]] = {"truth": [], **{name: [] for name in names}}
    for cell_type, basal in basal_cells_by_type(setup, control):
        changes["truth"].append(
            true_log_expression(setup, cell_type, time=HELD_OUT_HOURS) - true_log_expression(setup, cell_type)
        )
        for name in ("temporal", "base"):
            model = trained(setup, name)
            moved = predict_mean(model, basal, time=HELD_OUT_HOURS, perturbation=control)
            changes[name].append(moved - predict_mean(model, basal, perturbation=control))
        hours, observed = observed_time_course(setup.train, pure_time_course(setup.train, control, cell_type))
        changes["interpolated_in_log_time"].append(interpolate_in_log_time(hours, observed, HELD_OUT_HOURS))
        changes["nearest_time_point"].append(nearest_time_point(hours, observed, HELD_OUT_HOURS))
    scores = score_changes(changes)
    baseline = min(names[2:], key=lambda name: scores[name]["relative_error"])
    half_times = {
        "temporal": half_time_agreement(setup, trained(setup, "temporal"), control),
        "base": half_time_agreement(setup, trained(setup, "base"), control),
        "observed_time_course": observed_half_time_agreement(setup, control),
    }
    return ScienceRow(
        "temporal", f"relative error of the predicted change at the held-out {HELD_OUT_HOURS:g} h (vs truth)", False,
        scores["temporal"]["relative_error"], scores["base"]["relative_error"], scores[baseline]["relative_error"],
        baseline.replace("_", " "),
        {**{f"pearson_{name}": scores[name]["pearson"] for name in names},
         **{f"relative_error_{name}": scores[name]["relative_error"] for name in names[2:]},
         **{f"half_time_spearman_{name}": value for name, value in half_times.items()},
         "no_change": 1.0, "random_is": "predicting no change"},
    )


HALF_TIME_GRID = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]


def half_time_agreement(setup: ScienceSetup, model, control: int) -> float:
    """Spearman r of the model's per-gene response half-times (read off predicted trajectories
    of held-out basal cells) with the simulator's, over genes the stimulus moves (|log amplitude|
    > 0.5 in that cell type), pooled over cell types (NaN when the model moves none)."""
    from vcell.models.enhancements.temporal import response_half_times

    def model_half_times(cell_type: int, basal: dict) -> np.ndarray:
        batch = select(basal, torch.arange(min(256, len(basal["x"]))))
        conditions = Conditions(perturbation=torch.full((len(batch["x"]),), control))
        path = model.trajectory(batch, HALF_TIME_GRID, conditions).mean(1).numpy()  # (T, G)
        return response_half_times(path, np.array(HALF_TIME_GRID))

    return half_time_spearman(setup, control, model_half_times)


def observed_half_time_agreement(setup: ScienceSetup, control: int) -> float:
    """The same Spearman r for half-times read off the observed training means (unperturbed,
    naive cells of the type at 0 h and each stimulated time point): the model-free baseline."""
    from vcell.models.enhancements.temporal import response_half_times

    def observed_half_times(cell_type: int, basal: dict) -> np.ndarray:
        hours, observed = observed_time_course(setup.train, pure_time_course(setup.train, control, cell_type))
        path = np.concatenate([np.zeros((1, observed.shape[1])), observed])  # (1 + T, G) change from 0 h
        return response_half_times(path, np.concatenate([[0.0], hours]))

    return half_time_spearman(setup, control, observed_half_times)


def half_time_spearman(setup: ScienceSetup, control: int, half_times) -> float:
    """Spearman r of `half_times(cell_type, held-out basal cells)` (G,) with the truth over the
    genes the stimulus moves in that type, pooled over cell types."""
    from scipy.stats import spearmanr

    predicted, true = [], []
    for cell_type, basal in basal_cells_by_type(setup, control):
        half = half_times(cell_type, basal)
        order = setup.truth_order
        moving = np.abs(setup.truth.stimulus_log_amplitude[cell_type][order]) > 0.5
        keep = moving & ~np.isnan(half)
        predicted.append(half[keep])
        true.append(setup.truth.response_half_time[order][keep])
    predicted, true = np.concatenate(predicted), np.concatenate(true)
    return float(spearmanr(predicted, true)[0]) if len(predicted) > 2 and np.ptp(predicted) > 0 else float("nan")


def pure_time_course(train: dict[str, torch.Tensor], control: int, cell_type: int, columns=None) -> torch.Tensor:
    """(n,) bool: unperturbed, naive training cells of one type (`columns`: the obs names, default
    the science atlas's), whose means at 0 h and each time point are the time course baselines."""
    perturbation, history, context = ("perturbation", "hours_since_pulse", "cell_type") if columns is None else (
        columns.perturbation, columns.history, columns.context)
    return (train[perturbation] == control) & torch.isnan(train[history]) & (train[context] == cell_type)


def observed_time_course(train: dict[str, torch.Tensor], pure: torch.Tensor, time: str = "time") -> tuple[np.ndarray, np.ndarray]:
    """(hours (T,), mean change (T, G) vs the 0 h cells) of the `pure` training cells at each
    stimulated time point they hold."""
    rest = pure & (train[time] == 0)
    hours = np.array(sorted({float(t) for t in train[time][pure & (train[time] > 0)].unique()}))
    if not rest.any() or not len(hours):
        return np.zeros(0), np.zeros((0, train["x"].shape[1]))
    baseline = train["x"][rest].double().mean(0)
    return hours, np.stack([(train["x"][pure & (train[time] == t)].double().mean(0) - baseline).numpy() for t in hours])


def interpolate_in_log_time(hours: np.ndarray, observed: np.ndarray, at: float) -> np.ndarray:
    """(G,) observed change at `at` hours, linear in log time between the observed neighbours
    (the nearest end beyond them); no change without observations."""
    if not len(hours):
        return np.zeros(observed.shape[1])
    position = float(np.interp(np.log(at), np.log(hours), np.arange(len(hours))))  # fractional index
    low = int(np.floor(position))
    high, share = min(low + 1, len(hours) - 1), position - low
    return (1 - share) * observed[low] + share * observed[high]


def nearest_time_point(hours: np.ndarray, observed: np.ndarray, at: float) -> np.ndarray:
    """(G,) observed change at the time point nearest `at` in log time."""
    if not len(hours):
        return np.zeros(observed.shape[1])
    return observed[int(np.argmin(np.abs(np.log(hours) - np.log(at))))]


def score_changes(changes: dict[str, list[np.ndarray]]) -> dict[str, dict[str, float]]:
    """Relative error and Pearson r of each predicted change (per cell type, concatenated)
    against changes["truth"]."""
    truth = np.concatenate(changes["truth"])
    return {
        name: {"relative_error": relative_error(np.concatenate(c), truth), "pearson": pearson(np.concatenate(c), truth)}
        for name, c in changes.items() if name != "truth"
    }


def basal_cells_by_type(setup: ScienceSetup, control: int):
    """(cell type, held-out basal cells of that type) for every type with such cells."""
    test = setup.test
    rows = basal_rows(test, control)
    for cell_type in range(len(codes(setup, "cell_type"))):
        mine = rows[test["cell_type"][rows] == cell_type]
        if len(mine):
            yield cell_type, select(test, mine)


def true_log_expression(setup: ScienceSetup, cell_type: int, **condition) -> np.ndarray:
    """(G,) E[log1p(counts per 10k)] of fresh simulated cells of one type and condition, in the
    models' gene order: the noise-free version of what a Gaussian model predicts."""
    rng = np.random.default_rng([setup.seed, 7, cell_type])
    counts = sample_condition(setup.truth, cell_type, TRUTH_CELLS, rng, **condition)
    expression = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1.0) * 1e4).mean(0)
    return expression[setup.truth_order]


def check_memory(setup: ScienceSetup, hours_since_pulse: float = 24.0) -> ScienceRow:
    """Primed - naive difference (at rest and 2 h into a stimulus) against the simulator's."""
    names = ("temporal+memory", "temporal", "base")
    differences = memory_differences(setup, {name: trained(setup, name) for name in names}, hours_since_pulse)
    scores = score_changes(differences)
    observed = scores["observed_primed_minus_naive"]
    return ScienceRow(
        "temporal+memory", f"Pearson r, predicted vs true primed - naive difference ({hours_since_pulse:g} h after a pulse)", True,
        scores["temporal+memory"]["pearson"], scores["base"]["pearson"], observed["pearson"],
        "observed primed - naive mean",
        {"temporal_without_memory": scores["temporal"]["pearson"], "no_history": 0.0,
         "relative_error_memory": scores["temporal+memory"]["relative_error"],
         "relative_error_observed_primed_minus_naive": observed["relative_error"], "relative_error_no_history": 1.0},
    )


MEMORY_HOURS = (0.0, 2.0)  # hours into a stimulus at which primed and naive cells are compared


def memory_differences(setup, models: dict, hours_since_pulse: float, true_mean=None, columns=None) -> dict[str, list[np.ndarray]]:
    """Per cell type, at rest and 2 h into a stimulus: primed - naive mean expression, true and predicted
    (`true_mean(setup, cell_type, **condition)` gives the truth; default: log1p cp10k), and the
    observed difference of unperturbed training cells (any hours since the pulse; `columns`: obs names)."""
    true_mean = true_mean or true_log_expression
    control = codes(setup, "perturbation").index("control") if columns is None else setup.code("perturbation", columns.control)
    differences: dict[str, list[np.ndarray]] = {"truth": [], "observed_primed_minus_naive": [], **{name: [] for name in models}}
    for cell_type, basal in basal_cells_by_type(setup, control):
        for hours in MEMORY_HOURS:
            primed = true_mean(setup, cell_type, time=hours, hours_since_pulse=hours_since_pulse)
            differences["truth"].append(primed - true_mean(setup, cell_type, time=hours))
            differences["observed_primed_minus_naive"].append(observed_memory(setup.train, control, cell_type, hours, columns))
            for name, model in models.items():
                conditions = {"time": hours, "perturbation": control}
                difference = predict_mean(model, basal, hours_since_pulse=hours_since_pulse, **conditions) - predict_mean(
                    model, basal, hours_since_pulse=float("nan"), **conditions
                )
                differences[name].append(difference)
    return differences


def observed_memory(train: dict[str, torch.Tensor], control: int, cell_type: int, hours: float, columns=None) -> np.ndarray:
    """(G,) mean of primed minus naive unperturbed training cells of one type at `hours` into a
    stimulus; no difference where either group has no cells."""
    time, history = ("time", "hours_since_pulse") if columns is None else (columns.time, columns.history)
    same = (train[time] == hours) & (train["perturbation" if columns is None else columns.perturbation] == control)
    same &= train["cell_type" if columns is None else columns.context] == cell_type
    naive, primed = same & torch.isnan(train[history]), same & ~torch.isnan(train[history])
    if not naive.any() or not primed.any():
        return np.zeros(train["x"].shape[1])
    return (train["x"][primed].double().mean(0) - train["x"][naive].double().mean(0)).numpy()


