"""Perturbation response on held-out cells: pseudobulk deltas, model vs baselines (and truth).

    section, arrays = perturbation_metrics(data)

For each perturbation with enough held-out cells that are only perturbed (unstimulated,
naive), the observed delta is the mean of those cells minus the mean of held-out control cells of
the same cell types, weighted as the perturbed cells are. The controls are held-out ones because
every baseline below is a difference from the reference controls' mean: measured against those
too, target and baseline share that mean's sampling noise, and a baseline scores for predicting
the noise (demo atlas: the mean perturbation's Pearson delta 0.127 on unseen perturbations, 0.060
on seen ones, against -0.015 and 0.015 with held-out controls, while the truth's moved 0.249 ->
0.220 and 0.035 -> 0.033). Where the held-out cells have too few controls of a type, the
reference controls stand in and the section says so. DE genes are still found against the
reference controls: against the held-out ones (~240 cells on the demo) the Welch test at 5% FDR
finds none for four of the five unseen perturbations. The model predicts the same delta from
reference control cells of those types: predict(perturbation) - predict(control). Baselines:
`control` (no change: delta 0), `mean_perturbation` (the mean delta of the training
perturbations, per cell type), `linear` (Ahlmann-Eltze et al. 2025: gene embeddings from PCA of
training pseudobulks, a perturbation embedded by its gene's row, ridge-fitted bilinear map; see
`perturbation_baselines`), for combinations "A+B" of trained perturbations `additive` (the sum
of the singles' deltas, scored in its own section), for perturbations seen in training
`training_pseudobulk` (their own training cells' delta), and on the simulator `truth` (the true
expected delta, the ceiling set by sampling noise). Perturbations never seen in training (held
out whole) are scored apart from seen perturbations' held-out cells. Metrics follow Arc's cell-eval (the
Virtual Cell Challenge): Pearson of deltas on all genes and the top-20 DE genes, MAE,
discrimination score (L1), DE-gene overlap; each also against the simulator's true delta.
"""

from __future__ import annotations

import numpy as np
import torch

from vcell.data.memory import select
from vcell.evaluate.heldout import HeldOut
from vcell.evaluate.metrics import pearson
from vcell.evaluate.perturbation_baselines import additive_delta, combination_parts, fit_linear
from vcell.evaluate.scores import de_overlap, differential_genes, discrimination_score
from vcell.evaluate.truth import true_expression, truth_cell_type
from vcell.models.inputs import Conditions

MIN_CELLS = 3  # held-out perturbed cells behind an observed pseudobulk
BASAL_CELLS = 128  # reference control cells per cell type the model starts from (a mean over them)
TOP_DE = 20


def pure_rows(data: HeldOut, cells: dict[str, torch.Tensor]) -> torch.Tensor:
    """(n,) bool: unstimulated and naive cells (conditions other than the perturbation at rest)."""
    keep = torch.ones(len(cells["x"]), dtype=torch.bool)
    time, history = data.column("time"), data.column("history")
    if time and time in cells:
        keep &= ~(cells[time] > 0)
    if history and history in cells:
        keep &= torch.isnan(cells[history])
    return keep


def by_type(data: HeldOut, cells: dict, rows: torch.Tensor) -> dict[int, torch.Tensor]:
    context = data.column("context")
    types = cells[context][rows] if context and context in cells else torch.zeros(len(rows), dtype=torch.long)
    return {int(t): rows[types == t] for t in torch.unique(types).tolist()}


class DeltaBuilder:
    """Composition-matched deltas for one perturbation: observed, model, baselines, truth."""

    def __init__(self, data: HeldOut) -> None:
        self.data, self.model = data, data.model
        column = data.column("perturbation")
        self.column, self.control = column, data.code("perturbation", data.trained.config.model.columns.control)
        train, test = data.train, data.test
        self.train_pure, self.test_pure = pure_rows(data, train), pure_rows(data, test)
        control_rows = torch.nonzero(self.train_pure & (train[column] == self.control))[:, 0]
        self.control_by_type = by_type(data, train, control_rows)
        held_out_controls = torch.nonzero(self.test_pure & (test[column] == self.control))[:, 0]
        self.held_out_control_by_type = by_type(data, test, held_out_controls)
        self.reference_target_types: set[int] = set()  # types whose observed deltas fell back on reference controls
        self.training, profiles = self.training_deltas()
        self.mean_delta_by_type = {t: np.mean([d for (tt, _), d in self.training.items() if tt == t], axis=0)
                                   for t in {t for t, _ in self.training}}
        self.linear = fit_linear(profiles, self.training, self.mean_delta_by_type, self.model.spec.perturbation_gene)
        self.predicted_control: dict[int, np.ndarray] = {}

    def training_deltas(self) -> tuple[dict[tuple[int, int], np.ndarray], np.ndarray]:
        """((cell type, perturbation code) -> perturbed - control mean of training cells, and the
        (G, n) mean expression of every training condition and cell type with enough cells)."""
        train, column = self.data.train, self.column
        deltas: dict[tuple[int, int], np.ndarray] = {}
        profiles = [self.control_mean(t) for t in self.control_by_type if len(self.control_by_type[t]) >= MIN_CELLS]
        perturbed = self.train_pure & (train[column] != self.control) & (train[column] >= 0)
        for code in torch.unique(train[column][perturbed]).tolist():
            rows = torch.nonzero(perturbed & (train[column] == code))[:, 0]
            for cell_type, mine in by_type(self.data, train, rows).items():
                if len(mine) >= MIN_CELLS and cell_type in self.control_by_type:
                    profiles.append(self.mean_x(train, mine))
                    deltas[(cell_type, code)] = profiles[-1] - self.control_mean(cell_type)
        return deltas, np.stack(profiles, axis=1) if profiles else np.zeros((train["x"].shape[1], 0))

    def mean_x(self, cells: dict, rows: torch.Tensor) -> np.ndarray:
        return cells["x"][rows].double().mean(0).numpy()

    def control_mean(self, cell_type: int) -> np.ndarray:
        return self.mean_x(self.data.train, self.control_by_type[cell_type])

    def target_controls(self, cell_type: int) -> tuple[dict, torch.Tensor]:
        """(cells, rows): the control cells an observed delta of this type is measured from: held-out
        ones, which no baseline subtracted (see the module doc); the reference ones if too few."""
        rows = self.held_out_control_by_type.get(cell_type)
        if rows is not None and len(rows) >= MIN_CELLS:
            return self.data.test, rows
        self.reference_target_types.add(cell_type)
        return self.data.train, self.control_by_type[cell_type]

    def predicted_mean(self, cell_type: int, code: int) -> np.ndarray:
        basal = select(self.data.train, self.control_by_type[cell_type][:BASAL_CELLS])
        n = len(basal["x"])
        conditions = Conditions(perturbation=torch.full((n,), code, dtype=torch.long),
                                time=torch.zeros(n), hours_since_pulse=torch.full((n,), float("nan")))
        return self.model.predict_measured(basal, conditions).double().mean(0).numpy()

    def predicted_delta(self, cell_type: int, code: int) -> np.ndarray:
        if cell_type not in self.predicted_control:
            self.predicted_control[cell_type] = self.predicted_mean(cell_type, self.control)
        return self.predicted_mean(cell_type, code) - self.predicted_control[cell_type]

    def deltas(self, code: int) -> dict[str, np.ndarray] | None:
        """Observed and predicted deltas of one perturbation; None if too few usable cells."""
        test, column = self.data.test, self.column
        rows = torch.nonzero(self.test_pure & (test[column] == code))[:, 0]
        groups = {t: r for t, r in by_type(self.data, test, rows).items() if t in self.control_by_type}
        total = sum(len(r) for r in groups.values())
        if total < MIN_CELLS:
            return None
        weights = {t: len(r) / total for t, r in groups.items()}
        controls = {t: self.target_controls(t) for t in groups}
        control = sum(w * self.mean_x(*controls[t]) for t, w in weights.items())
        zeros = np.zeros_like(control)
        result = {
            "observed": self.mean_x(test, torch.cat(list(groups.values()))) - control,
            "model": sum(w * self.predicted_delta(t, code) for t, w in weights.items()),
            "control": zeros,
            "mean_perturbation": sum(w * self.mean_delta_by_type.get(t, zeros) for t, w in weights.items()),
            "cells": np.array(total),
        }
        if self.linear is not None:
            result["linear"] = sum(w * self.linear.delta(t, code) for t, w in weights.items())
        if any((t, code) in self.training for t in weights):
            result["training_pseudobulk"] = sum(w * self.training_pseudobulk(t, code) for t, w in weights.items())
        additive = self.additive(code, weights)
        if additive is not None:
            result["additive"] = additive
        de = differential_genes(test["x"][torch.cat(list(groups.values()))].numpy(),
                                self.data.train["x"][torch.cat([self.control_by_type[t] for t in groups])].numpy(), top=TOP_DE)
        result["de_genes"] = de
        if self.data.truth is not None:
            result["truth"] = self.true_delta(code, weights)
        return result

    def training_pseudobulk(self, cell_type: int, code: int) -> np.ndarray:
        """The perturbation's observed delta in the training cells of the type (the answer a user
        has without any model for a perturbation they measured); the type's mean perturbation
        delta where the training cells of the type are too few."""
        fallback = self.mean_delta_by_type.get(cell_type, np.zeros(self.data.train["x"].shape[1]))
        return self.training.get((cell_type, code), fallback)

    def additive(self, code: int, weights: dict[int, float]) -> np.ndarray | None:
        """The sum of the trained single deltas of a combination "A+B" (None: not one, or a part untrained)."""
        names = self.data.categories[self.column]
        parts = combination_parts(names[code], {name: c for c, name in enumerate(names)})
        if parts is None:
            return None
        per_type = {t: additive_delta(parts, t, self.training) for t in weights}
        if any(delta is None for delta in per_type.values()):
            return None
        return sum(w * per_type[t] for t, w in weights.items())

    def true_delta(self, code: int, weights: dict[int, float]) -> np.ndarray:
        truth = self.data.truth
        names = truth.perturbation_names()
        index = names.index(self.data.categories[self.column][code])
        types = {t: truth_cell_type(self.data, t) for t in weights}
        return sum(w * (true_expression(self.data, types[t], perturbation=index) - true_expression(self.data, types[t]))
                   for t, w in weights.items())


def score(predictions: dict[str, np.ndarray], target: np.ndarray, de_genes: list[np.ndarray]) -> dict[str, float]:
    """cell-eval-style scores of (P, G) predicted deltas against (P, G) target deltas."""
    top = [np.argsort(-np.abs(row))[:TOP_DE] for row in target]
    out = {}
    for name, predicted in predictions.items():
        out[name] = {
            "pearson_delta": float(np.mean([pearson(p, t) for p, t in zip(predicted, target)])),
            "pearson_delta_top20": float(np.mean([pearson(p[g], t[g]) for p, t, g in zip(predicted, target, top)])),
            "mae": float(np.abs(predicted - target).mean()),
            "discrimination_l1": discrimination_score(predicted, target)[0] if len(target) > 1 else float("nan"),
            # a prediction of no change ranks no gene above another: its overlap is undefined, not chance
            "de_overlap": float(np.nanmean([de_overlap(p, g) for p, g in zip(predicted, de_genes)] or [np.nan]))
            if any(len(g) for g in de_genes) and np.abs(predicted).max() > 0 else float("nan"),
        }
    return out


def group_section(rows: list[dict], names: list[str], has_truth: bool,
                  baselines: tuple[str, ...] = ("control", "mean_perturbation", "linear", "training_pseudobulk")) -> dict:
    """Scores of the model and of each baseline every row has (`linear` needs two trained gene
    perturbations, `training_pseudobulk` a perturbation seen in training)."""
    stacked = {key: np.stack([row[key] for row in rows]) for key in ("observed", "model")}
    de_genes = [row["de_genes"] for row in rows]
    methods = {"model": stacked["model"]}
    methods.update({k: np.stack([row[k] for row in rows]) for k in baselines if all(k in row for row in rows)})
    if has_truth:
        methods["truth"] = np.stack([row["truth"] for row in rows])
    observed_scores = score(methods, stacked["observed"], de_genes)
    section = {"perturbations": names, "cells": [int(row["cells"]) for row in rows],
               "vs_observed": {"model": observed_scores.pop("model"), "baselines": observed_scores}}
    if has_truth:
        truth = methods.pop("truth")
        truth_de = [np.argsort(-np.abs(row))[:TOP_DE] for row in truth]
        truth_scores = score(methods, truth, truth_de)
        section["vs_truth"] = {"model": truth_scores.pop("model"), "baselines": truth_scores}
        noise = noise_bound(observed_scores)
        if noise:
            section["noise_bound"] = noise
    return section


LOWER_IS_BETTER = {"mae"}


def noise_bound(observed_scores: dict[str, dict[str, float]]) -> str | None:
    """A warning naming each metric the held-out pseudobulks are too noisy to rank predictions by:
    the true expected delta itself scores no better against them than a baseline does."""
    truth = observed_scores["truth"]
    undecided = []
    for metric, value in truth.items():
        rivals = {name: scores[metric] for name, scores in observed_scores.items()
                  if name != "truth" and not np.isnan(scores.get(metric, np.nan))}
        if np.isnan(value) or not rivals:
            continue
        pick = min if metric in LOWER_IS_BETTER else max
        best = pick(rivals, key=rivals.get)
        if pick(value, rivals[best]) == rivals[best]:  # the truth does not win: ties count as not winning
            undecided.append(f"{metric} {value:.3f} vs {best} {rivals[best]:.3f}")
    if not undecided:
        return None
    return ("the held-out pseudobulks are mostly sampling noise: against them the true delta itself scores no "
            f"better than a baseline on {'; '.join(undecided)}; rank predictions by the 'vs truth' rows there, "
            "or hold out more cells")


def perturbation_metrics(data: HeldOut) -> tuple[dict, dict[str, np.ndarray]]:
    column = data.column("perturbation")
    if not column or column not in data.test or data.code("perturbation", data.trained.config.model.columns.control) is None:
        return {"skipped": "no perturbation column or control category the model reads"}, {}
    builder = DeltaBuilder(data)
    held_out = {str(group) for holdout in data.trained.config.loader.split.holdout if holdout.column == column
                for group in holdout.test + holdout.val}
    seen = {code for code in torch.unique(data.train[column]).tolist() if data.categories[column][code] not in held_out}
    groups: dict[str, tuple[list[dict], list[str]]] = {"unseen_perturbations": ([], []), "seen_perturbations": ([], [])}
    for code in sorted(set(torch.unique(data.test[column]).tolist()) - {builder.control, -1}):
        result = builder.deltas(code)
        if result is not None:
            rows, names = groups["seen_perturbations" if code in seen else "unseen_perturbations"]
            rows.append(result)
            names.append(data.categories[column][code])
    section: dict = {
        "definitions": "pseudobulk delta = mean of perturbed-only held-out cells - mean of held-out control cells of "
                       "the same cell types (same weights); DE genes against the reference controls; predictions start from "
                       "reference cells; Pearson on all genes and on the top-20 DE genes (Welch t-test, "
                       "BH FDR 5%; vs truth: top-20 by |true delta|), MAE, discrimination (1 - normalised L1 rank; "
                       "0.5 = random), DE overlap at N (cell-eval); linear: Ahlmann-Eltze et al. 2025 (Nature Methods), "
                       "Y = G W P^T + b with G the top-10 PCs of training pseudobulks, P the perturbed genes' rows of G, "
                       "ridge 0.1, b = mean_perturbation; training_pseudobulk (seen perturbations): the perturbation's "
                       f"delta in its training cells (the mean perturbation's in a cell type with < {MIN_CELLS} of them)",
    }
    combinations = [(row, name) for rows, names in groups.values() for row, name in zip(rows, names) if "additive" in row]
    section["additive"] = (group_section([r for r, _ in combinations], [n for _, n in combinations], data.truth is not None,
                                         ("mean_perturbation", "additive")) if combinations else
                           "skipped: no held-out combination 'A+B' whose single perturbations were all trained")
    if builder.linear is None:
        section["linear"] = "skipped: fewer than two training perturbations target measured genes"
    if builder.reference_target_types:
        section["target_controls"] = reference_controls_note(data, builder.reference_target_types)
        data.notes.append(f"perturbation: {section['target_controls']}")
    arrays: dict[str, np.ndarray] = {}
    for group, (rows, names) in groups.items():
        if not rows:
            section[group] = {"skipped": f"no perturbation with >= {MIN_CELLS} perturbed-only held-out cells"}
            continue
        section[group] = group_section(rows, names, data.truth is not None)
        arrays[f"{group}/observed"] = np.stack([r["observed"] for r in rows])
        arrays[f"{group}/model"] = np.stack([r["model"] for r in rows])
        if data.truth is not None:
            arrays[f"{group}/truth"] = np.stack([r["truth"] for r in rows])
    return section, arrays


def reference_controls_note(data: HeldOut, cell_types: set[int]) -> str:
    """Why some observed deltas could not be measured from held-out controls, and what that biases."""
    names = data.categories.get(data.column("context") or "")
    types = ", ".join(str(names[t]) if names else f"cell type {t}" for t in sorted(cell_types))
    return (f"the held-out cells have fewer than {MIN_CELLS} control cells of {types}: those observed "
            "deltas are measured from the reference controls, whose sampling noise the mean_perturbation, linear and "
            "training_pseudobulk baselines share, so their 'vs observed' scores are inflated there; hold out more cells "
            "(loader.split.test_fraction) or rank by the 'vs truth' rows")
