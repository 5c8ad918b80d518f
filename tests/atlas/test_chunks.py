"""The fast chunk reader returns exactly what zarr-python returns, and refuses damage clearly."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from vcell.atlas.chunks import ChunkedArrayReader, DecodedChunkCache, UnsupportedLayout
from vcell.data.reader import ZarrRangeReader
from vcell.errors import VCellError

LAYOUTS = {
    "sharded blosc": {"chunks": (1000,), "shards": (8000,), "compressors": (BloscCodec(cname="lz4"),)},
    "sharded zstd": {"chunks": (1000,), "shards": (4000,), "compressors": (ZstdCodec(),)},
    "plain gzip": {"chunks": (1500,), "compressors": (GzipCodec(),)},
    "plain raw": {"chunks": (1500,), "compressors": ()},
}


def make_array(tmp_path, layout: str, values: np.ndarray) -> zarr.Array:
    array = zarr.create_array(str(tmp_path / layout.replace(" ", "_")), shape=values.shape, dtype=values.dtype,
                              fill_value=0, **LAYOUTS[layout])
    array[:] = values
    return array


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.int64])
@pytest.mark.parametrize("cached", [False, True])
def test_random_ranges_match_zarr(tmp_path, layout, dtype, cached):
    values = np.random.default_rng(0).integers(0, 5000, 17_321).astype(dtype)  # not a whole number of chunks
    array = make_array(tmp_path, layout, values)
    reader = ChunkedArrayReader(array.store_path.store.root / array.path, DecodedChunkCache(1 << 20) if cached else None)
    rng = np.random.default_rng(1)
    for _ in range(40):
        start = int(rng.integers(0, len(values)))
        stop = int(rng.integers(start, len(values) + 1))
        assert np.array_equal(reader.read(start, stop), values[start:stop])
    out = np.empty(5000, dtype=dtype)
    reader.read(2500, 7500, out)  # decodes into a given array
    assert np.array_equal(out, values[2500:7500])
    assert np.array_equal(reader.read(0, len(values)), values)


def test_unwritten_chunks_read_as_fill_value(tmp_path):
    array = zarr.create_array(str(tmp_path / "sparse"), shape=(10_000,), dtype=np.float32, chunks=(1000,),
                              shards=(5000,), fill_value=0)
    array[6000:7000] = 3.0
    reader = ChunkedArrayReader(tmp_path / "sparse")
    assert np.array_equal(reader.read(0, 10_000), array[:])


@pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3")
def test_other_layouts_fall_back_to_zarr(tmp_path):
    array = zarr.create_array(str(tmp_path / "delta"), shape=(100,), dtype="i4", chunks=(10,),
                              filters=[zarr.codecs.numcodecs.Delta(dtype="i4")])
    array[:] = np.arange(100)
    with pytest.raises(UnsupportedLayout):
        ChunkedArrayReader(tmp_path / "delta")
    assert np.array_equal(ZarrRangeReader(array).read(5, 50), np.arange(5, 50))


def test_damaged_shard_is_reported(tmp_path):
    values = np.arange(20_000, dtype=np.float32)
    make_array(tmp_path, "sharded blosc", values)
    shard = tmp_path / "sharded_blosc" / "c" / "0"
    raw = bytearray(shard.read_bytes())
    raw[0:16] = b"\xff" * 16  # corrupt the first chunk's blosc header (bodies are checked by `atlas validate`)
    shard.write_bytes(bytes(raw))
    with pytest.raises(VCellError, match="does not decode.*damaged"):
        ChunkedArrayReader(tmp_path / "sharded_blosc").read(0, 500)
    shard.write_bytes(bytes(raw[:50]))  # truncated
    with pytest.raises(VCellError, match="damaged"):
        ChunkedArrayReader(tmp_path / "sharded_blosc").read(0, 500)
