"""Fast reads of 1-D Zarr v3 arrays on local disk, straight from their chunk files.

The loader reads a few thousand contiguous rows at a time from arrays the builder wrote
(`X/data`, `X/indices`, `X/indptr`, obs columns). zarr-python spends ~0.5-2 ms of Python and
asyncio per read call, which alone would cap a loader below annbatch's speed. This reader
parses the array's `zarr.json` once, keeps the shard index of each shard file, coalesces the
inner chunks a range needs into one `pread`, and decodes them with numcodecs (which releases
the GIL, so reader threads run in parallel) directly into the output where a chunk lies
wholly inside the range.

Supported layouts (the builder writes only these): plain or `sharding_indexed` chunking, the
`bytes` codec (little-endian) followed by at most one of `blosc`/`zstd`/`gzip`, index at the
start or end with an optional crc32c. Anything else raises `UnsupportedLayout`, and callers
fall back to zarr-python, so any valid atlas still reads, only slower.

Zarr reads an absent chunk file as the fill value (0): a deleted file would become a blank
matrix that trains without complaint. zarr legitimately skips chunks holding only the fill
value, so absence alone proves nothing; the atlas's checksums list every file the build wrote
(`RecordedFiles`), and a listed file that is gone is damage, on both read paths.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

import numcodecs
import numpy as np

from vcell.errors import VCellError

MISSING_CHUNK = np.iinfo(np.uint64).max  # shard index entry of a chunk that was never written
COMPRESSORS = {"blosc": numcodecs.Blosc, "zstd": numcodecs.Zstd, "gzip": numcodecs.GZip}


class UnsupportedLayout(Exception):
    """The array uses a layout the fast path does not read; use zarr-python instead."""


@dataclass(frozen=True)
class RecordedFiles:
    """The files a writer recorded for one array of an atlas: one of them missing is damage."""

    atlas: Path
    array: str  # the array's path inside the atlas, e.g. "shards/00001/X/data"
    files: Container[str]  # recorded paths relative to the atlas (its checksums)

    def expects(self, key: str) -> bool:
        """Whether chunk file `key` (relative to the array, e.g. "c/0") was written."""
        return f"{self.array}/{key}" in self.files

    def missing(self, key: str) -> VCellError:
        return VCellError(
            f"atlas {self.atlas}: chunk file {self.array}/{key} is missing, although the build wrote data "
            "there (reading it as zeros would silently blank those cells)",
            hint=f"the atlas is damaged: `vcell atlas validate {self.atlas}` lists what else is; restore the file "
            "from a copy, or rebuild the atlas (`vcell atlas build ... --overwrite` / `vcell atlas synth --overwrite`)",
        )


def check_chunk_files(array, directory: Path, recorded: RecordedFiles | None, start: int, stop: int) -> None:
    """For zarr-python reads of elements [start, stop) of a 1-D `array`: every recorded chunk
    file in the range exists (one stat per chunk file)."""
    if recorded is None or stop <= start:
        return
    outer = int((array.shards or array.chunks)[0])
    for chunk in range(start // outer, (stop - 1) // outer + 1):
        key = array.metadata.encode_chunk_key((chunk,))
        if recorded.expects(key) and not (directory / key).exists():
            raise recorded.missing(key)


class DecodedChunkCache:
    """A thread-safe LRU of decoded chunks, bounded in bytes (for small, re-read arrays)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple) -> np.ndarray | None:
        with self.lock:
            value = self.entries.get(key)
            if value is not None:
                self.entries.move_to_end(key)
            return value

    def put(self, key: tuple, value: np.ndarray) -> None:
        with self.lock:
            if key in self.entries or value.nbytes > self.max_bytes:
                return
            self.entries[key] = value
            self.bytes += value.nbytes
            while self.bytes > self.max_bytes:
                _, evicted = self.entries.popitem(last=False)
                self.bytes -= evicted.nbytes


def parse_codecs(codecs: list[dict], where: Path) -> numcodecs.abc.Codec | None:
    """`[bytes, <compressor>?]` -> the numcodecs decoder (None when uncompressed)."""
    if not codecs or codecs[0]["name"] != "bytes":
        raise UnsupportedLayout(f"{where}: first codec is not 'bytes'")
    endian = codecs[0].get("configuration", {}).get("endian", "little")
    if endian != "little":
        raise UnsupportedLayout(f"{where}: big-endian data")
    if len(codecs) == 1:
        return None
    if len(codecs) > 2 or codecs[1]["name"] not in COMPRESSORS:
        raise UnsupportedLayout(f"{where}: codecs {[c['name'] for c in codecs]}")
    return COMPRESSORS[codecs[1]["name"]]()


class ChunkedArrayReader:
    """Range reads of one 1-D Zarr v3 array: `reader.read(start, stop)` -> numpy array.

    `recorded`: the files the writer recorded; an absent one raises instead of reading as fill.
    """

    def __init__(self, path: str | Path, cache: DecodedChunkCache | None = None,
                 recorded: RecordedFiles | None = None):
        self.path = Path(path)
        self.recorded = recorded
        try:
            meta = json.loads((self.path / "zarr.json").read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise VCellError(f"{self.path}/zarr.json: unreadable ({error}); the atlas is damaged") from None
        if len(meta.get("shape", ())) != 1:
            raise UnsupportedLayout(f"{self.path}: not a 1-D array")
        try:
            self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        except TypeError:
            raise UnsupportedLayout(f"{self.path}: data type {meta['data_type']}") from None
        self.length = int(meta["shape"][0])
        self.fill_value = meta.get("fill_value") or 0
        self.outer = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        self.key_prefix, self.separator = self.key_encoding(meta)
        self.cache = cache
        codecs = meta["codecs"]
        self.sharded = codecs[0]["name"] == "sharding_indexed"
        if self.sharded:
            if len(codecs) != 1:
                raise UnsupportedLayout(f"{self.path}: codecs after sharding")
            config = codecs[0]["configuration"]
            self.inner = int(config["chunk_shape"][0])
            self.decoder = parse_codecs(config["codecs"], self.path)
            index_codecs = [c["name"] for c in config.get("index_codecs", [])]
            if index_codecs not in (["bytes"], ["bytes", "crc32c"]) or self.outer % self.inner:
                raise UnsupportedLayout(f"{self.path}: shard index codecs {index_codecs}")
            self.index_tail = 4 if "crc32c" in index_codecs else 0
            self.index_at_end = config.get("index_location", "end") == "end"
        else:
            self.inner = self.outer
            self.decoder = parse_codecs(codecs, self.path)
        self.shard_indexes: dict[int, np.ndarray] = {}
        self.handles: dict[int, int] = {}
        self.lock = threading.Lock()

    @staticmethod
    def key_encoding(meta: dict) -> tuple[str, str]:
        encoding = meta.get("chunk_key_encoding", {"name": "default"})
        separator = encoding.get("configuration", {}).get("separator", "/" if encoding["name"] == "default" else ".")
        return ("c" + separator if encoding["name"] == "default" else ""), separator

    def file_of(self, outer_index: int) -> int:
        """An open descriptor of the file holding outer chunk `outer_index` (-1 if absent)."""
        with self.lock:
            if outer_index not in self.handles:
                path = self.path / f"{self.key_prefix}{outer_index}"
                self.handles[outer_index] = os.open(path, os.O_RDONLY) if path.exists() else -1
            handle = self.handles[outer_index]
        if handle < 0 and self.recorded is not None and self.recorded.expects(f"{self.key_prefix}{outer_index}"):
            raise self.recorded.missing(f"{self.key_prefix}{outer_index}")
        return handle

    def close(self) -> None:
        if not hasattr(self, "handles"):  # __init__ failed before opening anything
            return
        with self.lock:
            for handle in self.handles.values():
                if handle >= 0:
                    os.close(handle)
            self.handles.clear()

    def __del__(self):
        self.close()

    def shard_index(self, shard: int, handle: int) -> np.ndarray:
        """(chunks per shard, 2) uint64 of (offset, nbytes), read once per shard file."""
        index = self.shard_indexes.get(shard)
        if index is None:
            per_shard = self.outer // self.inner
            size = per_shard * 16
            file_size = os.fstat(handle).st_size
            offset = file_size - size - self.index_tail if self.index_at_end else 0
            raw = os.pread(handle, size, offset) if offset >= 0 else b""
            if len(raw) != size:
                raise VCellError(f"{self.path}/{self.key_prefix}{shard}: truncated shard file; the atlas is damaged")
            index = np.frombuffer(raw, dtype="<u8").reshape(per_shard, 2)
            ends = index[:, 0] + index[:, 1]
            written = index[:, 0] != MISSING_CHUNK
            if np.any(ends[written] > file_size):
                raise VCellError(f"{self.path}/{self.key_prefix}{shard}: shard index points past the file end; the atlas is damaged")
            self.shard_indexes[shard] = index
        return index

    def locate(self, chunk: int) -> tuple[int, int, int]:
        """(file descriptor, byte offset, byte length) of inner chunk `chunk`; length 0 = fill."""
        if not self.sharded:
            handle = self.file_of(chunk)
            return (handle, 0, os.fstat(handle).st_size) if handle >= 0 else (-1, 0, 0)
        per_shard = self.outer // self.inner
        shard, local = divmod(chunk, per_shard)
        handle = self.file_of(shard)
        if handle < 0:
            return -1, 0, 0
        offset, nbytes = self.shard_index(shard, handle)[local]
        return (-1, 0, 0) if offset == MISSING_CHUNK else (handle, int(offset), int(nbytes))

    def decode(self, raw: memoryview | bytes, out: np.ndarray | None = None) -> np.ndarray:
        """Decode one chunk's bytes into `out` (a full chunk's length) or a new array."""
        if self.decoder is None:
            decoded = np.frombuffer(raw, dtype=self.dtype)
            if out is None:
                return decoded
            out[:] = decoded
            return out
        if out is not None:
            self.decoder.decode(raw, out=out)
            return out
        return np.frombuffer(self.decoder.decode(raw), dtype=self.dtype)[: self.inner]

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Elements [start, stop) into `out` (contiguous, this array's dtype) or a new array."""
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"{self.path}: range [{start}, {stop}) outside [0, {self.length})")
        if out is None:
            out = np.empty(stop - start, dtype=self.dtype)
        if stop == start:
            return out
        first, last = start // self.inner, (stop - 1) // self.inner
        pending: list[tuple[int, int, int, int]] = []  # (chunk, handle, offset, nbytes) to read
        for chunk in range(first, last + 1):
            cached = self.cache.get((self.path, chunk)) if self.cache is not None else None
            if cached is not None:
                self.place(out, start, stop, chunk, cached)
                continue
            handle, offset, nbytes = self.locate(chunk)
            if nbytes == 0:
                self.place(out, start, stop, chunk, None)
            else:
                pending.append((chunk, handle, offset, nbytes))
        for run in self.contiguous_runs(pending):
            handle, begin = run[0][1], run[0][2]
            end = run[-1][2] + run[-1][3]
            buffer = memoryview(os.pread(handle, end - begin, begin))
            if len(buffer) != end - begin:
                raise VCellError(f"{self.path}: chunk file shorter than its index says; the atlas is damaged")
            for chunk, _, offset, nbytes in run:
                self.read_chunk(out, start, stop, chunk, buffer[offset - begin: offset - begin + nbytes])
        return out

    @staticmethod
    def contiguous_runs(pending: list[tuple[int, int, int, int]]) -> list[list[tuple[int, int, int, int]]]:
        """Group chunks whose bytes follow each other in the same file: one pread per group."""
        runs: list[list[tuple[int, int, int, int]]] = []
        for item in pending:
            if runs and runs[-1][-1][1] == item[1] and runs[-1][-1][2] + runs[-1][-1][3] == item[2]:
                runs[-1].append(item)
            else:
                runs.append([item])
        return runs

    def read_chunk(self, out: np.ndarray, start: int, stop: int, chunk: int, raw: memoryview) -> None:
        chunk_start = chunk * self.inner
        whole = chunk_start >= start and chunk_start + self.inner <= stop
        target = out[chunk_start - start: chunk_start - start + self.inner] if whole and self.cache is None else None
        try:
            decoded = self.decode(raw, target)  # a whole chunk decodes straight into the output
        except Exception as error:  # numcodecs raises several types for corrupt input
            raise VCellError(f"{self.path}: chunk {chunk} does not decode ({error}); the atlas is damaged") from None
        if target is not None:
            return
        if self.cache is not None:
            self.cache.put((self.path, chunk), decoded)
        self.place(out, start, stop, chunk, decoded)

    def place(self, out: np.ndarray, start: int, stop: int, chunk: int, decoded: np.ndarray | None) -> None:
        """Copy the part of a decoded chunk (None = fill value) that falls in [start, stop)."""
        chunk_start = chunk * self.inner
        lo, hi = max(start, chunk_start), min(stop, chunk_start + self.inner)
        if decoded is None:
            out[lo - start: hi - start] = self.fill_value
        else:
            out[lo - start: hi - start] = decoded[lo - chunk_start: hi - chunk_start]
