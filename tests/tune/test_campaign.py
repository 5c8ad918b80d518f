"""Campaigns on the session's Ray cluster: ASHA stops trials and frees their cores; results,
best.yaml and plots; PBT copies a trial's checkpoint into another and goes on."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from tests.tune.conftest import campaign_config
from vcell.config import load_config
from vcell.train.ray_train import train
from vcell.tune.campaign import tune_campaign

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def asha_campaign(ray_cluster, train_atlas, tmp_path_factory):
    """4 trials on 2 CPUs: two good learning rates run first, two that cannot learn come after."""
    storage = tmp_path_factory.mktemp("tune")
    config = campaign_config(train_atlas, storage, "asha", "{train.learning_rate: {grid: [0.03, 0.01, 1.0e-8, 1.0e-9]}}",
                             "tune.trials=4", "tune.search=grid")
    summary = tune_campaign(config, progress=False)
    return config, summary, storage / "asha"


def test_asha_campaign_stops_weak_trials_and_writes_results(asha_campaign):
    config, summary, directory = asha_campaign
    rows = list(csv.DictReader(open(directory / "results.csv")))
    assert [row["trial"] for row in rows] == ["trial-000", "trial-001", "trial-002", "trial-003"]
    assert {"train.learning_rate", "final_objective", "best_objective", "status", "steps", "seconds"} <= set(rows[0])
    statuses = {row["trial"]: row["status"] for row in rows}
    # the two good trials run side by side: whichever reaches a rung second may be stopped there if
    # it is behind, which is ASHA at work; the two that cannot learn meet both at the first rung
    assert "completed" in (statuses["trial-000"], statuses["trial-001"])
    assert statuses["trial-002"] == statuses["trial-003"] == "stopped early"
    stopped = [row for row in rows if row["status"] == "stopped early"]
    assert all(int(row["steps"]) < 12 for row in stopped)
    assert summary["stopped_early"] == len(stopped) and summary["completed"] + len(stopped) == 4
    # every trial is a whole run; the stopped ones hold a partial one
    for row in rows:
        history = list(csv.DictReader(open(directory / row["trial"] / "history.csv")))
        assert int(history[-1]["step"]) == int(row["steps"]) or row["status"] == "stopped early"
    # a completed trial exports its model; which of the two good trials completes depends on timing
    completed = [row["trial"] for row in rows if row["status"] == "completed"]
    assert all((directory / trial / "model" / "model.safetensors").is_file() for trial in completed)
    for name in ("objective_vs_steps.png", "objective_vs_parameters.png"):
        assert (directory / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_asha_releases_the_cores_of_stopped_trials(asha_campaign, ray_cluster):
    # a stopped trial's Ray Train placement group would otherwise hold its cores until the driver exits
    states = [group["state"] for group in ray_cluster.util.placement_group_table().values()]
    assert "CREATED" not in states and "PENDING" not in states


def test_best_yaml_is_a_training_config_that_trains(asha_campaign):
    config, summary, directory = asha_campaign
    best = summary["best"]
    assert best["trial"] in ("trial-000", "trial-001") and best["status"] == "completed"
    text = (directory / "best.yaml").read_text()
    assert "tune:" not in text  # a plain training config
    best_config = load_config(directory / "best.yaml")
    assert best_config.name == "asha-best" and best_config.train.learning_rate == pytest.approx(float(best["train.learning_rate"]))
    assert best_config.scaling.workers == 1
    metrics = train(best_config, progress=False)
    assert metrics["steps"] == 12 and metrics["final_validation"]["val/loss"] > 0


def test_trial_folders_are_runs_with_their_own_wandb_ids(asha_campaign):
    config, summary, directory = asha_campaign
    saved = yaml.safe_load((directory / "trial-002" / "config.yaml").read_text())
    assert saved["name"] == "trial-002" and saved["train"]["learning_rate"] == pytest.approx(1e-8)
    assert saved["wandb"]["group"] == "asha" and "tune" not in saved
    assert json.loads((directory / "summary.json").read_text())["trials"] == 4


@pytest.mark.slow
def test_pbt_copies_a_better_trial_and_continues(ray_cluster, train_atlas, tmp_path):
    config = campaign_config(train_atlas, tmp_path, "pbt", "{train.learning_rate: {grid: [0.03, 1.0e-9]}}",
                             "tune.trials=2", "tune.scheduler.name=pbt", "tune.scheduler.quantile_fraction=0.5",
                             "tune.scheduler.perturbation_interval=4", "tune.seed=3", "train.steps=48",
                             "train.keep_checkpoints=12")  # 12 chances for PBT's decision to reach the trial in time
    summary = tune_campaign(config, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "pbt" / "results.csv")))
    assert [row["status"] for row in rows] == ["completed", "completed"]
    copied = [row for row in rows if int(row["exploits"]) > 0]
    assert copied, "PBT never copied the better trial"
    lineage = json.loads((tmp_path / "pbt" / copied[0]["trial"] / "exploits.json").read_text())
    assert lineage[0]["from"] != copied[0]["trial"] and lineage[0]["step"] % 4 == 0 and 0 < lineage[0]["step"] <= 48
    # the copy went on from the other trial's weights with its own (mutated) learning rate, to the end
    metrics = json.loads((tmp_path / "pbt" / copied[0]["trial"] / "metrics.json").read_text())
    assert metrics["steps"] == 48 and metrics["resumed_from_step"] == lineage[-1]["step"]
    assert summary["errored"] == 0
