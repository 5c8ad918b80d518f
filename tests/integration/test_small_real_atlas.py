"""A new user's first run on their own small data set: a 700-cell, 10x-style h5ad (raw counts,
gene symbols as var_names with Ensembl IDs beside them, ten cell types, no perturbations or
time) is built into an atlas, trained with the default loader settings on 2 Ray workers, then
evaluated and embedded. Every step used to crash on sizes like this one."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from vcell.cli import main
from vcell.config import load_config
from vcell.evaluate.evaluation import evaluate_finished
from vcell.train.ray_train import RunHooks, train
from vcell.train.run import run_directory

N_CELLS, N_GENES, N_TYPES = 700, 300, 10


def tenx_like(path) -> None:
    """Negative-binomial counts from ten cell-type programs, barcodes as obs names, and the var
    layout scanpy's read_10x_h5 gives (symbols as index, gene_ids and feature_types columns)."""
    rng = np.random.default_rng(7)
    types = rng.integers(0, N_TYPES, N_CELLS)
    programs = 1 + rng.gamma(0.5, 4.0, (N_TYPES, N_GENES)) * (rng.random((N_TYPES, N_GENES)) < 0.15)
    mean = rng.gamma(0.4, 2.0, N_GENES) * programs[types] * rng.lognormal(0, 0.3, N_CELLS)[:, None]
    counts = rng.negative_binomial(2, 2 / (2 + mean)).astype(np.float32)
    symbols = [f"MT-ND{i}" if i < 6 else f"GENE{i}" for i in range(N_GENES)]
    var = pd.DataFrame({"gene_ids": [f"ENSG{i:011d}" for i in range(N_GENES)], "feature_types": "Gene Expression"},
                       index=symbols)
    barcodes = ["".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in range(N_CELLS)]
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type{t}" for t in types])}, index=barcodes)
    ad.AnnData(sp.csr_matrix(counts), obs=obs, var=var).write_h5ad(path)


def test_a_small_10x_file_builds_trains_evaluates_and_embeds(ray_cluster, tmp_path):
    tenx_like(tmp_path / "pbmc.h5ad")
    atlas = tmp_path / "pbmc.zarr"
    assert main(["atlas", "build", str(tmp_path / "pbmc.h5ad"), "--out", str(atlas)]) == 0
    config = load_config(None, [
        "name=pbmc", f"data.atlas={atlas}", "data.synthesize_if_missing=false", f"scaling.storage_path={tmp_path / 'runs'}",
        "model.name=base", "model.size=tiny", "loader.split.holdout=[]", "loader.labels=[cell_type]", "train.steps=20",
        "train.checkpoint_every=10", "train.validate_every=10", "train.progress_bar=false", "wandb.mode=disabled",
        "evaluate.at_end=true", "evaluate.tsne_cells=100",
    ])
    assert config.loader.batch_size == 256 and config.loader.block_cells == 2048  # the defaults that crashed
    metrics = train(config, hooks=RunHooks(evaluate=evaluate_finished))
    directory = run_directory(config)
    assert np.isfinite(metrics["final_train"]["train/loss"])
    assert all(np.isfinite(value) for value in metrics["final_validation"].values())  # a 35-cell split validates
    embedding = metrics["evaluation"]["embedding"]
    assert 0.0 <= embedding["model"]["knn_accuracy"] <= 1.0 and embedding["baselines"]["pca"]["knn_accuracy"] > 0.2
    embedded = ad.read_h5ad(directory / "embeddings.h5ad")
    assert embedded.n_obs == N_CELLS and np.isfinite(embedded.obsm["X_vcell"]).all()

    out = tmp_path / "embedded.h5ad"  # the user's own file, cells and genes in the file's order
    assert main(["embed", str(directory), "--input", str(tmp_path / "pbmc.h5ad"), "--out", str(out)]) == 0
    again = ad.read_h5ad(out)
    assert list(again.obs_names) == list(ad.read_h5ad(tmp_path / "pbmc.h5ad").obs_names)
    same_cells = embedded[again.obs_names]  # the atlas holds the cells pre-shuffled
    np.testing.assert_allclose(again.obsm["X_vcell"], same_cells.obsm["X_vcell"], rtol=1e-4, atol=1e-5)
