"""A campaign's best.yaml (vcell.tune.results), without a cluster."""

from __future__ import annotations

import yaml

from vcell.config import load_config
from vcell.tune.campaign_plan import campaign_plan
from vcell.tune.results import write_best_config


def test_best_yaml_of_a_campaign_run_by_an_older_vcell_trains_the_model_the_trial_was(tmp_path):
    """A trial saved before `dilution_correction` existed propagated undiluted slopes: its best.yaml
    says so (0.0), instead of handing the retraining today's default."""
    config = load_config(None, ["name=older", "model.name=regulatory", "model.enhancements=[regulatory]",
                                f"scaling.storage_path={tmp_path}", "tune.space={train.learning_rate: {grid: [0.01]}}"])
    trial = tmp_path / "older" / "trial-000"
    trial.mkdir(parents=True)
    saved = config.model_dump(mode="json")
    del saved["model"]["regulatory"]["dilution_correction"]
    (trial / "config.yaml").write_text(yaml.safe_dump(saved))
    best = {"run": str(trial), "trial": "trial-000", "final_objective": 1.5, "exploits": 0}
    path = write_best_config(campaign_plan(config), best, tmp_path / "best.yaml")
    best_config = load_config(path)
    assert best_config.name == "older-best"
    assert best_config.model.regulatory.dilution_correction == 0.0
    assert best_config.model.regulatory.saturation == config.model.regulatory.saturation
