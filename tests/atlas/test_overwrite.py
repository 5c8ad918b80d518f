"""`vcell atlas build/synth --overwrite` replaces only an atlas vcell wrote: never an input, a
folder of the user's, or anything above or inside an input; paths are compared resolved."""

from __future__ import annotations

import os

import pytest

from tests.conftest import ensembl_ids, make_adata
from tests.safety import read_only, refused_cleanly, snapshot
from vcell.atlas.store import open_atlas
from vcell.cli import main

SMALL = ["--cells", "300", "--quiet", "data.synth.genes=60", "data.synth.transcription_factors=6",
         "data.synth.pathways=4", "data.synth.compartments=2", "data.synth.perturbations=3", "data.synth.truth_draws=8"]


@pytest.fixture
def anndata_zarr(tmp_path):
    """An AnnData .zarr store: a valid `atlas build` input."""
    path = tmp_path / "x.zarr"
    make_adata(200, ensembl_ids(0, 40), seed=5).write_zarr(path)
    return path


def build(*arguments: object) -> int:
    return main(["atlas", "build", *map(str, arguments), "--quiet"])


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink"])
def test_build_never_overwrites_its_own_input(anndata_zarr, tmp_path, capsys, spelling):
    out = {"same": anndata_zarr, "dotdot": tmp_path / "sub" / ".." / "x.zarr", "symlink": tmp_path / "link.zarr"}[spelling]
    (tmp_path / "sub").mkdir()
    os.symlink(anndata_zarr, tmp_path / "link.zarr")
    before = snapshot(anndata_zarr)
    error = refused_cleanly(build(anndata_zarr, "--out", out, "--overwrite"), capsys, anndata_zarr)
    assert "input" in error
    assert snapshot(anndata_zarr) == before


def test_build_never_writes_above_or_inside_an_input(anndata_zarr, tmp_path, capsys):
    before = snapshot(tmp_path)
    refused_cleanly(build(anndata_zarr, "--out", tmp_path, "--overwrite"), capsys, anndata_zarr)
    refused_cleanly(build(anndata_zarr, "--out", anndata_zarr / "atlas.zarr"), capsys, anndata_zarr)
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_a_folder_that_is_not_an_atlas(anndata_zarr, tmp_path, capsys):
    project = tmp_path / "myproject"
    project.mkdir()
    (project / "notes.txt").write_text("months of work")
    before = snapshot(project)
    refused_cleanly(build(anndata_zarr, "--out", project, "--overwrite"), capsys, project, "not a vcell atlas")
    refused_cleanly(main(["atlas", "synth", "--out", str(project), "--overwrite", *SMALL]), capsys, project)
    assert snapshot(project) == before
    (tmp_path / "file.zarr").write_text("a file, not an atlas")
    refused_cleanly(build(anndata_zarr, "--out", tmp_path / "file.zarr", "--overwrite"), capsys, "file.zarr")
    assert (tmp_path / "file.zarr").read_text() == "a file, not an atlas"


def test_overwrite_replaces_a_vcell_atlas_but_not_one_holding_the_users_files(anndata_zarr, tmp_path, capsys):
    out = tmp_path / "atlas.zarr"
    assert main(["atlas", "synth", "--out", str(out), *SMALL]) == 0
    assert build(anndata_zarr, "--out", out, "--overwrite") == 0  # a vcell atlas: replaced
    assert open_atlas(out).n_cells == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas.zarr", "x.zarr"]  # no temporaries left
    (out / "my_analysis.csv").write_text("keep me")
    before = snapshot(out)
    refused_cleanly(build(anndata_zarr, "--out", out, "--overwrite"), capsys, "my_analysis.csv")
    assert snapshot(out) == before


def test_out_under_a_file_or_in_a_read_only_folder_is_a_clear_error(anndata_zarr, tmp_path, capsys):
    (tmp_path / "somefile.txt").write_text("text")
    refused_cleanly(build(anndata_zarr, "--out", tmp_path / "somefile.txt" / "atlas.zarr"), capsys, "somefile.txt")
    assert (tmp_path / "somefile.txt").read_text() == "text"
    with read_only(tmp_path / "locked") as locked:
        refused_cleanly(build(anndata_zarr, "--out", locked / "atlas.zarr"), capsys, locked)
        assert list(locked.iterdir()) == []
