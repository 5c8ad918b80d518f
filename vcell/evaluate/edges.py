"""Scores of an inferred network against a true one (AUPRC, AUROC, sign agreement), and the simple
network-inference baselines every learned network is compared with.

    scores = score_edges(np.abs(w), w, labels, true_sign)   # EdgeScores(auprc, auroc, sign_agreement)
    edge_baselines(x, source, target)                       # |co-expression|, |partial correlation|
    knockdown_effects(x, perturbation, ...)                 # z of each knocked-down regulator's effect on each target
    with_background_corrected(baselines, source, target)    # each, and each against its regulator's and target's edges

`labels` (E,) marks which candidate edges are real; `true_sign` (E,) is +1/-1 on real edges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vcell.evaluate.metrics import average_precision, roc_auc


@dataclass
class EdgeScores:
    auprc: float  # area under precision-recall of the ranking (random = share of real edges)
    auroc: float  # P(a real edge ranks above a decoy); random = 0.5
    sign_agreement: float  # share of real edges given the right sign; NaN for unsigned scores

    def as_dict(self) -> dict:
        return asdict(self)


def score_edges(ranking: np.ndarray, signed: np.ndarray | None, labels: np.ndarray, true_sign: np.ndarray) -> EdgeScores:
    """ranking (E,) higher = more likely real; signed (E,) signed weights or None (unsigned)."""
    labels = np.asarray(labels, dtype=bool)
    sign = float("nan") if signed is None else float((np.sign(signed[labels]) == true_sign[labels]).mean())
    return EdgeScores(average_precision(ranking, labels), roc_auc(ranking, labels), sign)


def edge_baselines(
    x: np.ndarray, source: np.ndarray, target: np.ndarray, shrinkage: float = 0.1, signed: bool = False
) -> dict[str, np.ndarray]:
    """|Pearson r| ("co-expression") and |partial correlation| (inverse of the shrunk correlation
    matrix: r_st given all other genes) of the genes of each (source, target) pair; x (n, G).
    `signed`: the values with their signs (for sign agreement)."""
    x = x - x.mean(0)
    sd = x.std(0)
    live = sd > 0
    correlation = np.zeros((x.shape[1], x.shape[1]))
    live_x = x[:, live] / sd[live]
    correlation[np.ix_(live, live)] = live_x.T @ live_x / len(x)
    shrunk = (1 - shrinkage) * correlation[np.ix_(live, live)] + shrinkage * np.eye(int(live.sum()))
    precision = np.linalg.inv(shrunk)
    partial = np.zeros_like(correlation)
    diagonal = np.sqrt(np.diag(precision))
    partial[np.ix_(live, live)] = -precision / np.outer(diagonal, diagonal)
    scores = {"co-expression": correlation[source, target], "partial correlation": partial[source, target]}
    return scores if signed else {name: np.abs(value) for name, value in scores.items()}


def knockdown_effects(
    x: np.ndarray, perturbation: np.ndarray, groups: np.ndarray, perturbation_gene: np.ndarray, control: int,
    source: np.ndarray, target: np.ndarray, min_cells: int = 3,
) -> np.ndarray:
    """(E,) signed z of each edge's interventional evidence, NaN where its regulator was never knocked
    down: the shift of the target's mean level in cells with a perturbation of the regulator's gene
    vs control cells, within each group (cell type), as a two-sample z on the gene's within-group sd
    (so genes that differ between cell types are not discounted), combined over groups and over
    perturbations of the same gene by Stouffer's method. x (n, G);
    perturbation, groups (n,) codes; perturbation_gene (P,) gene index per code (-1: none); pass only
    cells that are otherwise basal (unstimulated), so the shift is the knockdown's alone."""
    within = x.copy()
    for group in np.unique(groups):
        within[groups == group] -= x[groups == group].mean(0)
    sd = within.std(0)
    sd[sd == 0] = np.inf  # a constant gene shows no effect
    control_rows = perturbation == control
    z_sum: dict[int, np.ndarray] = {}  # knocked-down gene -> (G,) summed z over its groups and perturbations
    parts: dict[int, int] = {}
    for code, gene in enumerate(perturbation_gene):
        if gene < 0 or code == control:
            continue
        for group in np.unique(groups[perturbation == code]):
            knocked = (perturbation == code) & (groups == group)
            controls = control_rows & (groups == group)
            n_knocked, n_control = int(knocked.sum()), int(controls.sum())
            if min(n_knocked, n_control) < min_cells:
                continue
            shift = (x[knocked].mean(0) - x[controls].mean(0)) / sd  # (G,)
            z_sum[gene] = z_sum.get(gene, 0.0) + shift * np.sqrt(n_knocked * n_control / (n_knocked + n_control))
            parts[gene] = parts.get(gene, 0) + 1
    z = np.full(len(source), np.nan)
    for gene, total in z_sum.items():
        edges = source == gene
        z[edges] = total[target[edges]] / np.sqrt(parts[gene])
    return z


def combined_evidence(partial: np.ndarray, knockdown: np.ndarray, n_cells: int, n_genes: int) -> np.ndarray:
    """(E,) one signed ranking from two kinds of evidence: the partial correlation as a Fisher z
    (n_cells cells, conditioning on the other n_genes - 2 genes) and, where the regulator was
    knocked down, the |z| of its effect (`knockdown_effects`), summed by Stouffer's method; rank by
    the absolute value. The sign is the knockdown's where there is one (a target that falls when its
    regulator is knocked down has a positive edge), else the partial correlation's."""
    dof = max(n_cells - n_genes - 1, 1)
    observational = np.arctanh(np.clip(np.abs(partial), 0.0, 1 - 1e-9)) * np.sqrt(dof)
    tested = ~np.isnan(knockdown)
    magnitude = np.where(tested, (observational + np.abs(np.nan_to_num(knockdown))) / np.sqrt(2), observational)
    sign = np.where(tested, -np.sign(np.nan_to_num(knockdown)), np.sign(partial))
    return sign * magnitude


def with_background_corrected(scores: dict[str, np.ndarray], source: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """`scores` (name -> signed (E,) values) and, for each, "<name>, background-corrected": its |value|
    through the correction the learned network's edge score gets (`vcell.models.grn.background_corrected`),
    sign kept. A baseline is scored both ways, so a ranking that gains from the correction gets it too."""
    import torch

    from vcell.models.grn import background_corrected

    nodes = torch.as_tensor(np.asarray(source), dtype=torch.long), torch.as_tensor(np.asarray(target), dtype=torch.long)
    corrected = {f"{name}, background-corrected": np.sign(value) * background_corrected(
        torch.as_tensor(np.abs(np.asarray(value, dtype=np.float64))), *nodes).numpy() for name, value in scores.items()}
    return {**scores, **corrected}


def basal_rows(cells: dict) -> np.ndarray:
    """(n,) bool: cells without a stimulus or an earlier pulse (every cell where those columns are absent)."""
    rows = np.ones(len(cells["x"]), dtype=bool)
    if "time" in cells:
        rows &= ~(np.asarray(cells["time"]) > 0)
    if "hours_since_pulse" in cells:
        rows &= np.isnan(np.asarray(cells["hours_since_pulse"], dtype=float))
    return rows


def knockdowns_of(cells: dict, spec, group_column: str = "cell_type") -> np.ndarray | None:
    """(E,) `knockdown_effects` on spec.grn's edges over the cells (numpy columns) that are otherwise
    basal, within groups of `group_column`; None without perturbation labels or a control."""
    if "perturbation" not in cells or spec.control_code < 0:
        return None
    rows = basal_rows(cells)
    groups = np.asarray(cells[group_column])[rows] if group_column in cells else np.zeros(int(rows.sum()), dtype=int)
    return knockdown_effects(np.asarray(cells["x"])[rows], np.asarray(cells["perturbation"])[rows], groups,
                             spec.perturbation_gene, spec.control_code, spec.grn.source, spec.grn.target)


def interventional_baseline(cells: dict, spec, partial: np.ndarray | None = None) -> np.ndarray | None:
    """(E,) signed `combined_evidence` of the cells' partial correlations (`partial`: already computed
    by `edge_baselines(..., signed=True)`) and knockdowns on spec.grn's edges (None without
    perturbation labels)."""
    knockdown = knockdowns_of(cells, spec)
    if knockdown is None:
        return None
    x = np.asarray(cells["x"])
    if partial is None:
        partial = edge_baselines(x, spec.grn.source, spec.grn.target, signed=True)["partial correlation"]
    return combined_evidence(partial, knockdown, *x.shape)
