"""`vcell atlas synth` end to end through the CLI, and reuse of the demo atlas by the main job."""

from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pytest

from vcell.atlas.store import open_atlas
from vcell.atlas.validate import validate_atlas
from vcell.cli import main

SMALL = ["data.synth.genes=200", "data.synth.transcription_factors=20", "data.synth.pathways=10",
         "data.synth.perturbations=10", "data.synth.truth_draws=16"]


def synth(tmp_path, *extra):
    return main(["atlas", "synth", "--out", str(tmp_path / "demo.zarr"), "--cells", "900", "--quiet", *SMALL, *extra])


def test_synth_writes_a_valid_atlas_with_truth(tmp_path, capsys):
    assert synth(tmp_path, "build.shard_cells=400") == 0
    out = tmp_path / "demo.zarr"
    assert "truth        yes" in capsys.readouterr().out
    assert validate_atlas(out, progress=False)["valid"]
    atlas = open_atlas(out)
    assert atlas.n_cells == 900 and atlas.n_genes == 200 and len(atlas.shards) == 3
    shard = ad.read_zarr(out / "shards/00000")
    assert {"cell_type", "perturbation", "time", "batch", "history"} <= set(shard.obs.columns)
    assert shard.obsm["truth_pathway_activity"].shape == (300, 10)
    for name in ("pathways.gmt", "pathway_compartments.tsv", "grn_edges.tsv"):
        assert (out / "annotations" / name).stat().st_size > 0


def test_same_seed_same_atlas(tmp_path):
    assert main(["atlas", "synth", "--out", str(tmp_path / "a.zarr"), "--cells", "500", "--quiet", *SMALL]) == 0
    assert main(["atlas", "synth", "--out", str(tmp_path / "b.zarr"), "--cells", "500", "--quiet", *SMALL]) == 0
    first, second = open_atlas(tmp_path / "a.zarr").attrs, open_atlas(tmp_path / "b.zarr").attrs
    assert first["checksums"] == second["checksums"]


def test_reuse_keeps_a_matching_atlas_and_refuses_another(tmp_path, capsys):
    assert synth(tmp_path) == 0
    stamp = (tmp_path / "demo.zarr" / "zarr.json").stat().st_mtime_ns
    assert synth(tmp_path, "--reuse") == 0
    assert (tmp_path / "demo.zarr" / "zarr.json").stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert synth(tmp_path, "--reuse", "--seed", "5") == 2
    assert "not simulated with the requested settings" in capsys.readouterr().err
    assert synth(tmp_path, "--seed", "5") == 2  # plain synth never replaces silently
    assert synth(tmp_path, "--seed", "5", "--overwrite") == 0
    assert open_atlas(tmp_path / "demo.zarr").attrs["sources"][0]["config"]["seed"] == 5


def test_info_json_of_a_simulated_atlas(tmp_path, capsys):
    assert synth(tmp_path) == 0
    capsys.readouterr()
    assert main(["atlas", "info", str(tmp_path / "demo.zarr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["has_truth"] and info["values"] == "counts"
    assert np.isclose(info["density"], info["nnz"] / (900 * 200))


# -- which atlas a job may simulate: only the demo path, never on a dry run ------------------
JOB = ["data.synth.cells=300", *SMALL]


def test_a_typo_in_data_atlas_is_an_error_not_a_new_atlas(tmp_path, monkeypatch, capsys):
    from vcell.config import load_config
    from vcell.errors import VCellError
    from vcell.train.ray_train import prepare_atlas

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "mydata.zarr").mkdir(parents=True)
    code = main(["train", "--dry-run", "data.atlas=data/mydta.zarr", f"scaling.storage_path={tmp_path / 'runs'}", *JOB])
    error = capsys.readouterr().err
    assert code == 2 and "data/mydta.zarr" in error and "Traceback" not in error
    assert "did you mean data/mydata.zarr" in error and "vcell atlas synth --out data/mydta.zarr" in error
    config = load_config(None, ["data.atlas=data/mydta.zarr", *JOB])
    with pytest.raises(VCellError, match="atlas not found: data/mydta.zarr"):
        prepare_atlas(config, progress=False)  # a real run as well, not only the dry run
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["mydata.zarr"]
    assert not (tmp_path / "runs").exists()


def test_the_demo_atlas_is_simulated_when_missing_and_says_so(tmp_path, monkeypatch, caplog):
    from vcell.config import load_config
    from vcell.train.ray_train import prepare_atlas

    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    atlas = prepare_atlas(load_config(None, JOB), progress=False)  # the default data.atlas: data/demo.zarr
    assert atlas.n_cells == 300 and (tmp_path / "data" / "demo.zarr").is_dir()
    assert "simulating the demo atlas data/demo.zarr" in caplog.text


def test_a_dry_run_never_writes_the_demo_atlas(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dry-run", f"scaling.storage_path={tmp_path / 'runs'}", *JOB]) == 2
    error = capsys.readouterr().err
    assert "data/demo.zarr" in error and "a dry run writes nothing" in error and "vcell atlas synth" in error
    assert list(tmp_path.iterdir()) == []
