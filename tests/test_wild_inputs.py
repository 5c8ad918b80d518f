"""Files from the wild (issue 15, item 3): a corpus of AnnData files as real data sets come, each
of which `vcell atlas build` must either turn into exactly the right atlas or refuse with a
clear error that names the option to use, leaving nothing behind.

The corpus is written here, in the layouts the tools write: anndata's own writers for today's
layouts, h5py for anndata < 0.7 (obs/var as compound datasets with `_index`, categorical codes
with `uns/<column>_categories`, h5sparse matrix groups, `raw.X` / `raw.var`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tests.conftest import ensembl_ids
from vcell.atlas.anndata_source import AnnDataSource
from vcell.atlas.build import build_atlas
from vcell.atlas.store import open_atlas
from vcell.cli import main
from vcell.config.schema import BuildConfig
from vcell.errors import VCellError

N_CELLS, N_GENES = 30, 12
CELL_TYPES = ["B", "NK", "T"]
GENES = ensembl_ids(0, N_GENES)
SYMBOLS = [f"GENE{i}" for i in range(N_GENES)]


def counts() -> sp.csr_matrix:
    """(cells, genes) integer counts; every cell has at least one."""
    rng = np.random.default_rng(7)
    matrix = sp.random(N_CELLS, N_GENES, density=0.4, format="lil", random_state=rng, dtype=np.float32)
    matrix[np.arange(N_CELLS), np.arange(N_CELLS) % N_GENES] = 1.0
    matrix = matrix.tocsr()
    matrix.data = rng.integers(1, 40, matrix.nnz).astype(np.float32)
    return matrix


def obs(names: list[str] | None = None) -> pd.DataFrame:
    """cell_type (categorical) and cell_number (the row, to restore order after the shuffle)."""
    return pd.DataFrame(
        {"cell_type": pd.Categorical([CELL_TYPES[i % 3] for i in range(N_CELLS)]), "cell_number": np.arange(N_CELLS)},
        index=names or [f"cell{i}" for i in range(N_CELLS)],
    )


def modern(X, **changes) -> ad.AnnData:
    adata = ad.AnnData(X=X, obs=obs(), var=pd.DataFrame({"gene_symbols": SYMBOLS}, index=GENES))
    for name, value in changes.items():
        setattr(adata, name, value) if name != "layers" else adata.layers.update(value)
    return adata


def scaled(matrix: sp.csr_matrix) -> np.ndarray:
    """z-scored log expression, as `sc.pp.scale` leaves X."""
    dense = np.log1p(matrix.toarray())
    return ((dense - dense.mean(0)) / (dense.std(0) + 1e-6)).astype(np.float32)


def lognormalised(matrix: sp.csr_matrix) -> sp.csr_matrix:
    total = np.asarray(matrix.sum(1))
    return sp.csr_matrix(np.log1p(matrix.toarray() / total * 1e4).astype(np.float32))


# -- anndata < 0.7, written as it wrote them ---------------------------------------------------
def compound(frame: pd.DataFrame) -> np.ndarray:
    """A DataFrame as anndata 0.6 stored it: `_index` then columns, strings as fixed bytes,
    categoricals as codes (their names go to uns)."""
    fields = {"_index": frame.index.to_numpy().astype("S")}
    for column in frame.columns:
        values = frame[column]
        fields[column] = values.cat.codes.to_numpy() if isinstance(values.dtype, pd.CategoricalDtype) else (
            values.to_numpy().astype("S") if values.dtype == object else values.to_numpy())
    records = np.zeros(len(frame), dtype=[(name, value.dtype) for name, value in fields.items()])
    for name, value in fields.items():
        records[name] = value
    return records


def write_h5sparse(group: h5py.Group, matrix: sp.csr_matrix) -> None:
    group.attrs["h5sparse_format"], group.attrs["h5sparse_shape"] = "csr", matrix.shape
    for name in ("data", "indices", "indptr"):
        group.create_dataset(name, data=getattr(matrix, name))


def write_legacy(path: Path, X, raw: sp.csr_matrix | None = None) -> Path:
    var = pd.DataFrame({"gene_ids": np.array(GENES, dtype=object)}, index=SYMBOLS)
    with h5py.File(path, "w") as file:
        file.create_dataset("obs", data=compound(obs()))
        file.create_dataset("var", data=compound(var))
        file.create_dataset("uns/cell_type_categories", data=np.array(CELL_TYPES, dtype="S"))
        file.create_dataset("uns/neighbors/params/n_neighbors", data=15)
        pca = np.zeros(N_CELLS, dtype=[("X_pca", "f4", (2,))])  # pre-0.7 obsm: one compound dataset
        file.create_dataset("obsm", data=pca)
        if sp.issparse(X):
            write_h5sparse(file.create_group("X"), X)
        else:
            file.create_dataset("X", data=X)
        if raw is not None:
            write_h5sparse(file.create_group("raw.X"), raw)
            file.create_dataset("raw.var", data=compound(var))
    return path


# -- the corpus ----------------------------------------------------------------------------------
@dataclass
class Case:
    """A file, the options it needs, and the atlas it must give (or the words of its refusal)."""

    write: Callable[[Path], Path]
    refusal: tuple[str, ...] = ()  # words of the error with no options; () = it builds
    options: list[str] = field(default_factory=list)  # what makes a refused file build ([] = none)
    genes: list[str] = field(default_factory=lambda: GENES)
    values: str = "counts"


def h5ad(adata_factory: Callable[[], ad.AnnData]) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        adata_factory().write_h5ad(path / "in.h5ad")
        return path / "in.h5ad"
    return write


def zarr_store(zarr_format: int) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        with ad.settings.override(zarr_write_format=zarr_format), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr's notes on v3 sharding and consolidated metadata
            modern(counts()).write_zarr(path / "in.zarr")
        return path / "in.zarr"
    return write


def with_raw() -> ad.AnnData:
    adata = modern(counts())
    adata.raw = adata.copy()
    adata.X = scaled(counts())
    return adata


def truncated(path: Path) -> Path:
    file = h5ad(lambda: modern(counts()))(path)
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return file


def not_hdf5(path: Path) -> Path:
    (path / "in.h5ad").write_bytes(os.urandom(2048))
    return path / "in.h5ad"


def duplicated_symbols() -> ad.AnnData:
    adata = modern(counts())
    adata.var = pd.DataFrame(index=SYMBOLS[:-1] + SYMBOLS[:1])  # e.g. two loci of one symbol, no IDs
    return adata


CORPUS = {
    "legacy_compound_csr": Case(lambda p: write_legacy(p / "in.h5ad", counts())),
    "legacy_compound_dense": Case(lambda p: write_legacy(p / "in.h5ad", counts().toarray())),
    "legacy_scaled_x_counts_in_raw": Case(
        lambda p: write_legacy(p / "in.h5ad", scaled(counts()), raw=counts()),
        ("X is scaled", "counts are in raw.X", "rerun with --matrix raw.X"), ["--matrix", "raw.X"]),
    "scaled_x_counts_in_raw": Case(h5ad(with_raw), ("X is scaled", "rerun with --matrix raw.X"), ["--matrix", "raw.X"]),
    "scaled_x_counts_in_layer": Case(
        h5ad(lambda: modern(scaled(counts()), layers={"counts": counts()})),
        ("X is scaled", "rerun with --layer counts"), ["--layer", "counts"]),
    "lognormalised_x_counts_in_layer": Case(
        h5ad(lambda: modern(lognormalised(counts()), layers={"counts": counts()})),
        ("X holds normalised values", "rerun with --layer counts", "--matrix X"), ["--layer", "counts"]),
    "csc": Case(h5ad(lambda: modern(sp.csc_matrix(counts())))),
    "dense_int64": Case(h5ad(lambda: modern(counts().toarray().astype(np.int64)))),
    "dense_float32_counts": Case(h5ad(lambda: modern(counts().toarray()))),
    "zarr_v2": Case(zarr_store(2)),
    "zarr_v3": Case(zarr_store(3)),
    "symbol_only_var_names": Case(h5ad(lambda: modern(counts(), var=pd.DataFrame(index=SYMBOLS))), genes=SYMBOLS),
    "obs_index_not_unique": Case(h5ad(lambda: modern(counts(), obs=obs(["AAACCTG-1"] * N_CELLS)))),
    "var_names_not_unique": Case(h5ad(duplicated_symbols), ("duplicate gene IDs", "GENE0", "--gene-key")),
    "empty_file": Case(h5ad(lambda: ad.AnnData(sp.csr_matrix((0, N_GENES), dtype=np.float32),
                                                 var=pd.DataFrame(index=GENES))), ("empty", "at least one cell")),
    "truncated_h5ad": Case(truncated, ("truncated or corrupt",)),
    "not_hdf5": Case(not_hdf5, ("truncated or corrupt",)),
}


def read_atlas_in_input_order(out: Path) -> ad.AnnData:
    """Every cell of the atlas, back in input order (by obs cell_number: names may repeat)."""
    atlas = open_atlas(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # repeated obs names: anndata warns, we do not rely on them
        cells = ad.concat([ad.read_zarr(out / "shards" / s["name"]) for s in atlas.shards], merge="same")
    return cells[np.argsort(cells.obs["cell_number"].to_numpy())]


def assert_atlas_holds_the_counts(out: Path, case: Case) -> None:
    cells = read_atlas_in_input_order(out)
    assert cells.shape == (N_CELLS, N_GENES) and list(cells.var_names) == case.genes
    assert open_atlas(out).attrs["values"] == case.values
    assert np.array_equal(cells.X.toarray(), counts().toarray())
    assert list(cells.obs["cell_type"].astype(str)) == [CELL_TYPES[i % 3] for i in range(N_CELLS)]


def build_with_cli(tmp_path: Path, source: Path, options: list[str]) -> int:
    return main(["atlas", "build", str(source), "--out", str(tmp_path / "atlas.zarr"), "--quiet", *options])


def nothing_left_behind(tmp_path: Path) -> list[str]:
    return [p.name for p in tmp_path.iterdir() if "atlas.zarr" in p.name]


def config_for(options: list[str]) -> BuildConfig:
    if not options:
        return BuildConfig()
    flag, value = options
    return BuildConfig(matrix=f"layers/{value}" if flag == "--layer" else value)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_wild_file_builds_exactly_or_names_the_option(name, tmp_path, capsys):
    case = CORPUS[name]
    (tmp_path / "input").mkdir()
    source = case.write(tmp_path / "input")
    code = build_with_cli(tmp_path, source, [])
    error = capsys.readouterr().err
    if not case.refusal:
        assert code == 0, error
        assert_atlas_holds_the_counts(tmp_path / "atlas.zarr", case)
        return
    assert code == 2 and "Traceback" not in error, error
    for words in case.refusal:
        assert words in error, error
    assert str(source) in error and nothing_left_behind(tmp_path) == []
    with pytest.raises(VCellError):  # the library, with the build's default matrix, says the same
        build_atlas([AnnDataSource(source, BuildConfig().matrix)], tmp_path / "atlas.zarr", BuildConfig(), progress=False)
    assert nothing_left_behind(tmp_path) == []
    if case.options:  # ... and the option it names works, from the CLI and the library
        assert build_with_cli(tmp_path, source, case.options) == 0, capsys.readouterr().err
        assert_atlas_holds_the_counts(tmp_path / "atlas.zarr", case)
        library = build_atlas([AnnDataSource(source, config_for(case.options).matrix)], tmp_path / "library.zarr",
                              BuildConfig(), progress=False)
        assert_atlas_holds_the_counts(library, case)


def test_legacy_file_is_one_anndata_opens_too(tmp_path):
    """The legacy writer above is faithful: anndata itself reads the same cells and genes."""
    path = write_legacy(tmp_path / "in.h5ad", counts(), raw=counts())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.read_h5ad(path)
    assert list(adata.obs["cell_type"].astype(str)) == [CELL_TYPES[i % 3] for i in range(N_CELLS)]
    assert list(adata.var["gene_ids"]) == GENES and (adata.X != counts()).nnz == 0
    assert (adata.raw.X != counts()).nnz == 0


def test_normalised_x_builds_as_it_is_when_asked(tmp_path):
    source = h5ad(lambda: modern(lognormalised(counts()), layers={"counts": counts()}))(tmp_path)
    out = build_atlas([AnnDataSource(source, "X")], tmp_path / "atlas.zarr", BuildConfig(), progress=False)
    cells = read_atlas_in_input_order(out)
    assert open_atlas(out).attrs["values"] == "normalized"
    assert np.allclose(cells.X.toarray(), lognormalised(counts()).toarray())


def test_cli_refusal_in_a_real_process_has_no_traceback(tmp_path):
    source = write_legacy(tmp_path / "in.h5ad", scaled(counts()), raw=counts())
    result = subprocess.run(
        [sys.executable, "-m", "vcell.cli", "atlas", "build", str(source), "--out", str(tmp_path / "atlas.zarr"), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "rerun with --matrix raw.X" in result.stderr and nothing_left_behind(tmp_path) == []


# -- durations as text (issue 15, item 7) --------------------------------------------------------
def with_time(values: list[str], categorical: bool = True) -> ad.AnnData:
    adata = modern(counts())
    column = [values[i % len(values)] for i in range(N_CELLS)]
    adata.obs["time"] = pd.Categorical(column) if categorical else np.array(column, dtype=object)
    return adata


@pytest.mark.parametrize(
    ("values", "hours"),
    [
        (["0h", "4h", "16h"], [0.0, 4.0, 16.0]),  # categories: their codes would read as 0, 1, 2 hours
        (["0", "4", "16"], [0.0, 4.0, 16.0]),  # numbers stored as categories
        (["30min", "1.5 h", "2d", ""], [0.5, 1.5, 48.0, np.nan]),  # units, spaces, a missing value
    ],
)
def test_time_written_as_text_is_stored_as_hours(tmp_path, capsys, caplog, values, hours):
    source = h5ad(lambda: with_time(values))(tmp_path)
    with caplog.at_level("INFO", logger="vcell.atlas.durations"):
        assert build_with_cli(tmp_path, source, []) == 0, capsys.readouterr().err
    assert "converted to hours" in caplog.text
    atlas = open_atlas(tmp_path / "atlas.zarr")
    assert atlas.attrs["obs_columns"]["time"] == "float32" and "time" not in atlas.attrs["obs_categories"]
    recorded = atlas.attrs["obs_conversions"]["time"]["values"]  # what each text became (missing: null)
    assert recorded == {text: None if np.isnan(value) else value for text, value in zip(values, hours)}
    stored = read_atlas_in_input_order(tmp_path / "atlas.zarr").obs["time"].to_numpy()
    expected = np.array([hours[i % len(hours)] for i in range(N_CELLS)], dtype=np.float32)
    assert np.array_equal(stored, expected, equal_nan=True)


def test_time_that_is_not_a_duration_is_refused(tmp_path, capsys):
    source = h5ad(lambda: with_time(["0h", "late"], categorical=False))(tmp_path)
    assert build_with_cli(tmp_path, source, []) == 2
    error = capsys.readouterr().err
    assert "obs column 'time'" in error and "'late'" in error and "not a duration" in error and "Traceback" not in error
    assert nothing_left_behind(tmp_path) == []
    # kept as a category on request (the model check then refuses to read it as hours)
    assert build_with_cli(tmp_path, source, ["build.duration_columns=[]"]) == 0
    assert open_atlas(tmp_path / "atlas.zarr").attrs["obs_categories"]["time"] == ["0h", "late"]
