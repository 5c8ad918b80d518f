"""The six learning checks (see `science.py`): each enhancement vs base on its own metric.

    row = check_regulatory(setup)     # ScienceRow(enhanced, base, random, reference, wins)
"""

from __future__ import annotations

import numpy as np
import torch
import zarr

from vcell.atlas.store import open_atlas
from vcell.atlas.synth_model import capacity_share, cell_rates, condition_states, expected_profiles
from vcell.data.memory import batches_of, select
from vcell.evaluate.metrics import (
    average_precision, column_correlations, discretized_normal_log_prob, moment_dispersion, pearson, relative_error,
)
from vcell.evaluate.science import HELD_OUT_HOURS, ScienceRow, ScienceSetup, basal_rows, codes, mean_of, predict_mean, trained
from vcell.models.blocks import gene_set_means
from vcell.models.enhancements.regulatory import RegulatoryPropagation
from vcell.models.inputs import CellInputs
from vcell.models.slots import DecodeContext

ATTRIBUTION_CELLS = 128


def check_regulatory(setup: ScienceSetup) -> ScienceRow:
    """AUPRC of learned |edge weight| over the noisy prior's edges (true vs decoy)."""
    model, base = trained(setup, "regulatory"), trained(setup, "base")
    spec = model.spec
    ids = np.array(spec.gene_ids)
    labels = np.array([(s, t) in setup.true_edges for s, t in zip(ids[spec.grn.source], ids[spec.grn.target])])
    propagation = next(term for term in model.gene_terms if isinstance(term, RegulatoryPropagation))
    learned = propagation.edge_weight().detach().abs().numpy()
    attribution = gradient_attribution(base, setup.test)[spec.grn.target, spec.grn.source]
    return ScienceRow(
        "regulatory", "AUPRC of prior edges (true vs decoy)", True,
        average_precision(learned, labels), average_precision(attribution, labels), float(labels.mean()),
        {"edges": int(len(labels)), "true_edges": int(labels.sum())},
    )


def gradient_attribution(model, cells: dict[str, torch.Tensor]) -> np.ndarray:
    """(G_out, G_in) mean |d reconstruction_t / d x_s| over held-out cells."""
    batch = select(cells, torch.arange(min(ATTRIBUTION_CELLS, len(cells["x"]))))
    inputs = CellInputs.from_batch(batch, model.config.columns)
    model.eval()

    def summed_expression(x: torch.Tensor) -> torch.Tensor:
        z, _, _ = model.encode(x, inputs)
        return model.decode(z, z, inputs.library, DecodeContext()).expression.sum(0)  # (G,)

    jacobian = torch.func.jacrev(summed_expression)(inputs.x)  # (G_out, B, G_in): cells are independent
    return jacobian.abs().mean(1).detach().numpy()


def check_temporal(setup: ScienceSetup) -> ScienceRow:
    """Error of the predicted change at the held-out time (vs observed held-out cells)."""
    control = codes(setup, "perturbation").index("control")
    test = setup.test
    basal = select(test, basal_rows(test, control))
    pure = (test["perturbation"] == control) & torch.isnan(test["hours_since_pulse"])
    observed = mean_of(test, torch.nonzero(pure & (test["time"] == HELD_OUT_HOURS))[:, 0]) - mean_of(basal, torch.arange(len(basal["x"])))
    errors = {}
    for name in ("temporal", "base"):
        model = trained(setup, name)
        change = predict_mean(model, basal, time=HELD_OUT_HOURS, perturbation=control) - predict_mean(model, basal, perturbation=control)
        errors[name] = (relative_error(change, observed), pearson(change, observed))
    interpolated = interpolate_observed(setup, control) - mean_of(basal, torch.arange(len(basal["x"])))
    return ScienceRow(
        "temporal", f"relative error of the predicted change at the held-out {HELD_OUT_HOURS:g} h", False,
        errors["temporal"][0], errors["base"][0], 1.0,
        {"pearson_temporal": errors["temporal"][1], "pearson_base": errors["base"][1],
         "interpolating_observed_2h_8h": relative_error(interpolated, observed)},
    )


def interpolate_observed(setup: ScienceSetup, control: int) -> np.ndarray:
    """Mean expression at the held-out time interpolated (in log time) between its observed neighbours."""
    train = setup.train
    pure = (train["perturbation"] == control) & torch.isnan(train["hours_since_pulse"])
    times = sorted({float(t) for t in train["time"][pure & (train["time"] > 0)].unique()})
    before = max(t for t in times if t < HELD_OUT_HOURS)
    after = min(t for t in times if t > HELD_OUT_HOURS)
    share = (np.log(HELD_OUT_HOURS) - np.log(before)) / (np.log(after) - np.log(before))
    low = mean_of(train, torch.nonzero(pure & (train["time"] == before))[:, 0])
    high = mean_of(train, torch.nonzero(pure & (train["time"] == after))[:, 0])
    return (1 - share) * low + share * high


def check_hierarchical(setup: ScienceSetup) -> ScienceRow:
    """Mean Pearson r between per-cell pathway activity and the true pathway activity."""
    model, base = trained(setup, "hierarchical"), trained(setup, "base")
    spec, test = model.spec, setup.test
    truth_activity = true_pathway_activity(setup, test["cell_index"].numpy())
    order = [list(setup.truth.pathway_names).index(name) for name in spec.pathway_names]
    truth_activity = truth_activity[:, order]
    gene = torch.as_tensor(spec.gene_pathway.source)
    group = torch.as_tensor(spec.gene_pathway.target)
    size = torch.bincount(group).float()
    ours, base_scores = [], []
    for batch in batches_of(test, 1024):
        ours.append(model.embed(batch).stats["pathway_activity"])
        base_scores.append(gene_set_means(base.reconstruct(batch).expression, gene, group, size))
    raw = gene_set_means(test["x"], gene, group, size).numpy()
    shuffled = torch.as_tensor(np.random.default_rng(setup.seed).permutation(spec.n_genes))[gene]
    random = gene_set_means(test["x"], shuffled, group, size).numpy()
    return ScienceRow(
        "hierarchical", "mean Pearson r, pathway activity vs truth (held-out cells)", True,
        float(column_correlations(torch.cat(ours).numpy(), truth_activity).mean()),
        float(column_correlations(torch.cat(base_scores).numpy(), truth_activity).mean()),
        float(column_correlations(random, truth_activity).mean()),
        {"gene_set_mean_of_observed": float(column_correlations(raw, truth_activity).mean())},
    )


def true_pathway_activity(setup: ScienceSetup, rows: np.ndarray) -> np.ndarray:
    """(n, P) the simulator's per-cell pathway activity for atlas rows (from the shards' obsm)."""
    atlas = open_atlas(setup.atlas)
    parts = [zarr.open_group(str(setup.atlas / "shards" / s["name"] / "obsm"), mode="r")["truth_pathway_activity"][...] for s in atlas.shards]
    return np.concatenate(parts)[rows]


def check_stochastic(setup: ScienceSetup) -> ScienceRow:
    """Held-out log-likelihood of raw counts per cell: NB (stochastic) vs Gaussian (base)."""
    model, base = trained(setup, "stochastic"), trained(setup, "base")
    test, train = setup.test, setup.train
    counts, library = test["counts"].numpy(), test["library_size"].numpy()
    with torch.no_grad():
        ours = np.concatenate([
            model.head.likelihood.log_prob(batch["counts"], model.reconstruct(batch)).sum(1).numpy()
            for batch in batches_of(test, 1024)
        ]).mean()
    base_mean = np.concatenate([base_counts(base, batch) for batch in batches_of(test, 1024)])
    train_mean = np.concatenate([base_counts(base, batch) for batch in batches_of(select(train, torch.arange(min(8192, len(train["x"])))), 1024)])
    sd = np.sqrt(((train["counts"][: len(train_mean)].numpy() - train_mean) ** 2).mean(0)).clip(min=0.5)  # per gene
    gaussian = discretized_normal_log_prob(counts, base_mean, sd[None, :]).sum(1).mean()
    fraction, theta = moment_dispersion(train["counts"].numpy(), train["library_size"].numpy())
    mean = library[:, None] * fraction[None, :]
    reference = torch.distributions.NegativeBinomial(
        torch.as_tensor(theta), logits=torch.as_tensor(np.log(mean + 1e-8) - np.log(theta))
    ).log_prob(torch.as_tensor(counts)).sum(1).mean()
    return ScienceRow(
        "stochastic", "held-out log-likelihood of counts (nats per cell)", True,
        float(ours), float(gaussian), float(reference), {"random_is": "NB per gene, library size only (no cell state)"},
    )


def base_counts(model, batch: dict[str, torch.Tensor]) -> np.ndarray:
    """Expected counts of a Gaussian model: expm1(predicted log cp10k) x library / 10,000."""
    expression = model.reconstruct(batch).expression
    return (torch.expm1(expression).clamp(min=0) * batch["library_size"][:, None] / 1e4).numpy()


def check_resource(setup: ScienceSetup) -> ScienceRow:
    """Shift of the other genes' total counts after knocking down a highly expressed gene:
    |predicted - true log fold change| (true from the simulator's mechanism), mean over cell types."""
    truth, test = setup.truth, setup.test
    names = codes(setup, "perturbation")
    control = names.index("control")
    typical = expected_profiles(truth, 0, np.array([0]), np.array([0.0]))[0]
    target = int(truth.perturbation_targets[np.argmax(typical[truth.perturbation_targets])])
    code = names.index(str(truth.gene_symbols[target]))
    errors: dict[str, list[float]] = {"resource": [], "base": []}
    true_shifts, predicted = [], {"resource": [], "base": []}
    for cell_type, type_name in enumerate(codes(setup, "cell_type")):
        true_shift = other_genes_shift_truth(truth, cell_type, code, target)
        rows = basal_rows(test, control)
        rows = rows[test["cell_type"][rows] == cell_type]
        if len(rows) == 0:
            continue
        basal = select(test, rows)
        true_shifts.append(true_shift)
        for name in errors:
            model = trained(setup, name)
            gene = model.spec.gene_ids.index(truth.gene_ids[target])
            shift = predicted_other_genes_shift(model, basal, control, code, gene)
            predicted[name].append(shift)
            errors[name].append(abs(shift - true_shift))
    return ScienceRow(
        "resource", f"|error| of the other genes' log total shift, knockdown of {truth.gene_symbols[target]}", False,
        float(np.mean(errors["resource"])), float(np.mean(errors["base"])), float(np.mean(np.abs(true_shifts))),
        {"true_shift": float(np.mean(true_shifts)), "resource_shift": float(np.mean(predicted["resource"])),
         "base_shift": float(np.mean(predicted["base"])), "random_is": "predicting no shift"},
    )


def other_genes_shift_truth(truth, cell_type: int, code: int, target: int) -> float:
    """log(sum over j != target of expected counts under the knockdown / under control)."""
    states = condition_states(truth, cell_type, np.array([0, code]), np.zeros(2), np.full(2, np.nan))
    share, _ = capacity_share(cell_rates(truth, states), truth.capacity_constant)
    share = share.reshape(2, truth.n_draws, truth.n_genes).mean(1)
    others = np.delete(share, target, axis=1).sum(1)
    return float(np.log(others[1] / others[0]))


def predicted_other_genes_shift(model, basal: dict, control: int, code: int, gene: int) -> float:
    if model.head.__class__.__name__ == "GaussianHead":  # expected counts at the cell's observed library
        def counts(perturbation: int) -> np.ndarray:
            expression = predict_mean_cells(model, basal, perturbation)
            return (np.expm1(expression).clip(min=0) * basal["library_size"].numpy()[:, None] / 1e4).mean(0)
    else:
        def counts(perturbation: int) -> np.ndarray:
            return predict_mean(model, basal, "mean", perturbation=perturbation)
    knocked, untouched = counts(code), counts(control)
    return float(np.log(np.delete(knocked, gene).sum() / np.delete(untouched, gene).sum()))


def predict_mean_cells(model, cells: dict, perturbation: int) -> np.ndarray:
    from vcell.models.inputs import Conditions

    return torch.cat([
        model.predict(batch, Conditions(perturbation=torch.full((len(batch["x"]),), perturbation))).expression
        for batch in batches_of(cells, 1024)
    ]).numpy()


def check_memory(setup: ScienceSetup, hours_since_pulse: float = 24.0) -> ScienceRow:
    """Response difference primed - naive (at rest and 2 h after a stimulus) vs the truth."""
    truth, test = setup.truth, setup.test
    names = codes(setup, "perturbation")
    control = names.index("control")
    results: dict[str, tuple[list, list]] = {"temporal+memory": ([], []), "temporal": ([], []), "base": ([], [])}
    for cell_type in range(len(codes(setup, "cell_type"))):
        rows = basal_rows(test, control)
        rows = rows[test["cell_type"][rows] == cell_type]
        if len(rows) == 0:
            continue
        basal = select(test, rows)
        for hours in (0.0, 2.0):
            primed, naive = expected_profiles(truth, cell_type, np.zeros(2, dtype=int), np.full(2, hours), np.array([hours_since_pulse, np.nan]))
            true_difference = np.log1p(1e4 * primed) - np.log1p(1e4 * naive)
            for name, (predicted, expected) in results.items():
                model = trained(setup, name)
                order = [list(truth.gene_ids).index(g) for g in model.spec.gene_ids]
                difference = predict_mean(model, basal, time=hours, perturbation=control, hours_since_pulse=hours_since_pulse) - predict_mean(
                    model, basal, time=hours, perturbation=control, hours_since_pulse=float("nan"))
                predicted.append(difference)
                expected.append(true_difference[order])
    scores = {name: pearson(np.concatenate(p), np.concatenate(e)) for name, (p, e) in results.items()}
    return ScienceRow(
        "memory", f"Pearson r, predicted vs true primed - naive difference ({hours_since_pulse:g} h after a pulse)", True,
        scores["temporal+memory"], scores["base"], 0.0,
        {"temporal_without_memory": scores["temporal"],
         "relative_error_memory": relative_error(np.concatenate(results["temporal+memory"][0]), np.concatenate(results["temporal+memory"][1]))},
    )


CHECKS = {
    "regulatory": check_regulatory,
    "temporal": check_temporal,
    "hierarchical": check_hierarchical,
    "stochastic": check_stochastic,
    "resource": check_resource,
    "memory": check_memory,
}
