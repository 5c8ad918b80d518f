"""A chunk file the build wrote but that is gone is an error wherever the atlas is read, never zeros."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from tests.conftest import ensembl_ids, make_adata
from tests.data.conftest import loader_config
from vcell.atlas.anndata_source import AnnDataSource
from vcell.atlas.build import build_atlas
from vcell.atlas.store import ATTRS_KEY, checksum_tree, open_atlas
from vcell.config.schema import BuildConfig
from vcell.data.loader import AtlasLoader
from vcell.data.reader import AtlasReader, ZarrRangeReader, open_range_reader
from vcell.errors import VCellError


@pytest.fixture
def damaged(atlas_path, tmp_path):
    """A private copy of the loader test atlas (4 shards, 1,230 cells) to delete files from."""
    return shutil.copytree(atlas_path, tmp_path / "atlas.zarr")


def read_everything(path) -> None:
    for _ in AtlasLoader(path, loader_config()):
        pass


@pytest.mark.parametrize("array", ["X/data", "X/indices", "X/indptr"])
def test_a_deleted_chunk_stops_the_loader_with_a_clear_error(damaged, array):
    (damaged / "shards/00001" / array / "c/0").unlink()
    with pytest.raises(VCellError) as error:
        read_everything(damaged)
    message = str(error.value)
    assert f"shards/00001/{array}/c/0" in message and "missing" in message
    assert "vcell atlas validate" in message


def test_the_reader_refuses_the_missing_range_and_reads_the_rest(damaged):
    (damaged / "shards/00002/X/data/c/0").unlink()
    reader = AtlasReader(open_atlas(damaged), [])
    pointers = reader.row_pointers(0, 100)  # shard 0 is intact
    data = np.empty(pointers[-1] - pointers[0], dtype=reader.value_dtype())
    reader.read_values(0, pointers, data, np.empty(len(data), dtype=reader.index_dtype()))
    assert (data > 0).all()
    start = open_atlas(damaged).shards[2]["start"]
    pointers = reader.row_pointers(start, start + 10)
    with pytest.raises(VCellError, match="missing"):
        reader.read_values(start, pointers, np.empty(pointers[-1] - pointers[0], dtype=reader.value_dtype()),
                           np.empty(pointers[-1] - pointers[0], dtype=reader.index_dtype()))


def test_chunks_the_build_never_wrote_still_read_as_fill(tmp_path):
    """zarr skips chunks that hold only the fill value: one source, so obs/vcell_source codes are all 0."""
    make_adata(300, ensembl_ids(0, 40), seed=3).write_h5ad(tmp_path / "one.h5ad")
    path = build_atlas([AnnDataSource(tmp_path / "one.h5ad")], tmp_path / "one.zarr", BuildConfig(), progress=False)
    assert not (path / "shards/00000/obs/vcell_source/codes/c/0").exists()
    reader = AtlasReader(open_atlas(path), ["vcell_source"])
    assert (reader.read_labels("vcell_source") == 0).all()
    read_everything(path)


@pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3")
def test_the_zarr_fallback_refuses_a_missing_chunk_too(damaged):
    """X/data rewritten in a layout the fast reader does not handle (delta filter): zarr-python reads it."""
    atlas = open_atlas(damaged)
    path = "shards/00001/X/data"
    values = np.asarray(atlas.root[path][:])
    shutil.rmtree(damaged / path)
    array = zarr.create_array(str(damaged / path), shape=values.shape, dtype=values.dtype, chunks=(1000,),
                              filters=[zarr.codecs.numcodecs.Delta(dtype=values.dtype.str)], fill_value=0)
    array[:] = values
    root = zarr.open_group(str(damaged), mode="r+")
    attrs = root.attrs[ATTRS_KEY]
    root.attrs[ATTRS_KEY] = {**attrs, "checksums": checksum_tree(damaged, exclude={"zarr.json"})}
    atlas = open_atlas(damaged)
    reader = open_range_reader(atlas, path, None)
    assert isinstance(reader, ZarrRangeReader)
    np.testing.assert_array_equal(reader.read(0, len(values)), values)
    (damaged / path / "c/1").unlink()
    np.testing.assert_array_equal(reader.read(0, 1000), values[:1000])  # chunk 0 is still there
    with pytest.raises(VCellError, match=f"{path}/c/1.*missing"):
        reader.read(500, 1500)
    with pytest.raises(VCellError, match="missing"):
        read_everything(damaged)


def test_a_missing_statistics_file_is_refused_on_open_and_listed_by_validate(damaged):
    from vcell.atlas.validate import validate_atlas

    (damaged / "stats/gene_var/c/0").unlink()
    with pytest.raises(VCellError, match="stats/gene_var/c/0") as error:
        AtlasLoader(damaged, loader_config())
    assert "vcell atlas validate" in str(error.value)
    with pytest.raises(VCellError, match="missing file: stats/gene_var/c/0"):
        validate_atlas(damaged, progress=False)
