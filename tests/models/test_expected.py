"""The expected measured expression of a count model (vcell.models.expected) against direct sums."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings, strategies as st

from vcell.models.expected import expected_log1p
from vcell.models.enhancements.stochastic import NegativeBinomialLikelihood
from vcell.models.inputs import Prediction
from vcell.models.slots import CountHead, GaussianHead, PoissonLikelihood, LibraryMean


def direct_sum(mean: float, scale: float, theta: float | None, counts: int = 2_000_000) -> float:
    """E[log1p(scale K)] summed over K = 0..counts-1 with log-probabilities from lgamma."""
    k = torch.arange(counts, dtype=torch.float64)
    mean_ = torch.tensor(mean, dtype=torch.float64)
    if theta is None:
        log_p = k * torch.log(mean_) - mean_ - torch.lgamma(k + 1)
    else:
        t = torch.tensor(theta, dtype=torch.float64)
        log_p = (torch.lgamma(k + t) - torch.lgamma(t) - torch.lgamma(k + 1)
                 + t * torch.log(t / (t + mean_)) + k * torch.log(mean_ / (t + mean_)))
    return float((log_p.exp() * torch.log1p(scale * k)).sum())


def ours(mean: float, scale: float, theta: float | None) -> float:
    return float(expected_log1p(torch.tensor([[mean]]), torch.tensor([[scale]]),
                                None if theta is None else torch.tensor([theta]))[0, 0])


@settings(max_examples=40, deadline=None)
@given(log_mean=st.floats(math.log(1e-3), math.log(1000.0)), log_theta=st.floats(math.log(5e-3), math.log(20.0)),
       scale=st.floats(0.5, 10.0), poisson=st.booleans())
def test_matches_a_direct_sum_over_two_million_counts(log_mean, log_theta, scale, poisson):
    mean, theta = math.exp(log_mean), None if poisson else math.exp(log_theta)
    assert abs(ours(mean, scale, theta) - direct_sum(mean, scale, theta)) < 1e-3


def test_lies_below_the_plug_in_by_jensen_and_meets_it_for_a_highly_expressed_gene():
    for mean in (0.05, 1.0, 10.0):
        assert ours(mean, 5.0, 0.5) < math.log1p(5.0 * mean) - 0.05
    assert abs(ours(50_000.0, 0.2, None) - math.log1p(0.2 * 50_000.0)) < 1e-3


def test_a_rarely_detected_gene_averages_its_detection_rate_times_the_level_of_one_count():
    # Poisson mean 0.01: 1 count in ~1% of cells, 2 in ~0.005%, more never
    mean, scale = 0.01, 4.0
    one, two = mean * math.exp(-mean), mean**2 / 2 * math.exp(-mean)
    assert abs(ours(mean, scale, None) - (one * math.log1p(scale) + two * math.log1p(2 * scale))) < 1e-6


def test_zero_inflation_scales_the_expectation_by_the_share_not_dropped():
    mean, scale = torch.full((1, 3), 2.0), torch.full((1, 1), 3.0)
    plain = expected_log1p(mean, scale, torch.ones(3))
    inflated = expected_log1p(mean, scale, torch.ones(3), zero_probability=torch.tensor([[0.0, 0.25, 1.0]]))
    assert torch.allclose(inflated, plain * torch.tensor([[1.0, 0.75, 0.0]]))


def test_count_heads_measure_what_their_own_samples_average_to():
    torch.manual_seed(0)
    mean = torch.exp(torch.randn(4, 50) * 2 - 1)  # (cells, genes), 0.01 .. ~100 expected counts
    overdispersed = PoissonLikelihood(50)
    overdispersed.load_state_dict({"moments": torch.stack([torch.full((50,), 2.0), torch.ones(50)])})  # measured theta 0.5
    for likelihood in (PoissonLikelihood(50), overdispersed, NegativeBinomialLikelihood(50, 8, zero_inflated=False)):
        head = CountHead(LibraryMean(), likelihood)
        prediction = Prediction(expression=torch.log1p(1e4 * mean / mean.sum(-1, keepdim=True)), mean=mean)
        with torch.no_grad():
            measured = head.measured(prediction)
            draws = torch.stack([likelihood.sample(prediction) for _ in range(4000)])  # (draws, cells, genes)
        values = torch.log1p(1e4 * draws / mean.sum(-1, keepdim=True))
        sampled, error = values.mean(0), values.std(0) / math.sqrt(len(draws))  # (cells, genes) and its standard error
        assert ((measured - sampled).abs() < 5 * error + 1e-3).all()
        assert (prediction.expression - sampled).abs().mean() > 5 * (measured - sampled).abs().mean()


def test_a_gaussian_head_already_predicts_the_measured_mean():
    prediction = Prediction(expression=torch.randn(3, 4))
    assert torch.equal(GaussianHead().measured(prediction), prediction.expression)


def direct_detected(mean: float, scale: float, theta: float | None) -> float:
    """E[log1p(scale K) | K > 0] from the direct sum and P(K = 0)."""
    zero = math.exp(-mean) if theta is None else (theta / (theta + mean)) ** theta
    return direct_sum(mean, scale, theta) / (1 - zero)


@settings(max_examples=25, deadline=None)
@given(log_mean=st.floats(math.log(1e-3), math.log(1000.0)), log_theta=st.floats(math.log(5e-3), math.log(20.0)),
       scale=st.floats(0.5, 10.0), poisson=st.booleans())
def test_detected_level_matches_a_direct_sum_over_the_detections(log_mean, log_theta, scale, poisson):
    mean, theta = math.exp(log_mean), None if poisson else math.exp(log_theta)
    value = float(expected_log1p(torch.tensor([[mean]]), torch.tensor([[scale]]),
                                 None if theta is None else torch.tensor([theta]), detected=True)[0, 0])
    assert abs(value - direct_detected(mean, scale, theta)) < 2e-3 * max(1.0, value)
    assert value >= math.log1p(scale) - 1e-6  # a detected gene has at least one count


def test_detected_level_of_a_gene_almost_never_detected_is_one_count_and_ignores_zero_inflation():
    mean, scale = torch.tensor([[1e-12, 2.0]]), torch.full((1, 1), 3.0)
    plain = expected_log1p(mean, scale, torch.ones(2), detected=True)
    assert abs(float(plain[0, 0]) - math.log1p(3.0)) < 1e-6  # the division would have lost every digit
    inflated = expected_log1p(mean, scale, torch.ones(2), zero_probability=torch.tensor([[0.5, 0.5]]), detected=True)
    assert torch.allclose(inflated, plain)  # dropping detections does not change what a detected value is


def test_count_heads_detected_level_is_what_their_non_zero_samples_average_to():
    torch.manual_seed(1)
    mean = torch.exp(torch.randn(3, 40) * 1.5)  # (cells, genes)
    head = CountHead(LibraryMean(), NegativeBinomialLikelihood(40, 8, zero_inflated=False))
    prediction = Prediction(expression=torch.log1p(1e4 * mean / mean.sum(-1, keepdim=True)), mean=mean)
    with torch.no_grad():
        detected = head.detected(prediction)
        draws = torch.stack([head.likelihood.sample(prediction) for _ in range(4000)])  # (draws, cells, genes)
    values = torch.log1p(1e4 * draws / mean.sum(-1, keepdim=True))
    seen = (draws > 0).sum(0)  # (cells, genes)
    sampled = values.sum(0) / seen.clamp(min=1)
    spread = torch.sqrt(((values - sampled) ** 2 * (draws > 0)).sum(0) / seen.clamp(min=2)) / seen.clamp(min=1).sqrt()
    usable = seen >= 100
    assert usable.sum() > 60
    assert ((detected - sampled).abs()[usable] < 5 * spread[usable] + 1e-3).all()
    assert (detected >= head.measured(prediction) - 1e-6).all()


def test_a_gaussian_head_has_no_model_of_detection():
    prediction = Prediction(expression=torch.randn(3, 4))
    assert torch.equal(GaussianHead().detected(prediction, torch.full((3,), 4)), prediction.expression)


@settings(max_examples=30, deadline=None)
@given(cells=st.integers(1, 40), genes=st.integers(1, 12), chunk_entries=st.integers(1, 200),
       per_cell_theta=st.booleans(), per_gene_scale=st.booleans(), inflated=st.booleans(), detected=st.booleans(),
       poisson=st.booleans(), seed=st.integers(0, 2**16))
def test_a_few_cells_at_a_time_gives_what_one_pass_gives(cells, genes, chunk_entries, per_cell_theta, per_gene_scale,
                                                         inflated, detected, poisson, seed):
    """Memory is bounded by computing a few cells at a time; every per-cell argument follows its rows."""
    from vcell.models import expected

    generator = torch.Generator().manual_seed(seed)
    mean = torch.exp(torch.randn(cells, genes, generator=generator) * 3)  # ~1e-4 .. 1e4 counts
    scale = torch.rand(cells, genes if per_gene_scale else 1, generator=generator) * 10 + 0.1
    theta = None if poisson else torch.rand(*((cells, genes) if per_cell_theta else (genes,)), generator=generator) + 0.05
    zero = torch.rand(cells, genes, generator=generator) * 0.5 if inflated else None
    whole = expected.expected_log1p_at_once(mean, scale, theta, zero, expected.EXACT_TERMS, detected)
    saved = expected.ROW_CHUNK_ENTRIES
    expected.ROW_CHUNK_ENTRIES = chunk_entries  # as few as one cell per pass
    try:
        chunked = expected.expected_log1p(mean, scale, theta, zero, detected=detected)
    finally:
        expected.ROW_CHUNK_ENTRIES = saved
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def test_the_expectation_at_chosen_entries_is_the_whole_ones_there():
    """A training step asks for its hidden genes only: the same values as the whole batch's, there."""
    from vcell.models.expected import at_entries

    generator = torch.Generator().manual_seed(2)
    mean = torch.rand(6, 9, generator=generator) * 30
    scale = torch.rand(6, 1, generator=generator) * 5 + 0.5
    theta = torch.rand(9, generator=generator) * 5 + 0.1
    zero = torch.rand(6, 9, generator=generator) * 0.3
    entries = torch.rand(6, 9, generator=generator) < 0.3
    for detected in (False, True):
        whole = expected_log1p(mean, scale, theta, zero, detected=detected)
        torch.testing.assert_close(expected_log1p(*at_entries(entries, mean, scale, theta, zero), detected=detected),
                                   whole[entries])
    assert at_entries(None, mean, scale, theta, None) == (mean, scale, theta, None)
