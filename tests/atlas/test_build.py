"""Building atlases from real AnnData files: exact round trip, vocabulary, stats, layout."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from anndata.io import read_elem

from tests.conftest import ensembl_ids, make_adata
from vcell.atlas.anndata_source import AnnDataSource
from vcell.atlas.build import build_atlas
from vcell.atlas.stats import StatsAccumulator
from vcell.atlas.store import atlas_info, open_atlas
from vcell.config.schema import BuildConfig
from vcell.errors import VCellError


def read_all_shards(path) -> ad.AnnData:
    atlas = open_atlas(path)
    return ad.concat([ad.read_zarr(path / "shards" / s["name"]) for s in atlas.shards], merge="same")


def test_round_trip_single_h5ad_exact(tmp_path):
    original = make_adata(1000, ensembl_ids(0, 120), seed=3)
    original.write_h5ad(tmp_path / "in.h5ad")
    out = build_atlas([AnnDataSource(tmp_path / "in.h5ad")], tmp_path / "atlas.zarr", BuildConfig(shard_cells=300), progress=False)
    atlas = read_all_shards(out)
    assert atlas.n_obs == 1000 and atlas.n_vars == 120
    assert list(atlas.obs_names) != list(original.obs_names)  # pre-shuffled ...
    restored = atlas[original.obs_names]  # ... but holds exactly the input
    assert list(restored.var_names) == list(original.var_names)
    assert (restored.X != original.X).nnz == 0
    for column in original.obs.columns:
        assert list(restored.obs[column].astype(str)) == list(original.obs[column].astype(str))
    assert list(restored.var["gene_symbol"]) == list(original.var["gene_symbols"])
    assert set(restored.obs["vcell_source"]) == {"in"}


def test_shards_and_chunks_follow_the_config(tmp_path):
    make_adata(1000, ensembl_ids(0, 120), seed=3).write_h5ad(tmp_path / "in.h5ad")
    out = build_atlas([AnnDataSource(tmp_path / "in.h5ad")], tmp_path / "atlas.zarr", BuildConfig(shard_cells=300, chunk_nnz=1024), progress=False)
    info = atlas_info(out)
    assert info["n_shards"] == 4 and info["cells_per_shard"] == 250  # balanced: 4 x 250
    data = zarr.open_array(str(out / "shards/00000/X/data"), mode="r")
    indices = zarr.open_array(str(out / "shards/00000/X/indices"), mode="r")
    assert data.chunks == (1024,) and indices.dtype == np.uint16
    assert len(list((out / "shards/00000/X/data/c").iterdir())) == 1  # one shard file per array
    assert info["values"] == "counts"


def test_two_sources_union_vocabulary_coverage_and_categories(tmp_path, adata_pair):
    paths, (first, second) = adata_pair
    out = build_atlas([AnnDataSource(p) for p in paths], tmp_path / "atlas.zarr", BuildConfig(shard_cells=256), progress=False)
    atlas = open_atlas(out)
    assert atlas.n_genes == 90 and atlas.n_cells == 1000
    coverage = [s["coverage"] for s in atlas.attrs["sources"]]
    assert coverage[0] == {"genes_in_source": 80, "genes_shared_with_other_sources": 60, "vocabulary_genes_missing": 10}
    assert coverage[1] == {"genes_in_source": 70, "genes_shared_with_other_sources": 60, "vocabulary_genes_missing": 20}
    assert atlas.attrs["obs_categories"]["cell_type"] == ["B", "NK", "T", "Mono"] or set(
        atlas.attrs["obs_categories"]["cell_type"]) == {"T", "B", "NK", "Mono"}
    merged = read_all_shards(out)
    for original in (first, second):
        part = merged[original.obs_names]
        aligned = part[:, original.var_names].X
        assert (aligned != original.X).nnz == 0
        others = [g for g in merged.var_names if g not in set(original.var_names)]
        assert part[:, others].X.nnz == 0
    measured = np.asarray(atlas.root["genes/measured"][:])
    assert measured.sum(axis=1).tolist() == [80, 70]
    # the pre-shuffle mixes sources inside every shard
    for record in atlas.shards:
        sources = ad.read_zarr(out / "shards" / record["name"]).obs["vcell_source"]
        assert sources.nunique() == 2


def test_stats_match_a_direct_computation(tmp_path, adata_pair):
    paths, (first, second) = adata_pair
    out = build_atlas([AnnDataSource(p) for p in paths], tmp_path / "atlas.zarr", BuildConfig(), progress=False)
    atlas = open_atlas(out)
    gene = "ENSG00000000010"  # measured by the first source only
    column = list(first.var_names).index(gene)
    values = first.X[:, column].toarray().ravel()
    library = np.asarray(first.X.sum(axis=1)).ravel()
    normalized = np.log1p(values / np.maximum(library, 1) * 1e4)
    position = list(read_elem(atlas.root["var"]).index).index(gene)
    assert np.isclose(atlas.root["stats/gene_mean"][position], normalized.mean())
    assert np.isclose(atlas.root["stats/gene_var"][position], normalized.var())
    assert np.isclose(atlas.root["stats/gene_detection_rate"][position], (values > 0).mean())
    assert atlas.root["stats/gene_n_cells"][position] == 600
    all_library = np.concatenate([library, np.asarray(second.X.sum(axis=1)).ravel()])
    assert np.isclose(atlas.attrs["library_size"]["mean"], all_library.mean())


def test_zarr_input_layer_and_normalized_values(tmp_path):
    adata = make_adata(300, ensembl_ids(0, 50), seed=4)
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()) + 0.0)
    adata.write_zarr(tmp_path / "in.zarr")
    counts = build_atlas([AnnDataSource(tmp_path / "in.zarr", matrix="layers/counts")], tmp_path / "counts.zarr", BuildConfig(), progress=False)
    assert open_atlas(counts).attrs["values"] == "counts"
    with pytest.raises(VCellError, match="counts are in layers/counts: rerun with --layer counts"):
        AnnDataSource(tmp_path / "in.zarr", matrix="auto")  # the build's default: X is normalised, counts exist
    normalized = build_atlas([AnnDataSource(tmp_path / "in.zarr", matrix="X")], tmp_path / "norm.zarr", BuildConfig(), progress=False)
    assert open_atlas(normalized).attrs["values"] == "normalized"
    assert open_atlas(normalized).attrs["stats"]["transform"] == "identity"


def test_dense_input_and_obsm_are_kept(tmp_path):
    adata = make_adata(200, ensembl_ids(0, 40), seed=5)
    adata.X = adata.X.toarray()
    adata.obsm["X_pca"] = np.random.default_rng(0).normal(size=(200, 5)).astype(np.float32)
    adata.write_h5ad(tmp_path / "dense.h5ad")
    out = build_atlas([AnnDataSource(tmp_path / "dense.h5ad")], tmp_path / "atlas.zarr", BuildConfig(), progress=False)
    merged = read_all_shards(out)[adata.obs_names]
    assert np.array_equal(merged.X.toarray(), adata.X)
    assert np.allclose(merged.obsm["X_pca"], adata.obsm["X_pca"])


def test_same_seed_same_atlas_and_unshuffled_option(tmp_path):
    make_adata(300, ensembl_ids(0, 50), seed=6).write_h5ad(tmp_path / "in.h5ad")
    source = lambda: [AnnDataSource(tmp_path / "in.h5ad")]  # noqa: E731
    a = build_atlas(source(), tmp_path / "a.zarr", BuildConfig(), progress=False)
    b = build_atlas(source(), tmp_path / "b.zarr", BuildConfig(), progress=False)
    checksums = lambda p: {k: v for k, v in open_atlas(p).attrs["checksums"].items()}  # noqa: E731
    assert checksums(a) == checksums(b)
    plain = build_atlas(source(), tmp_path / "plain.zarr", BuildConfig(shuffle=False), progress=False)
    assert list(read_all_shards(plain).obs_names) == [f"s6-cell{i}" for i in range(300)]


def test_stats_accumulator_ignores_unmeasured_cells():
    stats = StatsAccumulator(n_genes=2)
    matrix = sp.csr_matrix(np.array([[10.0, 0.0], [0.0, 5.0]]))
    stats.add(matrix, np.array([10.0, 5.0]), measured=np.array([True, False]))
    arrays = stats.gene_arrays()
    assert arrays["gene_n_cells"].tolist() == [2, 0]
    assert np.isclose(arrays["gene_mean"][0], np.log1p(1e4) / 2)


@pytest.mark.parametrize(("counts", "requested", "stored"), [
    (True, "auto", "uint16"), (False, "auto", "float32"), (True, "float32", "float32"), (True, "float64", "float64"),
])
def test_stored_value_type(tmp_path, counts, requested, stored):
    make_adata(300, ensembl_ids(0, 50), seed=4, counts=counts).write_h5ad(tmp_path / "in.h5ad")
    out = build_atlas([AnnDataSource(tmp_path / "in.h5ad")], tmp_path / "atlas.zarr", BuildConfig(dtype=requested), progress=False)
    atlas = open_atlas(out)
    assert atlas.attrs["dtype"] == stored
    assert zarr.open_array(str(out / "shards/00000/X/data")).dtype == np.dtype(stored)


def test_uint16_refuses_what_it_cannot_hold(tmp_path):
    adata = make_adata(300, ensembl_ids(0, 50), seed=4)
    adata.X.data[0] = 70000
    adata.write_h5ad(tmp_path / "in.h5ad")
    with pytest.raises(VCellError, match="reach 70000"):
        build_atlas([AnnDataSource(tmp_path / "in.h5ad")], tmp_path / "atlas.zarr", BuildConfig(dtype="uint16"), progress=False)
    out = build_atlas([AnnDataSource(tmp_path / "in.h5ad")], tmp_path / "auto.zarr", BuildConfig(), progress=False)
    assert open_atlas(out).attrs["dtype"] == "float32"  # auto keeps large counts exact


def test_sixty_small_files_every_cell_once_genes_and_obs_aligned(tmp_path):
    """Many inputs through the shard spill: each cell once, genes unioned, obs/obsm merged alike in every shard."""
    originals, paths = [], []
    for index in range(60):
        adata = make_adata(20, ensembl_ids(index, index + 30), seed=100 + index, cell_types=("T", f"type{index % 7}"))
        adata.obsm["X_pca"] = np.random.default_rng(index).normal(size=(20, 3)).astype(np.float32 if index % 2 else np.float64)
        if index % 3 == 0:
            adata.obs = adata.obs.drop(columns="donor")  # a column only some files have: missing elsewhere
        if index % 5 == 0:
            adata.obs["age"] = adata.obs["age"].astype(np.float32) + 0.5  # ints here, floats there: float64
        paths.append(tmp_path / f"part{index:02d}.h5ad")
        adata.write_h5ad(paths[-1])
        originals.append(adata)
    out = build_atlas([AnnDataSource(p) for p in paths], tmp_path / "atlas.zarr", BuildConfig(shard_cells=300), progress=False)
    atlas = open_atlas(out)
    assert atlas.n_cells == 1200 and atlas.n_genes == 89 and len(atlas.shards) == 4
    shards = [ad.read_zarr(out / "shards" / s["name"]) for s in atlas.shards]
    categories = atlas.attrs["obs_categories"]
    assert categories["cell_type"] == ["T"] + [f"type{i}" for i in range(7)]  # each file's sorted, then unioned in order
    for shard in shards:  # every shard speaks the same codes and dtypes
        assert list(shard.obs["cell_type"].cat.categories) == categories["cell_type"]
        assert list(shard.obs["donor"].cat.categories) == ["d1", "d2"]
        assert shard.obs["age"].dtype == np.float64 and shard.obsm["X_pca"].dtype == np.float64
    merged = read_all_shards(out)
    assert merged.obs_names.is_unique and merged.n_obs == 1200  # every cell exactly once
    dense = merged.X.toarray()
    for index, original in enumerate(originals):
        rows = merged.obs_names.get_indexer(original.obs_names)
        columns = merged.var_names.get_indexer(original.var_names)
        assert (rows >= 0).all() and np.array_equal(dense[np.ix_(rows, columns)], original.X.toarray())
        assert dense[rows].sum() == original.X.sum()  # nothing in the genes this file lacks
        obs = merged.obs.iloc[rows]
        assert list(obs["cell_type"].astype(str)) == list(original.obs["cell_type"].astype(str))
        assert np.allclose(obs["age"].to_numpy(), original.obs["age"].to_numpy())
        expected_donor = original.obs["donor"].tolist() if "donor" in original.obs else ["nan"] * 20
        assert list(obs["donor"].astype(str)) == expected_donor
        assert np.allclose(merged.obsm["X_pca"][rows], original.obsm["X_pca"])
        assert set(obs["vcell_source"]) == {f"part{index:02d}"}
