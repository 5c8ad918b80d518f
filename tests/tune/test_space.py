"""The search space and campaign plan are checked before any trial: each mistake names the key
and says how to fix it; good spaces become the right Ray Tune domains."""

from __future__ import annotations

import pytest
from ray.tune.search.sample import Categorical, Float, Integer

from vcell.config import dump_config, load_config
from vcell.errors import VCellError
from vcell.train.run import config_hash
from vcell.tune.campaign import trial_count
from vcell.tune.campaign_plan import campaign_plan

GOOD = "{train.learning_rate: {loguniform: [1.0e-4, 1.0e-2]}, model.latent_dim: {choice: [8, 16]}, " \
       "model.n_layers: {int: [1, 3]}, model.dropout: {uniform: [0.0, 0.3]}}"


def campaign(space: str = GOOD, *overrides: str):
    return load_config(None, [f"tune.space={space}", *overrides])


def test_a_good_space_becomes_tune_domains():
    plan = campaign_plan(campaign())
    domains = plan.space.tune_domains()
    assert isinstance(domains["train.learning_rate"], Float) and domains["train.learning_rate"].lower == 1e-4
    assert isinstance(domains["model.latent_dim"], Categorical) and domains["model.latent_dim"].categories == [8, 16]
    integer = domains["model.n_layers"]
    assert isinstance(integer, Integer) and (integer.lower, integer.upper) == (1, 4)  # ours inclusive, Tune's not
    assert plan.scheduler_metric == "val/loss" and plan.scheduler_mode == "min"
    grid = campaign_plan(campaign("{model.latent_dim: {choice: [8, 16]}, model.size: {grid: [tiny, small]}}",
                                  "tune.search=grid", "tune.trials=4"))
    assert grid.space.tune_domains("grid")["model.latent_dim"] == {"grid_search": [8, 16]}
    assert trial_count(grid) == 1  # 4 trials = the whole 2 x 2 grid once


@pytest.mark.parametrize("space, message", [
    ("{train.learning_rat: {uniform: [0.001, 0.01]}}", "did you mean 'train.learning_rate'"),
    ("{model.latent_dim: {choice: []}}", "needs a non-empty list"),
    ("{train.learning_rate: {loguniform: [0.0, 0.01]}}", "loguniform needs positive bounds"),
    ("{train.learning_rate: {loguniform: [-1.0, 0.01]}}", "loguniform needs positive bounds"),
    ("{train.learning_rate: {uniform: [0.01, 0.001]}}", "needs low < high"),
    ("{model.latent_dim: {uniform: [8, 64]}}", "'model.latent_dim' uniform value (inside the range)"),
    ("{model.size: {choice: [tiny, huge]}}", "'model.size' choice value 'huge' is not allowed"),
    ("{train.steps: {int: [0, 10]}}", "'train.steps' int lower bound 0 is not allowed"),
    ("{scaling.workers: {choice: [1, 2]}}", "cannot be searched: every trial gets the same resources"),
    ("{data.atlas: {choice: [a, b]}}", "cannot be searched"),
    ("{model.temporal: {choice: [1]}}", "is a section, not a value"),
    ("{model.latent_dim: {between: [1, 2]}}", "give exactly one of choice, grid, uniform, loguniform, int"),
    ("{}", "tune.space is empty"),
])
def test_invalid_spaces_fail_with_the_key_named(space, message):
    with pytest.raises(VCellError) as caught:
        campaign_plan(campaign(space))
    assert message in str(caught.value) + str(getattr(caught.value, "hint", ""))


@pytest.mark.parametrize("overrides, message", [
    (("tune.search=optuna", "tune.space={model.size: {grid: [tiny, small]}}"), "optuna samples every key"),
    (("tune.search=grid",), "needs a list of values for every key"),
    (("tune.scheduler.name=pbt", "tune.space={model.latent_dim: {choice: [8, 16]}}"), "at least one key it may mutate"),
    (("tune.metric=val/", ), "not a metric a trial reports"),
    (("tune.metric=loss",), "not a metric a trial reports"),
    (("tune.metric=evaluation.embeddings.model.knn_accuracy",), "evaluation has the sections"),
    (("train.validate_every=null",), "train.validate_every is null"),
    (("loader.split.val_fraction=0", "tune.scheduler.name=none"), "needs validation cells"),
    (("tune.scheduler.name=pbt", "tune.scheduler.perturbation_interval=30"), "multiple of"),
])
def test_impossible_campaigns_fail_before_any_trial(overrides, message):
    config = campaign(GOOD, *overrides) if not any(o.startswith("tune.space") for o in overrides) \
        else load_config(None, list(overrides))
    with pytest.raises(VCellError) as caught:
        plan = campaign_plan(config)
        trial_count(plan)
    assert message in str(caught.value)


def test_trials_must_cover_whole_grids():
    plan = campaign_plan(campaign("{model.size: {grid: [tiny, small, medium]}}", "tune.trials=8"))
    with pytest.raises(VCellError, match="not a multiple of the grid's 3 combinations"):
        trial_count(plan)


def test_an_evaluation_objective_lets_the_scheduler_use_the_validation_loss():
    plan = campaign_plan(campaign(GOOD, "tune.metric=evaluation.embedding.model.knn_accuracy", "tune.mode=max"))
    assert (plan.scheduler_metric, plan.scheduler_mode) == ("val/loss", "min") and plan.needs_evaluation


def test_concurrency_follows_the_campaign_resources():
    plan = campaign_plan(campaign(GOOD, "scaling.workers=2", "scaling.cpus_per_worker=2", "tune.resources.cpus=9"))
    assert plan.concurrent_trials({"CPU": 64}) == 2  # 9 CPUs / (2 workers x 2 CPUs)
    assert plan.concurrent_trials({"CPU": 64}) <= plan.config.tune.trials
    with pytest.raises(VCellError, match="one trial needs 4 CPU"):
        campaign_plan(campaign(GOOD, "scaling.workers=2", "scaling.cpus_per_worker=2")).concurrent_trials({"CPU": 3})


def test_the_tune_section_stays_out_of_run_identity_and_training_configs():
    plain = load_config(None)
    searched = campaign()
    assert config_hash(plain) == config_hash(searched)
    assert "tune:" not in dump_config(plain) and "tune:" in dump_config(searched)
    assert load_config(None, []).tune == plain.tune


@pytest.mark.parametrize(("override", "message"), [
    ("loader.split.holdout=[{column: perturbation, test: [NOT_A_PERTURBATION]}]", "NOT_A_PERTURBATION"),
    ("loader.labels=[cell_typo]", "cell_typo"),
    ("loader.batch_size=5000", "larger than the training split per worker"),
])
def test_a_campaign_checks_the_data_once_before_any_trial(train_atlas, tmp_path, override, message):
    """What would fail every trial the same way stops the campaign before Ray starts, writing nothing."""
    from tests.tune.conftest import campaign_config
    from vcell.tune.campaign import tune_campaign

    config = campaign_config(train_atlas, tmp_path / "runs", "checked", GOOD, override, "loader.buffer_cells=8192")
    with pytest.raises(VCellError, match=message):
        tune_campaign(config, progress=False)
    assert not (tmp_path / "runs").exists()
