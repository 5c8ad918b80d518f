"""Where atlas cells come from: a `Source` yields cells in chunks over its own gene list.

The builder (`build.py`) only talks to this interface, so an AnnData file on disk and the
simulator (`synth.py`) go through exactly the same code path. A source never holds its whole
matrix in memory: `chunks()` streams rows.
"""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from vcell.errors import VCellError
from vcell.files import update_digest

# Ensembl gene IDs (human ENSG..., mouse ENSMUSG..., any species code), optional version.
ENSEMBL_PATTERN = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "feature_name", "symbol", "gene_name")


@dataclass
class SourceChunk:
    """A block of consecutive cells of one source, on that source's genes."""

    obs: pd.DataFrame  # (n_cells, n_columns); index = cell names
    X: sp.csr_matrix  # (n_cells, n_source_genes)
    obsm: dict[str, np.ndarray] = field(default_factory=dict)  # each (n_cells, k), dense


class Source(abc.ABC):
    """A set of cells over a gene list with stable, unique IDs."""

    name: str

    @property
    @abc.abstractmethod
    def n_cells(self) -> int: ...

    @property
    @abc.abstractmethod
    def var(self) -> pd.DataFrame:
        """Per-gene metadata; the index holds the stable gene IDs (unique, non-empty)."""

    @abc.abstractmethod
    def chunks(self, chunk_cells: int) -> Iterator[SourceChunk]:
        """Yield consecutive blocks of at most `chunk_cells` cells, covering every cell once."""

    @abc.abstractmethod
    def describe(self) -> dict:
        """JSON-able provenance recorded in the atlas (path, sha256, matrix, ...)."""

    @property
    def gene_ids(self) -> np.ndarray:
        return self.var.index.to_numpy(dtype=str)


def strip_ensembl_version(gene_id: str) -> str:
    """`ENSG00000141510.16` -> `ENSG00000141510`: versions differ between releases of one gene."""
    if ENSEMBL_PATTERN.match(gene_id) and "." in gene_id:
        return gene_id.split(".", 1)[0]
    return gene_id


def looks_like_ensembl(values: pd.Index | pd.Series, min_fraction: float = 0.9) -> bool:
    values = pd.Series(values).dropna().astype(str)
    if values.empty:
        return False
    return values.str.match(ENSEMBL_PATTERN).mean() >= min_fraction


def missing_id_mask(values: pd.Series) -> np.ndarray:
    """True where a gene has no usable ID (NaN, None, empty or the string 'nan')."""
    text = values.astype(str).str.strip()
    return (values.isna() | text.eq("") | text.str.lower().isin({"nan", "none"})).to_numpy()


def select_gene_ids(var: pd.DataFrame, gene_key: str | None, path: str) -> tuple[pd.Series, str]:
    """Pick the gene-ID column of `var` and check it: returns (ids, name of the column used).

    With no `gene_key`, prefer any column (or the index) that holds Ensembl IDs, else the index.
    """
    candidates: dict[str, pd.Series] = {"index": pd.Series(var.index, index=var.index)}
    for column in var.columns:
        if var[column].dtype == object or isinstance(var[column].dtype, (pd.CategoricalDtype, pd.StringDtype)):
            candidates[str(column)] = var[column]
    if gene_key is not None:
        if gene_key not in candidates:
            allowed = ", ".join(["index", *map(str, var.columns)])
            raise VCellError(
                f"{path}: gene key '{gene_key}' is not a column of var (allowed: {allowed})",
                hint="pass --gene-key with one of the allowed names",
            )
        key = gene_key
    else:
        key = next((name for name, values in candidates.items() if looks_like_ensembl(values)), "index")
    ids = candidates[key].astype(object)
    missing = missing_id_mask(ids)
    if missing.any():
        rows = np.flatnonzero(missing)[:5].tolist()
        raise VCellError(
            f"{path}: {int(missing.sum())} genes have no ID in var '{key}' (rows {rows})",
            hint="fill or drop those genes, or choose another ID column with --gene-key",
        )
    ids = ids.astype(str).map(strip_ensembl_version)
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise VCellError(
            f"{path}: {len(duplicated)} duplicate gene IDs in var '{key}', e.g. {[str(gene) for gene in duplicated[:5]]}",
            hint="gene IDs must be unique: sum or drop the duplicates, or choose a unique ID column "
            "with --gene-key (Ensembl IDs usually are)",
        )
    return pd.Series(ids.to_numpy(), index=var.index), key


def gene_symbols(var: pd.DataFrame, id_key: str) -> pd.Series | None:
    """Human-readable names to keep beside the IDs, when the input has them."""
    for column in SYMBOL_COLUMNS:
        if column in var.columns and column != id_key:
            return var[column].astype(str)
    if id_key != "index" and not looks_like_ensembl(var.index):
        return pd.Series(var.index.astype(str), index=var.index)
    return None


def sha256_of_path(path: Path) -> str:
    """Checksum of a file, or of a directory store (its files in sorted order, names included)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        update_digest(digest, file)
    return digest.hexdigest()
