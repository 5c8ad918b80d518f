"""`vcell tune` as users run it: a campaign driver killed mid-way continues when the same command
runs again, without training finished trials again; Optuna aims at an evaluation metric; W&B
writes one offline run per trial and never the API key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tune.conftest import campaign_config
from vcell.config import save_config
from vcell.train.tracking import wandb_run_id

pytestmark = pytest.mark.slow
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # what a W&B API key looks like


def launch(config_path: Path, cwd: Path) -> subprocess.Popen:
    environment = {**os.environ, "WANDB_API_KEY": FAKE_KEY}
    return subprocess.Popen([sys.executable, "-m", "vcell.cli", "tune", "--config", str(config_path), "--quiet"],
                            cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the campaign ended before {path} appeared:\n{process.stdout.read()}")
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.2)


def test_killed_campaign_continues_without_retraining(train_atlas, tmp_path):
    config = campaign_config(
        train_atlas, tmp_path / "runs", "resume",
        "{train.learning_rate: {loguniform: [1.0e-3, 3.0e-2]}, model.latent_dim: {choice: [4, 8]}}",
        "tune.trials=2", "tune.search=optuna", "tune.scheduler.name=none", "tune.resources.max_concurrent_trials=1",
        "tune.metric=evaluation.embedding.model.knn_accuracy", "tune.mode=max", "evaluate.plots=false",
        "evaluate.embeddings=none", "evaluate.enhancements=false", "evaluate.max_cells=200", "wandb.mode=offline",
    )
    config_path = save_config(config, tmp_path / "campaign.yaml")
    directory = tmp_path / "runs" / "resume"

    first = launch(config_path, tmp_path)
    wait_for(directory / "trial-001" / "config.yaml", first)  # trial-000 is done, trial-001 has begun
    time.sleep(1.0)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
    first.wait(timeout=60)
    finished = directory / "trial-000"
    before = {name: (finished / name).read_bytes() for name in ("metrics.json", "history.csv")}
    assert "evaluation" in json.loads(before["metrics.json"])

    second = launch(config_path, tmp_path)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    assert {name: (finished / name).read_bytes() for name in before} == before  # not trained again
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["trials"] == 2 and summary["completed"] == 2, output
    resumed = json.loads((directory / "trial-001" / "metrics.json").read_text())
    assert resumed["steps"] == 12 and "knn_accuracy" in resumed["evaluation"]["embedding"]["model"]
    assert summary["best"]["final_objective"] == max(
        json.loads((directory / t / "metrics.json").read_text())["evaluation"]["embedding"]["model"]["knn_accuracy"]
        for t in ("trial-000", "trial-001"))
    assert (directory / "best.yaml").is_file()

    # one offline W&B run per trial, with the campaign's deterministic ids; the key is nowhere
    ids = [wandb_run_id("resume", name) for name in ("trial-000", "trial-001")]
    for name, run_id in zip(("trial-000", "trial-001"), ids):
        assert list((directory / name / "wandb").glob(f"offline-run-*-{run_id}")), name
    assert len(set(ids)) == 2
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path
