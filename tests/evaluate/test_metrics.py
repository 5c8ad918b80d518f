"""The metric functions behind the learning checks, on inputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vcell.evaluate.metrics import (
    DEPTH_FIT_MINIMUM, average_precision, cell_type_means, column_correlations, detected_means,
    detected_means_with_depth, discretized_normal_log_prob,
    moment_dispersion, pearson, project_on_members, relative_error, roc_auc, type_mean_with_deviation,
)


def test_average_precision_of_known_rankings():
    labels = np.array([1, 0, 1, 0, 0], dtype=bool)
    assert average_precision(np.array([5, 4, 3, 2, 1]), labels) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert average_precision(np.array([1, 0, 1, 0, 0]), labels) == 1.0  # perfect
    # ties count against us: equal scores give the share of positives, not better
    assert average_precision(np.zeros(5), labels) == pytest.approx(0.4, abs=0.1)
    rng = np.random.default_rng(0)
    many = rng.random(20000) < 0.25
    assert average_precision(rng.random(20000), many) == pytest.approx(0.25, abs=0.01)  # random ranking


def test_roc_auc_and_edge_scores_of_known_rankings():
    from vcell.evaluate.edges import score_edges

    labels = np.array([1, 0, 1, 0, 0], dtype=bool)
    assert roc_auc(np.array([5, 4, 3, 2, 1]), labels) == pytest.approx(5 / 6)  # one of six pairs misordered
    assert roc_auc(np.zeros(5), labels) == 0.5  # ties count half
    assert np.isnan(roc_auc(np.arange(3.0), np.zeros(3, dtype=bool)))
    signed = np.array([2.0, -1.0, -3.0, 0.5, 0.1])
    scores = score_edges(np.abs(signed), signed, labels, np.array([1, 0, 1, 0, 0]))
    assert scores.sign_agreement == 0.5 and scores.auroc == pytest.approx(1.0)
    assert np.isnan(score_edges(np.abs(signed), None, labels, np.ones(5)).sign_agreement)


def test_pearson_and_relative_error():
    x = np.arange(10.0)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert pearson(x, np.ones(10)) == 0.0  # constant: no correlation, not NaN
    assert relative_error(np.zeros(10), x) == pytest.approx(1.0)  # predicting no change
    assert relative_error(x, x) == 0.0
    columns = column_correlations(np.stack([x, x], 1), np.stack([x, -x], 1))
    np.testing.assert_allclose(columns, [1.0, -1.0])


def test_discretized_normal_is_a_distribution_over_counts():
    counts = np.arange(0, 400, dtype=float)
    for mean, sd in [(0.3, 0.5), (5.0, 2.0), (50.0, 20.0)]:
        total = np.exp(discretized_normal_log_prob(counts, np.full_like(counts, mean), np.full_like(counts, sd))).sum()
        assert total == pytest.approx(1.0, abs=1e-6)


def test_moment_dispersion_recovers_a_negative_binomial():
    rng = np.random.default_rng(1)
    library = rng.uniform(1000, 3000, 20000)
    fraction, theta = np.array([0.01, 0.002]), np.array([0.5, 3.0])
    mean = library[:, None] * fraction
    counts = torch.distributions.NegativeBinomial(
        torch.as_tensor(theta), logits=torch.as_tensor(np.log(mean) - np.log(theta))
    ).sample().numpy()
    estimated_fraction, estimated_theta = moment_dispersion(counts, library)
    np.testing.assert_allclose(estimated_fraction, fraction, rtol=0.03)
    np.testing.assert_allclose(estimated_theta, theta, rtol=0.15)


@settings(max_examples=40, deadline=None)
@given(values=arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 5)),
                     elements=st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.5])),
       data=st.data())
def test_detected_means_average_each_types_non_zero_values(values, data):
    """Against a loop: the mean over the reference cells of the query's type in which the gene is
    > 0, else the gene's mean over all its detections, else 0."""
    n, genes = values.shape
    reference_types = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    types = np.array(data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=6)))  # 3: a type the reference lacks
    result = detected_means(values, reference_types, types)
    assert result.shape == (len(types), genes)
    for row, cell_type in enumerate(types):
        for gene in range(genes):
            own = values[(reference_types == cell_type) & (values[:, gene] > 0), gene]
            if cell_type not in reference_types:
                own = values[values[:, gene] > 0, gene]  # an unseen type: the overall composition
            fallback = values[values[:, gene] > 0, gene]
            expected = own.mean() if len(own) else (fallback.mean() if len(fallback) else 0.0)
            assert result[row, gene] == pytest.approx(expected)
    # under a z-score a zero count reads as a per-gene level: the same means, shifted by it
    level = -np.arange(1.0, genes + 1)
    shifted = detected_means(values + level, reference_types, types, zero_level=level)
    seen = (values > 0).any(0)
    np.testing.assert_allclose(shifted[:, seen], result[:, seen] + level[seen])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), n_genes=st.integers(1, 4), shifted=st.booleans())
def test_detected_means_with_depth_is_each_genes_least_squares_over_its_detections(seed, n_genes, shifted):
    """Against a per-gene loop (the normal equations on the design of the cells that detect the gene), with
    a hidden gene of a held-out cell still counted in its breadth and genes too rarely detected
    left at the type's mean; under a z-score (a per-gene zero level) the same, shifted."""
    rng = np.random.default_rng(seed)
    m, n, extra = 60, 7, 6
    reference_types, types = rng.integers(0, 3, m), rng.integers(0, 3, n)

    def cells(count):
        values = np.where(rng.random((count, n_genes + extra)) < 0.6, rng.gamma(2.0, 1.0, (count, n_genes + extra)), 0.0)
        if count == m:  # the last gene: detected in two reference cells, too few for a fit
            values[:, -1] = 0.0
            values[:2, -1] = [1.0, 2.0]
        return values, np.exp(rng.normal(7.0, 0.5, count))
    reference, held_out = cells(m), cells(n)
    result = detected_means_with_depth(reference, held_out, (reference_types, types))
    plain = detected_means(reference[0], reference_types, types)
    type_means = detected_means(reference[0], reference_types, reference_types)

    def design(values, library, means, gene):
        return np.stack([np.ones(len(values)), means[:, gene], np.log(np.maximum((values > 0).sum(1), 1)),
                         np.log(library)], 1)
    for gene in range(n_genes + extra):
        detected = reference[0][:, gene] > 0
        if detected.sum() < DEPTH_FIT_MINIMUM:
            np.testing.assert_allclose(result[:, gene], plain[:, gene])
            continue
        rows = design(*reference, type_means, gene)[detected]
        # the 1e-6 ridge decides where the design is degenerate (a gene detected in one type only: its
        # type's mean is then the intercept again), where numpy's minimum-norm lstsq would differ
        coefficients = np.linalg.solve(rows.T @ rows + 1e-6 * np.eye(4), rows.T @ reference[0][detected, gene])
        np.testing.assert_allclose(result[:, gene], design(*held_out, plain, gene) @ coefficients, rtol=1e-4, atol=1e-4)
    if shifted:
        level = -rng.random(n_genes + extra) - 0.5
        moved = detected_means_with_depth((reference[0] + level, reference[1]), (held_out[0] + level, held_out[1]),
                                          (reference_types, types), zero_level=level)
        np.testing.assert_allclose(moved, result + level, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shift_sd", [0.0, 0.5])
def test_type_mean_with_deviation_adds_the_reliable_part_of_a_cells_own_gene_set_shift(shift_sd):
    """Cells = their type's gene means + a shift shared by each gene set's members (s.d. shift_sd)
    + noise: with no shift the baseline is the type mean (reliability ~0); with one it follows each
    cell's own shift, better than the type mean and than the noisy projection of the cell."""
    rng = np.random.default_rng(0)
    gene, group = np.arange(60), np.repeat(np.arange(3), 20)

    def cells(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        types = rng.integers(0, 4, n)
        shift = rng.normal(0.0, shift_sd, (n, 3))
        x = 2.0 * type_means[types] + shift[:, group] + rng.normal(0.0, 2.0, (n, 60))
        return x, types, shift

    type_means = rng.normal(0.0, 1.0, (4, 60))
    (reference_x, reference_types, _), (x, types, shift) = cells(20000), cells(3000)
    activity = type_mean_with_deviation((reference_x, reference_types), (x, types), gene, group)
    type_mean = cell_type_means(project_on_members(reference_x, gene, group), reference_types, types)
    assert activity.shape == (3000, 3)
    if shift_sd == 0.0:
        np.testing.assert_allclose(activity, type_mean, atol=0.05)  # reliability ~0.01: sampling error only
        return
    within = lambda values: column_correlations(values - cell_type_means(values, types, types), shift).mean()  # noqa: E731
    assert within(activity) > 0.7  # reliability 0.25 / (0.25 + 4 / 20) = 0.56, so r = sqrt(0.56) = 0.75
    truth = 2.0 * project_on_members(type_means[types], gene, group) + shift
    score = lambda values: column_correlations(values, truth).mean()  # noqa: E731
    assert score(activity) > max(score(type_mean), score(project_on_members(x, gene, group))) + 0.02
