"""A small multi-shard atlas with labels of every kind, built once per test session."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from tests.conftest import ensembl_ids, make_adata
from vcell.atlas.anndata_source import AnnDataSource
from vcell.atlas.build import build_atlas
from vcell.atlas.store import open_atlas
from vcell.config.schema import BuildConfig, LoaderConfig

N_GENES = 90


def with_labels(adata: ad.AnnData, seed: int) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    adata.obs["perturbation"] = pd.Categorical(rng.choice(["control", "KO_A", "KO_B", "KO_C"], adata.n_obs))
    adata.obs["time"] = rng.choice([0.0, 1.0, 4.0], adata.n_obs)
    adata.obs["stimulated"] = rng.random(adata.n_obs) < 0.5
    return adata


@pytest.fixture(scope="session")
def atlas_path(tmp_path_factory):
    """1,230 cells from two files, 4 shards of <= 400 cells, 90 genes (some cells empty)."""
    directory = tmp_path_factory.mktemp("loader-atlas")
    first = with_labels(make_adata(730, ensembl_ids(0, 80), seed=11), seed=1)
    second = with_labels(make_adata(500, ensembl_ids(10, N_GENES), seed=12, cell_types=("B", "Mono")), seed=2)
    matrix = first.X.tocsr()
    matrix.data[matrix.indptr[5]: matrix.indptr[6]] = 0  # a cell with no counts at all
    matrix.eliminate_zeros()
    first.X = matrix
    paths = [directory / "first.h5ad", directory / "second.h5ad"]
    first.write_h5ad(paths[0])
    second.write_h5ad(paths[1])
    out = directory / "atlas.zarr"
    build_atlas([AnnDataSource(p) for p in paths], out, BuildConfig(shard_cells=400), progress=False)
    return out


@pytest.fixture(scope="session")
def reference(atlas_path):
    """The whole atlas in memory through anndata: the ground truth the loader must match."""
    atlas = open_atlas(atlas_path)
    parts = [ad.read_zarr(atlas_path / "shards" / s["name"]) for s in atlas.shards]
    return ad.concat(parts, merge="same")


def loader_config(**overrides) -> LoaderConfig:
    """Small batches and buffers so that every code path (several windows, padding) runs."""
    settings = {"batch_size": 64, "block_cells": 50, "buffer_cells": 256, "threads": 0,
                "split": {"val_fraction": 0.0, "test_fraction": 0.0}}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    return LoaderConfig(**settings)
