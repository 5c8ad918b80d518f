"""The `tune` section: a search campaign over the rest of the tree (`vcell tune`).

    tune:
      metric: val/loss                 # or train/<term>, or evaluation.<path in metrics.json>
      mode: min
      trials: 8
      search: random                   # random | grid | optuna
      space:
        train.learning_rate: {loguniform: [1.0e-4, 3.0e-3]}
        model.size: {choice: [tiny, small]}
      scheduler: {name: asha, grace_period: 100, reduction_factor: 2}
      resources: {cpus: 4}             # what the campaign may use: max concurrent trials follow

Each trial trains the rest of the tree with the sampled values put in. The section never
changes what a single run computes, so it is left out of run identities and of the configs
trials and `best.yaml` are written with. Deep checks of the space (keys exist, values are
allowed) are in `vcell.tune.space`, run before any trial starts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from vcell.config.section import Section

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "int")


class SchedulerConfig(Section):
    """How trials are stopped early (ASHA) or copied and mutated (PBT); `none` runs every trial to the end."""

    name: Literal["asha", "pbt", "none"] = Field("asha", description="asha: successive halving; pbt: population-based training")
    metric: str | None = Field(
        None, description="what the scheduler compares (null: tune.metric when it is reported at every validation, "
        "else val/loss)",
    )
    mode: Literal["min", "max"] | None = Field(None, description="null: tune.mode for tune.metric, min for a loss")
    grace_period: int | None = Field(None, ge=1, description="ASHA: steps every trial trains before it can be stopped "
                                     "(null: train.validate_every)")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: 1/reduction_factor of the trials go on at each rung")
    brackets: int = Field(1, ge=1, description="ASHA: brackets of different grace periods")
    perturbation_interval: int | None = Field(
        None, ge=1, description="PBT: steps between exploit/explore decisions (null: train.checkpoint_every)")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="PBT: bottom fraction copies the top fraction")
    resample_probability: float = Field(0.25, ge=0, le=1, description="PBT: chance a mutated value is drawn afresh")


class ResourcesConfig(Section):
    """What the campaign may use; each trial takes scaling.workers x (cpus_per_worker, gpus_per_worker)."""

    cpus: float | None = Field(None, gt=0, description="CPUs for all running trials together (null: the whole cluster)")
    gpus: float | None = Field(None, ge=0, description="GPUs for all running trials together (null: the whole cluster)")
    max_concurrent_trials: int | None = Field(None, ge=1, description="a further cap on trials running at once")


class TuneSection(Section):
    """A search campaign: objective, space, search algorithm, scheduler, resources."""

    metric: str = Field("val/loss", description="objective: val/<term>, train/<term>, or evaluation.<dotted path in "
                        "metrics.json> (e.g. evaluation.embedding.model.knn_accuracy)")
    mode: Literal["min", "max"] = Field("min", description="minimise or maximise the objective")
    trials: int = Field(8, ge=1, description="trials in all (with grid keys: a multiple of the grid's combinations, each run whole)")
    search: Literal["random", "grid", "optuna"] = Field(
        "random", description="random sampling, an exhaustive grid (every key grid or choice), or Optuna's TPE")
    space: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="dotted key -> {choice|grid: [values]} or {uniform|loguniform|int: [low, high]}")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    seed: int | None = Field(None, ge=0, description="seed of the search (null: the config's seed)")
    retries: int = Field(0, ge=0, description="times a failed trial is started again before it counts as errored")

    @field_validator("space")
    @classmethod
    def _one_distribution_each(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for key, entry in space.items():
            if len(entry) != 1 or next(iter(entry)) not in DISTRIBUTIONS:
                raise ValueError(f"space key '{key}': give exactly one of {', '.join(DISTRIBUTIONS)}, e.g. "
                                 f"{{loguniform: [1.0e-4, 1.0e-2]}} or {{choice: [16, 32]}}; got {entry!r}")
        return space
