"""The six learning checks (see `science.py`): each enhancement vs base on its own metric.
Here: the network (`regulatory`), pathways (`hierarchical`), counts (`stochastic`) and the pool
(`resource`); the time-course checks (`temporal`, `temporal+memory`) are in `science_time.py`.

    row = check_regulatory(setup)     # ScienceRow(enhanced, base, baseline, baseline_name, reference)
"""

from __future__ import annotations

import numpy as np
import torch
import zarr

from vcell.atlas.store import open_atlas
from vcell.atlas.synth_model import capacity_share, cell_rates, condition_states, expected_profiles
from vcell.data.memory import batches_of, select
from vcell.evaluate.edges import (
    combined_evidence, edge_baselines, knockdowns_of, score_edges, with_background_corrected,
)
from vcell.evaluate.metrics import (
    average_precision, cell_type_means, column_correlations, roc_auc, discretized_normal_log_prob, library_size_nb,
    member_reliability, project_on_members, type_mean_with_deviation,
)
from vcell.evaluate.science import ScienceRow, ScienceSetup, codes, trained
from vcell.evaluate.science_time import basal_cells_by_type
from vcell.models.blocks import gene_set_means
from vcell.models.enhancements.regulatory import RegulatoryPropagation
from vcell.models.inputs import Conditions
from vcell.models.registry import RegistryView, enhancements, resolve

ATTRIBUTION_CELLS = 128


def check_regulatory(setup: ScienceSetup) -> ScienceRow:
    """AUPRC of the learned edge scores over the noisy prior's edges (true vs decoy); AUROC and
    the sign agreement of the learned weights with the true ones beside it."""
    model, base = trained(setup, "regulatory"), trained(setup, "base")
    spec = model.spec
    ids = np.array(spec.gene_ids)
    labels = np.array([(s, t) in setup.true_edges for s, t in zip(ids[spec.grn.source], ids[spec.grn.target])])
    propagation = next(term for term in model.gene_terms if isinstance(term, RegulatoryPropagation))
    learned = propagation.edge_score().detach().numpy()
    attribution = gradient_attribution(base, setup.test)[spec.grn.target, spec.grn.source]
    perturbed = np.isin(spec.grn.source, spec.perturbation_gene[spec.perturbation_gene >= 0])
    true_sign = true_edge_signs(setup, spec)
    x = setup.train["x"].numpy()
    baselines = edge_baselines(x, spec.grn.source, spec.grn.target, signed=True)
    signed = {"regulatory": propagation.edge_weight().detach().numpy(), **baselines}
    knockdown = knockdowns_of({key: value.numpy() for key, value in setup.train.items()}, spec)
    combined = combined_evidence(baselines["partial correlation"], knockdown, *x.shape)
    unsigned = with_background_corrected({**baselines, "knockdown effect + partial correlation": combined},
                                         spec.grn.source, spec.grn.target)
    return ScienceRow(
        "regulatory", "AUPRC of prior edges (true vs decoy)", True,
        average_precision(learned, labels), average_precision(attribution, labels), *best_edge_baseline(unsigned, labels),
        {"edges": int(len(labels)), "true_edges": int(labels.sum()), "random": float(labels.mean()),
         "auroc_regulatory": roc_auc(learned, labels), "auroc_base": roc_auc(attribution, labels),
         **{f"auroc_{name}": roc_auc(np.abs(value), labels) for name, value in unsigned.items()},
         "sign_agreement_knockdown effect + partial correlation": score_edges(
             np.abs(combined), combined, labels, true_sign).sign_agreement,
         **{f"sign_agreement_{name}": score_edges(np.abs(value), value, labels, true_sign).sign_agreement
            for name, value in signed.items()},
         "edges_from_perturbed_regulators": int(perturbed.sum()),
         "auprc_perturbed_regulators_regulatory": average_precision(learned[perturbed], labels[perturbed]),
         "auprc_perturbed_regulators_base": average_precision(attribution[perturbed], labels[perturbed]),
         "auprc_perturbed_regulators_knockdown_effect": average_precision(np.abs(knockdown[perturbed]), labels[perturbed]),
         "auprc_perturbed_regulators_partial_correlation": average_precision(
             np.abs(baselines["partial correlation"][perturbed]), labels[perturbed]),
         "random_perturbed_regulators": float(labels[perturbed].mean())},
    )


def true_edge_signs(setup: ScienceSetup, spec) -> np.ndarray:
    """(E,) the simulator's sign of each prior edge (0 for decoys)."""
    source, target = setup.truth_order[spec.grn.source], setup.truth_order[spec.grn.target]
    sign = np.zeros(len(source))
    is_tf = source < setup.truth.n_tfs
    sign[is_tf] = np.sign(setup.truth.weight_matrix[source[is_tf], target[is_tf]])
    return sign


def best_edge_baseline(scores: dict[str, np.ndarray], labels: np.ndarray) -> tuple[float, str]:
    """(AUPRC, name) of the best network-inference baseline on the prior's edges, ranked by |value|:
    co-expression and partial correlation of log expression over the training cells, and partial
    correlation with the knockdowns' effects added where the regulator was knocked down
    (`combined_evidence`), each also background-corrected (`with_background_corrected`)."""
    precisions = {name: average_precision(np.abs(value), labels) for name, value in scores.items()}
    best = max(precisions, key=precisions.get)
    return precisions[best], best


def gradient_attribution(model, cells: dict[str, torch.Tensor]) -> np.ndarray:
    """(G_out, G_in) mean |d reconstruction_t / d x_s| over held-out cells."""
    batch = select(cells, torch.arange(min(ATTRIBUTION_CELLS, len(cells["x"]))))
    inputs = model.inputs(batch)
    model.eval()

    def summed_expression(x: torch.Tensor) -> torch.Tensor:
        z, _, _ = model.encode(x, inputs)
        return model.decode(z, z, inputs.library).expression.sum(0)  # (G,)

    jacobian = torch.func.jacrev(summed_expression)(inputs.x)  # (G_out, B, G_in): cells are independent
    return jacobian.abs().mean(1).detach().numpy()


def check_hierarchical(setup: ScienceSetup) -> ScienceRow:
    """Mean Pearson r between per-cell pathway activity and the true pathway activity.

    Everyone is read out the same way: the joint projection on the annotated member genes (what
    the hierarchical model reports) of base's reconstruction plus its shrunk measured deviation (as
    the hierarchical read-out adds its own), and of the observed cells, of their cell type's mean, and
    that mean plus the cell's deviation shrunk the same way; plain gene-set means of the observed
    cells are reported beside them."""
    model, base = trained(setup, "hierarchical"), trained(setup, "base")
    spec, test = model.spec, setup.test
    truth_activity = true_pathway_activity(setup, test["cell_index"].numpy())
    order = [list(setup.truth.pathway_names).index(name) for name in spec.pathway_names]
    truth_activity = truth_activity[:, order]
    member, pathway = spec.gene_pathway.source, spec.gene_pathway.target
    ours = [model.embed(batch).stats["pathway_activity"] for batch in batches_of(test, 1024)]
    base_scores = read_out_like_hierarchical(base, setup, member, pathway)
    observed = project_on_members(test["x"], member, pathway)
    type_means = cell_type_means(project_on_members(setup.train["x"], member, pathway),
                                 setup.train["cell_type"].numpy(), test["cell_type"].numpy())
    gene, group = torch.as_tensor(member), torch.as_tensor(pathway)
    size = torch.bincount(group).float()
    means = gene_set_means(test["x"], gene, group, size).numpy()
    shuffled = torch.as_tensor(np.random.default_rng(setup.seed).permutation(spec.n_genes))[gene]
    random = gene_set_means(test["x"], shuffled, group, size).numpy()
    shrunk = type_mean_with_deviation(
        (setup.train["x"].numpy(), setup.train["cell_type"].numpy()), (test["x"].numpy(), test["cell_type"].numpy()),
        member, pathway)
    baselines = {"projection of observed": observed, "cell-type mean of projection": type_means,
                 "cell-type mean plus its shrunk deviation": shrunk}
    scores = {name: float(column_correlations(value, truth_activity).mean()) for name, value in baselines.items()}
    best = max(scores, key=scores.get)
    return ScienceRow(
        "hierarchical", "mean Pearson r, pathway activity vs truth (held-out cells)", True,
        float(column_correlations(torch.cat(ours).numpy(), truth_activity).mean()),
        float(column_correlations(base_scores, truth_activity).mean()), scores[best], best,
        {**{name.replace(" ", "_").replace("-", "_"): value for name, value in scores.items()},
         "gene_set_mean_of_observed": float(column_correlations(means, truth_activity).mean()),
         "random_gene_sets": float(column_correlations(random, truth_activity).mean())},
    )


def read_out_like_hierarchical(model, setup: ScienceSetup, gene: np.ndarray, group: np.ndarray) -> np.ndarray:
    """(n_test, P) pathway activity of a model without the hierarchical read-out, read as that one
    reads itself: the projection of the cell decoded without its batch's offset, plus the projection
    of its measured residual shrunk by the reliability of training cells' residuals."""
    def decoded_and_residual(cells: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            measured = model.head.measured(model.reconstruct(cells))
            return model.reconstruct(cells, batch_effect=False).expression.numpy(), (cells["x"] - measured).numpy()

    reference = select(setup.train, torch.arange(min(8192, len(setup.train["x"]))))
    reliability = member_reliability(np.concatenate([decoded_and_residual(b)[1] for b in batches_of(reference, 1024)]), gene, group)
    decoded, residual = (np.concatenate(part) for part in zip(*(decoded_and_residual(b) for b in batches_of(setup.test, 1024))))
    return project_on_members(decoded, gene, group) + reliability * project_on_members(residual, gene, group)


def true_pathway_activity(setup: ScienceSetup, rows: np.ndarray) -> np.ndarray:
    """(n, P) the simulator's per-cell pathway activity for atlas rows (from the shards' obsm)."""
    atlas = open_atlas(setup.atlas)
    parts = [zarr.open_group(str(setup.atlas / "shards" / s["name"] / "obsm"), mode="r")["truth_pathway_activity"][...] for s in atlas.shards]
    return np.concatenate(parts)[rows]


def check_stochastic(setup: ScienceSetup) -> ScienceRow:
    """Held-out log-likelihood of raw counts per cell: NB (stochastic) vs Gaussian (base) vs per-gene NBs
    that know the library size, and it and the cell type (the stronger is the baseline)."""
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
    reference, cells = (train["counts"].numpy(), train["library_size"].numpy()), (counts, library)
    baselines = {"per-gene NB with library size (no cell state)": library_size_nb(reference, cells).mean(),
                 "per-gene NB with library size and cell type": library_size_nb(
                     reference, cells, (train["cell_type"].numpy(), test["cell_type"].numpy())).mean()}
    strongest = max(baselines, key=baselines.get)
    return ScienceRow(
        "stochastic", "held-out log-likelihood of counts (nats per cell)", True,
        float(ours), float(gaussian), float(baselines[strongest]), strongest,
        reference={name: float(value) for name, value in baselines.items() if name != strongest},
    )


def base_counts(model, batch: dict[str, torch.Tensor]) -> np.ndarray:
    return expected_counts(model.reconstruct(batch), batch["library_size"]).numpy()


def expected_counts(prediction, library: torch.Tensor) -> torch.Tensor:
    """(B, G) expected raw counts: a count model's mean, or for a Gaussian model on log cp10k
    expm1(prediction) x the cell's observed library / 10,000 (its totals cannot change)."""
    if prediction.mean is not None:
        return prediction.mean
    return torch.expm1(prediction.expression).clamp(min=0) * library[:, None] / 1e4


def check_resource(setup: ScienceSetup) -> ScienceRow:
    """Shift of the other genes' total counts after knocking down a highly expressed gene:
    |predicted - true log fold change| (true from the simulator's mechanism), mean over cell types."""
    shifts = resource_shifts(setup, {name: trained(setup, name) for name in ("resource", "base")})
    errors = {name: np.abs(np.array(shifts[name]) - np.array(shifts["truth"])) for name in ("resource", "base")}
    return ScienceRow(
        "resource", f"|error| of the other genes' log total shift, knockdown of {shifts['gene']}", False,
        float(np.mean(errors["resource"])), float(np.mean(errors["base"])), float(np.mean(np.abs(shifts["truth"]))),
        "no shift",
        {"true_shift": float(np.mean(shifts["truth"])), "resource_shift": float(np.mean(shifts["resource"])),
         "base_shift": float(np.mean(shifts["base"]))},
    )


def resource_shifts(setup, models: dict) -> dict:
    """Per cell type, the true and each model's log shift of the other genes' total counts when the
    perturbation target holding the largest share of transcripts is knocked down."""
    truth = setup.truth
    names = codes(setup, "perturbation")
    control = names.index("control")
    typical = expected_profiles(truth, 0, np.array([0]), np.array([0.0]))[0]
    index = int(np.argmax(typical[truth.perturbation_targets]))  # the truth's perturbation index is index + 1
    target = int(truth.perturbation_targets[index])
    code = names.index(str(truth.gene_symbols[target]))  # the atlas's category code of the same perturbation
    shifts: dict = {"gene": str(truth.gene_symbols[target]), "gene_id": str(truth.gene_ids[target]), "code": code,
                    "truth": [], **{name: [] for name in models}}
    for cell_type, basal in basal_cells_by_type(setup, control):
        shifts["truth"].append(other_genes_shift_truth(truth, cell_type, index + 1, target))
        for name, model in models.items():
            gene = model.spec.gene_ids.index(truth.gene_ids[target])
            shifts[name].append(predicted_other_genes_shift(model, basal, control, code, gene))
    return shifts


def other_genes_shift_truth(truth, cell_type: int, perturbation: int, target: int) -> float:
    """log(sum over j != target of expected counts under the knockdown / under control)."""
    states = condition_states(truth, cell_type, np.array([0, perturbation]), np.zeros(2), np.full(2, np.nan))
    share, _ = capacity_share(cell_rates(truth, states), truth.capacity_constant)
    share = share.reshape(2, truth.n_draws, truth.n_genes).mean(1)
    others = np.delete(share, target, axis=1).sum(1)
    return float(np.log(others[1] / others[0]))


def predicted_other_genes_shift(model, basal: dict, control: int, code: int, gene: int) -> float:
    """log(sum over j != gene of predicted expected counts under perturbation `code` / control)."""
    def total_of_others(perturbation: int) -> float:
        total = 0.0
        for batch in batches_of(basal, 1024):
            conditions = Conditions(perturbation=torch.full((len(batch["x"]),), perturbation))
            counts = expected_counts(model.predict(batch, conditions), batch["library_size"])
            total += float(counts.sum() - counts[:, gene].sum())
        return total

    return float(np.log(total_of_others(code) / total_of_others(control)))


# enhancement -> its learning check, from the registry (each `Enhancement.science_check`)
CHECKS = RegistryView(lambda: {
    name: resolve(enhancement.science_check)
    for name, enhancement in enhancements().items() if enhancement.science_check is not None
})
