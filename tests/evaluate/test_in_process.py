"""`train_in_process`: a config's model trained here (plain loop, no Ray) into a run folder that the
evaluation, export and embedding commands read like one `vcell train` wrote."""

from __future__ import annotations

import json

import torch

from vcell.config import load_config
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
