"""`vcell embed`: every input cell in order, deterministic, genes aligned, clear errors."""

from __future__ import annotations

from types import SimpleNamespace

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from vcell.atlas.store import open_atlas
from vcell.cli import main
from vcell.data.epoch_plan import Blocks
from vcell.data.reader import AtlasReader, read_window
from vcell.evaluate.cells import atlas_obs
from vcell.evaluate.embed import embed_run, expression_warnings
from vcell.evaluate.export import open_trained
from vcell.errors import VCellError
from vcell.models.zoo import build_model


def atlas_as_anndata(atlas_path) -> ad.AnnData:
    """The atlas's raw counts and obs as one in-memory AnnData (what a user would bring)."""
    atlas = open_atlas(atlas_path)
    blocks = Blocks.from_shards([s["start"] for s in atlas.shards], [s["n_cells"] for s in atlas.shards], 512)
    window, local = read_window(AtlasReader(atlas, []), blocks, np.arange(atlas.n_cells))
    matrix = sp.csr_matrix((window.data.astype(np.float32), window.indices, window.indptr),
                           shape=(len(window.indptr) - 1, atlas.n_genes))[local]
    return atlas_with_genes(atlas_path, matrix)


def atlas_with_genes(atlas_path, matrix) -> ad.AnnData:
    from vcell.data.resolve import atlas_var

    atlas = open_atlas(atlas_path)
    obs = atlas_obs(atlas)
    obs.index = obs.index.astype(str)
    return ad.AnnData(X=matrix, obs=obs, var=atlas_var(atlas)[[]])


@pytest.fixture(scope="module")
def embedded(trained_folder, evaluation_atlas, tmp_path_factory):
    out = tmp_path_factory.mktemp("embed") / "cells.h5ad"
    embed_run(trained_folder, evaluation_atlas, out, batch_size=256, progress=False)
    return ad.read_h5ad(out)


def test_every_atlas_cell_is_embedded_in_order_with_its_statistics(embedded, trained_folder, evaluation_atlas):
    trained = open_trained(trained_folder)
    atlas = open_atlas(evaluation_atlas)
    assert embedded.n_obs == atlas.n_cells
    assert list(embedded.obs_names) == [str(name) for name in atlas_obs(atlas).index]  # atlas order
    latent = trained.config.model.dimensions()[2]
    assert embedded.obsm["X_vcell"].shape == (atlas.n_cells, latent)
    assert np.isfinite(embedded.obsm["X_vcell"]).all()
    spec = trained.model.spec
    assert embedded.obsm["vcell_pathway_activity"].shape == (atlas.n_cells, len(spec.pathway_names))
    assert embedded.uns["vcell"]["columns"]["vcell_pathway_activity"].tolist() == list(spec.pathway_names)
    assert {"vcell_capacity", "vcell_free_share", "cell_type", "perturbation"} <= set(embedded.obs.columns)
    assert {"vcell_dispersion", "vcell_extrinsic_variance_fraction"} <= set(embedded.var.columns)
    assert list(embedded.var_names) == spec.gene_ids
    assert len(embedded.uns["vcell"]["edges"]["weight"]) == len(spec.grn)
    assert embedded.uns["vcell"]["coverage"]["fraction"] == 1.0


def test_embeddings_do_not_depend_on_the_batch_size(embedded, trained_folder, evaluation_atlas, tmp_path):
    out = embed_run(trained_folder, evaluation_atlas, tmp_path / "b7.h5ad", batch_size=7, progress=False)
    other = ad.read_h5ad(out)
    assert list(other.obs_names) == list(embedded.obs_names)
    difference = np.abs(other.obsm["X_vcell"] - embedded.obsm["X_vcell"]).max()
    assert difference < 1e-5, difference  # only float summation order differs
    np.testing.assert_allclose(other.obsm["vcell_pathway_activity"], embedded.obsm["vcell_pathway_activity"], atol=1e-5)


def test_an_h5ad_in_another_cell_and_gene_order_gives_the_same_embeddings(embedded, trained_folder, evaluation_atlas, tmp_path):
    table = atlas_as_anndata(evaluation_atlas)
    rng = np.random.default_rng(0)
    shuffled = table[rng.permutation(table.n_obs), rng.permutation(table.n_vars)].copy()
    shuffled.write_h5ad(tmp_path / "shuffled.h5ad")
    out = ad.read_h5ad(embed_run(trained_folder, tmp_path / "shuffled.h5ad", tmp_path / "out.h5ad", progress=False))
    assert list(out.obs_names) == list(shuffled.obs_names)  # the input's order, not the atlas's
    expected = embedded[out.obs_names].obsm["X_vcell"]
    np.testing.assert_allclose(out.obsm["X_vcell"], expected, atol=1e-5)


def test_missing_genes_read_as_zero_counts_and_coverage_is_reported(trained_folder, evaluation_atlas, tmp_path):
    table = atlas_as_anndata(evaluation_atlas)
    dropped = np.arange(0, table.n_vars, 2)
    keep = np.ones(table.n_vars)
    keep[dropped] = 0
    zeroed = table.copy()
    zeroed.X = sp.csr_matrix(table.X @ sp.diags(keep))
    zeroed.write_h5ad(tmp_path / "zeroed.h5ad")
    partial = zeroed[:, np.setdiff1d(np.arange(table.n_vars), dropped)].copy()
    extra = ad.AnnData(X=sp.csr_matrix((partial.n_obs, 3), dtype=np.float32), obs=partial.obs,
                       var=ad.AnnData(np.zeros((1, 3))).var.set_axis(["NOT_A_GENE_1", "NOT_A_GENE_2", "NOT_A_GENE_3"]))
    ad.concat([partial, extra], axis=1, merge="first").write_h5ad(tmp_path / "partial.h5ad")
    a = ad.read_h5ad(embed_run(trained_folder, tmp_path / "zeroed.h5ad", tmp_path / "a.h5ad", progress=False))
    b = ad.read_h5ad(embed_run(trained_folder, tmp_path / "partial.h5ad", tmp_path / "b.h5ad", progress=False))
    np.testing.assert_allclose(a.obsm["X_vcell"], b.obsm["X_vcell"], atol=1e-5)
    coverage = b.uns["vcell"]["coverage"]
    assert coverage["matched"] == table.n_vars - len(dropped) and coverage["input_genes_unused"] == 3


def test_bad_inputs_get_clear_errors_and_leave_nothing_behind(trained_folder, evaluation_atlas, tmp_path):
    table = atlas_as_anndata(evaluation_atlas)[:50].copy()
    table.var_names = [f"OTHER{i}" for i in range(table.n_vars)]
    table.write_h5ad(tmp_path / "foreign.h5ad")
    with pytest.raises(VCellError, match="none of its 100 genes is in the model's vocabulary"):
        embed_run(trained_folder, tmp_path / "foreign.h5ad", tmp_path / "x.h5ad", progress=False)
    normalised = atlas_as_anndata(evaluation_atlas)[:50].copy()
    normalised.X = normalised.X * 0.37
    normalised.write_h5ad(tmp_path / "normalised.h5ad")
    with pytest.raises(VCellError, match="non-integer"):
        embed_run(trained_folder, tmp_path / "normalised.h5ad", tmp_path / "x.h5ad", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.h5ad", "normalised.h5ad"]
    (tmp_path / "exists.h5ad").write_text("")
    assert main(["embed", str(trained_folder), "--input", str(evaluation_atlas), "--out", str(tmp_path / "exists.h5ad")]) == 2
    assert main(["embed", str(tmp_path), "--out", str(tmp_path / "y.h5ad")]) == 2  # not a run


def test_embed_command_writes_the_file(trained_folder, evaluation_atlas, tmp_path, capsys):
    assert main(["embed", str(trained_folder), "--input", str(evaluation_atlas), "--out", str(tmp_path / "e.h5ad"),
                 "--quiet"]) == 0
    assert "X_vcell" in capsys.readouterr().out
    assert ad.read_h5ad(tmp_path / "e.h5ad").n_obs == open_atlas(evaluation_atlas).n_cells


def test_ray_tasks_embed_spans_with_the_same_result(ray_cluster, embedded, trained_folder, evaluation_atlas, tmp_path,
                                                      monkeypatch):
    from vcell.evaluate import embed_parallel

    monkeypatch.setattr(embed_parallel, "MAX_SPAN_CELLS", 400)  # several spans per worker, the last one short
    out = embed_run(trained_folder, evaluation_atlas, tmp_path / "parallel.h5ad", batch_size=128, tasks=2,
                    progress=False)
    parallel = ad.read_h5ad(out)
    assert not parallel.layers
    assert list(parallel.obs_names) == list(embedded.obs_names)
    np.testing.assert_allclose(parallel.obsm["X_vcell"], embedded.obsm["X_vcell"], atol=1e-5)
    np.testing.assert_allclose(parallel.obs["vcell_capacity"], embedded.obs["vcell_capacity"], rtol=1e-5)
    table = atlas_as_anndata(evaluation_atlas)[::-1].copy()  # an .h5ad input, in reverse order
    table.write_h5ad(tmp_path / "reversed.h5ad")
    reversed_out = ad.read_h5ad(embed_run(trained_folder, tmp_path / "reversed.h5ad", tmp_path / "r.h5ad", tasks=2,
                                          progress=False))
    np.testing.assert_allclose(reversed_out.obsm["X_vcell"], embedded[reversed_out.obs_names].obsm["X_vcell"], atol=1e-5)


def test_a_pretrained_export_embeds_another_atlas_sharing_70_percent_of_its_genes(
        pretrained_folder, finetune_atlases, tmp_path, capsys):
    """Atlas B's cells (30 of the model's genes unmeasured, 30 genes it never saw) embed with the
    model pretrained on atlas A; cell types stay apart in that embedding; too little overlap is refused."""
    from vcell.evaluate.scores import knn_accuracy

    out = tmp_path / "b.h5ad"
    assert main(["embed", str(pretrained_folder), "--input", str(finetune_atlases["b_h5ad"]), "--out", str(out),
                 "--quiet"]) == 0
    assert ("genes: 70 of the model's 100 in the input (70%); 30 unmeasured, 30 input genes not in the model "
            "(ignored)") not in capsys.readouterr().out  # --quiet: no progress lines
    embed_run(pretrained_folder, finetune_atlases["b_h5ad"], tmp_path / "again.h5ad")
    assert "genes: 70 of the model's 100 in the input (70%); 30 unmeasured, 30 input genes not in the model" \
        in capsys.readouterr().out
    embedded = ad.read_h5ad(out)
    assert embedded.n_obs == 1500 and embedded.uns["vcell"]["coverage"]["matched"] == 70
    latent, types = embedded.obsm["X_vcell"], embedded.obs["cell_type"].cat.codes.to_numpy()
    assert knn_accuracy(latent[::2], types[::2], latent[1::2], types[1::2]) > 0.5  # 6 types: chance ~0.17
    assert main(["embed", str(pretrained_folder), "--input", str(finetune_atlases["b_h5ad"]), "--out",
                 str(tmp_path / "refused.h5ad"), "--min-gene-overlap", "0.8"]) == 2
    assert "below the minimum overlap of 80%" in capsys.readouterr().err
    assert not (tmp_path / "refused.h5ad").exists()


@pytest.fixture(scope="module")
def expressed(trained_folder, evaluation_atlas, tmp_path_factory):
    out = tmp_path_factory.mktemp("embed") / "expressed.h5ad"
    embed_run(trained_folder, evaluation_atlas, out, batch_size=256, progress=False, expression=("denoised", "imputed"))
    return ad.read_h5ad(out)


def model_view(trained_folder, evaluation_atlas, view: str) -> np.ndarray:
    """(n, G) `VirtualCell.<view>` of every atlas cell, batch by batch, straight from the model."""
    from vcell.evaluate.cells import open_cells

    trained = open_trained(trained_folder)
    model = trained.model
    views = {"denoise": model.denoise, "impute": model.impute,
             "measured": lambda batch: model.head.measured(model.reconstruct(batch))}
    stream = open_cells(evaluation_atlas, trained)
    return np.concatenate([views[view](batch).numpy() for _, batch in stream.batches(500)])


def test_expression_layers_are_the_models_denoised_and_imputed_cells(expressed, embedded, trained_folder,
                                                                      evaluation_atlas):
    n_genes = len(open_trained(trained_folder).model.spec.gene_ids)
    assert list(expressed.obs_names) == list(embedded.obs_names)
    np.testing.assert_allclose(expressed.obsm["X_vcell"], embedded.obsm["X_vcell"], atol=1e-6)  # layers change nothing else
    assert set(expressed.layers) == {"vcell_denoised", "vcell_imputed"} and not embedded.layers
    assert set(expressed.uns["vcell"]["layers"]) == {"vcell_denoised", "vcell_imputed"}
    for view in ("denoise", "impute"):
        layer = expressed.layers[f"vcell_{view.removesuffix('e')}ed"]
        assert layer.shape == (expressed.n_obs, n_genes) and layer.dtype == np.float32
        np.testing.assert_allclose(layer, model_view(trained_folder, evaluation_atlas, view), atol=1e-5)
    # a detected gene has at least one count: its imputed value is above 0 in every cell, and at least
    # the mean of what measuring the cell gives, which averages in the zeros of non-detection
    imputed = expressed.layers["vcell_imputed"]
    assert (imputed > 0).all()
    assert (imputed >= model_view(trained_folder, evaluation_atlas, "measured") - 1e-5).all()


def test_expression_layers_do_not_depend_on_the_batch_size(expressed, trained_folder, evaluation_atlas, tmp_path):
    out = embed_run(trained_folder, evaluation_atlas, tmp_path / "b7.h5ad", batch_size=7, progress=False,
                    expression=("imputed", "imputed"))
    other = ad.read_h5ad(out)
    assert set(other.layers) == {"vcell_imputed"}  # asked twice, written once
    np.testing.assert_allclose(other.layers["vcell_imputed"], expressed.layers["vcell_imputed"], atol=1e-5)


def test_an_unknown_expression_layer_is_refused_before_anything_is_written(trained_folder, evaluation_atlas, tmp_path):
    with pytest.raises(VCellError, match="'raw' is not one vcell embed writes") as error:
        embed_run(trained_folder, evaluation_atlas, tmp_path / "x.h5ad", progress=False, expression=("raw",))
    assert "denoised, imputed" in error.value.hint
    assert not list(tmp_path.iterdir())


def test_the_command_line_offers_every_expression_layer(trained_folder, evaluation_atlas, tmp_path, capsys):
    from vcell.evaluate.embed import EXPRESSION_LAYERS

    assert main(["embed", str(trained_folder), "--input", str(evaluation_atlas), "--out", str(tmp_path / "e.h5ad"),
                 "--quiet", "--expression", "denoised", "--expression", "imputed"]) == 0
    printed = capsys.readouterr().out
    assert "layers['vcell_denoised'], layers['vcell_imputed']" in printed
    assert "no model of detection" not in printed  # a count model
    assert set(ad.read_h5ad(tmp_path / "e.h5ad").layers) == {f"vcell_{name}" for name in EXPRESSION_LAYERS}


@given(n_cells=st.integers(1, 5000), tasks=st.integers(2, 16), batch_size=st.integers(1, 2048),
       layer_width=st.sampled_from([0, 1, 100, 20_000, 40_000]), max_cells=st.integers(1, 3000),
       max_values=st.integers(1, 10**6))
@settings(max_examples=200, deadline=None)
def test_spans_cover_every_cell_once_within_both_bounds(n_cells, tasks, batch_size, layer_width, max_cells, max_values):
    from vcell.evaluate import embed_parallel

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embed_parallel, "MAX_SPAN_CELLS", max_cells)
        patch.setattr(embed_parallel, "MAX_SPAN_LAYER_VALUES", max_values)
        spans = embed_parallel.spans(n_cells, tasks, batch_size, layer_width)
    assert spans[0][0] == 0 and spans[-1][1] == n_cells
    assert all(last == following for (_, last), (following, _) in zip(spans, spans[1:]))  # contiguous, in order
    sizes = [last - first for first, last in spans]
    assert min(sizes) >= 1 and max(sizes) <= max_cells
    if layer_width:
        assert max(sizes) <= max(1, max_values // layer_width)  # a span's layers fit, unless one cell does not


def test_ray_tasks_write_the_same_expression_layers(ray_cluster, expressed, trained_folder, evaluation_atlas, tmp_path,
                                                    monkeypatch):
    from vcell.evaluate import embed_parallel

    monkeypatch.setattr(embed_parallel, "MAX_SPAN_LAYER_VALUES", 2 * 100 * 350)  # spans of 350 cells: the layers bound them
    out = embed_run(trained_folder, evaluation_atlas, tmp_path / "parallel.h5ad", batch_size=128, tasks=2,
                    progress=False, expression=("denoised", "imputed"))
    parallel = ad.read_h5ad(out)
    assert list(parallel.obs_names) == list(expressed.obs_names)
    for name in ("vcell_denoised", "vcell_imputed"):
        np.testing.assert_allclose(parallel.layers[name], expressed.layers[name], atol=1e-5)


def test_a_gaussian_model_imputes_its_detected_level_and_only_older_runs_warn(pretrained_folder, finetune_atlases,
                                                                             tmp_path, capsys):
    out = embed_run(pretrained_folder, finetune_atlases["b_h5ad"], tmp_path / "g.h5ad", progress=False,
                    expression=("imputed", "denoised"))
    assert "detected level" not in capsys.readouterr().out
    embedded = ad.read_h5ad(out)
    assert embedded.layers["vcell_imputed"].shape == (1500, 100)
    # above the reconstruction where genes are often missed: the level of a gene known to be detected
    assert (embedded.layers["vcell_imputed"] - embedded.layers["vcell_denoised"]).mean() > 0
    trained = open_trained(pretrained_folder)
    older = build_model(trained.config.model.model_copy(update={"detected_level": False}), trained.model.spec)
    warnings = expression_warnings(SimpleNamespace(model=older, config=trained.config), ("imputed",))
    assert len(warnings) == 1 and "model.detected_level" in warnings[0]  # a run saved before the key
    assert expression_warnings(SimpleNamespace(model=older, config=trained.config), ("denoised",)) == []
