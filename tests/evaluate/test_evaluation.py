"""`vcell evaluate`: metrics with baselines, figures and embeddings in the run folder; `vcell predict`."""

from __future__ import annotations

import json

import anndata as ad
import matplotlib.image
import numpy as np
import pytest
import torch

from vcell.atlas.store import open_atlas
from vcell.cli import main
from vcell.errors import VCellError
from vcell.evaluate.predict import predict_run, untrained_note
from vcell.evaluate.evaluation import evaluate_run, readable, summary_lines
from vcell.evaluate.figures import PLOT_FILES
from vcell.train.checkpoint import CheckpointStore

from tests.train.test_checkpoint import fake_checkpoint

EXPECTED_PLOTS = {
    "embedding_pca.png", "embedding_tsne.png", "metrics_vs_baselines.png", "perturbation_deltas.png",
    "pathway_activity.png", "grn_edges_vs_truth.png", "kinetics.png", "variance_decomposition.png",
    "resource_allocation.png", "scale_contributions.png", "memory_primed_minus_naive.png",
}


@pytest.fixture(scope="module")
def evaluated(trained_folder, tmp_path_factory):
    import shutil

    folder = shutil.copytree(trained_folder, tmp_path_factory.mktemp("evaluated") / "tiny")
    (folder / "metrics.json").write_text(json.dumps({"run": "tiny", "steps": 60}))  # training's keys stay
    # an earlier evaluation's figure this one does not draw (the folder has no history.csv), and the user's own
    (folder / "plots").mkdir()
    (folder / "plots" / "training_curves.png").write_bytes(b"an older model's curves")
    (folder / "plots" / "my_figure.png").write_bytes(b"the user's")
    results = evaluate_run(folder, progress=False, overrides={"expression": ["imputed", "denoised"]})
    return folder, results


def test_metrics_json_has_every_section_with_baselines(evaluated):
    folder, results = evaluated
    metrics = json.loads((folder / "metrics.json").read_text())  # strict JSON: NaN written as null
    assert metrics["run"] == "tiny" and metrics["evaluation"]["data"]["held_out_split"] == "test"
    evaluation = metrics["evaluation"]
    embedding = evaluation["embedding"]
    assert set(embedding["model"]) == set(embedding["baselines"]["pca"]) == {
        "knn_accuracy", "ari", "nmi", "silhouette", "ilisi", "batch_knn_accuracy"}  # the simulator has batches
    assert all(0 <= v <= 1 for v in embedding["baselines"]["pca"].values())
    reconstruction = evaluation["reconstruction"]
    assert set(reconstruction["baselines"]) == {"gene_mean", "pca", "nearest_cells", "nearest_cells_detected",
                                                "cell_type_mean", "cell_type_detected_mean", "cell_type_detected_depth",
                                                "cell_type_nb_detected"}
    assert reconstruction["hidden_entries"] > 0
    assert reconstruction["log_likelihood"]["model"] < 0
    assert set(reconstruction["log_likelihood"]["baselines"]) == {"library_size_nb", "cell_type_nb"}
    perturbation = evaluation["perturbation"]
    unseen = perturbation["unseen_perturbations"]
    assert len(unseen["perturbations"]) == 1  # the one held out whole
    for comparison in ("vs_observed", "vs_truth"):
        assert set(unseen[comparison]["model"]) == {"pearson_delta", "pearson_delta_top20", "mae", "discrimination_l1",
                                                    "de_overlap"}
        assert {"control", "mean_perturbation", "linear"} <= set(unseen[comparison]["baselines"])
        assert set(unseen[comparison]["baselines"]["linear"]) == set(unseen[comparison]["model"])
    assert perturbation["seen_perturbations"]["vs_observed"]["baselines"]["control"]["pearson_delta"] == 0
    # a seen perturbation's own training cells are a baseline; an unseen one has none
    assert "training_pseudobulk" in perturbation["seen_perturbations"]["vs_truth"]["baselines"]
    assert "training_pseudobulk" not in unseen["vs_observed"]["baselines"]
    assert "linear" in perturbation["seen_perturbations"]["vs_truth"]["baselines"]
    assert perturbation["additive"].startswith("skipped")  # no combinations in the data: said so, not faked
    enhancements = evaluation["enhancements"]
    assert set(enhancements) == {"hierarchical", "temporal", "regulatory", "stochastic", "resource", "multiscale", "memory"}
    assert "skipped" in enhancements["multiscale"]  # no truth for it: said so
    for name in ("regulatory", "hierarchical", "temporal", "stochastic", "resource", "memory"):
        assert "model" in enhancements[name] and "baselines" in enhancements[name], name
    calibration = enhancements["stochastic"]  # the strongest library-size-only reference is an NB, beside the Poisson
    assert set(calibration["baselines"]) == {"library_size_poisson", "library_size_nb"}
    for scores in (calibration["model"], *calibration["baselines"].values()):
        assert 0 <= scores["coverage_90"] <= 1
    # the strongest pathway baselines: what the cell type explains, alone and with each cell's own deviation
    # shrunk as the read-out shrinks its own (the demo's full model is level with the latter over seeds)
    assert {"projection_of_observed", "gene_set_mean", "cell_type_mean_of_projection",
            "cell_type_mean_plus_shrunk_deviation"} == set(enhancements["hierarchical"]["baselines"])
    resource = enhancements["resource"]  # what the atlas itself says about the shift, beside the model
    assert resource["observed_shift_standard_error"] is None or resource["observed_shift_standard_error"] > 0


def test_a_gaussian_model_is_scored_against_the_count_baselines_too(pretrained_folder):
    """`base` reads no counts, but its atlas has them: its hidden genes are scored against the type NB at
    each cell's depth as well, and the counts in its batches change nothing it computes."""
    import torch

    from vcell.evaluate.export import open_trained
    from vcell.evaluate.heldout import held_out_cells
    from vcell.evaluate.representation import reconstruction_metrics

    trained = open_trained(pretrained_folder)
    assert trained.model.head.likelihood is None and "counts" not in trained.model.spec.inputs
    data = held_out_cells(trained, max_cells=300, seed=0)
    assert "counts" in data.test and "counts" in data.train
    assert torch.equal(data.test["counts"].sum(1), data.test["library_size"])  # raw counts of every model gene
    section = reconstruction_metrics(data)
    assert "cell_type_nb_detected" in section["baselines"] and "log_likelihood" not in section
    without = {key: value for key, value in data.test.items() if key != "counts"}
    torch.testing.assert_close(trained.model.impute(data.test), trained.model.impute(without), rtol=0, atol=0)


def test_every_plot_is_written_and_readable(evaluated):
    folder, results = evaluated
    written = {path.split("/")[-1] for path in results["plots"]}
    assert written == EXPECTED_PLOTS and PLOT_FILES == EXPECTED_PLOTS | {"training_curves.png"}
    # the earlier evaluation's figure went (it would pass for this model's); the user's file stayed
    assert {path.name for path in (folder / "plots").iterdir()} == written | {"my_figure.png"}
    for name in written:
        image = matplotlib.image.imread(folder / "plots" / name)
        assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 0, name


def test_embeddings_of_every_atlas_cell_are_written(evaluated, evaluation_atlas):
    folder, results = evaluated
    table = ad.read_h5ad(folder / results["embeddings"])
    assert table.n_obs == open_atlas(evaluation_atlas).n_cells and "X_vcell" in table.obsm


def test_summary_lists_model_and_baselines(evaluated):
    lines = summary_lines(evaluated[1])
    assert any(line.startswith("embedding: knn_accuracy") and "pca" in line for line in lines)
    assert any("unseen perturbations: pearson_delta" in line for line in lines)
    assert any(line.startswith("unseen perturbations vs truth: pearson_delta ") for line in lines)
    assert any(line.startswith("reconstruction: log_likelihood") and "library_size_nb" in line for line in lines)


def test_each_perturbation_group_lists_its_truth_rows_before_the_noisy_held_out_ones():
    scores = {"model": {"pearson_delta": 0.1}, "baselines": {"mean_perturbation": {"pearson_delta": 0.06}}}
    group = {"vs_observed": scores, "vs_truth": scores}
    results = {"data": {}, "perturbation": {"seen_perturbations": group, "unseen_perturbations": group}}
    metrics = [line.split(":")[0] for line in summary_lines(results)[2:]]
    assert metrics == ["unseen perturbations vs truth", "unseen perturbations",
                       "seen perturbations vs truth", "seen perturbations"]


def test_a_comparison_the_noise_decides_is_flagged_in_the_summary():
    from vcell.evaluate.perturbation import noise_bound

    noisy = {"truth": {"pearson_delta": 0.03}, "mean_perturbation": {"pearson_delta": 0.06}}
    assert "true delta itself scores no better than a baseline on pearson_delta 0.030 vs mean_perturbation 0.060" in (
        noise_bound(noisy))
    assert noise_bound({"truth": {"pearson_delta": 0.2}, "mean_perturbation": {"pearson_delta": 0.1}}) is None
    # each metric on its own, lower MAE is better, a baseline's undefined score is no rival
    mixed = {"truth": {"pearson_delta": 0.2, "mae": 0.15, "de_overlap": 0.05},
             "control": {"pearson_delta": 0.0, "mae": 0.14, "de_overlap": float("nan")},
             "linear": {"pearson_delta": 0.1, "mae": 0.16, "de_overlap": 0.04}}
    assert noise_bound(mixed).count(" vs ") == 1 and "mae 0.150 vs control 0.140" in noise_bound(mixed)
    scores = {"model": {"pearson_delta": 0.1}, "baselines": {"mean_perturbation": {"pearson_delta": 0.06}}}
    results = {"data": {}, "perturbation": {"seen_perturbations": {"vs_observed": scores, "noise_bound": noise_bound(noisy)},
                                            "unseen_perturbations": {"vs_observed": scores}},
               "enhancements": {"resource": {"model": {"shift_abs_error": 0.01}, "baselines": {}, "noise_bound": "cannot"}}}
    notes = [line for line in summary_lines(results) if line.startswith("note:")]
    assert len(notes) == 2 and notes[0].startswith("note: seen perturbations: the held-out pseudobulks are mostly")
    assert notes[1] == "note: resource: cannot"


def test_the_training_pseudobulk_of_a_cell_type_without_enough_cells_is_the_mean_perturbation():
    from types import SimpleNamespace

    from vcell.evaluate.perturbation import DeltaBuilder

    builder = DeltaBuilder.__new__(DeltaBuilder)  # only the training deltas matter here
    builder.data = SimpleNamespace(train={"x": np.zeros((4, 3))})
    builder.training = {(0, 5): np.array([1.0, 2.0, 3.0])}
    builder.mean_delta_by_type = {0: np.full(3, 9.0), 1: np.full(3, 0.5)}
    assert builder.training_pseudobulk(0, 5).tolist() == [1.0, 2.0, 3.0]  # its own training cells
    assert builder.training_pseudobulk(1, 5).tolist() == [0.5] * 3  # too few of them in type 1
    assert builder.training_pseudobulk(2, 5).tolist() == [0.0] * 3  # a type no perturbation was trained in


def test_another_atlas_is_split_in_half_and_said_so(trained_folder, evaluation_atlas, tmp_path):
    import shutil

    other = shutil.copytree(evaluation_atlas, tmp_path / "other.zarr")
    folder = shutil.copytree(trained_folder, tmp_path / "run")
    results = evaluate_run(folder, other, progress=False, overrides={"plots": False, "embeddings": "none",
                                                                    "enhancements": False})
    assert results["data"]["held_out_split"] == "half"
    assert any("not the training atlas" in note for note in results["notes"])
    assert not (folder / "plots").exists() and not (folder / "embeddings.h5ad").exists()


def test_evaluate_refuses_runs_without_a_finished_model(tmp_path):
    with pytest.raises(VCellError, match="neither a run with a complete checkpoint nor an exported model"):
        evaluate_run(tmp_path)
    fake_checkpoint(CheckpointStore(tmp_path), 4)  # complete, but the run never exported its model
    with pytest.raises(VCellError, match="did not finish"):
        evaluate_run(tmp_path)
    assert main(["evaluate", str(tmp_path / "nothing"), "--quiet"]) == 2


def test_predict_moves_basal_cells_to_a_perturbation(trained_folder, evaluation_atlas, tmp_path):
    atlas = open_atlas(evaluation_atlas)
    perturbation = atlas.attrs["obs_categories"]["perturbation"][0]
    cell_type = atlas.attrs["obs_categories"]["cell_type"][0]
    out = predict_run(trained_folder, perturbation=perturbation, cell_type=cell_type, out=tmp_path / "p.h5ad", cells=40)
    table = ad.read_h5ad(out)
    assert table.n_obs == 40 and table.n_vars == 100
    assert (table.obs["cell_type"].astype(str) == cell_type).all() and (table.obs["perturbation"] == "control").all()
    assert (table.obs["predicted_perturbation"] == perturbation).all()
    delta = table.X - table.layers["control"]
    np.testing.assert_allclose(table.var["mean_delta"].to_numpy(), delta.mean(0), atol=1e-5)
    assert np.abs(delta).max() > 0 and "expected_counts" in table.layers
    assert len(table.uns["vcell_predict"]["top_genes"]) == 20


def test_predict_errors_name_the_bad_value(trained_folder, tmp_path):
    with pytest.raises(VCellError, match="perturbation 'NOPE' is not one the model knows"):
        predict_run(trained_folder, perturbation="NOPE", cell_type="type_0", out=tmp_path / "p.h5ad")
    with pytest.raises(VCellError, match="combinations are not supported"):
        predict_run(trained_folder, perturbation="A,B", cell_type="type_0", out=tmp_path / "p.h5ad")
    assert main(["predict", str(trained_folder), "--cell-type", "no_such_type", "--out", str(tmp_path / "q.h5ad")]) == 2
    assert not list(tmp_path.iterdir())


def test_evaluation_overrides_are_validated(trained_folder):
    with pytest.raises(VCellError, match="evaluate.max_cells"):
        evaluate_run(trained_folder, progress=False, overrides={"max_cells": -5})


def test_existing_plots_lists_what_was_written_in_the_order_asked(evaluated, tmp_path):
    from vcell.evaluate.figures import existing_plots

    folder, results = evaluated
    # vcell's figures only: the user's my_figure.png beside them is not one of the evaluation's
    assert [path.name for path in existing_plots(folder)] == sorted(path.split("/")[-1] for path in results["plots"])
    assert existing_plots(folder, "kinetics.png", "no_such.png", "embedding_pca.png") == [
        folder / "plots" / "kinetics.png", folder / "plots" / "embedding_pca.png"]
    assert existing_plots(tmp_path, "kinetics.png") == [] and existing_plots(tmp_path) == []  # plots off


def test_comparison_rows_put_runs_beside_shared_baselines():
    from vcell.evaluate.evaluation import comparison_rows

    def evaluation(knn: float, with_grn: bool) -> dict:
        results = {"embedding": {"model": {"knn_accuracy": knn, "ari": knn / 2}, "baselines": {"pca": {"knn_accuracy": 0.9, "ari": 0.8}}}}
        if with_grn:
            results["enhancements"] = {"regulatory": {"model": {"sign_agreement": 0.7}, "baselines": {"random": {"sign_agreement": 0.5}}}}
        return results

    rows = dict(comparison_rows({"base": evaluation(0.6, False), "regulatory": evaluation(0.8, True)}))
    assert rows["embedding: knn_accuracy"] == {"base": 0.6, "regulatory": 0.8, "pca": 0.9}
    assert np.isnan(rows["regulatory: sign_agreement"]["base"])  # base has no GRN: NaN, not left out
    assert rows["regulatory: sign_agreement"]["random"] == 0.5
    chosen = comparison_rows({"base": evaluation(0.6, False)}, ["embedding: ari", "no such metric"])
    assert chosen == [("embedding: ari", {"base": 0.3, "pca": 0.8})]


def test_small_values_keep_three_significant_digits_so_a_win_stays_visible():
    scores = {"model": {"mae": 0.00094}, "baselines": {"control": {"mae": 0.00148}}}
    results = {"data": {}, "perturbation": {"seen_perturbations": {"vs_truth": scores}}}
    row = next(line for line in summary_lines(results) if line.startswith("seen perturbations vs truth: mae"))
    assert "0.00094" in row and "control 0.00148" in row
    assert readable(0.5) == "0.500" and readable(0.0) == "0.000" and readable(-0.004) == "-0.004"


def test_the_evaluation_writes_the_expression_layers_asked_for(evaluated, evaluation_atlas):
    from tests.evaluate.test_embed import model_view

    folder, results = evaluated
    table = ad.read_h5ad(folder / results["embeddings"])
    assert set(table.layers) == {"vcell_imputed", "vcell_denoised"}
    for layer, view in (("imputed", "impute"), ("denoised", "denoise")):
        np.testing.assert_allclose(table.layers[f"vcell_{layer}"], model_view(folder, evaluation_atlas, view), atol=1e-5)


def test_expression_layers_are_the_ones_embed_writes_and_need_an_embeddings_file(trained_folder):
    from typing import get_args

    from vcell.cli.trained_model import EXPRESSION_CHOICES
    from vcell.config.evaluate import EvaluateConfig
    from vcell.evaluate.embed import EXPRESSION_LAYERS

    (literal,) = get_args(EvaluateConfig.model_fields["expression"].annotation)
    assert list(get_args(literal)) == EXPRESSION_CHOICES == list(EXPRESSION_LAYERS)
    with pytest.raises(VCellError, match="evaluate.embeddings=none writes none"):
        evaluate_run(trained_folder, progress=False, overrides={"embeddings": "none", "expression": ["denoised"]})
    with pytest.raises(VCellError, match="expression"):
        evaluate_run(trained_folder, progress=False, overrides={"expression": ["raw"]})


def test_predict_warns_when_the_perturbation_moves_nothing(capsys):
    """A perturbation no training cell carried, on a model with no other route for it: `vcell
    predict` says the prediction is no change (printed, and in uns["vcell_predict"]["note"]), or, its
    gene known and a knock-down measured, that the gene is knocked in silico."""
    from types import SimpleNamespace

    from tests.models.test_zoo import SPEC, random_batch
    from vcell.config.model import ModelConfig
    from vcell.models.zoo import build_model

    model = build_model(ModelConfig(name="base", size="tiny", in_silico_knock=False), SPEC)
    batch = random_batch(0)
    batch["perturbation"] = torch.where(batch["perturbation"] == 5, 4, batch["perturbation"])
    model.train()
    model(batch)
    trained = SimpleNamespace(model=model.eval())
    assert untrained_note(trained, 4, "P4") is None and untrained_note(trained, 0, None) is None
    note = untrained_note(trained, 5, "P5")
    assert "'P5' was in no training cell" in note and "no change" in note
    assert f"warning: {note}" in capsys.readouterr().out
    from tests.models.test_knock import measured_model
    knocking = SimpleNamespace(model=measured_model())  # its knock-down measured: P5's gene knocked in silico
    gene = SPEC.gene_ids[int(SPEC.perturbation_gene[5])]
    note = untrained_note(knocking, 5, "P5")
    assert f"moves its gene {gene} in silico to 0.50 x its level" in note and "no change" not in note
