"""An `.h5ad` file or AnnData `.zarr` store as an atlas `Source`, read in row chunks.

Opened lazily (h5py / zarr handles + anndata's element readers): obs and var are read into
memory (they are small), the expression matrix is sliced a chunk of rows at a time. Layouts
of every anndata version are read alike (`anndata_layout.py`). `matrix="X"` reads X as it
is; the build's default `matrix="auto"` also reads X, unless X is scaled or normalised while
the file holds counts elsewhere: then the error names the option that selects them
(`--matrix raw.X`, `--layer counts`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from vcell.atlas.anndata_layout import (
    is_matrix, matrix_elements, open_matrix, option_for, read_dataframe, sample_values,
)
from vcell.atlas.sources import Source, SourceChunk, gene_symbols, select_gene_ids, sha256_of_path
from vcell.errors import VCellError

READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError)


def open_anndata_root(path: Path):
    """h5py.File for .h5ad, zarr.Group for a .zarr store; clear errors for anything else."""
    if not path.exists():
        raise VCellError(f"input not found: {path}", hint="check the path (and that the file was copied fully)")
    try:
        if path.is_dir():
            return zarr.open_group(str(path), mode="r")
        if path.suffix != ".h5ad":
            raise VCellError(f"{path}: unsupported input; expected an .h5ad file or an AnnData .zarr store")
        return h5py.File(path, "r")
    except VCellError:
        raise
    except READ_ERRORS as error:
        raise VCellError(
            f"{path}: cannot open as AnnData ({type(error).__name__}: {error})",
            hint="the file looks truncated or corrupt; copy it again or re-export it from AnnData",
        ) from None


def matrix_name(matrix: str) -> str:
    """The config's `matrix` -> the name of the matrix it selects ('X', 'raw.X', 'layers/<name>')."""
    if matrix in ("auto", "X"):
        return "X"
    if matrix in ("raw.X", "raw/X"):
        return "raw.X"
    if matrix.startswith(("layers/", "layer:")):
        return "layers/" + matrix.split("/", 1)[-1].split(":", 1)[-1]
    raise VCellError(
        f"unknown matrix '{matrix}'", hint="use 'X', 'raw.X' or 'layers/<name>' (or --layer NAME)"
    )


class AnnDataSource(Source):
    """Cells of one AnnData file, over the gene IDs selected by `gene_key`."""

    def __init__(self, path: str | Path, matrix: str = "X", gene_key: str | None = None) -> None:
        self.path = Path(path)
        self.name = self.path.name.removesuffix(".h5ad").removesuffix(".zarr")
        name = matrix_name(matrix)
        self._root = open_anndata_root(self.path)
        try:
            elements = matrix_elements(self._root)
            self.matrix_key, var_key = self._locate(name, elements)
            self._obs = read_dataframe(self._root, "obs")
            var = read_dataframe(self._root, var_key)
            self._matrix = self._open_matrix()
            self._shape = tuple(self._matrix.shape)
            if matrix == "auto":
                self._refuse_x_without_counts(elements)
        except VCellError:
            raise
        except READ_ERRORS as error:
            raise VCellError(
                f"{self.path}: cannot read AnnData elements ({type(error).__name__}: {error})",
                hint="the file looks truncated or corrupt; copy it again or re-export it from AnnData",
            ) from None
        n_cells, n_genes = self._shape
        if n_cells == 0 or n_genes == 0 or len(self._obs) != n_cells or len(var) != n_genes:
            raise VCellError(
                f"{self.path}: empty or inconsistent matrix '{self.matrix_key}' of shape "
                f"{(n_cells, n_genes)} with {len(self._obs)} obs rows and {len(var)} var rows",
                hint="an atlas needs at least one cell and one gene",
            )
        ids, self.gene_key = select_gene_ids(var, gene_key, str(self.path))
        symbols = gene_symbols(var, self.gene_key)
        self._var = pd.DataFrame(index=pd.Index(ids.to_numpy(), name="gene_id"))
        if symbols is not None:
            self._var["gene_symbol"] = symbols.to_numpy()
        self._obsm_keys = self._dense_obsm_keys(n_cells)
        # Closed until streamed: a build over hundreds of files holds one file's obs and one HDF5
        # handle (~1 MB of metadata cache each) at a time, not all of them.
        self._obs = None
        self._close()

    def _close(self) -> None:
        if isinstance(self._root, h5py.File):
            self._root.close()
        self._root = self._matrix = None

    @contextmanager
    def _opened(self):
        """The file's root and matrix, open for the duration (re-opened by every reader)."""
        self._root = open_anndata_root(self.path)
        try:
            self._matrix = self._open_matrix()
            yield
        finally:
            self._close()

    def _locate(self, name: str, elements: dict[str, tuple[str, str]]) -> tuple[str, str]:
        if name not in elements:
            raise VCellError(
                f"{self.path}: has no matrix '{name}' (available: {', '.join(elements) or 'none'})",
                hint="choose one with --layer NAME or --matrix raw.X (build.matrix)",
            )
        return elements[name]

    def _open_matrix(self):
        element = self._root[self.matrix_key]
        if not is_matrix(element):
            what = element.attrs.get("encoding-type") or type(element).__name__
            raise VCellError(f"{self.path}: '{self.matrix_key}' is a {what}, not a matrix", hint="choose another with --layer or --matrix")
        return open_matrix(element)

    def _refuse_x_without_counts(self, elements: dict[str, tuple[str, str]]) -> None:
        """X may be scaled or normalised while the file keeps the counts elsewhere: say where.
        (Without counts elsewhere, a normalised X builds and a negative value is refused by the build.)"""
        sample = sample_values(self._matrix, self.n_cells)
        if sample.kind in ("counts", "empty"):
            return
        kinds = {name: self._value_kind(key) for name, (key, _) in elements.items() if name != "X"}
        holding_counts = [name for name, kind in kinds.items() if kind == "counts"]
        normalised = [name for name, kind in kinds.items() if kind == "normalized"]
        if not holding_counts and sample.kind == "scaled" and normalised:  # e.g. scanpy's pbmc68k_reduced
            raise VCellError(
                f"{self.path}: X is scaled (it holds negative values, e.g. {sample.value:g} in cell "
                f"'{self._obs.index[sample.row]}') and no matrix in the file holds raw counts; "
                f"{', '.join(normalised)} hold(s) non-negative normalised values: rerun with "
                + " or ".join(option_for(name) for name in normalised),
                hint="models with a count likelihood (stochastic, resource) need raw counts: build from the "
                "original counts when you have them",
            )
        if not holding_counts:
            return
        what = "is scaled (it holds negative values" if sample.kind == "scaled" else "holds normalised values (non-integers"
        options = " or ".join(option_for(name) for name in holding_counts)
        raise VCellError(
            f"{self.path}: X {what}, e.g. {sample.value:g} in cell '{self._obs.index[sample.row]}'); "
            f"counts are in {', '.join(holding_counts)}: rerun with {options}",
            hint="in a config file, set build.matrix to that matrix" if sample.kind == "scaled" else
            "or pass --matrix X to build from the normalised X as it is (models that need counts will refuse it)",
        )

    def _value_kind(self, key: str) -> str | None:
        """'counts', 'normalized', 'scaled' or 'empty' for a matrix element (None: not a matrix)."""
        element = self._root[key]
        return sample_values(open_matrix(element), self.n_cells).kind if is_matrix(element) else None

    def _dense_obsm_keys(self, n_cells: int) -> list[str]:
        if "obsm" not in self._root or not isinstance(self._root["obsm"], (h5py.Group, zarr.Group)):
            return []  # pre-0.7 files kept obsm as one compound dataset: not carried over
        keys = []
        for key in self._root["obsm"].keys():  # h5py and zarr groups both have keys()
            element = self._root["obsm"][key]
            shape = getattr(element, "shape", None)
            dtype = getattr(element, "dtype", None)
            if shape and len(shape) == 2 and shape[0] == n_cells and np.issubdtype(dtype, np.number):
                keys.append(key)
        return keys

    @property
    def n_cells(self) -> int:
        return int(self._shape[0])

    @property
    def var(self) -> pd.DataFrame:
        return self._var

    @property
    def obs(self) -> pd.DataFrame:
        if self._obs is not None:
            return self._obs
        with self._opened():
            return read_dataframe(self._root, "obs")

    def nnz_per_cell(self) -> float:
        """Mean stored values per cell, from indptr alone when sparse (no data read)."""
        with self._opened():
            if hasattr(self._matrix, "group") and self._matrix.format == "csr":
                return float(self._matrix.group["indptr"][-1]) / max(self.n_cells, 1)
        return float(self._shape[1])

    def chunks(self, chunk_cells: int, first: int = 0, last: int | None = None) -> Iterator[SourceChunk]:
        """Cells [first, last) (default: all) in chunks of `chunk_cells`."""
        last = self.n_cells if last is None else min(last, self.n_cells)
        obs = self.obs
        with self._opened():
            yield from self._read_chunks(obs, chunk_cells, first, last)

    def _read_chunks(self, obs: pd.DataFrame, chunk_cells: int, first: int, last: int) -> Iterator[SourceChunk]:
        for start in range(first, last, chunk_cells):
            stop = min(start + chunk_cells, last)
            try:
                block = self._matrix[start:stop]
                obsm = {k: np.asarray(self._root["obsm"][k][start:stop]) for k in self._obsm_keys}
            except READ_ERRORS as error:
                raise VCellError(
                    f"{self.path}: cannot read cells {start}-{stop} of '{self.matrix_key}' "
                    f"({type(error).__name__}: {error})",
                    hint="the file looks truncated or corrupt; copy it again or re-export it",
                ) from None
            matrix = sp.csr_matrix(block)
            yield SourceChunk(obs=obs.iloc[start:stop], X=matrix, obsm=obsm)

    def describe(self) -> dict:
        return {
            "kind": "anndata",
            "name": self.name,
            "path": str(self.path.resolve()),
            "bytes": sum(p.stat().st_size for p in ([self.path] if self.path.is_file() else self.path.rglob("*")) if p.is_file()),
            "sha256": sha256_of_path(self.path),
            "matrix": self.matrix_key,
            "gene_key": self.gene_key,
        }
