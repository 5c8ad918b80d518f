"""`train_in_process`: a config's model trained here (plain loop, no Ray) into a run folder that the
evaluation, export and embedding commands read like one `vcell train` wrote."""

from __future__ import annotations

import json

import pytest
import torch

from vcell.config import load_config
from vcell.errors import VCellError
from vcell.data.memory import load_cells
from vcell.evaluate.export import open_trained
from vcell.evaluate.in_process import train_in_process
from vcell.train.tracking import read_history


def test_in_process_run_folder_holds_model_history_and_metrics(evaluation_atlas, tmp_path, capsys):
    config = load_config(None, [
        "name=here", f"data.atlas={evaluation_atlas}", "model.name=stochastic", "model.size=tiny",
        "loader.split.holdout=[]", "loader.batch_size=64", "train.steps=12", f"scaling.storage_path={tmp_path}",
    ])
    run = train_in_process(config, progress_every=5)
    assert run.directory == tmp_path / "here"
    assert {"config.yaml", "history.csv", "metrics.json", "model"} <= {path.name for path in run.directory.iterdir()}
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == ["5/12", "10/12", "12/12"]

    rows = read_history(run.directory / "history.csv")
    assert [int(row["step"]) for row in rows] == list(range(1, 13))
    first = run.history[0]
    assert float(rows[0]["train/loss"]) == sum(first.values())  # the terms the loop summed
    assert set(first) <= {key.removeprefix("train/") for key in rows[0]}
    metrics = json.loads((run.directory / "metrics.json").read_text())
    assert metrics["steps"] == 12 and metrics["final_train"]["train/loss"] == sum(run.history[-1].values())

    # the loader was given what the model reads (raw counts for the negative binomial)
    assert run.config.loader.keep_counts and "cell_type" in run.config.loader.labels
    trained = open_trained(run.directory)
    assert trained.run_folder == run.directory and trained.config.model.name == "stochastic"
    cells = load_cells(evaluation_atlas, run.config.loader, "test")
    with torch.no_grad():
        assert torch.equal(trained.model.embed(cells).latent, run.model.embed(cells).latent)


def test_training_here_again_starts_the_run_over_but_never_replaces_a_vcell_train_run(evaluation_atlas, tmp_path):
    overrides = ["name=twice", f"data.atlas={evaluation_atlas}", "model.size=tiny", "loader.split.holdout=[]",
                 "loader.batch_size=64", "train.steps=2", f"scaling.storage_path={tmp_path}"]
    first = train_in_process(load_config(None, [*overrides, "model.name=regulatory"]))
    (first.directory / "plots").mkdir()
    (first.directory / "plots" / "grn_edges_vs_truth.png").write_bytes(b"the regulatory model's network")
    second = train_in_process(load_config(None, [*overrides, "model.name=base"]))
    assert second.directory == first.directory and not (first.directory / "plots").exists()
    assert open_trained(second.directory).config.model.name == "base"

    manifest = first.directory / "checkpoints" / "step-00000002" / "manifest.json"  # as `vcell train` leaves it
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{}")
    before = sorted(path.name for path in first.directory.rglob("*"))
    with pytest.raises(VCellError, match="checkpoints"):
        train_in_process(load_config(None, overrides))
    assert sorted(path.name for path in first.directory.rglob("*")) == before
