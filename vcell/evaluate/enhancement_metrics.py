"""What each enhancement is for, scored on held-out cells against the simulator's truth.

    sections, arrays = enhancement_metrics(data)     # {"regulatory": {...}, "temporal": {...}, ...}

One function per built-in enhancement, named after it; its `Enhancement.evaluation` points here.

Each section has the model's value, baselines, and a definition; without truth (a real atlas)
a section says so instead of inventing a number. Baselines: co-expression and partial
correlation for GRN edges, gene-set means of the observed input for pathway activity, the
nearest observed time point and interpolation in log time for kinetics, a library-size-only negative binomial for count
calibration, "no shift" for capacity coupling, "no history" and the observed primed - naive
mean for memory.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr

from vcell.data.memory import batches_of, select
from vcell.evaluate.edges import score_edges
from vcell.evaluate.heldout import HeldOut
from vcell.evaluate.metrics import (
    cell_type_means, column_correlations, moment_dispersion, pearson, relative_error, type_mean_with_deviation,
)
from vcell.evaluate.scores import interval_coverage
from vcell.evaluate.truth import true_expression
from vcell.models.blocks import gene_set_means, gene_set_projector, project_on_gene_sets
from vcell.models.inputs import Conditions
from vcell.models.registry import get_enhancement, resolve

NO_TRUTH = "skipped: needs the simulator's truth (a synthetic atlas)"
COVERAGE_DRAWS = 50
COVERAGE_CELLS = 512
COVERAGE_ENTRIES = 1 << 24  # draws x cells x genes scored at once (~130 MB per float64 array)
BASELINE_KEYS = {"co-expression": "coexpression", "partial correlation": "partial_correlation",  # in metrics.json
                 "knockdown effect + partial correlation": "knockdown_effect_plus_partial"}


def baseline_key(name: str) -> str:
    """A network baseline's name (`vcell.evaluate.edges`) -> its key in metrics.json."""
    base, _, corrected = name.partition(", ")  # "<name>, background-corrected"
    return BASELINE_KEYS[base] + ("_background_corrected" if corrected else "")


def statistics_of(data: HeldOut, cells: dict, name: str) -> np.ndarray:
    return np.concatenate([data.model.describe(batch).stats[name].detach().numpy() for batch in batches_of(cells, 2048)])


def regulatory(data: HeldOut) -> tuple[dict, dict]:
    from vcell.evaluate.edges import edge_baselines, interventional_baseline, with_background_corrected

    spec, truth = data.model.spec, data.truth
    cells = select(data.test, torch.arange(2))
    learned = statistics_of(data, cells, "edge_weight")[: len(spec.grn)]
    ranking = statistics_of(data, cells, "edge_score")[: len(spec.grn)]
    if truth is None:
        return {"skipped": NO_TRUTH, "edges": int(len(spec.grn))}, {}
    source, target = data.truth_order[spec.grn.source], data.truth_order[spec.grn.target]
    true_weight = np.zeros(len(source))
    is_tf = source < truth.n_tfs
    true_weight[is_tf] = truth.weight_matrix[source[is_tf], target[is_tf]]
    real = true_weight != 0
    baselines = edge_baselines(data.train["x"].numpy(), spec.grn.source, spec.grn.target, signed=True)
    combined = interventional_baseline({key: np.asarray(value) for key, value in data.train.items()}, spec,
                                       partial=baselines["partial correlation"])

    def edge_scores(scores: np.ndarray, weights: np.ndarray) -> dict:
        values = {"sign_agreement": float((np.sign(weights[real]) == np.sign(true_weight[real])).mean()),
                  "spearman_abs_weight": float(spearmanr(scores[real], np.abs(true_weight[real]))[0])}
        if (~real).any():
            ranked = score_edges(scores, weights, real, np.sign(true_weight))
            values.update(auprc_true_vs_decoy=ranked.auprc, auroc_true_vs_decoy=ranked.auroc)
        return values

    section = {
        "definition": "learned edges on the prior's edges vs the simulator's signed weights: share of true edges with "
                      "the right sign, Spearman of the edge score with |true weight|; AUPRC and AUROC of true vs decoy "
                      "edges when the prior has decoys. Model: the edge score ranks (standardised |weight| against its "
                      "regulator's and target's other edges), the signed weight gives the sign; baselines: Pearson r "
                      "(co-expression) and partial correlation of the training cells, and partial correlation plus "
                      "the knockdowns' effects where the regulator was knocked down (its sign from the knockdown); "
                      "each also background-corrected as the model's score is",
        "edges": int(len(real)), "true_edges": int(real.sum()),
        "model": edge_scores(ranking, learned),
        "baselines": {
            **{baseline_key(name): edge_scores(np.abs(value), value) for name, value in with_background_corrected(
                {**baselines, **({} if combined is None else {"knockdown effect + partial correlation": combined})},
                spec.grn.source, spec.grn.target).items()},
            "random": {"sign_agreement": 0.5, "auprc_true_vs_decoy": float(real.mean()), "auroc_true_vs_decoy": 0.5},
        },
    }
    return section, {"learned": learned[real], "true": true_weight[real]}


def hierarchical(data: HeldOut) -> tuple[dict, dict]:
    spec = data.model.spec
    activity = statistics_of(data, data.test, "pathway_activity")
    arrays = {"activity": activity}
    observed = data.truth_obsm("truth_pathway_activity") if data.truth is not None else None
    if observed is None:
        return {"skipped": NO_TRUTH}, arrays
    order = [list(data.truth.pathway_names).index(name) for name in spec.pathway_names]
    observed = observed[:, order]
    gene, group = torch.as_tensor(spec.gene_pathway.source), torch.as_tensor(spec.gene_pathway.target)
    projector = gene_set_projector(gene, group, len(order))
    gene_set = gene_set_means(data.test["x"], gene, group, torch.bincount(group, minlength=len(order)).float()).numpy()
    projected = project_on_gene_sets(data.test["x"], gene, group, projector).numpy()
    baselines = {"projection_of_observed": projected, "gene_set_mean": gene_set}
    context = data.column("context")
    if context is not None and context in data.test:
        reference = project_on_gene_sets(data.train["x"], gene, group, projector).numpy()
        types = (data.train[context].numpy(), data.test[context].numpy())
        baselines["cell_type_mean_of_projection"] = cell_type_means(reference, *types)
        baselines["cell_type_mean_plus_shrunk_deviation"] = type_mean_with_deviation(
            (data.train["x"].numpy(), types[0]), (data.test["x"].numpy(), types[1]),
            spec.gene_pathway.source, spec.gene_pathway.target)
    section = {
        "definition": "mean over pathways of the Pearson r between per-cell pathway activity and the simulator's; "
                      "the model projects its reconstruction on the annotated member genes (joint least squares), "
                      "plus what it left of the measured cell, shrunk by its reliability (hierarchical.observed_deviation, "
                      "the default); the baselines are that "
                      "projection of the observed cells, its mean over the reference cells of each cell's type, that "
                      "mean plus the cell's own deviation shrunk the same way, and plain gene-set means of the "
                      "observed cells",
        "pathways": len(order),
        "model": {"pathway_pearson": float(np.nanmean(column_correlations(activity, observed)))},
        "baselines": {name: {"pathway_pearson": float(np.nanmean(column_correlations(value, observed)))}
                      for name, value in baselines.items()},
    }
    return section, arrays


def temporal(data: HeldOut) -> tuple[dict, dict]:
    from vcell.evaluate.science_time import (
        HALF_TIME_GRID, basal_cells_by_type, half_time_agreement, interpolate_in_log_time, nearest_time_point,
        observed_half_time_agreement, observed_time_course, pure_time_course,
    )

    if data.truth is None:
        return {"skipped": NO_TRUTH}, {}
    columns = data.trained.config.model.columns
    control = data.code("perturbation", columns.control)
    time = data.column("time")
    test_times = sorted({float(t) for t in data.test[time].unique() if t > 0})
    names = ("model", "nearest_time_point", "interpolated_in_log_time")
    changes: dict[str, list[np.ndarray]] = {"truth": [], **{name: [] for name in names}}
    for cell_type, basal in basal_cells_by_type(data, control):
        rest = data.model.predict_measured(basal, conditions(basal, control, 0.0)).double().mean(0).numpy()
        hours_seen, observed = observed_time_course(data.train, pure_time_course(data.train, control, cell_type, columns), time)
        for hours in test_times:
            moved = data.model.predict_measured(basal, conditions(basal, control, hours)).double().mean(0).numpy()
            changes["model"].append(moved - rest)
            changes["truth"].append(true_expression(data, cell_type, time=hours) - true_expression(data, cell_type))
            changes["nearest_time_point"].append(nearest_time_point(hours_seen, observed, hours))
            changes["interpolated_in_log_time"].append(interpolate_in_log_time(hours_seen, observed, hours))
    truth = np.concatenate(changes["truth"])

    def change_scores(name: str) -> dict:
        values = np.concatenate(changes[name])
        return {"relative_error": relative_error(values, truth), "pearson": pearson(values, truth)}

    section = {
        "definition": "change after a stimulus (each held-out time point vs unstimulated, per cell type) against the "
                      "simulator's; baselines: the observed change of training cells at the nearest time point, and "
                      "interpolated linearly in log time between the observed neighbours; half-times: Spearman r with "
                      "the simulator's over the genes the stimulus moves (baseline: read off the observed time course)",
        "time_points": test_times,
        "model": {**change_scores("model"), "half_time_spearman": half_time_agreement(data, data.model, control)},
        "baselines": {**{name: change_scores(name) for name in names[1:]}, "no_change": {"relative_error": 1.0},
                      "observed_time_course": {"half_time_spearman": observed_half_time_agreement(data, control)}},
    }
    return section, {"hours": np.array(HALF_TIME_GRID)}


def conditions(cells: dict, control: int, hours: float) -> Conditions:
    n = len(cells["x"])
    return Conditions(torch.full((n,), control, dtype=torch.long), torch.full((n,), hours), torch.full((n,), float("nan")))


def stochastic(data: HeldOut) -> tuple[dict, dict]:
    cells = select(data.test, torch.arange(min(COVERAGE_CELLS, len(data.test["x"]))))
    fraction = statistics_of(data, select(cells, torch.arange(2)), "extrinsic_variance_fraction")[: data.model.spec.n_genes]
    section = {
        "definition": f"share of held-out counts whose randomised PIT under {COVERAGE_DRAWS} counts drawn from the "
                      "model for the same cell lies in [0.05, 0.95] (0.9 = calibrated; Czado et al. 2009); baselines: "
                      "Poisson and negative binomial (per-gene method-of-moments dispersion) with the library size only",
        **coverages(data, cells),
    }
    arrays = {"extrinsic_fraction": fraction}
    if data.truth is not None:
        true_fraction = data.truth.extrinsic_variance_fraction[data.truth_order]
        section["extrinsic_fraction_pearson_vs_truth"] = pearson(fraction, true_fraction)
        arrays["true_extrinsic_fraction"] = true_fraction
    return section, arrays


def coverages(data: HeldOut, cells: dict) -> dict:
    """{"model": {"coverage_90"}, "baselines": {name: {"coverage_90"}}} of `cells`, scored a chunk of
    cells at a time: (draws, cells, genes) arrays of a whole-transcriptome atlas would need GBs."""
    share, theta = moment_dispersion(data.train["counts"].numpy(), data.train["library_size"].numpy())
    per_chunk = max(1, COVERAGE_ENTRIES // (COVERAGE_DRAWS * len(share)))
    rng, covered = np.random.default_rng(data.seed), {}
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(data.seed)  # the same draws every evaluation
        for index, chunk in enumerate(batches_of(cells, per_chunk)):
            prediction = data.model.predict(chunk, Conditions())  # decode once, draw many times
            model = np.stack([data.model.head.likelihood.sample(prediction).numpy() for _ in range(COVERAGE_DRAWS)])
            mean = np.broadcast_to(chunk["library_size"].numpy()[:, None] * share[None, :], model.shape)
            references = {"library_size_poisson": rng.poisson(mean),  # know only each cell's library size
                          "library_size_nb": rng.negative_binomial(theta, theta / (theta + mean + 1e-12))}
            for name, draws in {"model": model, **references}.items():
                value = interval_coverage(draws, chunk["counts"].numpy(), 0.9, seed=(data.seed, index))
                covered[name] = covered.get(name, 0.0) + value * len(chunk["counts"])
    n = len(cells["counts"])
    return {"model": {"coverage_90": covered.pop("model") / n},
            "baselines": {name: {"coverage_90": total / n} for name, total in covered.items()}}


def resource(data: HeldOut) -> tuple[dict, dict]:
    from vcell.evaluate.science_checks import resource_shifts

    arrays = {"allocation": statistics_of(data, data.test, "pathway_allocation")} if "pathway_allocation" in \
        data.model.stat_shapes() else {}
    if data.truth is None:
        return {"skipped": NO_TRUTH}, arrays
    shifts = resource_shifts(data, {"model": data.model})
    true, predicted = np.array(shifts["truth"]), np.array(shifts["model"])
    observed, standard_error = observed_other_genes_shift(data, shifts["code"], shifts["gene_id"])
    section = {
        "definition": f"log shift of the other genes' total counts when {shifts['gene']} (the perturbed gene with the "
                      "largest share of transcripts) is knocked down, per cell type: |predicted - true|; "
                      "observed_shift: the same shift measured in the training cells (knocked-down vs control, "
                      "unstimulated, naive), with its standard error",
        "true_shift": float(true.mean()), "predicted_shift": float(predicted.mean()),
        "observed_shift": observed, "observed_shift_standard_error": standard_error,
        "model": {"shift_abs_error": float(np.abs(predicted - true).mean())},
        "baselines": {"no_shift": {"shift_abs_error": float(np.abs(true).mean())}},
    }
    if standard_error > 2 * abs(section["true_shift"]):
        section["noise_bound"] = (
            f"the atlas cannot pin this shift down: the true shift is {section['true_shift']:.4f}, the training cells "
            f"measure {observed:.3f} +- {standard_error:.3f} (standard error), so no model can learn it from these cells")
    return section, arrays


def observed_other_genes_shift(data: HeldOut, code: int, gene_id: str) -> tuple[float, float]:
    """The other genes' log total counts of the training cells knocked down by `code` minus those
    of control cells, averaged over cell types (unstimulated, naive cells), and its standard error:
    how well the atlas itself pins down the shift the resource model is asked for."""
    from vcell.evaluate.perturbation import by_type, pure_rows

    train, column = data.train, data.column("perturbation")
    control = data.code("perturbation", data.trained.config.model.columns.control)
    gene = data.model.spec.gene_ids.index(gene_id)
    log_others = torch.log((train["counts"].sum(1) - train["counts"][:, gene]).double().clamp(min=1.0))
    pure = pure_rows(data, train)
    knocked = by_type(data, train, torch.nonzero(pure & (train[column] == code))[:, 0])
    controls = by_type(data, train, torch.nonzero(pure & (train[column] == control))[:, 0])
    shifts, variances = [], []
    for cell_type, rows in knocked.items():
        reference = controls.get(cell_type)
        if len(rows) < 2 or reference is None or len(reference) < 2:
            continue
        mine, theirs = log_others[rows], log_others[reference]
        shifts.append(float(mine.mean() - theirs.mean()))
        variances.append(float(mine.var() / len(mine) + theirs.var() / len(theirs)))
    if not shifts:
        return float("nan"), float("nan")
    return float(np.mean(shifts)), float(np.sqrt(np.sum(variances)) / len(variances))  # the mean's standard error


def memory(data: HeldOut, hours_since_pulse: float = 24.0) -> tuple[dict, dict]:
    from vcell.evaluate.science_time import memory_differences

    if data.truth is None:
        return {"skipped": NO_TRUTH}, {}
    columns = data.trained.config.model.columns
    differences = memory_differences(data, {"model": data.model}, hours_since_pulse, true_mean=true_expression,
                                     columns=columns)
    truth = np.concatenate(differences["truth"])

    def difference_scores(name: str) -> dict:
        values = np.concatenate(differences[name])
        return {"pearson": pearson(values, truth), "relative_error": relative_error(values, truth)}

    return {
        "definition": f"primed - naive mean expression ({hours_since_pulse:g} h after a pulse; at rest and 2 h into a "
                      "stimulus) per cell type vs the simulator's; baselines: no history (no difference), and the "
                      "observed primed - naive mean of unperturbed training cells (any hours since the pulse)",
        "model": difference_scores("model"),
        "baselines": {"no_history": {"pearson": 0.0, "relative_error": 1.0},
                      "observed_primed_minus_naive": difference_scores("observed_primed_minus_naive")},
    }, {"true_difference": truth, "difference": np.concatenate(differences["model"])}


def multiscale(data: HeldOut) -> tuple[dict, dict]:
    weights = statistics_of(data, data.test, "scale_weight")
    return {"skipped": "no ground truth for scale contributions: see plots/scale_contributions.png",
            "mean_scale_weight": weights.mean(0).tolist()}, {"scale_weight": weights}


def enhancement_metrics(data: HeldOut) -> tuple[dict, dict]:
    """Each of the model's enhancements scored by its own `evaluation` (the registry's hook)."""
    sections, arrays = {}, {}
    for name in data.trained.config.model.enhancements:
        evaluation = get_enhancement(name).evaluation
        if evaluation is None:
            sections[name], arrays[name] = {"skipped": "the enhancement declares no evaluation"}, {}
        else:
            sections[name], arrays[name] = resolve(evaluation)(data)
    return sections, arrays
