"""Every plot writes a real, non-blank PNG atomically, copes with NaN and large inputs, and leaves no
figure open in pyplot."""

from __future__ import annotations

import matplotlib.figure
import matplotlib.image
import matplotlib.pyplot  # imported on purpose: the plots must not register figures with it
import numpy as np
import pytest

from vcell.evaluate import plots_model
from vcell.evaluate.plots import embedding_panels, training_curves
from vcell.evaluate.plots_model import curves, heatmap, metric_bars, scatter_against, stacked_bars


def assert_real_png(path, folder) -> None:
    """A readable RGB(A) image of some size with more than one colour, no temp file beside it, no open figure."""
    assert path.exists() and path.parent == folder
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 200 and image.shape[1] > 200
    assert (image != image[0, 0]).any(axis=2).mean() > 0.02  # not blank: some pixels differ from the background
    assert [file.name for file in folder.iterdir() if file.name.endswith(".tmp")] == []
    assert matplotlib.pyplot.get_fignums() == []


def history(n_steps: int = 30, *, with_validation: bool = True) -> list[dict[str, float]]:
    rows = []
    for step in range(1, n_steps + 1):
        row = {"step": step, "time": step * 0.5, "lr": 1e-3, "cells_per_s": 900.0, "gpu_memory_gb": 3.0, "mfu": 0.2,
               "train/loss": 3.0 / step, "train/reconstruction": 1.2 / step, "train/response": 0.5 - 0.01 * step}
        if with_validation and step % 10 == 0:
            row.update({"val/loss": 3.3 / step, "val/reconstruction": float("nan")})
        rows.append(row)
    return rows


def test_training_curves(tmp_path):
    assert_real_png(training_curves(history(), tmp_path / "curves.png"), tmp_path)


def test_training_curves_without_validation_or_steps(tmp_path):
    rows = [{key: value for key, value in row.items() if key != "step"} for row in history(with_validation=False)]
    assert_real_png(training_curves(rows, tmp_path / "train_only.png"), tmp_path)


def test_training_curves_needs_a_loss_column(tmp_path):
    with pytest.raises(ValueError, match="loss columns"):
        training_curves([{"step": 1, "lr": 1e-3}], tmp_path / "none.png")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_embedding_panels_with_many_categories_missing_values_and_a_continuous_colouring(tmp_path):
    rng = np.random.default_rng(0)
    n_cells = 3_000
    coordinates = rng.normal(size=(n_cells, 2))
    coordinates[:5] = np.nan  # cells without coordinates are left out, not drawn at the origin
    codes = rng.integers(-1, 25, n_cells)  # 25 categories (the rarest become "other") and missing
    score = rng.normal(size=n_cells)
    score[::7] = np.nan
    colourings = {"cell type": (codes, [f"type {index}" for index in range(25)]), "score": (score, None)}
    path = embedding_panels(coordinates, colourings, "PCA of latent", tmp_path / "embedding.png",
                            axis_labels=("PC 1", "PC 2"))
    assert_real_png(path, tmp_path)


def test_embedding_panels_with_200_thousand_points(tmp_path):
    rng = np.random.default_rng(1)
    coordinates = rng.normal(size=(200_000, 2))
    codes = rng.integers(0, 5, 200_000)
    path = embedding_panels(coordinates, {"donor": (codes, list("ABCDE"))}, "t-SNE", tmp_path / "large.png")
    assert_real_png(path, tmp_path)


def test_embedding_panels_rejects_codes_outside_the_categories(tmp_path):
    with pytest.raises(ValueError, match="category codes"):
        embedding_panels(np.zeros((3, 2)), {"type": (np.array([0, 1, 2]), ["a", "b"])}, "t", tmp_path / "bad.png")


def test_heatmap_with_missing_cells_and_many_columns(tmp_path):
    rng = np.random.default_rng(2)
    matrix = rng.normal(size=(6, 80))
    matrix[1, 3] = np.nan
    path = heatmap(matrix, [f"cell type {index}" for index in range(6)], [f"pathway {index}" for index in range(80)],
                   "Pathway activity", "mean activity (z-score)", tmp_path / "heatmap.png")
    assert_real_png(path, tmp_path)
    small = heatmap(np.abs(matrix[:3, :4]), list("abc"), list("wxyz"), "Small", "count", tmp_path / "small.png",
                    centre_zero=False)
    assert_real_png(small, tmp_path)


def test_scatter_against_with_groups_nan_and_subsampling(tmp_path, monkeypatch):
    monkeypatch.setattr(plots_model, "MAX_SCATTER_POINTS", 5_000)  # the 200k cap, scaled down to stay fast
    rng = np.random.default_rng(3)
    truth = rng.normal(size=20_000)  # over the cap: a subset is drawn, r still uses every point
    predicted = truth + rng.normal(scale=0.5, size=truth.size)
    predicted[:100] = np.nan
    groups = {"regulated": np.abs(truth) > 2, "targets": rng.random(truth.size) < 0.01}
    path = scatter_against(truth, predicted, "true delta (log fold change)", "predicted delta (log fold change)",
                           "Predicted vs true", tmp_path / "scatter.png", groups=groups)
    assert_real_png(path, tmp_path)
    plain = scatter_against(np.arange(50.0), -np.arange(50.0), "x", "y", "No diagonal", tmp_path / "plain.png",
                            diagonal=False)
    assert_real_png(plain, tmp_path)


def test_curves_with_reference_and_a_gap(tmp_path):
    hours = np.linspace(0, 24, 25)
    predicted = {"FOS": np.exp(-hours / 3), "MX1": 1 - np.exp(-hours / 8)}
    predicted["MX1"][5] = np.nan
    truth = {"FOS": np.exp(-hours / 2.5), "MX1": 1 - np.exp(-hours / 6), "IRF1": np.sin(hours / 8)}
    path = curves(hours, predicted, "hours after stimulus", "expression (log1p counts)", "Kinetics",
                  tmp_path / "kinetics.png", reference=truth)
    assert_real_png(path, tmp_path)


def test_stacked_bars_with_missing_and_negative_parts(tmp_path):
    shares = {"extrinsic": np.array([0.6, 0.3, np.nan, -0.1]), "intrinsic": np.array([0.4, 0.7, np.nan, 0.5])}
    path = stacked_bars(["housekeeping", "cell cycle", "no genes", "interferon"], shares, "Variance decomposition",
                        "share of variance", tmp_path / "stacked.png")
    assert_real_png(path, tmp_path)


def test_metric_bars_with_missing_values(tmp_path):
    rows = [("Pearson r", {"model": 0.7, "PCA": 0.4, "mean": 0.1}), ("AUPRC", {"model": 0.3, "PCA": float("nan")}),
            ("log-likelihood", {"model": -812.0, "PCA": -1040.0, "mean": -1500.0})]
    assert_real_png(metric_bars(rows, "Model against baselines", tmp_path / "metrics.png"), tmp_path)


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = metric_bars([("r", {"model": 0.5})], "first", tmp_path / "metrics.png")
    before = path.read_bytes()

    def fail_half_way(figure, stream, **options):
        stream.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail_half_way)
    with pytest.raises(OSError, match="disk full"):
        metric_bars([("r", {"model": 0.9})], "second", path)
    assert path.read_bytes() == before
    assert [file.name for file in tmp_path.iterdir()] == ["metrics.png"]


def test_empty_inputs_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="nothing to plot"):
        metric_bars([], "nothing", tmp_path / "metrics.png")
    with pytest.raises(ValueError, match="nothing to plot"):
        embedding_panels(np.zeros((3, 2)), {}, "nothing", tmp_path / "embedding.png")
