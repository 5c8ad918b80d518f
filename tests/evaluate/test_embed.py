"""`vcell embed`: every input cell in order, deterministic, genes aligned, clear errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from vcell.atlas.store import open_atlas
from vcell.cli import main
from vcell.data.epoch_plan import Blocks
from vcell.data.reader import AtlasReader, read_window
from vcell.evaluate.cells import atlas_obs
from vcell.evaluate.embed import embed_run
from vcell.evaluate.export import open_trained
from vcell.errors import VCellError


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
