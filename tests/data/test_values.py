"""Batch values, labels, gene selection and splits against a reference computed with scipy/anndata."""

from __future__ import annotations

import numpy as np
import pytest

from tests.data.conftest import loader_config
from vcell.atlas.store import open_atlas
from vcell.data.loader import AtlasLoader
from vcell.data.split import assign_splits, load_split, save_split
from vcell.errors import VCellError


def first_batch(atlas_path, **overrides):
    return next(iter(AtlasLoader(atlas_path, loader_config(**overrides))))


def reference_log_cp10k(reference, rows):
    counts = reference.X[rows].toarray().astype(np.float64)
    library = counts.sum(axis=1, keepdims=True)
    return np.log1p(counts / np.maximum(library, 1e-12) * 1e4), counts, library.ravel()


def test_default_normalisation_matches_scanpy_recipe(atlas_path, reference):
    batch = first_batch(atlas_path, keep_counts=True)
    rows = batch["cell_index"].numpy()
    expected, counts, library = reference_log_cp10k(reference, rows)
    np.testing.assert_allclose(batch["x"].numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(batch["counts"].numpy(), counts)
    np.testing.assert_allclose(batch["library_size"].numpy(), library)


def test_raw_values_when_normalisation_is_off(atlas_path, reference):
    batch = first_batch(atlas_path, normalize={"target_sum": None, "log1p": False})
    rows = batch["cell_index"].numpy()
    np.testing.assert_array_equal(batch["x"].numpy(), reference.X[rows].toarray())


def test_zscore_uses_the_atlas_statistics_and_clips(atlas_path, reference):
    batch = first_batch(atlas_path, normalize={"zscore": True, "clip": 3.0})
    rows = batch["cell_index"].numpy()
    everything, _, _ = reference_log_cp10k(reference, np.arange(reference.n_obs))
    measured = open_atlas(atlas_path).root["genes/measured"][:]  # stats cover the cells measuring each gene
    source = (reference.obs["vcell_source"] == "second").to_numpy().astype(int)
    mean = np.array([everything[measured[source, g], g].mean() for g in range(everything.shape[1])])
    sd = np.array([everything[measured[source, g], g].std() for g in range(everything.shape[1])])
    expected = np.clip((everything[rows] - mean) / np.where(sd > 0, sd, 1), -3, 3)
    np.testing.assert_allclose(batch["x"].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_labels_use_the_atlas_global_categories(atlas_path, reference):
    batch = first_batch(atlas_path, labels=["cell_type", "perturbation", "time", "stimulated", "age"])
    rows = batch["cell_index"].numpy()
    categories = open_atlas(atlas_path).attrs["obs_categories"]
    for column in ("cell_type", "perturbation"):
        decoded = [categories[column][code] for code in batch[column].numpy()]
        assert decoded == list(reference.obs[column].astype(str).to_numpy()[rows])
    np.testing.assert_array_equal(batch["time"].numpy(), reference.obs["time"].to_numpy()[rows])
    np.testing.assert_array_equal(batch["stimulated"].numpy(), reference.obs["stimulated"].to_numpy()[rows])
    np.testing.assert_array_equal(batch["age"].numpy(), reference.obs["age"].to_numpy()[rows])


def test_gene_list_by_id_or_symbol_in_given_order(atlas_path, reference):
    names = ["ENSG00000000042", "SYM0007", "ENSG00000000003"]
    batch = first_batch(atlas_path, genes={"select": "list", "names": names})
    rows = batch["cell_index"].numpy()
    full, _, _ = reference_log_cp10k(reference, rows)
    columns = [list(reference.var_names).index(g) for g in ("ENSG00000000042", "ENSG00000000007", "ENSG00000000003")]
    np.testing.assert_allclose(batch["x"].numpy(), full[:, columns], rtol=1e-5, atol=1e-5)


def test_gene_list_from_file_and_duplicates(atlas_path, tmp_path):
    listing = tmp_path / "genes.txt"
    listing.write_text("# my panel\nENSG00000000010\nENSG00000000011\n")
    assert first_batch(atlas_path, genes={"select": "list", "file": str(listing)})["x"].shape == (64, 2)
    with pytest.raises(VCellError, match="listed twice"):
        first_batch(atlas_path, genes={"select": "list", "names": ["ENSG00000000007", "SYM0007"]})


def test_highly_variable_genes_are_the_top_by_stored_variance(atlas_path):
    atlas = open_atlas(atlas_path)
    variance = atlas.root["stats/gene_var"][:]
    loader = AtlasLoader(atlas_path, loader_config(genes={"select": "highly_variable", "n_top": 20}))
    assert loader.n_genes == 20
    assert set(loader.genes.tolist()) == set(np.argsort(-variance, kind="stable")[:20].tolist())
    library_with_all_genes = next(iter(loader))["library_size"]
    assert library_with_all_genes.min() >= 0  # library size is over all genes, not the subset


def test_fraction_split_is_seeded_disjoint_and_recorded(atlas_path, tmp_path):
    config = loader_config(split={"val_fraction": 0.1, "test_fraction": 0.2, "seed": 4})
    cells = {}
    for split in ("train", "val", "test"):
        loader = AtlasLoader(atlas_path, config.model_copy(update={"batch_size": 16, "buffer_cells": 64}), split=split)
        cells[split] = {int(i) for rows, valid in ((b["cell_index"].numpy(), b["valid"].numpy()) for b in loader) for i in rows[valid]}
    assert not (cells["train"] & cells["val"]) and not (cells["train"] & cells["test"]) and not (cells["val"] & cells["test"])
    assert len(cells["train"]) + len(cells["val"]) + len(cells["test"]) == 1230
    assert 0.05 < len(cells["val"]) / 1230 < 0.15 and 0.15 < len(cells["test"]) / 1230 < 0.25
    codes = assign_splits(open_atlas(atlas_path), config.split)
    assert np.array_equal(codes, assign_splits(open_atlas(atlas_path), config.split))  # same seed, same split
    summary = loader.summary()
    save_split(tmp_path / "run", codes, summary)
    restored, restored_summary = load_split(tmp_path / "run")
    assert np.array_equal(restored, codes) and restored_summary == summary
    np.save(tmp_path / "run" / "split_codes.npy", np.zeros_like(codes))
    with pytest.raises(VCellError, match="does not match"):
        load_split(tmp_path / "run")


def test_held_out_groups_never_reach_training(atlas_path, reference):
    split = {"val_fraction": 0.05, "test_fraction": 0.0,
             "holdout": [{"column": "perturbation", "test": ["KO_B"]}, {"column": "time", "val": [4.0]}]}
    config = loader_config(split=split, labels=["perturbation", "time"])
    categories = open_atlas(atlas_path).attrs["obs_categories"]["perturbation"]
    for batch in AtlasLoader(atlas_path, config, split="train"):
        assert categories.index("KO_B") not in batch["perturbation"].tolist()
        assert 4.0 not in batch["time"].tolist()
    test_rows = np.concatenate([b["cell_index"][b["valid"]].numpy() for b in AtlasLoader(atlas_path, config.model_copy(update={"batch_size": 16, "buffer_cells": 64}), split="test")])
    expected = np.flatnonzero((reference.obs["perturbation"] == "KO_B").to_numpy() & (reference.obs["time"] != 4.0).to_numpy())
    assert sorted(test_rows.tolist()) == expected.tolist()


def test_bad_holdouts_are_explained(atlas_path):
    with pytest.raises(VCellError, match=r"\['KO_Z'\] are not values of obs column 'perturbation'"):
        AtlasLoader(atlas_path, loader_config(split={"holdout": [{"column": "perturbation", "test": ["KO_Z"]}]}))
    with pytest.raises(VCellError, match="no cell has time"):
        AtlasLoader(atlas_path, loader_config(split={"holdout": [{"column": "time", "test": [2.5]}]}))
    with pytest.raises(VCellError, match="loader.split.holdout: column 'dose' is not an obs column") as missing:
        AtlasLoader(atlas_path, loader_config(split={"holdout": [{"column": "dose", "test": ["1"]}]}))
    assert "loader.split.holdout=[]" in missing.value.hint and "perturbation" in missing.value.hint  # how to fix it


def test_numpy_fallback_densifies_identically(atlas_path, monkeypatch):
    import vcell.data.transform as transform

    fast = first_batch(atlas_path, normalize={"zscore": True, "clip": 2.0}, keep_counts=True)
    monkeypatch.setattr(transform, "csr_todense", None)  # as if scipy moved its kernel
    slow = first_batch(atlas_path, normalize={"zscore": True, "clip": 2.0}, keep_counts=True)
    for key in ("x", "counts", "library_size"):
        assert torch_equal(fast[key], slow[key]), key


def torch_equal(a, b) -> bool:
    return bool((a == b).all())
