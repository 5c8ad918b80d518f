"""A real file we did not make (tests/fixtures/README.md): scanpy's pbmc68k_reduced, 700 10x PBMCs
with a scaled X and log-normalised values in raw.X. The build must say which option to use, then
build exactly what the file holds, and the loader must stream every cell once with its values."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from vcell.atlas.store import open_atlas
from vcell.cli import main
from vcell.config.schema import LoaderConfig
from vcell.data.loader import AtlasLoader

PBMC = Path(__file__).parent / "fixtures" / "pbmc68k_reduced.h5ad"
pytestmark = pytest.mark.filterwarnings("ignore:Moving element from .uns")


@pytest.fixture(scope="module")
def pbmc():
    return ad.read_h5ad(PBMC)


def test_a_scaled_x_without_counts_names_the_matrix_to_use(tmp_path, capsys):
    assert main(["atlas", "build", str(PBMC), "--out", str(tmp_path / "pbmc.zarr")]) != 0
    error = capsys.readouterr().err
    assert "X is scaled" in error and "rerun with --matrix raw.X" in error and "Traceback" not in error
    assert not (tmp_path / "pbmc.zarr").exists() and list(tmp_path.iterdir()) == []


def test_the_named_matrix_builds_and_streams_every_cell_once_with_its_values(pbmc, tmp_path):
    out = tmp_path / "pbmc.zarr"
    assert main(["atlas", "build", str(PBMC), "--out", str(out), "--matrix", "raw.X"]) == 0
    atlas = open_atlas(out)
    assert (atlas.n_cells, atlas.n_genes, atlas.attrs["values"]) == (700, 765, "normalized")
    config = LoaderConfig(batch_size=64, threads=0, labels=["bulk_labels"],
                          normalize={"target_sum": None, "log1p": False}, split={"val_fraction": 0.0, "test_fraction": 0.0})
    loader = AtlasLoader(out, config)
    rows, values = [], []
    for batch in loader:
        valid = batch["valid"].numpy()
        rows.append(batch["cell_index"].numpy()[valid])
        values.append(batch["x"].numpy()[valid])
    rows, values = np.concatenate(rows), np.concatenate(values)
    assert sorted(rows.tolist()) == list(range(700))
    # the atlas pre-shuffles cells: match them to the file by name, genes by the atlas vocabulary
    names = np.concatenate([ad.read_zarr(out / "shards" / s["name"]).obs_names for s in atlas.shards])
    expected = pbmc.raw.to_adata()[names[rows]]
    order = [list(expected.var_names).index(g) for g in ad.read_zarr(out / "shards" / atlas.shards[0]["name"]).var_names]
    np.testing.assert_allclose(values, expected.X.toarray()[:, order], rtol=1e-6)
