"""The benchmark scores against scikit-learn / scipy references and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import false_discovery_control
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from vcell.evaluate import scores
from vcell.evaluate.scores import (
    adjusted_rand_index, benjamini_hochberg, de_overlap, differential_genes, discrimination_score,
    interval_coverage, kmeans, knn_accuracy, neighbour_means, normalized_mutual_info, silhouette_labels,
)


def blobs(n_per_blob: int, n_blobs: int, dims: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, dims) points around n_blobs random centres, and their (n,) blob labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (n_blobs, dims))
    labels = np.repeat(np.arange(n_blobs), n_per_blob)
    return centres[labels] + rng.normal(0, spread, (len(labels), dims)), labels


# ---------------------------------------------------------------- nearest neighbours

@pytest.mark.parametrize("spread", [1.0, 12.0])  # separate blobs, then heavily overlapping ones
def test_knn_accuracy_matches_sklearn_without_ties(spread):
    # two classes and an odd k: no tied votes; continuous data: no tied distances
    points, labels = blobs(300, 2, 8, spread, seed=0)
    rng = np.random.default_rng(1)
    is_query = rng.random(len(labels)) < 0.3
    reference, reference_labels = points[~is_query], labels[~is_query] * 7 + 3  # arbitrary codes
    query, query_labels = points[is_query], labels[is_query] * 7 + 3
    expected = KNeighborsClassifier(n_neighbors=15).fit(reference, reference_labels).score(query, query_labels)
    assert knn_accuracy(reference, reference_labels, query, query_labels, k=15) == expected


def test_knn_accuracy_in_blocks_equals_one_block(monkeypatch):
    points, labels = blobs(200, 4, 5, 8.0, seed=2)
    whole = knn_accuracy(points[::2], labels[::2], points[1::2], labels[1::2], k=5)
    monkeypatch.setattr(scores, "BLOCK_BYTES", 16 * 200 * 3)  # three query rows per block
    assert knn_accuracy(points[::2], labels[::2], points[1::2], labels[1::2], k=5) == whole


def test_knn_tied_vote_goes_to_the_closest_label_and_missing_labels_are_skipped():
    # query at 0; k = 4 neighbours at 0.5 (label 2), 1 (label 1), 2 (label 1), 3 (label 2): a 2-2 tie
    reference = np.array([[0.5], [1.0], [2.0], [3.0], [0.1]])
    reference_labels = np.array([2, 1, 1, 2, -1])  # the missing-label cell at 0.1 must be ignored
    query = np.array([[0.0], [0.0], [0.0]])
    assert knn_accuracy(reference, reference_labels, query, np.array([2, -1, -1]), k=4) == 1.0
    assert knn_accuracy(reference, reference_labels, query, np.array([1, 2, -1]), k=4) == 0.5
    assert np.isnan(knn_accuracy(reference, reference_labels, query, np.array([-1, -1, -1]), k=4))


# ---------------------------------------------------------------- clustering agreement

def test_ari_and_nmi_match_sklearn_on_random_labelings():
    rng = np.random.default_rng(3)
    for n_true, n_pred in [(2, 2), (5, 3), (10, 40), (1, 4)]:
        labels_true, labels_pred = rng.integers(0, n_true, 500), rng.integers(0, n_pred, 500)
        labels_pred[:250] = labels_true[:250]  # some agreement so the values are not all near 0
        assert adjusted_rand_index(labels_true, labels_pred) == pytest.approx(
            adjusted_rand_score(labels_true, labels_pred), abs=1e-10)
        assert normalized_mutual_info(labels_true, labels_pred) == pytest.approx(
            normalized_mutual_info_score(labels_true, labels_pred), abs=1e-10)


def test_ari_and_nmi_hand_worked_and_edge_cases():
    # 2x2: true {0,1 | 2,3}, predicted {0,2 | 1,3}: no pair together in both, 2 pairs in each of 6:
    # expected = 2 * 2 / 6 = 2/3, ARI = (0 - 2/3) / (2 - 2/3) = -0.5; the partitions are independent: NMI 0
    labels_true, labels_pred = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    assert adjusted_rand_index(labels_true, labels_pred) == pytest.approx(-0.5)
    assert normalized_mutual_info(labels_true, labels_pred) == 0.0
    partition = np.array([3, 3, 1, 1, 2, 2, 2])
    renamed = np.array(["b", "b", "x", "x", "a", "a", "a"])  # the same partition with other names
    assert adjusted_rand_index(partition, renamed) == 1.0
    assert normalized_mutual_info(partition, renamed) == pytest.approx(1.0)
    shuffled = np.array([3, 1, 3, 1, 2, 2, 1])
    assert adjusted_rand_index(partition, shuffled) == pytest.approx(adjusted_rand_index(renamed, shuffled * 5))
    one_cluster = np.zeros(6, dtype=int)
    assert adjusted_rand_index(one_cluster, one_cluster + 4) == 1.0 == adjusted_rand_score(one_cluster, one_cluster + 4)
    assert normalized_mutual_info(one_cluster, one_cluster) == 1.0
    singletons = np.arange(6)
    assert adjusted_rand_index(one_cluster, singletons) == adjusted_rand_score(one_cluster, singletons) == 0.0


# ---------------------------------------------------------------- embedding structure

def test_silhouette_labels_matches_sklearn_rescaled(monkeypatch):
    points, labels = blobs(60, 4, 6, 6.0, seed=4)
    labels = np.append(labels, 9)  # a singleton type: silhouette 0
    points = np.vstack([points, np.zeros((1, 6))])
    expected = (silhouette_score(points, labels) + 1) / 2
    assert silhouette_labels(points, labels) == pytest.approx(expected, abs=1e-6)
    monkeypatch.setattr(scores, "BLOCK_BYTES", 8 * len(labels) * 7)  # seven rows per block
    assert silhouette_labels(points, labels) == pytest.approx(expected, abs=1e-6)


def test_silhouette_labels_hand_worked_and_subsampled():
    # points 0, 1 (type a) and 4, 6 (type b): a(0)=1, b(0)=5 -> 0.8; a(1)=1, b(1)=4 -> 0.75;
    # a(4)=2, b(4)=3.5 -> 3/7; a(6)=2, b(6)=5.5 -> 7/11
    points = np.array([[0.0], [1.0], [4.0], [6.0]])
    mean_width = (0.8 + 0.75 + 3 / 7 + 7 / 11) / 4
    assert silhouette_labels(points, np.array(["a", "a", "b", "b"])) == pytest.approx((mean_width + 1) / 2)
    many, labels = blobs(500, 3, 4, 3.0, seed=5)
    subsampled = silhouette_labels(many, labels, max_cells=300, seed=1)
    assert subsampled == silhouette_labels(many, labels, max_cells=300, seed=1)  # seeded
    assert subsampled == pytest.approx(silhouette_labels(many, labels), abs=0.03)
    assert np.isnan(silhouette_labels(many, np.zeros(len(many))))


def test_kmeans_recovers_blobs_is_seeded_and_matches_sklearn_inertia():
    points, truth = blobs(100, 5, 4, 0.5, seed=6)
    labels = kmeans(points, 5, seed=0)
    assert adjusted_rand_index(truth, labels) == 1.0
    np.testing.assert_array_equal(labels, kmeans(points, 5, seed=0))
    unstructured = np.random.default_rng(7).normal(size=(1000, 5))
    labels = kmeans(unstructured, 8, seed=0)
    inertia = sum(((unstructured[labels == c] - unstructured[labels == c].mean(0)) ** 2).sum() for c in range(8))
    reference = KMeans(8, n_init=4, random_state=0).fit(unstructured).inertia_
    assert inertia <= reference * 1.01


# ---------------------------------------------------------------- perturbation prediction

def test_discrimination_score_known_cases():
    observed = np.random.default_rng(8).normal(size=(20, 50))
    score, ranks = discrimination_score(observed, observed)
    assert score == 1.0 and not ranks.any()
    # P = 3, one gene, observed 0, 1, 3, predicted reversed 3, 1, 0:
    # row 0 (pred 3): own distance 3, obs 1 and 3 closer -> r = 2/2; row 1 exact -> 0; row 2 (pred 0):
    # own distance 3, obs 0 and 1 closer -> 1. Score 1 - 2/3
    score, ranks = discrimination_score(np.array([[3.0], [1.0], [0.0]]), np.array([[0.0], [1.0], [3.0]]))
    np.testing.assert_allclose(ranks, [1.0, 0.0, 1.0])
    assert score == pytest.approx(1 / 3)
    rng = np.random.default_rng(9)
    # each rank is uniform, so the mean has sd about 0.29 / sqrt(P) = 0.009
    score, _ = discrimination_score(rng.normal(size=(1000, 20)), rng.normal(size=(1000, 20)))
    assert score == pytest.approx(0.5, abs=0.04)


def test_benjamini_hochberg_matches_scipy():
    p_values = np.random.default_rng(10).random(300) ** 3
    p_values[:5] = p_values[5]  # ties
    np.testing.assert_allclose(benjamini_hochberg(p_values), false_discovery_control(p_values), rtol=1e-12)


def test_differential_genes_finds_the_planted_genes():
    rng = np.random.default_rng(11)
    control, perturbed = rng.normal(size=(200, 300)), rng.normal(size=(150, 300))
    planted = np.array([7, 40, 41, 250])
    perturbed[:, planted] += np.array([2.0, -1.5, 1.0, 3.0])
    control[:, 100] = 0.0  # constant in one group only, same mean: not called
    control[:, 200] = perturbed[:, 200] = 0.0  # constant in both: NaN p-value, never called
    found = differential_genes(perturbed, control, fdr=1e-6, top=None)
    np.testing.assert_array_equal(found, [250, 7, 40, 41])  # by |mean difference|, largest first
    assert len(differential_genes(perturbed, control, fdr=1e-6, top=2)) == 2


def test_de_overlap_hand_worked():
    predicted_delta = np.array([0.1, -5.0, 3.0, 0.0, 2.0])  # |delta| order: genes 1, 2, 4, 0, 3
    assert de_overlap(predicted_delta, np.array([1, 2])) == 1.0
    assert de_overlap(predicted_delta, np.array([1, 3])) == 0.5
    assert de_overlap(predicted_delta, np.array([0, 3, 4])) == pytest.approx(1 / 3)
    assert np.isnan(de_overlap(predicted_delta, np.array([], dtype=int)))


def test_interval_coverage_is_calibrated_for_the_true_distribution():
    rng = np.random.default_rng(12)
    observed = rng.normal(size=(200, 20))
    assert interval_coverage(rng.normal(size=(400, 200, 20)), observed, 0.9) == pytest.approx(0.9, abs=0.02)
    assert interval_coverage(0.2 * rng.normal(size=(400, 200, 20)), observed, 0.9) < 0.4


@pytest.mark.parametrize("mean", [0.05, 0.3, 2.0, 40.0])
def test_interval_coverage_is_calibrated_for_counts_sparse_or_not(mean):
    """Counts from the draws' own distribution cover `level`, however many are 0; counts from a
    wider distribution than the draws (overdispersed truth, Poisson draws) cover less, once the
    counts are large enough to show their spread (at mean 0.05 the two differ in rare 1s only)."""
    rng = np.random.default_rng(3)
    draws = rng.poisson(mean, size=(200, 300, 30))
    assert interval_coverage(draws, rng.poisson(mean, size=(300, 30)), 0.9) == pytest.approx(0.9, abs=0.015)
    overdispersed = rng.negative_binomial(0.2, 0.2 / (0.2 + mean), size=(300, 30))
    assert interval_coverage(draws, overdispersed, 0.9) < (0.915 if mean < 1 else 0.7)


def test_interval_coverage_of_sparse_counts_is_not_the_share_of_zeros():
    """Bounds-included quantile intervals of sparse counts start at 0 and contain every zero: a
    distribution far narrower than the truth still 'covered' them. The PIT band does not."""
    rng = np.random.default_rng(4)
    truth = rng.negative_binomial(0.1, 0.1 / (0.1 + 0.5), size=(400, 40))  # ~85% zeros, bursty
    too_narrow = rng.poisson(0.5, size=(200, 400, 40))
    lower, upper = np.quantile(too_narrow, [0.05, 0.95], axis=0)
    assert ((truth >= lower) & (truth <= upper)).mean() > 0.9  # what the old definition reported
    assert interval_coverage(too_narrow, truth, 0.9) < 0.87


def test_interval_coverage_is_seeded():
    rng = np.random.default_rng(5)
    draws, observed = rng.poisson(0.3, size=(50, 100, 10)), rng.poisson(0.3, size=(100, 10))
    assert interval_coverage(draws, observed, seed=1) == interval_coverage(draws, observed, seed=1)


@settings(max_examples=30, deadline=None)
@given(n_reference=st.integers(1, 60), n_query=st.integers(0, 20), k=st.integers(1, 70), seed=st.integers(0, 10_000))
def test_neighbour_means_average_the_k_nearest_reference_rows(n_reference, n_query, k, seed):
    """The same neighbours as scikit-learn's brute-force search (k capped at the reference size)."""
    rng = np.random.default_rng(seed)
    reference, query = rng.normal(size=(n_reference, 3)), rng.normal(size=(n_query, 3))
    values = rng.normal(size=(n_reference, 4))
    means = neighbour_means(reference, values, query, k)
    assert means.shape == (n_query, 4)
    if n_query:
        nearest = NearestNeighbors(n_neighbors=min(k, n_reference), algorithm="brute").fit(reference)
        expected = values[nearest.kneighbors(query, return_distance=False)].mean(axis=1)
        np.testing.assert_allclose(means, expected, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(n_reference=st.integers(1, 40), n_query=st.integers(0, 10), k=st.integers(1, 50), seed=st.integers(0, 10_000))
def test_detected_neighbour_means_average_each_gene_over_the_neighbours_that_detect_it(n_reference, n_query, k, seed):
    """Per gene, the mean over the k nearest rows where it is > 0; where none is, its mean over
    every reference row that detects it (0 for a gene nothing detects)."""
    rng = np.random.default_rng(seed)
    reference, query = rng.normal(size=(n_reference, 3)), rng.normal(size=(n_query, 3))
    values = np.where(rng.random((n_reference, 5)) < 0.4, rng.gamma(2.0, size=(n_reference, 5)), 0.0)
    values[:, 4] = 0.0  # a gene no cell detects
    means = neighbour_means(reference, values, query, k, detected_only=True)
    assert means.shape == (n_query, 5)
    nearest = NearestNeighbors(n_neighbors=min(k, n_reference), algorithm="brute").fit(reference)
    for row, neighbours in enumerate(nearest.kneighbors(query, return_distance=False) if n_query else []):
        for gene in range(5):
            found = values[neighbours, gene][values[neighbours, gene] > 0]
            everywhere = values[:, gene][values[:, gene] > 0]
            expected = found.mean() if len(found) else (everywhere.mean() if len(everywhere) else 0.0)
            assert means[row, gene] == pytest.approx(expected, abs=1e-12)
