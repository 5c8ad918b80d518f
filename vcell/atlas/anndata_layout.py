"""What an AnnData file holds, whichever anndata version wrote it, and where its counts are.

Files from the wild come in several layouts that `anndata.read_h5ad` still opens:
- anndata >= 0.7: obs/var are groups (`encoding-type: dataframe`), sparse matrices groups
  with `encoding-type: csr_matrix | csc_matrix`;
- anndata < 0.7: obs/var are compound HDF5 datasets with an `_index` field, categorical
  columns are integer codes with their names in `uns/<column>_categories`, sparse matrices
  are h5sparse groups (`h5sparse_format: csr | csc`), raw is stored as `raw.X` / `raw.var`.
This module reads both, so `AnnDataSource` never sees the difference, and samples matrices to
tell counts from normalised or scaled values (to name the option a user should pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from anndata.io import read_elem, sparse_dataset

SPARSE_FORMATS = {"csr_matrix": "csr", "csc_matrix": "csc", "csr": "csr", "csc": "csc"}
SAMPLE_CELLS = 256  # rows read to judge what a matrix holds (dense: 256 x genes values)


def read_dataframe(root, key: str) -> pd.DataFrame:
    """obs/var (or raw/var) as a DataFrame, from a modern group or a pre-0.7 compound dataset."""
    element = root[key]
    if isinstance(element, h5py.Dataset) and element.dtype.names:
        uns = root["uns"] if "uns" in root and isinstance(root["uns"], h5py.Group) else None
        return legacy_dataframe(element, uns)
    return read_elem(element)


def legacy_dataframe(dataset: h5py.Dataset, uns: h5py.Group | None) -> pd.DataFrame:
    """A pre-0.7 compound dataset: one field per column, the index in `_index` (else the first)."""
    records = dataset[()]
    frame = pd.DataFrame({name: decode_strings(records[name]) for name in records.dtype.names})
    frame = frame.set_index("_index" if "_index" in frame.columns else frame.columns[0])
    frame.index = frame.index.astype(str)
    frame.index.name = None
    for column in frame.columns:  # categoricals were codes here, their names in uns
        key = f"{column}_categories"
        codes = frame[column].to_numpy()
        if uns is None or key not in uns or codes.dtype.kind not in "iu":
            continue
        categories = decode_strings(np.atleast_1d(uns[key][()]))
        if codes.size and codes.max() < len(categories):
            frame[column] = pd.Categorical.from_codes(codes, categories=list(categories))  # -1: missing
    return frame


def decode_strings(values: np.ndarray) -> np.ndarray:
    """Fixed-length or variable-length byte strings as str; anything else unchanged."""
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8").astype(object)
    if values.dtype.kind == "O":
        return np.array([v.decode("utf-8") if isinstance(v, bytes) else v for v in values], dtype=object)
    return values


def sparse_format(element) -> str | None:
    """'csr' / 'csc' for a sparse matrix group of any anndata version, else None."""
    encoding = element.attrs.get("encoding-type") or element.attrs.get("h5sparse_format") or ""
    return SPARSE_FORMATS.get(str(encoding))


def open_matrix(element):
    """A row-sliceable matrix: anndata's backed sparse dataset, or the dense array itself."""
    if isinstance(element, (h5py.Group, zarr.Group)):
        return sparse_dataset(element)  # also reads pre-0.7 h5sparse groups
    return element


def matrix_elements(root) -> dict[str, tuple[str, str]]:
    """Every expression matrix of the file: option name ('X', 'raw.X', 'layers/<name>') ->
    (element path, path of the var that describes its columns)."""
    found = {}
    if "X" in root:
        found["X"] = ("X", "var")
    for matrix, var in (("raw/X", "raw/var"), ("raw.X", "raw.var")):
        if matrix in root and "raw.X" not in found:
            found["raw.X"] = (matrix, var if var in root else "var")
    if "layers" in root and isinstance(root["layers"], (h5py.Group, zarr.Group)):
        for name in root["layers"].keys():
            found[f"layers/{name}"] = (f"layers/{name}", "var")
    return found


def is_matrix(element) -> bool:
    if isinstance(element, (h5py.Group, zarr.Group)):
        return sparse_format(element) is not None
    return len(getattr(element, "shape", ())) == 2


@dataclass
class ValueSample:
    """What the first rows of a matrix hold: 'counts', 'normalized' (non-integer) or 'scaled'
    (negative values), with one offending value and its row for messages."""

    kind: str
    value: float = 0.0
    row: int = 0


def sample_values(matrix, n_rows: int) -> ValueSample:
    """Judge a matrix from its first `n_rows` rows (NaN counts as neither counts nor scaled)."""
    block = matrix[: min(n_rows, SAMPLE_CELLS)]
    block = block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
    data = block.data
    rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    for kind, bad in (("scaled", data < 0), ("normalized", data != np.round(data))):
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            return ValueSample(kind, float(data[first]), int(rows[first]))
    return ValueSample("counts" if data.size else "empty")


def option_for(matrix_name: str) -> str:
    """The `vcell atlas build` option that selects a matrix."""
    if matrix_name.startswith("layers/"):
        return f"--layer {matrix_name.split('/', 1)[1]}"
    return f"--matrix {matrix_name}"
