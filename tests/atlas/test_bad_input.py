"""Every bad input gets a clear error naming the file and problem, exit 2, and no output left."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tests.conftest import ensembl_ids, make_adata
from vcell.cli import main


def build(tmp_path, *inputs, extra=()):
    """Run `vcell atlas build` in-process; returns the exit code."""
    return main(["atlas", "build", *map(str, inputs), "--out", str(tmp_path / "atlas.zarr"), "--quiet", *extra])


def assert_refused(tmp_path, capsys, code, *needles):
    error = capsys.readouterr().err
    assert code == 2, error
    for needle in needles:
        assert needle in error, error
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".atlas.zarr") or p.name == "atlas.zarr"]
    assert leftovers == [], f"left behind: {leftovers}"


def write(tmp_path, adata, name="in.h5ad"):
    path = tmp_path / name
    adata.write_h5ad(path)
    return path


def test_missing_file(tmp_path, capsys):
    assert_refused(tmp_path, capsys, build(tmp_path, tmp_path / "nope.h5ad"), "input not found", "nope.h5ad")


def test_truncated_h5ad(tmp_path, capsys):
    path = write(tmp_path, make_adata(500, ensembl_ids(0, 100), seed=1))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_refused(tmp_path, capsys, build(tmp_path, path), str(path), "truncated or corrupt")


def test_corrupt_h5ad(tmp_path, capsys):
    path = tmp_path / "garbage.h5ad"
    path.write_bytes(os.urandom(4096))
    assert_refused(tmp_path, capsys, build(tmp_path, path), "garbage.h5ad", "truncated or corrupt")


def test_empty_matrix(tmp_path, capsys):
    empty = ad.AnnData(sp.csr_matrix((0, 10), dtype=np.float32), var=pd.DataFrame(index=ensembl_ids(0, 10)))
    assert_refused(tmp_path, capsys, build(tmp_path, write(tmp_path, empty)), "empty", "in.h5ad")


def test_all_zero_matrix(tmp_path, capsys):
    zeros = ad.AnnData(sp.csr_matrix((5, 10), dtype=np.float32), var=pd.DataFrame(index=ensembl_ids(0, 10)))
    assert_refused(tmp_path, capsys, build(tmp_path, write(tmp_path, zeros)), "no non-zero values")


def test_duplicate_gene_ids(tmp_path, capsys):
    adata = make_adata(50, ensembl_ids(0, 10), seed=1)
    adata.var_names = ensembl_ids(0, 9) + ensembl_ids(0, 1)
    assert_refused(tmp_path, capsys, build(tmp_path, write(tmp_path, adata)), "duplicate gene IDs", "ENSG00000000000")


def test_genes_without_id(tmp_path, capsys):
    adata = make_adata(50, ensembl_ids(0, 10), seed=1)
    adata.var["gene_ids"] = ["ENSG1", None, *ensembl_ids(2, 10)]
    path = write(tmp_path, adata)
    assert_refused(tmp_path, capsys, build(tmp_path, path, extra=["--gene-key", "gene_ids"]), "no ID", "rows [1]")


def test_unknown_gene_key(tmp_path, capsys):
    path = write(tmp_path, make_adata(50, ensembl_ids(0, 10), seed=1))
    assert_refused(tmp_path, capsys, build(tmp_path, path, extra=["--gene-key", "nope"]), "'nope'", "gene_symbols")


@pytest.mark.parametrize("bad_value, word", [(np.nan, "NaN/inf"), (np.inf, "NaN/inf"), (-3.0, "negative")])
def test_nan_inf_negative_values(tmp_path, capsys, bad_value, word):
    adata = make_adata(50, ensembl_ids(0, 10), seed=1)
    row = int(np.flatnonzero(np.diff(adata.X.indptr))[3])  # the 4th cell that has values
    adata.X.data[adata.X.indptr[row]] = bad_value
    needles = (word, f"cell {row} (obs name 's1-cell{row}')", "in.h5ad")
    assert_refused(tmp_path, capsys, build(tmp_path, write(tmp_path, adata)), *needles)


def test_counts_requested_but_normalized(tmp_path, capsys):
    adata = make_adata(50, ensembl_ids(0, 10), seed=1, counts=False)
    path = write(tmp_path, adata)
    assert_refused(tmp_path, capsys, build(tmp_path, path, extra=["--values", "counts"]), "counts were requested", "normalised")


def test_missing_layer(tmp_path, capsys):
    path = write(tmp_path, make_adata(50, ensembl_ids(0, 10), seed=1))
    assert_refused(tmp_path, capsys, build(tmp_path, path, extra=["--layer", "counts"]), "no matrix 'layers/counts'", "available: X")


def test_inputs_with_no_shared_genes(tmp_path, capsys):
    first = write(tmp_path, make_adata(50, ensembl_ids(0, 10), seed=1), "a.h5ad")
    symbols = make_adata(50, [f"GENE{i}" for i in range(10)], seed=2)
    symbols.var = pd.DataFrame(index=[f"GENE{i}" for i in range(10)])
    second = write(tmp_path, symbols, "b.h5ad")
    assert_refused(tmp_path, capsys, build(tmp_path, first, second), "shares no gene ID", "b.h5ad")


def test_output_exists_unless_overwrite(tmp_path, capsys):
    path = write(tmp_path, make_adata(50, ensembl_ids(0, 10), seed=1))
    assert build(tmp_path, path) == 0
    stamp = (tmp_path / "atlas.zarr" / "zarr.json").stat().st_mtime_ns
    capsys.readouterr()
    assert build(tmp_path, path) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "atlas.zarr" / "zarr.json").stat().st_mtime_ns == stamp  # untouched
    assert build(tmp_path, path, extra=["--overwrite"]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_injected_disk_full_leaves_nothing(tmp_path, capsys, monkeypatch):
    import vcell.atlas.build as build_module

    calls = []
    original = build_module.write_shard

    def failing_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(build_module, "write_shard", failing_write)
    path = write(tmp_path, make_adata(200, ensembl_ids(0, 20), seed=1))
    code = build(tmp_path, path, extra=["build.shard_cells=50"])
    assert_refused(tmp_path, capsys, code, "disk full", "nothing was left behind")


def test_interrupted_build_leaves_no_atlas(tmp_path, monkeypatch):
    import vcell.atlas.build as build_module

    monkeypatch.setattr(build_module, "write_vocabulary_and_stats", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    path = write(tmp_path, make_adata(100, ensembl_ids(0, 20), seed=1))
    assert build(tmp_path, path) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad"]


def test_leftover_of_a_killed_build_is_removed(tmp_path):
    leftover = tmp_path / ".atlas.zarr.tmp-999999999"  # no such process
    (leftover / "shards").mkdir(parents=True)
    path = write(tmp_path, make_adata(100, ensembl_ids(0, 20), seed=1))
    assert build(tmp_path, path) == 0
    assert not leftover.exists()


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A real 1 MiB tmpfs (needs mount rights; skipped where the sandbox forbids it)."""
    mount_point = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_real_disk_full(tmp_path, tiny_filesystem, capsys):
    path = write(tmp_path, make_adata(10000, ensembl_ids(0, 400), seed=1))  # ~1.1 MiB stored, more spilled
    code = main(["atlas", "build", str(path), "--out", str(tiny_filesystem / "atlas.zarr"), "--quiet", "build.codec.name=none"])
    error = capsys.readouterr().err
    assert code == 2 and "disk full" in error, error
    assert list(tiny_filesystem.iterdir()) == []
