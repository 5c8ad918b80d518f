"""Shared fixtures: small real AnnData files (h5ad and zarr) with known contents, one local Ray
cluster, and a scratch HOME (Ray and W&B write under it) for the whole session."""

from __future__ import annotations

import os
import tempfile

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from vcell.atlas.synth import synthesize_atlas
from vcell.config.schema import BuildConfig, SynthConfig


def pytest_configure(config):
    """Before anything imports Ray: a loopback-only local cluster, HOME in a scratch folder, and a
    shared cache for DeepSpeed's compiled CPU ops (~20 s to build once, then reused)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"  # runs end (and failures show) sooner
    os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"  # no cloud nodes here: one process less per run
    os.environ["HOME"] = tempfile.mkdtemp(prefix="vcell-test-home-")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(tempfile.gettempdir(), "vcell-torch-extensions"))


def make_adata(n_cells: int, gene_ids: list[str], seed: int, *, counts: bool = True, cell_types=("T", "B", "NK")) -> ad.AnnData:
    """A sparse count matrix (~7% non-zeros) with categorical and numeric obs columns."""
    rng = np.random.default_rng(seed)
    matrix = sp.random(n_cells, len(gene_ids), density=0.07, format="csr", random_state=rng, dtype=np.float32)
    matrix.data = rng.integers(1, 30, matrix.nnz).astype(np.float32) if counts else matrix.data * 3
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(list(cell_types), n_cells)),
            "donor": rng.choice(["d1", "d2"], n_cells).astype(object),
            "age": rng.integers(20, 80, n_cells),
            "score": rng.normal(size=n_cells),
        },
        index=[f"s{seed}-cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"gene_symbols": [f"SYM{g[-4:]}" for g in gene_ids]}, index=gene_ids)
    return ad.AnnData(matrix, obs=obs, var=var)


def ensembl_ids(start: int, stop: int) -> list[str]:
    return [f"ENSG{i:011d}" for i in range(start, stop)]


@pytest.fixture
def adata_pair(tmp_path):
    """Two h5ad files with overlapping genes (60 shared of 80 and 70) and different cell types."""
    first = make_adata(600, ensembl_ids(0, 80), seed=1)
    second = make_adata(400, ensembl_ids(20, 90), seed=2, cell_types=("B", "Mono"))
    paths = [tmp_path / "first.h5ad", tmp_path / "second.h5ad"]
    first.write_h5ad(paths[0])
    second.write_h5ad(paths[1])
    return paths, (first, second)


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the whole test session: loopback only, no dashboard."""
    import ray

    ray.init(
        num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
        log_to_driver=False, configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def train_atlas(tmp_path_factory):
    """1,600 simulated cells x 120 genes with every label and annotation the full model reads
    (training and campaign tests)."""
    synth = SynthConfig(
        cells=1600, genes=120, transcription_factors=12, pathways=8, compartments=3, perturbations=6,
        chunk_cells=800, truth_draws=16,
    )
    out = tmp_path_factory.mktemp("train") / "atlas.zarr"
    return synthesize_atlas(out, synth, BuildConfig(shard_cells=400), progress=False)


FINETUNE_GENES, FINETUNE_SHIFT, FINETUNE_WIDTH = 130, 30, 100  # atlas A: genes 0-99, B: 30-129 (70% shared)


@pytest.fixture(scope="session")
def finetune_atlases(tmp_path_factory):
    """Two atlases of one simulation (the same biology): A the first half of 3,000 cells on genes
    0-99, without two perturbations; B the other half on genes 30-129, so 70 of B's 100 genes are
    A's, 30 are new, and two perturbation categories are new. Paths of both atlases and .h5ad files."""
    import anndata as ad

    from vcell.atlas.anndata_source import AnnDataSource
    from vcell.atlas.build import build_atlas
    from vcell.atlas.store import open_atlas

    root = tmp_path_factory.mktemp("finetune")
    synth = SynthConfig(cells=3000, genes=FINETUNE_GENES, transcription_factors=12, pathways=6, compartments=3,
                        perturbations=8, chunk_cells=3000, truth_draws=8)
    atlas = open_atlas(synthesize_atlas(root / "both.zarr", synth, BuildConfig(shard_cells=3000), progress=False))
    cells = ad.concat([ad.read_zarr(atlas.path / "shards" / shard["name"]) for shard in atlas.shards])
    half = cells.n_obs // 2
    first = cells[:half, :FINETUNE_WIDTH]
    perturbation = first.obs["perturbation"].astype(str)
    first = first[~perturbation.isin(sorted(set(perturbation) - {"control"})[:2]).to_numpy()].copy()
    first.obs["perturbation"] = first.obs["perturbation"].cat.remove_unused_categories()
    second = cells[half:, FINETUNE_SHIFT:FINETUNE_SHIFT + FINETUNE_WIDTH].copy()
    paths = {}
    for name, table in (("a", first), ("b", second)):
        table.write_h5ad(root / f"{name}.h5ad")
        paths[f"{name}_h5ad"] = root / f"{name}.h5ad"
        paths[name] = build_atlas([AnnDataSource(root / f"{name}.h5ad", "X", None)], root / f"{name}.zarr",
                                  BuildConfig(shard_cells=2000), progress=False)
    return paths


def finetune_config(atlas, *overrides):
    """The `base` model (small) on one of the fine-tuning atlases, 20% of its cells held out."""
    from vcell.atlas.store import open_atlas
    from vcell.config import load_config
    from vcell.train.training_plan import with_model_inputs

    config = load_config(None, [f"data.atlas={atlas}", "model.name=base", "model.size=small",
                                "loader.split.test_fraction=0.2", "loader.split.val_fraction=0.0",
                                "loader.split.holdout=[]", *overrides])
    return with_model_inputs(config, open_atlas(atlas))


@pytest.fixture(scope="session")
def pretrained_folder(finetune_atlases, tmp_path_factory):
    """The small `base` model after 150 plain-loop steps on atlas A, as a model folder (an export's files)."""
    import torch

    from vcell.atlas.store import open_atlas
    from vcell.data.memory import load_cells
    from vcell.evaluate.export import save_trained
    from vcell.models.zoo import build_model
    from vcell.train.plain import fit
    from vcell.train.training_plan import model_spec

    config = finetune_config(finetune_atlases["a"], "name=pretrain")
    atlas = open_atlas(config.data.atlas)
    torch.manual_seed(0)
    model = build_model(config.model, model_spec(config, atlas))
    fit(model, load_cells(atlas, config.loader, "train"), steps=150, batch_size=128, seed=0)
    return save_trained(model.eval(), config, tmp_path_factory.mktemp("pretrained") / "model", step=150)
