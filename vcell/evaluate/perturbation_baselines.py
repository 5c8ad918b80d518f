"""Perturbation baselines stronger than the mean: the linear model of Ahlmann-Eltze et al., and the additive one.

    linear = fit_linear(profiles, deltas, offsets, perturbation_gene)   # once, on training pseudobulks
    linear.delta(cell_type, code)                                        # (G,) predicted delta

Linear model (Ahlmann-Eltze, Huber & Anders 2025, "Deep-learning-based gene perturbation effect
prediction does not yet outperform simple linear baselines", Nature Methods 22,
doi:10.1038/s41592-025-02772-6): Y ≈ G W Pᵀ + b, where

- G (genes x K) embeds genes: the top K = 10 principal components of the training pseudobulk
  expression (genes as observations; one column per training condition and cell type, the
  control included), i.e. each gene's scores;
- P (perturbations x K) embeds perturbations by the rows of G of the perturbed genes, so a
  perturbation never seen in training still has an embedding when its gene is measured;
- b is the mean training profile; W (K x K) is the ridge solution (lambda = 0.1, as in the paper)
  W = (GᵀG + λI)⁻¹ Gᵀ (Y - b) P (PᵀP + λI)⁻¹.

We fit it on deltas (perturbed minus control of the same cell type) rather than expression:
with one cell type the two are the same model (b absorbs the control profile, and Y - b is
unchanged); with several, b is per cell type the mean training delta, which is exactly the
`mean_perturbation` baseline, so the linear model is that baseline plus what gene embeddings
explain. A perturbation whose target is not a measured gene gets b alone.

Additive model (for combinations named "A+B", the Norman et al. convention): the sum of the
single perturbations' training deltas of the same cell type; only when every part was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LINEAR_COMPONENTS = 10  # K in the paper
LINEAR_RIDGE = 0.1  # lambda in the paper
COMBINATION_SEPARATOR = "+"


@dataclass
class LinearBaseline:
    gene_embedding: np.ndarray  # (G, K) G
    weights: np.ndarray  # (K, K) W
    offsets: dict[int, np.ndarray]  # cell type -> (G,) b
    perturbation_gene: np.ndarray  # (n perturbation codes,) gene index of each perturbation, -1 = not a gene

    def delta(self, cell_type: int, code: int) -> np.ndarray:
        """(G,) G W P_codeᵀ + b_type."""
        offset = self.offsets.get(cell_type, np.zeros(len(self.gene_embedding)))
        gene = int(self.perturbation_gene[code]) if code < len(self.perturbation_gene) else -1
        if gene < 0:
            return offset
        return offset + self.gene_embedding @ (self.weights @ self.gene_embedding[gene])


def gene_embedding(profiles: np.ndarray, n_components: int) -> np.ndarray:
    """(G, K) principal component scores of the genes: `profiles` (G, n conditions), each
    condition's column centred over genes (R's prcomp on the genes-by-conditions matrix)."""
    centred = profiles - profiles.mean(0, keepdims=True)
    left, singular, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(n_components, len(singular))
    return left[:, :k] * singular[:k]


def ridge_bilinear(targets: np.ndarray, genes: np.ndarray, perturbations: np.ndarray, ridge: float) -> np.ndarray:
    """(K, K) W minimising |targets - G W Pᵀ|² with ridge on both sides: targets (G, n), G (G, K), P (n, K)."""
    k_genes, k_perturbations = genes.shape[1], perturbations.shape[1]
    left = np.linalg.solve(genes.T @ genes + ridge * np.eye(k_genes), genes.T @ targets)  # (K, n)
    return np.linalg.solve(perturbations.T @ perturbations + ridge * np.eye(k_perturbations), (left @ perturbations).T).T


def fit_linear(profiles: np.ndarray, deltas: dict[tuple[int, int], np.ndarray], offsets: dict[int, np.ndarray],
               perturbation_gene: np.ndarray, n_components: int = LINEAR_COMPONENTS,
               ridge: float = LINEAR_RIDGE) -> LinearBaseline | None:
    """The linear model from training pseudobulks: `profiles` (G, n) mean expression per training
    condition and cell type; `deltas` (cell type, perturbation code) -> (G,) training delta;
    `offsets` cell type -> b. None when fewer than two training perturbations target measured genes."""
    usable = [(t, code) for t, code in deltas if 0 <= code < len(perturbation_gene) and perturbation_gene[code] >= 0]
    if len({code for _, code in usable}) < 2 or profiles.shape[1] < 2:
        return None
    embedding = gene_embedding(profiles, n_components)
    targets = np.stack([deltas[key] - offsets[key[0]] for key in usable], axis=1)  # (G, n) Y - b
    perturbations = embedding[[int(perturbation_gene[code]) for _, code in usable]]  # (n, K) P
    weights = ridge_bilinear(targets, embedding, perturbations, ridge)
    return LinearBaseline(embedding, weights, offsets, np.asarray(perturbation_gene))


def combination_parts(name: str, codes: dict[str, int]) -> list[int] | None:
    """Category codes of the single perturbations named in a combination "A+B"; None if `name` is not
    a combination or names a part the model has no category for."""
    parts = [part.strip() for part in name.split(COMBINATION_SEPARATOR)]
    if len(parts) < 2 or any(part not in codes for part in parts):
        return None
    return [codes[part] for part in parts]


def additive_delta(parts: list[int], cell_type: int, deltas: dict[tuple[int, int], np.ndarray]) -> np.ndarray | None:
    """(G,) sum of the parts' training deltas in this cell type; None if a part has none."""
    if any((cell_type, code) not in deltas for code in parts):
        return None
    return np.sum([deltas[(cell_type, code)] for code in parts], axis=0)
