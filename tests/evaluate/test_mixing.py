"""Batch mixing (graph iLISI): known answers, a per-cell reference of scib-metrics' bisection, properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcell.evaluate.mixing import ilisi, inverse_simpson, lisi, neighbour_graph, neighbour_weights


def scattered(n: int, dims: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dims))


def test_fully_separated_batches_score_exactly_zero():
    rng = np.random.default_rng(0)
    batches = np.repeat([0, 1, 2], 200)  # each batch has more than k = 90 cells: no neighbour crosses
    embedding = scattered(600, 8, 1) + 1000.0 * np.eye(8)[batches]
    assert ilisi(embedding, batches) == 0.0
    assert ilisi(embedding, rng.permutation(batches)) > 0.75  # same points, labels shuffled: mixed


@pytest.mark.parametrize(("n_batches", "floor"), [(2, 0.85), (3, 0.78)])
def test_randomly_mixed_batches_score_near_one(n_batches, floor):
    # batch independent of position: the finite neighbourhood (perplexity 30) only samples the batches
    batches = np.random.default_rng(2).integers(0, n_batches, 1500)
    assert floor < ilisi(scattered(1500, 10, 3), batches) <= 1.0


def test_partial_mixing_lies_between():
    batches = np.repeat([0, 1], 400)
    points = scattered(800, 6, 4)
    scores = [ilisi(points + shift * np.eye(6)[batches], batches) for shift in (0.0, 1.0, 1.5, 2.0, 50.0)]
    assert scores == sorted(scores, reverse=True)  # moving the batches apart lowers the score
    assert scores[0] > 0.85 and scores[-1] == 0.0 and 0.05 < scores[3] < scores[2] < scores[1] < 0.85


def test_unknown_batches_are_left_out_and_one_batch_is_undefined():
    points = scattered(300, 4, 5)
    batches = np.random.default_rng(6).integers(0, 2, 300)
    with_unknown = np.where(np.arange(300) < 100, -1, batches)
    assert ilisi(points, with_unknown) == ilisi(points[100:], batches[100:])
    assert np.isnan(ilisi(points, np.zeros(300, dtype=int)))


def test_inverse_simpson_counts_effective_labels():
    uniform = np.full((4, 6), 1 / 6)
    balanced = np.tile([0, 1, 2, 0, 1, 2], (4, 1))
    assert np.allclose(inverse_simpson(uniform, balanced, 3), 3.0)
    assert np.allclose(inverse_simpson(uniform, np.zeros((4, 6), dtype=int), 3), 1.0)
    # weights 1/2, 1/4, 1/4 on labels a, b, b: 1 / (0.25 + 0.25) = 2
    assert np.allclose(inverse_simpson(np.array([[0.5, 0.25, 0.25]]), np.array([[0, 1, 1]]), 2), 2.0)


def test_neighbour_weights_reach_the_perplexity():
    distances, _ = neighbour_graph(scattered(500, 5, 7), 90)
    weights = neighbour_weights(distances, 30.0)
    assert weights.shape == (500, 90)
    assert np.allclose(weights.sum(1), 1.0)
    perplexity = np.exp(-(weights * np.log(np.maximum(weights, 1e-300))).sum(1))
    assert np.allclose(perplexity, 30.0, rtol=1e-3)


def test_neighbour_graph_drops_the_cell_itself_even_among_duplicates():
    points = np.array([[0.0], [0.0], [0.0], [5.0], [6.0]])
    distances, indices = neighbour_graph(points, 2)
    assert all(row not in indices[row] for row in range(5))
    assert np.allclose(distances[:3], 0.0)  # the duplicates are each other's nearest


def reference_lisi(embedding: np.ndarray, labels: np.ndarray, k: int, perplexity: float) -> np.ndarray:
    """scib-metrics' per-cell algorithm, one cell at a time and unshifted (beta from 1, doubled or
    halved until bracketed, then bisected; stop at |H - log perplexity| <= 1e-5 or 50 tries)."""
    distances, indices = neighbour_graph(embedding, k)
    out = []
    for row, row_indices in zip(distances, indices):
        beta, low, high = 1.0, -np.inf, np.inf
        for tries in range(51):
            raw = np.exp(-row * beta)
            weights = raw / raw.sum()
            entropy = np.log(raw.sum()) + beta * (row * raw).sum() / raw.sum()
            excess = entropy - np.log(perplexity)
            if abs(excess) <= 1e-5 or tries == 50:
                break
            if excess > 0:
                low, beta = beta, beta * 2 if high == np.inf else (beta + high) / 2
            else:
                high, beta = beta, beta / 2 if low == -np.inf else (beta + low) / 2
        shares = np.bincount(labels[row_indices], weights=weights, minlength=labels.max() + 1)
        out.append(1 / (shares**2).sum())
    return np.array(out)


def test_matches_the_per_cell_reference():
    points = scattered(250, 3, 8)  # small distances: the unshifted reference does not underflow
    labels = np.random.default_rng(9).integers(0, 3, 250)
    assert np.allclose(lisi(points, labels, 30, 10.0), reference_lisi(points, labels, 30, 10.0), rtol=1e-4)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 150), dims=st.integers(1, 5), n_batches=st.integers(1, 4), seed=st.integers(0, 1000))
def test_any_size_gives_a_score_in_range(n, dims, n_batches, seed):
    rng = np.random.default_rng(seed)
    points, batches = rng.normal(size=(n, dims)), rng.integers(0, n_batches, n)
    per_cell = lisi(points, batches)
    assert per_cell.shape == (n,)
    assert np.all(per_cell >= 1 - 1e-9) and np.all(per_cell <= len(np.unique(batches)) + 1e-9)
    score = ilisi(points, batches)
    if len(np.unique(batches)) < 2:
        assert np.isnan(score)
    else:
        assert 0.0 <= score <= 1.0
        relabelled = ilisi(points, (batches + 1) * 7)  # batch names do not matter
        assert relabelled == pytest.approx(score)


# ---------------------------------------------------------------- in the evaluation's embedding section

@pytest.fixture(scope="module")
def held_out(trained_folder):
    from vcell.evaluate.export import open_trained
    from vcell.evaluate.heldout import held_out_cells

    trained = open_trained(trained_folder)
    return held_out_cells(trained, max_cells=400, seed=0)


def test_embedding_section_scores_batch_mixing_for_model_and_pca(held_out):
    from vcell.evaluate.representation import embedding_metrics

    section, _ = embedding_metrics(held_out)
    mixing = section["batch_mixing"]
    assert mixing["column"] == "batch" and mixing["batches"] >= 2
    for scores in (section["model"], section["baselines"]["pca"]):
        assert 0.0 <= scores["ilisi"] <= 1.0 and 0.0 <= scores["batch_knn_accuracy"] <= 1.0
    # shuffled reference batches: about one in `batches` right (the floor a mixed embedding reaches)
    assert abs(mixing["batch_knn_accuracy_if_mixed"] - 1 / mixing["batches"]) < 0.15


def test_atlas_without_the_batch_column_is_scored_without_mixing(held_out):
    from vcell.evaluate.representation import embedding_metrics

    columns = held_out.trained.config.model.columns
    with_batch, _ = embedding_metrics(held_out)
    held_out.trained.config.model.columns = columns.model_copy(update={"batch": "no_such_column"})
    try:
        section, _ = embedding_metrics(held_out)
    finally:
        held_out.trained.config.model.columns = columns
    assert section["batch_mixing"].startswith("skipped: the atlas has no batch column")
    assert set(section["model"]) == {"knn_accuracy", "ari", "nmi", "silhouette"}
    # the run's model reads the batch (model.batch_covariate: auto): without the column its cells are
    # encoded without their batch offsets, so the embedding moves a little but is still scored
    assert abs(section["model"]["knn_accuracy"] - with_batch["model"]["knn_accuracy"]) < 0.1


def test_the_batch_role_is_not_part_of_a_runs_identity():
    from vcell.config import load_config
    from vcell.train.run import config_diff, config_hash

    config = load_config(None, ["model.size=tiny", "model.batch_covariate=false"])
    saved = config.model_dump(mode="json")
    del saved["model"]["columns"]["batch"]  # a run trained before the key existed
    assert config_diff(saved, config) == []
    assert config_hash(config) == config_hash(load_config(None, ["model.size=tiny", "model.batch_covariate=false",
                                                                 "model.columns.batch=donor"]))
    for reads in ("true", "auto"):  # ... unless the model reads it
        covariate = load_config(None, ["model.size=tiny", f"model.batch_covariate={reads}"])
        assert config_hash(covariate) != config_hash(load_config(None, ["model.size=tiny", "model.columns.batch=donor",
                                                                        f"model.batch_covariate={reads}"]))


def test_a_run_saved_before_the_batch_covariate_existed_did_not_read_the_batch():
    """`model.batch_covariate` defaults to auto, which reads the batch: a run saved without the key ran
    without it, so the default is a change for that run (named, with the way back), not an upgrade."""
    from vcell.config import load_config
    from vcell.train.run import config_diff

    config = load_config(None, ["model.size=tiny"])
    saved = config.model_dump(mode="json")
    del saved["model"]["batch_covariate"]
    assert config_diff(saved, config) == ["model.batch_covariate: False -> 'auto'"]
    assert config_diff(saved, load_config(None, ["model.size=tiny", "model.batch_covariate=false"])) == []
