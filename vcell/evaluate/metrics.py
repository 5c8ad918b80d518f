"""Metric functions on arrays (numpy), shared by evaluation and the learning checks."""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve (step-wise average precision); ties broken pessimistically."""
    labels = np.asarray(labels, dtype=bool)
    if not labels.any():
        return float("nan")
    order = np.lexsort((labels, -np.asarray(scores)))  # by score descending, negatives first among ties
    hits = labels[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / hits.sum())


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two flattened arrays; 0 when either is constant."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def column_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(k,) Pearson correlation of each column pair of two (n, k) arrays."""
    return np.array([pearson(a[:, k], b[:, k]) for k in range(a.shape[1])])


def relative_error(predicted: np.ndarray, observed: np.ndarray) -> float:
    """||predicted - observed|| / ||observed||: 1 for predicting no change, 0 for perfect."""
    return float(np.linalg.norm(np.ravel(predicted) - np.ravel(observed)) / max(np.linalg.norm(observed), 1e-12))


def discretized_normal_log_prob(counts: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """log P(count) under a normal on the count scale, integrated over [k - 0.5, k + 0.5]
    (everything below 0.5 for zeros): a Gaussian model's likelihood on counts."""
    upper = ndtr((counts + 0.5 - mean) / sd)
    lower = np.where(counts < 0.5, 0.0, ndtr((counts - 0.5 - mean) / sd))
    return np.log(np.maximum(upper - lower, 1e-30))


def moment_dispersion(counts: np.ndarray, library: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene (fraction of the library, NB inverse dispersion) by the method of moments,
    ignoring everything about a cell but its library size: the 'no cell state' reference."""
    fraction = counts.sum(0) / max(library.sum(), 1.0)
    mean = library[:, None] * fraction[None, :]
    excess = ((counts - mean) ** 2 - mean).mean(0)
    theta = np.where(excess > 1e-9, (mean**2).mean(0) / np.maximum(excess, 1e-9), 1e6)
    return fraction, np.clip(theta, 1e-3, 1e6)


def cell_type_means(reference: np.ndarray, reference_types: np.ndarray, types: np.ndarray) -> np.ndarray:
    """(n, k) each cell given the mean of `reference` (m, k) over the reference cells of its type
    (the overall mean for a type the reference lacks): a per-cell read-out that keeps only what
    the cell type explains."""
    overall = reference.mean(0)
    means = {int(t): reference[reference_types == t].mean(0) for t in np.unique(reference_types)}
    return np.stack([means.get(int(t), overall) for t in types]) if len(types) else np.zeros((0, reference.shape[1]))


def project_on_members(values, gene: np.ndarray, group: np.ndarray) -> np.ndarray:
    """(n, P) joint least-squares coordinates of (n, G) values on 0/1 gene sets given as (gene, group) pairs
    (`vcell.models.blocks.project_on_gene_sets`, for arrays)."""
    import torch

    from vcell.models.blocks import gene_set_projector, project_on_gene_sets

    projector = gene_set_projector(gene, group, int(np.max(group)) + 1)
    values = torch.as_tensor(np.asarray(values), dtype=torch.float32)
    return project_on_gene_sets(values, torch.as_tensor(gene, dtype=torch.long), torch.as_tensor(group, dtype=torch.long),
                                projector).numpy()


def member_reliability(residuals, gene: np.ndarray, group: np.ndarray) -> np.ndarray:
    """(P,) the hierarchical read-out's reliability (`MemberDeviation`) of each gene set's shared
    deviation, from the whole sample of (m, G) reference residuals at once."""
    import torch

    from vcell.models.enhancements.hierarchical import MemberDeviation

    moments = MemberDeviation(gene, group, np.asarray(residuals).shape[1], int(np.max(group)) + 1)
    moments.update(torch.as_tensor(np.asarray(residuals), dtype=torch.float32))  # the first update: the sample's moments
    return moments.reliability().numpy()


def type_mean_with_deviation(
    reference: tuple[np.ndarray, np.ndarray], cells: tuple[np.ndarray, np.ndarray], gene: np.ndarray, group: np.ndarray,
) -> np.ndarray:
    """(n, P) gene-set activity: each cell's type mean of the projection on the member genes plus the
    projection of its own deviation from its type's gene means, shrunk by its reliability: the
    hierarchical read-out's shrinkage applied to the cell-type mean baseline. `reference` and `cells`
    are ((m, G) expression, (m,) types); the reliability is estimated on the reference cells'
    deviations (never on the cells scored). `gene`, `group`: the membership pairs."""
    (reference_x, reference_types), (x, types) = reference, cells
    reliability = member_reliability(reference_x - cell_type_means(reference_x, reference_types, reference_types), gene, group)
    mean = cell_type_means(project_on_members(reference_x, gene, group), reference_types, types)
    return mean + reliability * project_on_members(x - cell_type_means(reference_x, reference_types, types), gene, group)


MIN_GROUP_CELLS = 20  # reference cells a group needs for its own NB fit (else the fit on all cells)


def nb_log_likelihood(counts: np.ndarray, mean: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """(n,) log-likelihood per cell of (n, G) counts under NB(mean, inverse dispersion theta)."""
    import torch

    mean, theta = torch.as_tensor(mean + 1e-8), torch.as_tensor(np.broadcast_to(theta, mean.shape).copy())
    distribution = torch.distributions.NegativeBinomial(theta, logits=torch.log(mean) - torch.log(theta))
    return distribution.log_prob(torch.as_tensor(counts, dtype=mean.dtype)).sum(1).numpy()


def library_size_nb_fits(reference: tuple[np.ndarray, np.ndarray], library: np.ndarray,
                         groups: tuple[np.ndarray, np.ndarray] | None = None):
    """Yield (rows, expected counts (rows, G), inverse dispersion (G,)): per-gene NBs fitted to
    `reference` = (counts, library) by the method of moments for held-out cells of `library` (n,),
    knowing each cell's library size only; together the rows cover every cell once. With `groups` =
    (reference labels, held-out labels), a fit per group (what a cell type alone says): each gene's
    share, smoothed by one cell of the overall composition (a gene never counted in a group's
    reference cells would make any count of it ~impossible), and its dispersion; the fit on all
    reference cells for a group with under MIN_GROUP_CELLS of them and for missing labels (< 0)."""
    overall, theta = moment_dispersion(*reference)
    own_fit = np.zeros(len(library), dtype=bool)
    fits = []
    if groups is not None:
        reference_groups, cell_groups = groups
        pseudo_cell = float(reference[1].mean())  # a group's shares start from one cell of the overall composition
        for group in np.unique(cell_groups[cell_groups >= 0]):
            fitted, scored = reference_groups == group, cell_groups == group
            if fitted.sum() >= MIN_GROUP_CELLS:
                _, group_theta = moment_dispersion(reference[0][fitted], reference[1][fitted])
                share = (reference[0][fitted].sum(0) + pseudo_cell * overall) / (reference[1][fitted].sum() + pseudo_cell)
                fits.append((np.flatnonzero(scored), share, group_theta))
                own_fit |= scored
    fits.insert(0, (np.flatnonzero(~own_fit), overall, theta))
    for rows, share, dispersion in fits:
        if len(rows):
            yield rows, library[rows, None] * share[None, :], dispersion


def library_size_nb(reference: tuple[np.ndarray, np.ndarray], cells: tuple[np.ndarray, np.ndarray],
                    groups: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(n,) log-likelihood of held-out `cells` = (counts (n, G), library (n,)) under the NBs of
    `library_size_nb_fits` (knowing each cell's library size, and with `groups` its group)."""
    counts, library = cells
    scores = np.zeros(len(library))
    for rows, mean, theta in library_size_nb_fits(reference, library, groups):
        scores[rows] = nb_log_likelihood(counts[rows], mean, theta)
    return scores


LEVEL_CHUNK_ENTRIES = 2**22  # cells x genes per expectation: ~10 float64 arrays of 32 MB


def detected_nb_levels(reference: tuple[np.ndarray, np.ndarray], library: np.ndarray,
                       groups: tuple[np.ndarray, np.ndarray] | None = None, target_sum: float = 1e4) -> np.ndarray:
    """(n, G) E[log1p(counts per target_sum) | counts > 0] of each gene in held-out cells of `library`
    (n,) under the NBs of `library_size_nb_fits`: a detected gene's value from the cell's depth
    (and group) alone."""
    import torch

    from vcell.models.expected import expected_log1p

    levels = np.zeros((len(library), reference[0].shape[1]), dtype=np.float32)  # as the expression it predicts
    step = max(1, LEVEL_CHUNK_ENTRIES // max(levels.shape[1], 1))  # the expectation holds ~10 such (rows, G) arrays
    for rows, mean, theta in library_size_nb_fits(reference, library, groups):
        for start in range(0, len(rows), step):
            chunk = slice(start, start + step)
            scale = torch.as_tensor(target_sum / np.maximum(library[rows[chunk]], 1.0))[:, None]  # (rows, 1)
            levels[rows[chunk]] = expected_log1p(torch.as_tensor(mean[chunk]), scale, torch.as_tensor(theta),
                                                 detected=True).numpy()
    return levels


def detected_means(values: np.ndarray, reference_types: np.ndarray, types: np.ndarray,
                   zero_level: np.ndarray | None = None) -> np.ndarray:
    """(n, G) each gene's mean over the reference cells of each cell's type in which it is detected
    (`detected_entries` at `zero_level`), the overall such mean for a gene its type never shows (and 0
    for a gene never detected): `cell_type_means` of a hidden value known to be detected."""
    from vcell.models.inputs import detected_entries

    detected = detected_entries(values, zero_level).astype(values.dtype)
    values = values * detected  # a zero count's value (its z-score under a z-score) is no detection's
    overall = values.sum(0) / np.maximum(detected.sum(0), 1)
    sums, counts = cell_type_means(values, reference_types, types), cell_type_means(detected, reference_types, types)
    return np.where(counts > 0, sums / np.maximum(counts, 1e-12), overall)


DEPTH_FIT_MINIMUM = 5  # a gene's detections in the reference: four coefficients, and a little to spare


def detected_means_with_depth(reference: tuple[np.ndarray, np.ndarray], cells: tuple[np.ndarray, np.ndarray],
                              types: tuple[np.ndarray, np.ndarray], zero_level: np.ndarray | None = None) -> np.ndarray:
    """(n, G) `detected_means` moved along each cell's depth: per gene, least squares of a detected
    reference value on [1, its type's mean over detections, log(genes the cell detects), log library
    size] over the reference cells that detect it, read at each cell's own type and depth.

    `reference`, `cells`: (values (., G), library sizes (.,)); the cells' values whole, so a hidden
    gene still counts among the genes its cell detects (as it does for the model). A gene detected in
    fewer than DEPTH_FIT_MINIMUM reference cells keeps its type's mean. What the model's detected level
    knows (type, library size, breadth) without counts; with counts, the per-type NB at the cell's
    depth (`detected_nb_levels`) plays this part. Row blocks keep memory near (block, G, 4) floats."""
    from vcell.models.inputs import detected_entries

    values, library = reference
    fitted_means = detected_means(values, types[0], types[0], zero_level)  # (m, G) each reference cell's type's
    means = detected_means(values, *types, zero_level)  # (n, G)
    detected = detected_entries(values, zero_level)  # (m, G)

    def per_cell(shown: np.ndarray, depth: np.ndarray) -> np.ndarray:  # (., 2) log breadth, log library size
        return np.log(np.maximum(np.stack([shown.sum(1), depth], 1), 1.0))

    def design(type_means: np.ndarray, logs: np.ndarray) -> np.ndarray:
        """(block, G, 4) [1, type mean, log breadth, log library size] of a block of cells."""
        broadcast = [np.broadcast_to(logs[:, i, None], type_means.shape) for i in range(2)]
        return np.stack([np.ones_like(type_means), type_means, *broadcast], -1).astype(np.float64)

    n_genes = values.shape[1]
    reference_logs, cell_logs = per_cell(detected, library), per_cell(detected_entries(cells[0], zero_level), cells[1])
    gram, target, step = np.zeros((n_genes, 4, 4)), np.zeros((n_genes, 4)), max(1, (1 << 22) // max(4 * n_genes, 1))
    for start in range(0, len(values), step):
        rows = slice(start, start + step)
        columns = design(fitted_means[rows], reference_logs[rows])
        weighted = columns * detected[rows][..., None]  # only where detected
        gram += np.matmul(weighted.transpose(1, 2, 0), columns.transpose(1, 0, 2))  # (G, 4, block) @ (G, block, 4)
        target += np.einsum("bgi,bg->gi", weighted, values[rows])
    fitted = detected.sum(0) >= DEPTH_FIT_MINIMUM
    coefficients = np.linalg.solve(gram + 1e-6 * np.eye(4), target[..., None])[..., 0]  # (G, 4)
    for start in range(0, len(means), step):
        rows = slice(start, start + step)
        moved = np.einsum("bgi,gi->bg", design(means[rows], cell_logs[rows]), coefficients)
        means[rows] = np.where(fitted, moved, means[rows])
    return means


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(a true edge scores above a decoy), ties count half."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_true, n_false = int(labels.sum()), int((~labels).sum())
    if n_true == 0 or n_false == 0:
        return float("nan")
    return float((ranks[labels].sum() - n_true * (n_true + 1) / 2) / (n_true * n_false))
