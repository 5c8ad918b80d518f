"""What a campaign will do, checked before Ray starts: objective, scheduler, search, concurrency.

    plan = campaign_plan(config)                  # VCellError for anything that cannot work
    plan.concurrent_trials(cluster_resources)     # trials that fit at once (never starving each other)
    plan.scheduler(), plan.searcher()             # Ray Tune objects

Objectives come in two kinds. `val/<term>` and `train/<term>` are reported at every validation,
so schedulers can act on them. `evaluation.<path>` (any number `vcell evaluate` writes into
metrics.json) exists only when a trial has finished and been evaluated: the scheduler then
decides on `val/loss` (or `tune.scheduler.metric`) while the search and the ranking use the
objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vcell.config.schema import VCellConfig
from vcell.errors import VCellError
from vcell.tune.space import SearchSpace, parse_space

STEP = "step"  # the time axis of every report: optimiser steps
LOGGED_PREFIXES = ("val/", "train/")
EVALUATION_PREFIX = "evaluation."
EVALUATION_SECTIONS = ("embedding", "reconstruction", "perturbation", "enhancements")


def logged_each_validation(metric: str) -> bool:
    return metric.startswith(LOGGED_PREFIXES)


def check_objective(config: VCellConfig) -> None:
    metric = config.tune.metric
    if metric.startswith(EVALUATION_PREFIX):
        section = metric.removeprefix(EVALUATION_PREFIX).split(".")[0]
        if section not in EVALUATION_SECTIONS:
            raise VCellError(f"tune.metric={metric!r}: metrics.json's evaluation has the sections "
                             f"{', '.join(EVALUATION_SECTIONS)}",
                             hint="e.g. evaluation.embedding.model.knn_accuracy (see a finished run's metrics.json)")
        return
    if not logged_each_validation(metric) or metric.endswith("/"):
        raise VCellError(f"tune.metric={metric!r} is not a metric a trial reports",
                         hint="use val/<term> or train/<term> (e.g. val/loss), or evaluation.<path in metrics.json>")
    if metric.startswith("val/") and not has_validation(config):
        raise VCellError(f"tune.metric={metric!r} needs validation cells",
                         hint="set loader.split.val_fraction > 0 (or hold out validation groups)")


def has_validation(config: VCellConfig) -> bool:
    split = config.loader.split
    return split.val_fraction > 0 or any(group.val for group in split.holdout)


@dataclass(frozen=True)
class CampaignPlan:
    config: VCellConfig
    space: SearchSpace
    scheduler_metric: str
    scheduler_mode: str

    @property
    def seed(self) -> int:
        return self.config.tune.seed if self.config.tune.seed is not None else self.config.seed

    @property
    def needs_evaluation(self) -> bool:
        return self.config.tune.metric.startswith(EVALUATION_PREFIX)

    @property
    def checkpoints_to_tune(self) -> bool:
        """PBT copies trials from their checkpoints, which must therefore outlive the trial's own pruning."""
        return self.config.tune.scheduler.name == "pbt"

    def trial_resources(self) -> dict[str, float]:
        scaling = self.config.scaling
        return {"CPU": scaling.workers * scaling.cpus_per_worker, "GPU": scaling.workers * scaling.gpus_per_worker}

    def concurrent_trials(self, cluster: dict[str, float]) -> int:
        """Trials whose workers fit the campaign's CPUs and GPUs together (at least one, or an error)."""
        limits = self.config.tune.resources
        available = {"CPU": limits.cpus if limits.cpus is not None else cluster.get("CPU", 0),
                     "GPU": limits.gpus if limits.gpus is not None else cluster.get("GPU", 0)}
        needed = self.trial_resources()
        fits = min(math.floor(available[kind] / amount + 1e-9) for kind, amount in needed.items() if amount)
        if fits < 1:
            raise VCellError(
                f"one trial needs {needed['CPU']:g} CPU(s) and {needed['GPU']:g} GPU(s) (scaling.workers x "
                f"cpus/gpus_per_worker); the campaign may use {available['CPU']:g} CPU(s), {available['GPU']:g} GPU(s)",
                hint="lower scaling.workers or scaling.cpus_per_worker, or raise tune.resources")
        cap = limits.max_concurrent_trials or fits
        return max(1, min(fits, cap, self.config.tune.trials))

    def scheduler(self):
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

        settings, train = self.config.tune.scheduler, self.config.train
        common = {"time_attr": STEP, "metric": self.scheduler_metric, "mode": self.scheduler_mode}
        if settings.name == "asha":
            return ASHAScheduler(max_t=train.steps, grace_period=settings.grace_period or train.validate_every,
                                 reduction_factor=settings.reduction_factor, brackets=settings.brackets, **common)
        if settings.name == "pbt":
            return PopulationBasedTraining(
                perturbation_interval=settings.perturbation_interval or train.checkpoint_every,
                hyperparam_mutations=self.space.pbt_mutations(), quantile_fraction=settings.quantile_fraction,
                resample_probability=settings.resample_probability, synch=False, **common)
        return FIFOScheduler()

    def searcher(self, concurrent: int):
        """The search algorithm, holding at most `concurrent` trials running (Tune's own
        max_concurrent_trials is ignored for its basic generator)."""
        settings = self.config.tune
        if settings.search == "optuna":
            from ray.tune.search import ConcurrencyLimiter

            from vcell.tune.optuna import FinalResultOptuna

            return ConcurrencyLimiter(FinalResultOptuna(metric=settings.metric, mode=settings.mode, seed=self.seed),
                                      max_concurrent=concurrent)
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=self.seed, max_concurrent=concurrent)


def campaign_plan(config: VCellConfig) -> CampaignPlan:
    """Every check that needs no cluster: space, objective, scheduler settings (see module doc)."""
    space = parse_space(config)
    check_objective(config)
    settings, train = config.tune.scheduler, config.train
    metric = settings.metric or (config.tune.metric if logged_each_validation(config.tune.metric) else "val/loss")
    mode = settings.mode or (config.tune.mode if metric == config.tune.metric else "min")
    if settings.name != "none":
        if not logged_each_validation(metric):
            raise VCellError(f"tune.scheduler.metric={metric!r}: schedulers act on metrics reported at every "
                             "validation (val/<term> or train/<term>)")
        if train.validate_every is None:
            raise VCellError(f"tune.scheduler.name={settings.name} acts on validation results, but "
                             "train.validate_every is null (validation only at the end)",
                             hint="set train.validate_every, or tune.scheduler.name=none")
        if metric.startswith("val/") and not has_validation(config):
            raise VCellError(f"the scheduler acts on {metric}, which needs validation cells",
                             hint="set loader.split.val_fraction > 0, or tune.scheduler.metric=train/loss")
    if settings.name == "pbt":
        interval = settings.perturbation_interval or train.checkpoint_every
        if interval % train.checkpoint_every or interval % train.validate_every:
            raise VCellError(f"tune.scheduler.perturbation_interval={interval} must be a multiple of "
                             f"train.checkpoint_every ({train.checkpoint_every}) and train.validate_every "
                             f"({train.validate_every}): PBT copies trials from checkpoints taken at validations")
    return CampaignPlan(config, space, metric, mode)
