"""`validate` accepts a sound atlas and pinpoints every kind of damage; `info` reports it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from tests.conftest import ensembl_ids, make_adata
from vcell.atlas.anndata_source import AnnDataSource
from vcell.atlas.build import build_atlas
from vcell.atlas.store import ATTRS_KEY, checksum_tree
from vcell.atlas.validate import validate_atlas
from vcell.cli import main
from vcell.config.schema import BuildConfig
from vcell.errors import VCellError


@pytest.fixture
def atlas_path(tmp_path):
    make_adata(800, ensembl_ids(0, 60), seed=7).write_h5ad(tmp_path / "in.h5ad")
    return build_atlas([AnnDataSource(tmp_path / "in.h5ad")], tmp_path / "atlas.zarr", BuildConfig(shard_cells=400), progress=False)


def reseal(path):
    """Re-record checksums after a deliberate edit, so the deeper checks are what must catch it."""
    root = zarr.open_group(str(path), mode="r+")
    attrs = dict(root.attrs[ATTRS_KEY])
    attrs["checksums"] = checksum_tree(path, exclude={"zarr.json"})
    root.attrs[ATTRS_KEY] = attrs


def test_sound_atlas_is_valid(atlas_path, capsys):
    assert validate_atlas(atlas_path, progress=False)["valid"]
    assert main(["atlas", "validate", str(atlas_path), "--quiet"]) == 0
    assert "valid:" in capsys.readouterr().out


def test_flipped_byte_is_a_checksum_mismatch(atlas_path, capsys):
    target = atlas_path / "shards/00001/X/data/c/0"
    content = bytearray(target.read_bytes())
    content[len(content) // 2] ^= 0xFF
    target.write_bytes(bytes(content))
    assert main(["atlas", "validate", str(atlas_path), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "checksum mismatch (file changed or corrupt): shards/00001/X/data/c/0" in error


def test_missing_and_unexpected_files(atlas_path):
    (atlas_path / "shards/00000/X/indptr/c/0").unlink()
    (atlas_path / "stray.txt").write_text("hello")
    with pytest.raises(VCellError) as error:
        validate_atlas(atlas_path, progress=False)
    assert "missing file: shards/00000/X/indptr/c/0" in str(error.value)
    assert "unexpected file" in str(error.value) and "stray.txt" in str(error.value)


def test_unsorted_indices_are_found_even_with_fresh_checksums(atlas_path):
    indices = zarr.open_array(str(atlas_path / "shards/00000/X/indices"), mode="r+")
    indptr = zarr.open_array(str(atlas_path / "shards/00000/X/indptr"), mode="r")[:]
    row = int(np.flatnonzero(np.diff(indptr) >= 2)[0])
    values = indices[:]
    start = indptr[row]
    values[start], values[start + 1] = values[start + 1], values[start]
    indices[:] = values
    reseal(atlas_path)
    with pytest.raises(VCellError, match="shard 00000: gene indices not strictly increasing"):
        validate_atlas(atlas_path, progress=False)


def test_out_of_range_index_and_wrong_stats(atlas_path):
    indices = zarr.open_array(str(atlas_path / "shards/00001/X/indices"), mode="r+")
    values = indices[:]
    values[-1] = 60
    indices[:] = values
    reseal(atlas_path)
    with pytest.raises(VCellError, match="gene index 60 out of range"):
        validate_atlas(atlas_path, progress=False)


def test_stats_that_do_not_match_the_data(atlas_path):
    mean = zarr.open_array(str(atlas_path / "stats/gene_mean"), mode="r+")
    mean[3] = mean[3] + 1.0
    reseal(atlas_path)
    with pytest.raises(VCellError, match="stats/gene_mean does not match"):
        validate_atlas(atlas_path, progress=False)
    assert validate_atlas(atlas_path, check_statistics=False, progress=False)["valid"]


def test_incomplete_or_foreign_stores_are_refused(tmp_path, atlas_path):
    root = zarr.open_group(str(atlas_path), mode="r+")
    attrs = dict(root.attrs[ATTRS_KEY])
    attrs["complete"] = False
    root.attrs[ATTRS_KEY] = attrs
    with pytest.raises(VCellError, match="did not finish"):
        validate_atlas(atlas_path, progress=False)
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(VCellError, match="not a vcell atlas"):
        validate_atlas(tmp_path / "other.zarr", progress=False)
    with pytest.raises(VCellError, match="no zarr.json"):
        validate_atlas(tmp_path / "nothing", progress=False)


def test_info_text_and_json(atlas_path, capsys):
    assert main(["atlas", "info", str(atlas_path)]) == 0
    text = capsys.readouterr().out
    assert "cells        800" in text and "shards       2" in text and "in: 800 cells" in text
    assert main(["atlas", "info", str(atlas_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_cells"] == 800 and info["n_genes"] == 60 and info["n_shards"] == 2
    assert info["values"] == "counts" and info["bytes_on_disk"] > 0
    assert set(info["obs_columns"]) == {"cell_type", "donor", "age", "score", "vcell_source"}
