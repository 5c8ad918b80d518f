"""`vcell export / embed / predict` never destroy what they read or what the user owns: `--overwrite`
replaces only an output vcell wrote, never a run, an input, or a folder above or inside one; file
system refusals are one clear message naming the path."""

from __future__ import annotations

import anndata as ad
import pytest

from tests.evaluate.test_embed import atlas_as_anndata
from tests.safety import read_only, refused_cleanly, snapshot
from vcell.atlas.store import open_atlas
from vcell.cli import main


@pytest.fixture(scope="module")
def small_h5ad(evaluation_atlas, tmp_path_factory):
    """60 cells of the evaluation atlas as a user's .h5ad (embeds in well under a second)."""
    path = tmp_path_factory.mktemp("h5ad") / "cells.h5ad"
    atlas_as_anndata(evaluation_atlas)[:60].copy().write_h5ad(path)
    return path


@pytest.fixture
def users_h5ad(small_h5ad, tmp_path):
    path = tmp_path / "f.h5ad"
    path.write_bytes(small_h5ad.read_bytes())
    return path


def export(run, out, *extra) -> int:
    return main(["export", str(run), "--out", str(out), *extra])


def embed(run, source, out, *extra) -> int:
    return main(["embed", str(run), "--input", str(source), "--out", str(out), "--quiet", *extra])


def predict(run, out, *extra) -> int:
    cell_type = open_atlas(ad_atlas(run)).attrs["obs_categories"]["cell_type"][0]
    return main(["predict", str(run), "--cell-type", cell_type, "--cells", "20", "--out", str(out), *extra])


def ad_atlas(run):
    import yaml

    return yaml.safe_load((run / "model" / "config.yaml").read_text())["data"]["atlas"]


@pytest.mark.parametrize("where", ["run", "parent", "inside"])
def test_export_never_overwrites_the_run_it_reads(run_copy, capsys, where):
    out = {"run": run_copy, "parent": run_copy.parent, "inside": run_copy / "model"}[where]
    before = snapshot(run_copy.parent)
    refused_cleanly(export(run_copy, out, "--overwrite"), capsys, run_copy)
    assert snapshot(run_copy.parent) == before


def test_export_overwrites_only_its_own_export(run_copy, tmp_path, capsys):
    out = tmp_path / "exported"
    assert export(run_copy, out) == 0
    assert export(run_copy, out, "--overwrite") == 0  # an export of ours: replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or old copy left
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    refused_cleanly(export(run_copy, out, "--overwrite"), capsys, "notes.txt")
    assert snapshot(out) == before
    folder = tmp_path / "myproject"
    folder.mkdir()
    (folder / "data.csv").write_text("1,2")
    refused_cleanly(export(run_copy, folder, "--overwrite"), capsys, folder, "not a vcell export")
    assert snapshot(folder) == {"data.csv": snapshot(folder / "data.csv")["."]}


def test_export_onto_a_file_under_a_file_or_into_a_read_only_folder(run_copy, tmp_path, capsys):
    (tmp_path / "somefile").write_text("text")
    refused_cleanly(export(run_copy, tmp_path / "somefile"), capsys, "somefile")
    refused_cleanly(export(run_copy, tmp_path / "somefile", "--overwrite"), capsys, "somefile")
    refused_cleanly(export(run_copy, tmp_path / "somefile" / "out"), capsys, "somefile")
    assert (tmp_path / "somefile").read_text() == "text"
    with read_only(tmp_path / "locked") as locked:
        refused_cleanly(export(run_copy, locked / "out"), capsys, locked)
        assert list(locked.iterdir()) == []


@pytest.mark.parametrize("spelling", ["same", "dotdot"])
def test_embed_never_overwrites_its_input(run_copy, users_h5ad, tmp_path, capsys, spelling):
    out = users_h5ad if spelling == "same" else tmp_path / "sub" / ".." / users_h5ad.name
    (tmp_path / "sub").mkdir()
    before = snapshot(users_h5ad)
    refused_cleanly(embed(run_copy, users_h5ad, out, "--overwrite"), capsys, users_h5ad)
    assert snapshot(users_h5ad) == before


def test_embed_overwrites_only_its_own_output(run_copy, users_h5ad, small_h5ad, tmp_path, capsys):
    out = tmp_path / "e.h5ad"
    assert embed(run_copy, small_h5ad, out) == 0
    assert ad.read_h5ad(out).uns["vcell_writer"] == "vcell embed"
    assert embed(run_copy, small_h5ad, out, "--overwrite") == 0  # ours: replaced
    before = snapshot(users_h5ad)
    refused_cleanly(embed(run_copy, small_h5ad, users_h5ad, "--overwrite"), capsys, users_h5ad, "not an output of a vcell")
    assert snapshot(users_h5ad) == before
    refused_cleanly(embed(run_copy, small_h5ad, run_copy / "cells.h5ad"), capsys, run_copy)  # never inside the run
    assert not (run_copy / "cells.h5ad").exists()


def test_embed_onto_a_folder_under_a_file_or_into_a_read_only_folder(run_copy, small_h5ad, tmp_path, capsys):
    (tmp_path / "folder.h5ad").mkdir()
    refused_cleanly(embed(run_copy, small_h5ad, tmp_path / "folder.h5ad", "--overwrite"), capsys, "folder.h5ad")
    (tmp_path / "somefile").write_text("text")
    refused_cleanly(embed(run_copy, small_h5ad, tmp_path / "somefile" / "e.h5ad"), capsys, "somefile")
    with read_only(tmp_path / "locked") as locked:
        refused_cleanly(embed(run_copy, small_h5ad, locked / "e.h5ad"), capsys, locked)
        assert list(locked.iterdir()) == []


def test_predict_overwrites_only_its_own_output(run_copy, users_h5ad, tmp_path, capsys):
    before = snapshot(users_h5ad)
    refused_cleanly(predict(run_copy, users_h5ad, "--overwrite"), capsys, users_h5ad)
    assert snapshot(users_h5ad) == before
    out = tmp_path / "p.h5ad"
    assert predict(run_copy, out) == 0 and predict(run_copy, out, "--overwrite") == 0
    assert ad.read_h5ad(out).uns["vcell_writer"] == "vcell predict"
    refused_cleanly(predict(run_copy, run_copy / "p.h5ad"), capsys, run_copy)
    with read_only(tmp_path / "locked") as locked:
        refused_cleanly(predict(run_copy, locked / "p.h5ad"), capsys, locked)


def test_the_model_card_names_the_workers_that_trained_an_elastic_run():
    from vcell.config import load_config
    from vcell.evaluate.export import workers_line

    elastic = load_config(None, ["scaling.min_workers=1", "scaling.workers=3"])
    assert workers_line(elastic, {"workers": 2}) == "2 worker(s) in the last attempt (elastic, 1-3)"
    assert workers_line(elastic, {}) == "3 worker(s) (elastic, 1-3)"  # a run folder without metrics yet
    assert workers_line(load_config(None, []), {"workers": 2}) == "2 worker(s) in the last attempt"
