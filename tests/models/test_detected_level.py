"""A squared-error model's detected level (`model.detected_level`): each gene's value where it is detected,
offset + slope x reconstruction + depth x log library size + breadth x log detected genes, by ridge least
squares over the genes hidden in training."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.models.test_zoo import SPEC, random_batch
from vcell.config.model import ModelConfig
from vcell.models.detected_level import DETECTED_DECAY, DetectedLevel
from vcell.models.zoo import build_model


def as_tensors(*arrays):
    return [torch.as_tensor(a, dtype=torch.float32) for a in arrays]


@settings(max_examples=25, deadline=None)
@given(n_genes=st.integers(1, 5), offset=st.floats(-2, 2), slope=st.floats(0.2, 3), depth=st.floats(-1, 1),
       breadth=st.floats(-1, 1), seed=st.integers(0, 2**16))
def test_the_level_is_the_least_squares_fit_through_the_hidden_entries(n_genes, offset, slope, depth, breadth, seed):
    """Many hidden entries: the ridge's pull is negligible and the fit recovers the generating plane,
    whatever the correlations between the reconstruction, the depth and the breadth; entries not
    hidden do not count (except that a measured value is a detected gene)."""
    rng = np.random.default_rng(seed)
    cells, extra = 20000, 40  # genes besides the fitted ones: they make each cell's breadth
    log_library = rng.normal(8.0, 0.5, cells)
    reconstruction = rng.normal(1.0, 0.5, (cells, n_genes)) - 0.3 * (log_library[:, None] - 8.0)  # correlated
    shown = rng.random((cells, extra)) < np.clip(0.5 + 0.3 * (log_library[:, None] - 8.0), 0.05, 0.95)  # deeper: more genes
    log_breadth = np.log(np.maximum(n_genes + shown.sum(1), 1))
    offset = offset + 30.0  # a hidden value is detected (> 0), as in real data
    x = (offset + slope * reconstruction + depth * log_library[:, None] + breadth * log_breadth[:, None]
         + rng.normal(0, 0.1, reconstruction.shape))
    hidden = rng.random(reconstruction.shape) < 0.3
    level = DetectedLevel(n_genes + extra)
    measured = np.concatenate([np.where(hidden, x, 123.0), np.where(shown, 1.0, 0.0)], 1)  # every fitted gene detected
    padded = np.concatenate([reconstruction, np.zeros((cells, extra))], 1)
    level.update(*as_tensors(padded, measured, np.exp(log_library), np.concatenate([hidden, np.zeros_like(shown)], 1),
                             (measured != 0).sum(1)))
    probe_p, probe_l, probe_n = rng.normal(1.0, 0.5, (50, n_genes)), rng.normal(8.0, 0.5, 50), rng.normal(3.1, 0.1, 50)
    expected = offset + slope * probe_p + depth * probe_l[:, None] + breadth * probe_n[:, None]
    probe = np.concatenate([probe_p, np.zeros((50, extra))], 1)
    fitted = level(*as_tensors(probe, np.exp(probe_l), np.exp(probe_n))).numpy()[:, :n_genes]
    # 0.08: the breadth varies little across cells (log sd ~0.13), so its 30-entry prior still pulls a
    # little; the worst draw seen, n_genes=5, slope=1, depth=0, breadth=-1, seed=4469, is 0.055 off
    # (0.033 without the priors), which failed the 0.05 this test had since that prior came in
    np.testing.assert_allclose(fitted, expected, atol=0.08)


def test_few_entries_stay_near_the_reconstruction_and_the_slope_never_falls():
    rng = np.random.default_rng(0)
    level = DetectedLevel(2)
    p = rng.normal(1.0, 0.5, (4, 2))
    x = 1.0 - 3.0 * p  # a steeply falling relation on 4 entries of each gene
    level.update(*as_tensors(p, x, np.full(4, 1000.0), np.ones((4, 2)), np.full(4, 2.0)))
    _, weights, _ = level.coefficients()
    assert (weights[:, 0] >= 0).all()  # never turns the model's ranking of cells upside down
    mean_cell = level(*as_tensors(p.mean(0, keepdims=True), [1000.0], [2.0]))[0]
    torch.testing.assert_close(mean_cell, torch.as_tensor(x.mean(0), dtype=torch.float32))


def test_a_gene_never_hidden_keeps_its_reconstruction_and_the_sums_decay():
    level = DetectedLevel(3)
    values = torch.rand(5, 3, generator=torch.Generator().manual_seed(0))
    library, breadth = torch.full((5,), 500.0), torch.full((5,), 3.0)
    torch.testing.assert_close(level(values, library, breadth), values)  # nothing seen: the reconstruction
    hidden = torch.zeros(5, 3, dtype=torch.bool)
    hidden[:, 0] = True
    level.update(values, values + 1.0, library, hidden, breadth)
    torch.testing.assert_close(level(values, library, breadth)[:, 1:], values[:, 1:])
    # float32 running sums: centred moments are differences of sums, good to ~3e-5 (the default 1e-5
    # failed at some draws: this test was unseeded before, and flaky)
    torch.testing.assert_close(level(values, library, breadth)[:, 0], values[:, 0] + 1.0, rtol=1e-4, atol=1e-4)
    before = level.sums.clone()
    level.update(values, values, library, torch.zeros_like(hidden), breadth)
    torch.testing.assert_close(level.sums, before * DETECTED_DECAY)


@pytest.mark.parametrize("name", ["base", "stochastic"])
def test_training_fits_it_on_hidden_genes_only_and_leaves_the_model_as_it_was(name):
    """The level changes what `impute` returns; the loss, gradients and random stream are untouched."""
    torch.manual_seed(0)
    with_level = build_model(ModelConfig(name=name, size="tiny", mask_fraction=0.5), SPEC)
    without = build_model(ModelConfig(name=name, size="tiny", mask_fraction=0.5, detected_level=False), SPEC)
    assert set(with_level.state_dict()) - set(without.state_dict()) == {"head.detected_level.sums"}
    without.load_state_dict({k: v for k, v in with_level.state_dict().items() if "detected_level" not in k})
    for model in (with_level, without):
        model.train()
        torch.manual_seed(3)
        model(random_batch(1)).loss.backward()
    for mine, theirs in zip(with_level.parameters(), without.parameters()):
        assert torch.equal(mine.grad, theirs.grad)
    assert with_level.head.detected_level.sums[0].sum() > 0  # hidden entries were counted
    batch = random_batch(2)
    with_level.eval(), without.eval()
    frozen = with_level.head.detected_level.sums.clone()
    imputed, plain = with_level.impute(batch), without.impute(batch)
    assert torch.equal(with_level.head.detected_level.sums, frozen)  # evaluation does not move it
    decoded = without.reconstruct(batch)  # without a level: the reconstruction, or the likelihood's expectation
    head = without.head
    torch.testing.assert_close(plain, decoded.expression if name == "base" else
                               head.likelihood.expected_log1p(decoded, head.scale(decoded), detected=True))
    assert not torch.allclose(imputed, plain)


def test_it_stays_float32_under_a_bf16_cast():
    model = build_model(ModelConfig(name="base", size="tiny"), SPEC)
    model.to(torch.bfloat16)
    assert model.head.detected_level.sums.dtype == torch.float32
    copy.deepcopy(model)  # a cast model still copies (Ray and checkpoints do)


@pytest.mark.parametrize("name", ["stochastic", "resource"])
def test_count_models_fit_it_on_hidden_genes_and_keep_their_likelihood_for_the_others(name):
    """A count model's imputed value of a gene hidden in training is the level fitted on its expression;
    a gene never hidden, and every gene of a model saved before count models kept a level, takes the
    expectation over detections under its likelihood, as before."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, size="tiny", mask_fraction=0.5), SPEC)
    batch = random_batch(1)
    model.eval()
    before = model.impute(batch)  # nothing fitted: the likelihood's expectation
    prediction = model.reconstruct(batch)
    torch.testing.assert_close(before, model.head.likelihood.expected_log1p(prediction, model.head.scale(prediction),
                                                                           detected=True))
    # saved before count models kept a level (and before the Poisson's dispersion was measured)
    saved = {key: value for key, value in model.state_dict().items()
             if "detected_level" not in key and not key.endswith("likelihood.moments")}
    model.train()
    model(batch)  # one training step's statistics
    model.eval()
    fitted = model.head.detected_level.sums[0] > 0
    assert fitted.any() and not fitted.all()
    after = model.impute(batch)
    prediction = model.reconstruct(batch)  # the Poisson's expectation moved with its measured dispersion
    expected = model.head.likelihood.expected_log1p(prediction, model.head.scale(prediction), detected=True)
    torch.testing.assert_close(after[:, ~fitted], expected[:, ~fitted])
    assert not torch.allclose(after[:, fitted], before[:, fitted])
    old = build_model(ModelConfig(name=name, size="tiny", mask_fraction=0.5), SPEC)
    old.load_state_dict(saved)  # strict: the missing sums load as zeros
    torch.testing.assert_close(old.eval().impute(batch), before)


def test_sums_saved_before_the_breadth_term_load_and_give_the_same_levels():
    """A run saved with nine sums per gene (library size only) imputes as it did."""
    rng = np.random.default_rng(1)
    p, library = rng.normal(1.0, 0.5, (300, 2)), np.exp(rng.normal(8.0, 0.5, 300))
    x = 0.5 + 0.8 * p - 0.4 * np.log(library)[:, None] + rng.normal(0, 0.1, p.shape)
    level = DetectedLevel(2)
    level.update(*as_tensors(p, x, library, np.ones((300, 2)), np.full(300, 2.0)))
    old = DetectedLevel(2)
    old.load_state_dict({"sums": level.sums[:DetectedLevel.SAVED_BEFORE_BREADTH].clone()})
    _, weights, _ = old.coefficients()
    assert torch.equal(weights[:, 2], torch.zeros(2))  # no breadth term
    two_term = old(*as_tensors(p[:5], library[:5], [7.0] * 5))
    torch.testing.assert_close(two_term, old(*as_tensors(p[:5], library[:5], [70.0] * 5)))  # breadth not read


def test_impute_counts_withheld_genes_as_detected_and_scales_past_unmeasured_ones():
    """Evaluation hides genes by zeroing them: `withheld` keeps the cell's breadth what it was. An input
    lacking genes (`unmeasured`, 0 in x) is counted at the rate of the genes it has, and under a z-score
    neither kind reads as shown, though 0 is not a zero count's value there."""
    from vcell.models.inputs import CellInputs
    from vcell.models.slots import detected_genes

    x = torch.tensor([[1.0, 0.0, 2.0, 0.5], [0.0, 0.0, 3.0, 0.0]])
    withheld = torch.tensor([[False, True, False, False], [True, False, False, False]])
    columns = ModelConfig().columns
    assert detected_genes(CellInputs.from_batch({"x": x}, columns)).tolist() == [3, 1]
    assert detected_genes(CellInputs.from_batch({"x": x, "withheld": withheld}, columns)).tolist() == [4, 2]
    assert detected_genes(CellInputs.from_batch({"x": x.to_sparse_csr()}, columns)).tolist() == [3, 1]
    unmeasured = torch.tensor([[False, True, False, False]] * 2)  # the input lacks gene 1: 3 of 4 measured
    torch.testing.assert_close(detected_genes(CellInputs.from_batch({"x": x, "unmeasured": unmeasured}, columns)),
                               torch.tensor([3 * 4 / 3, 1 * 4 / 3]))
    level = torch.full((4,), -1.0)  # a z-score's zero count
    zscored = x.masked_fill(x == 0, -1.0).masked_fill(unmeasured, 0.0)
    cells = CellInputs.from_batch({"x": zscored, "unmeasured": unmeasured}, columns, level)
    assert not cells.detected[:, 1].any()  # 0 is above the zero level, but unmeasured
    torch.testing.assert_close(detected_genes(cells), torch.tensor([3 * 4 / 3, 1 * 4 / 3]))
    assert cells.take(torch.tensor([1])).unmeasured.shape == (1, 4)


def test_each_running_sum_is_its_product_summed_over_the_hidden_entries():
    """The update sums per-cell factors by a matrix product: each sum must equal the plain definition."""
    generator = torch.Generator().manual_seed(4)
    reconstruction, x = torch.rand(32, 6, generator=generator), torch.rand(32, 6, generator=generator) * 3
    hidden = torch.rand(32, 6, generator=generator) < 0.4
    library, breadth = torch.rand(32, generator=generator) * 1e4 + 50, torch.randint(1, 400, (32,), generator=generator)
    level = DetectedLevel(6)
    level.update(reconstruction, x, library, hidden, breadth)
    level.update(reconstruction, x, library, hidden, breadth)
    values = {"x": x, "p": reconstruction, "l": torch.log(library)[:, None].expand(-1, 6),
              "n": torch.log(breadth.float())[:, None].expand(-1, 6)}
    for row, name in enumerate(DetectedLevel.TERMS):  # "" = the count, "lpx" = l x p x x, ...
        product = math.prod((values[letter] for letter in name), start=torch.ones(32, 6))
        once = (hidden.float() * product).sum(0)
        torch.testing.assert_close(level.sums[row], once * (1 + DETECTED_DECAY), rtol=1e-5, atol=1e-3)


def genes_at_depths(rng: np.random.Generator, entries: list[int], depth_slopes: list[float], cells: int = 600):
    """(reconstruction, measured x, library, hidden mask, detected genes) of genes each hidden at its
    own number of `entries` (cells), with value 2 + 0.8 x reconstruction + its depth slope x log library."""
    n_genes = len(entries)
    log_library = rng.normal(8.0, 0.5, cells)
    reconstruction = rng.normal(1.0, 0.3, (cells, n_genes))
    x = 2.0 + 0.8 * reconstruction + np.asarray(depth_slopes) * (log_library[:, None] - 8.0) + rng.normal(0, 0.05, (cells, n_genes))
    hidden = np.arange(cells)[:, None] < np.asarray(entries)[None, :]
    return reconstruction, x, np.exp(log_library), hidden, np.exp(rng.normal(5.7, 0.1, cells))  # breadth apart from depth


def test_a_rare_gene_takes_the_depth_slope_of_genes_detected_about_as_often():
    """A gene with a few hidden entries is shrunk towards the depth slope of the well-measured genes
    of its detection (the nearest richer decile here), not towards no depth effect."""
    rng = np.random.default_rng(0)
    entries = [6] * 40 + [40] * 40 + [500] * 120  # rare, moderately rare (-0.7 both), common (0)
    slopes = [-0.7] * 80 + [0.0] * 120
    level = DetectedLevel(len(entries))
    level.update(*as_tensors(*genes_at_depths(rng, entries, slopes)))
    _, weights, _ = level.coefficients()
    _, unpooled, _ = level.ridge(torch.tensor(DetectedLevel.PRIOR_SLOPE))
    rare = slice(0, 40)
    # six entries of their own against a prior of ten: the mean is near the slope, each a little off
    assert abs(weights[rare, 1].mean() + 0.7) < 0.15 and (weights[rare, 1] + 0.7).abs().max() < 0.3
    assert unpooled[rare, 1].mean() > -0.4  # towards 0, the old prior
    assert (weights[120:, 1]).abs().max() < 0.05  # common genes keep theirs


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_the_level_follows_a_per_gene_z_score_exactly(seed):
    """Fitted on z-scored values (zero level -mean / sd), the level is the z-score of the level fitted
    on the values themselves: the pooled depth slopes are taken in units of each gene's detected
    level above its zero level, so a gene stretched by 1 / its sd pools like the others."""
    rng = np.random.default_rng(seed)
    entries = list(rng.integers(4, 400, 120))
    slopes = list(rng.uniform(-1.0, 0.2, 120))
    reconstruction, x, library, hidden, breadth = genes_at_depths(rng, entries, slopes)
    mean, sd = rng.uniform(0.0, 2.0, 120), np.exp(rng.uniform(np.log(0.05), np.log(3.0), 120))
    plain, scaled = DetectedLevel(120), DetectedLevel(120, zero_level=-mean / sd)
    plain.update(*as_tensors(reconstruction, x, library, hidden, breadth))
    scaled.update(*as_tensors((reconstruction - mean) / sd, (x - mean) / sd, library, hidden, breadth))
    log_library = rng.normal(8.0, 0.5, 30)
    probe = rng.normal(1.0, 0.3, (30, 120)), np.exp(log_library), np.exp(rng.normal(5.7, 0.1, 30))
    expected = (plain(*as_tensors(*probe)).numpy() - mean) / sd
    got = scaled(*as_tensors((probe[0] - mean) / sd, *probe[1:])).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-3 / sd.min())
