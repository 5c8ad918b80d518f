"""obs and obsm through the build's external shuffle, so memory does not grow with the atlas.

Holding every source's obs and obsm until the end costs ~100-300 bytes per cell (names,
labels, dense per-cell arrays): gigabytes at 10M cells. Instead they travel like X (see
`spill.py`): pass 1 appends each chunk's rows to the files of the shard they land in and
keeps only what the merge decides for the whole atlas (which columns are text, their
categories, numeric dtypes, obsm widths); pass 2 rebuilds one shard's obs and obsm with the
rules of `merge.combine_column` and `merge.merge_obsm`, so every shard agrees on dtypes
and category codes.

Files per shard and field (a field is an obs column, the obs names or an obsm key), values
appended source after source; `segments` remembers where each source's rows lie in them.
Text is stored as UTF-8 bytes plus lengths (-1 = missing), categoricals as codes into the
source's categories, numbers and obsm as their raw values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vcell.atlas.durations import is_textual
from vcell.atlas.merge import MAX_CATEGORIES, SOURCE_COLUMN

log = logging.getLogger(__name__)
INDEX = ("index", "")  # fields: ("index", ""), ("obs", column) or ("obsm", key)


@dataclass
class SourceFields:
    """What one source spilled: each obs column's storage kind and dtype, obsm dtypes and widths."""

    columns: dict[str, tuple[str, np.dtype | pd.CategoricalDtype]] = field(default_factory=dict)  # name -> (kind, dtype)
    obsm: dict[str, tuple[np.dtype, tuple[int, ...]]] = field(default_factory=dict)
    categories: dict[str, list] = field(default_factory=dict)  # categorical column -> the source's categories


class ObsSpill:
    """Per-shard spill of obs and obsm next to the X spill (same directory, same row order)."""

    def __init__(self, directory: Path, n_cells: int, n_sources: int):
        self.directory = directory
        self.sources = [SourceFields() for _ in range(n_sources)]
        self.segments: dict[tuple, tuple[int, int]] = {}  # (shard, source, field, part) -> (byte offset, bytes)
        self.rows: dict[tuple[int, int], int] = {}  # (shard, source) -> cells
        self.file_ids: dict[tuple[str, str], int] = {}
        self.limit = min(MAX_CATEGORIES, max(n_cells // 2, 1))  # more distinct values: kept as strings
        self.distinct: dict[str, dict[int, dict] | None] = {}  # column -> source -> its values in order (None: too many)

    # -- pass 1 ---------------------------------------------------------------------------
    def append(self, source: int, obs: pd.DataFrame, obsm: dict[str, np.ndarray], groups: list[tuple[int, np.ndarray]]) -> None:
        """Route a chunk's obs rows and obsm rows to their shards (`groups` as for the X spill)."""
        fields = self.sources[source]
        columns = {}  # (field, part) -> the chunk's values as stored, sliced per shard below
        for column in obs.columns:
            name, values = str(column), obs[column]
            if name == SOURCE_COLUMN:
                continue
            self.describe_column(fields, name, values)
            kind, stored = self.stored_values(fields, name, values)
            if kind != "number":  # numbers are counted only if the column is text elsewhere (see plan)
                self.count_distinct(name, source, values)
            columns[("obs", name), kind] = stored
        columns[INDEX, "text"] = obs.index.astype(str).to_numpy()
        for key, value in obsm.items():
            value = np.asarray(value)
            fields.obsm.setdefault(key, (value.dtype, value.shape[1:]))
            columns[("obsm", key), "values"] = value
        for shard, rows in groups:
            self.rows[shard, source] = self.rows.get((shard, source), 0) + len(rows)
            for (name, kind), stored in columns.items():
                if kind == "text":
                    self.write_text(shard, source, name, stored[rows])
                else:
                    self.write(shard, source, name, "codes" if kind == "category" else "values", np.ascontiguousarray(stored[rows]))

    def describe_column(self, fields: SourceFields, name: str, values: pd.Series) -> None:
        if name in fields.columns:
            return
        if isinstance(values.dtype, pd.CategoricalDtype):
            fields.columns[name] = ("category", values.dtype)
            fields.categories[name] = list(values.cat.categories)
        elif is_textual(values):
            fields.columns[name] = ("text", values.dtype)
        elif isinstance(values.dtype, np.dtype):
            fields.columns[name] = ("number", values.dtype)
        else:  # pandas' nullable numbers/booleans: float64 with NaN for missing
            fields.columns[name] = ("number", np.dtype(np.float64))

    def count_distinct(self, name: str, source: int, values: pd.Series) -> None:
        """Distinct values per source in order of appearance, until the column has too many to be a category."""
        per_source = self.distinct.setdefault(name, {})
        if per_source is None:
            return
        if isinstance(values.dtype, pd.CategoricalDtype):  # the categories used, without boxing every value
            codes = values.cat.codes.to_numpy()
            present = values.cat.categories.take(pd.unique(codes[codes >= 0]))
        else:
            present = values.astype(object)
            present = present[present.notna()].to_numpy()
        per_source.setdefault(source, {}).update(dict.fromkeys(pd.unique(np.asarray(present, dtype=object))))
        if sum(map(len, per_source.values())) > self.limit and len(set().union(*per_source.values())) > self.limit:
            self.distinct[name] = None

    def stored_values(self, fields: SourceFields, name: str, values: pd.Series) -> tuple[str, np.ndarray]:
        """(kind, array) of a chunk's column as spilled: category codes, text objects or numbers."""
        kind, dtype = fields.columns[name]
        if kind == "category":
            codes = values.cat.codes.to_numpy().astype(np.int32)
            if list(values.cat.categories) != fields.categories[name]:  # a later chunk re-coded: map onto the first
                known = fields.categories[name]
                known += [c for c in values.cat.categories if c not in known]
                remap = pd.Index(known).get_indexer(values.cat.categories).astype(np.int32)
                codes = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1).astype(np.int32)
            return kind, codes
        if kind == "text":
            return kind, values.to_numpy(dtype=object)
        if dtype.kind == "f":
            return kind, values.to_numpy(dtype=dtype, na_value=np.nan)
        return kind, values.to_numpy(dtype=dtype)

    def write_text(self, shard: int, source: int, name: tuple[str, str], values: np.ndarray) -> None:
        missing = pd.isna(values)
        encoded = [b"" if gone else str(value).encode() for value, gone in zip(values.tolist(), missing.tolist())]
        lengths = np.fromiter(map(len, encoded), dtype=np.int32, count=len(encoded))
        lengths[missing] = -1
        self.write(shard, source, name, "lengths", lengths)
        self.write(shard, source, name, "bytes", np.frombuffer(b"".join(encoded), dtype=np.uint8))

    def write(self, shard: int, source: int, name: tuple[str, str], part: str, array: np.ndarray) -> None:
        path = self.path(shard, name, part)
        with open(path, "ab") as handle:
            offset = handle.tell()
            array.tofile(handle)
        key = (shard, source, name, part)
        first, count = self.segments.get(key, (offset, 0))
        self.segments[key] = (first, count + array.nbytes)

    def path(self, shard: int, name: tuple[str, str], part: str) -> Path:
        number = self.file_ids.setdefault(name, len(self.file_ids))  # column names may hold any character
        return self.directory / f"{shard:05d}.obs{number}.{part}"

    # -- between the passes ---------------------------------------------------------------
    def plan(self) -> ObsPlan:
        """The merge's decisions for the whole atlas (the same for every shard)."""
        order: list[str] = []
        for fields in self.sources:
            order += [name for name in fields.columns if name not in order]
        rules = {name: self.column_rule(name) for name in order}
        return ObsPlan(rules, self.obsm_dtypes())

    def column_rule(self, name: str) -> tuple[str, object]:
        """('category', categories) | ('strings', None) | ('number', dtype) for one column."""
        kinds = [f.columns[name] for f in self.sources if name in f.columns]
        if any(kind in ("category", "text") for kind, _ in kinds):
            self.count_spilled_numbers(name)
            per_source = self.distinct[name]
            if per_source is None:
                return "strings", None
            categories: dict = {}
            for source in sorted(per_source):  # each source's categories as pandas orders them, then the union
                categories.update(dict.fromkeys(pd.Categorical(list(per_source[source])).categories))
            return "category", list(categories)
        present = [dtype for _, dtype in kinds]
        if len(present) < len(self.sources):  # a source lacks the column: NaN there (booleans become float64)
            present = [np.dtype(np.float64) if d == bool else d for d in present] + [np.dtype(np.float64)]
        return "number", pd.concat([pd.Series([], dtype=d) for d in present]).dtype

    def count_spilled_numbers(self, name: str) -> None:
        """Distinct values of the sources that hold a text column as numbers, read back from the spill."""
        for source, fields in enumerate(self.sources):
            kind, dtype = fields.columns.get(name, ("", None))
            shards = sorted({shard for shard, s in self.rows if s == source})
            for shard in shards if kind == "number" else []:
                values = pd.Series(self.read(shard, source, ("obs", name), "values", dtype))
                self.count_distinct(name, source, values)

    def obsm_dtypes(self) -> dict[str, np.dtype]:
        """obsm keys kept (in every source, one width) and their common dtype."""
        keys = set(self.sources[0].obsm) if self.sources else set()
        for fields in self.sources[1:]:
            keys &= set(fields.obsm)
        kept = {}
        for key in sorted(keys):
            if len({f.obsm[key][1] for f in self.sources}) == 1:
                kept[key] = np.result_type(*(f.obsm[key][0] for f in self.sources))
            else:
                log.warning("obsm '%s' dropped: its width differs between sources", key)
        dropped = set().union(*(f.obsm for f in self.sources)) - keys
        if dropped:
            log.warning("obsm keys not in every source dropped: %s", ", ".join(sorted(dropped)))
        return kept

    # -- pass 2 ---------------------------------------------------------------------------
    def assemble(self, shard: int, order: np.ndarray, plan: ObsPlan, labels: list[str]) -> tuple[pd.DataFrame, dict]:
        """One shard's obs and obsm, row r = arrival row order[r] (as the X spill assembles X)."""
        sources = [s for s in range(len(self.sources)) if (shard, s) in self.rows]
        lengths = [self.rows[shard, s] for s in sources]
        columns = {}
        for name, (kind, detail) in plan.columns.items():
            if kind == "category":
                categories = pd.Index(detail, dtype=object)
                codes = [self.category_codes(shard, s, name, categories, n) for s, n in zip(sources, lengths)]
                columns[name] = pd.Categorical.from_codes(np.concatenate(codes or [np.empty(0, np.int32)]), categories=categories)
                continue
            parts = [self.read_column(shard, s, name) if name in self.sources[s].columns else None for s in sources]
            columns[name] = combine(kind, detail, parts, lengths)
        columns[SOURCE_COLUMN] = pd.Categorical.from_codes(np.repeat(sources, lengths).astype(np.int32), categories=labels)
        names = np.concatenate([self.read_text(shard, s, INDEX) for s in sources])
        obs = pd.DataFrame(columns, index=pd.Index(names.astype(str), dtype=object)).iloc[order]
        obsm = {
            key: np.concatenate([self.read_obsm(shard, s, key) for s in sources]).astype(dtype, copy=False)[order]
            for key, dtype in plan.obsm.items()
        }
        for path in self.directory.glob(f"{shard:05d}.obs*"):
            path.unlink()
        return obs, obsm

    def read(self, shard: int, source: int, name: tuple[str, str], part: str, dtype) -> np.ndarray:
        offset, nbytes = self.segments.get((shard, source, name, part), (0, 0))
        dtype = np.dtype(dtype)
        if nbytes == 0:
            return np.empty(0, dtype=dtype)
        return np.fromfile(self.path(shard, name, part), dtype=dtype, count=nbytes // dtype.itemsize, offset=offset)

    def read_text(self, shard: int, source: int, name: tuple[str, str]) -> np.ndarray:
        lengths = self.read(shard, source, name, "lengths", np.int32)
        raw = self.read(shard, source, name, "bytes", np.uint8).tobytes()
        ends = np.cumsum(np.maximum(lengths, 0)).tolist()
        starts = [0, *ends[:-1]]
        return np.array(
            [None if n < 0 else raw[a:b].decode() for a, b, n in zip(starts, ends, lengths.tolist())], dtype=object
        )

    def read_column(self, shard: int, source: int, name: str) -> pd.Series:
        kind, dtype = self.sources[source].columns[name]
        if kind == "category":
            codes = self.read(shard, source, ("obs", name), "codes", np.int32)
            return pd.Series(pd.Categorical.from_codes(codes, categories=self.sources[source].categories[name]))
        if kind == "text":
            return pd.Series(self.read_text(shard, source, ("obs", name)), dtype=object)
        return pd.Series(self.read(shard, source, ("obs", name), "values", dtype))

    def category_codes(self, shard: int, source: int, name: str, categories: pd.Index, n: int) -> np.ndarray:
        """A source's part of a category column as codes of the atlas's categories (-1: missing)."""
        fields = self.sources[source]
        if name not in fields.columns:
            return np.full(n, -1, dtype=np.int32)
        if fields.columns[name][0] == "category":  # map the source's few categories, not every cell
            codes = self.read(shard, source, ("obs", name), "codes", np.int32)
            remap = categories.get_indexer(pd.Index(fields.categories[name], dtype=object)).astype(np.int32)
            return np.where(codes >= 0, remap[np.maximum(codes, 0)], -1).astype(np.int32)
        values = self.read_column(shard, source, name).astype(object)
        return categories.get_indexer(values.where(values.notna(), None)).astype(np.int32)

    def read_obsm(self, shard: int, source: int, key: str) -> np.ndarray:
        dtype, width = self.sources[source].obsm[key]
        return self.read(shard, source, ("obsm", key), "values", dtype).reshape(-1, *width)


@dataclass
class ObsPlan:
    columns: dict[str, tuple[str, object]]  # name -> ('category', categories) | ('strings', None) | ('number', dtype)
    obsm: dict[str, np.dtype]


def combine(kind: str, dtype, parts: list[pd.Series | None], lengths: list[int]) -> np.ndarray:
    """A number or string column of one shard from its sources' parts (None: the source lacks it)."""
    if kind == "number":
        filled = [p if p is not None else pd.Series(np.full(n, np.nan)) for p, n in zip(parts, lengths)]
        merged = pd.concat(filled, ignore_index=True) if filled else pd.Series([], dtype=dtype)
        return merged.astype(dtype).to_numpy()
    text = [
        p.astype(object).where(p.notna(), None).to_numpy() if p is not None else np.full(n, None, dtype=object)
        for p, n in zip(parts, lengths)
    ]
    values = np.concatenate(text) if text else np.empty(0, dtype=object)
    return pd.Series(values, dtype=object).where(pd.notna(values), np.nan).astype(str).to_numpy(dtype=object)
