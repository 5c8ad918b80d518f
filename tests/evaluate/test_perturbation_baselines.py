"""The linear (Ahlmann-Eltze et al. 2025) and additive perturbation baselines on constructed data."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

from vcell.evaluate.perturbation_baselines import (
    additive_delta, combination_parts, fit_linear, gene_embedding, ridge_bilinear,
)

N_GENES = 60


def test_gene_embedding_is_pca_with_genes_as_observations():
    profiles = np.random.default_rng(0).normal(size=(N_GENES, 8))
    ours = gene_embedding(profiles, 3)
    reference = PCA(3, svd_solver="full").fit_transform(profiles)  # sklearn centres each column over genes too
    assert ours.shape == (N_GENES, 3)
    assert np.allclose(np.abs(ours), np.abs(reference))  # principal components are defined up to sign


def test_ridge_bilinear_recovers_the_map_without_noise():
    rng = np.random.default_rng(1)
    genes, perturbations, weights = rng.normal(size=(N_GENES, 4)), rng.normal(size=(12, 4)), rng.normal(size=(4, 4))
    targets = genes @ weights @ perturbations.T
    assert np.allclose(ridge_bilinear(targets, genes, perturbations, 1e-10), weights, atol=1e-6)
    shrunk = ridge_bilinear(targets, genes, perturbations, 1e4)
    assert np.abs(shrunk).sum() < np.abs(weights).sum()  # the ridge pulls towards 0


def linear_world(seed: int = 2):
    """Training deltas made exactly by the linear model on the embedding of the training profiles."""
    rng = np.random.default_rng(seed)
    profiles = rng.normal(size=(N_GENES, 10)) @ rng.normal(size=(10, 14))  # rank 10: K = 10 captures it all
    embedding = gene_embedding(profiles, 10)
    weights = rng.normal(size=(10, 10)) / np.abs(embedding).max() ** 2
    offsets = {0: rng.normal(size=N_GENES), 1: rng.normal(size=N_GENES)}
    # code 0: control; codes 1-12 trained (>= K of them, so W is identifiable); 13, 14 never trained; 15 not a gene
    perturbation_gene = np.array([-1, 3, 7, 11, 19, 23, 31, 42, 2, 5, 50, 58, 37, 29, 44, -1])

    def true_delta(cell_type: int, code: int) -> np.ndarray:
        return offsets[cell_type] + embedding @ weights @ embedding[perturbation_gene[code]]

    deltas = {(t, code): true_delta(t, code) for t in (0, 1) for code in range(1, 13)}
    return profiles, deltas, offsets, perturbation_gene, true_delta


def test_linear_baseline_generalises_to_perturbations_of_measured_genes():
    profiles, deltas, offsets, perturbation_gene, true_delta = linear_world()
    fitted = fit_linear(profiles, deltas, offsets, perturbation_gene, ridge=1e-8)
    for code in (13, 14):  # unseen: embedded by their genes' rows of G
        for cell_type in (0, 1):
            assert np.allclose(fitted.delta(cell_type, code), true_delta(cell_type, code), rtol=1e-4, atol=1e-6)
    assert np.array_equal(fitted.delta(1, 15), offsets[1])  # no measured target: b alone
    assert fitted.weights.shape == (10, 10) and fitted.gene_embedding.shape == (N_GENES, 10)


def test_linear_baseline_with_the_paper_ridge_is_close_and_needs_two_gene_perturbations():
    profiles, deltas, offsets, perturbation_gene, true_delta = linear_world(3)
    fitted = fit_linear(profiles, deltas, offsets, perturbation_gene)  # lambda = 0.1, K = 10
    error = np.linalg.norm(fitted.delta(0, 13) - true_delta(0, 13)) / np.linalg.norm(true_delta(0, 13) - offsets[0])
    assert error < 0.05
    one = {key: value for key, value in deltas.items() if key[1] == 1}
    assert fit_linear(profiles, one, offsets, perturbation_gene) is None
    assert fit_linear(profiles, {(0, 15): deltas[(0, 1)]}, offsets, perturbation_gene) is None  # target not a gene


def test_additive_sums_the_trained_singles_of_a_combination():
    codes = {"control": 0, "A": 1, "B": 2, "C": 3}
    assert combination_parts("A+B", codes) == [1, 2]
    assert combination_parts(" A + C ", codes) == [1, 3]
    assert combination_parts("A", codes) is None and combination_parts("A+Z", codes) is None
    deltas = {(0, 1): np.array([1.0, 0.0]), (0, 2): np.array([0.5, -2.0]), (1, 1): np.array([3.0, 3.0])}
    assert np.array_equal(additive_delta([1, 2], 0, deltas), [1.5, -2.0])
    assert additive_delta([1, 2], 1, deltas) is None  # B never trained in cell type 1


def test_a_combination_section_is_listed_in_the_summary_rows():
    from vcell.evaluate.evaluation import baseline_rows

    scores = {"pearson_delta": 0.5}
    section = {"vs_observed": {"model": scores, "baselines": {"additive": {"pearson_delta": 0.7}}}}
    rows = dict(baseline_rows({"perturbation": {"additive": section}}))
    assert rows["combination perturbations: pearson_delta"] == {"model": 0.5, "additive": 0.7}
    assert baseline_rows({"perturbation": {"additive": "skipped: none"}}) == []
