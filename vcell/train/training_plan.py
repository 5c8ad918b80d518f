"""What a training run needs, checked before any worker starts; `--dry-run` prints it.

    config = with_model_inputs(config, atlas)     # loader labels / counts the model reads
    plan = training_plan(config, atlas, cluster)  # parameters, memory per worker, strategy
    print(format_plan(plan))

Impossible combinations (more workers than CPUs, GPUs that are not there, DeepSpeed options a
strategy does not have) fail here with a message naming the setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vcell.atlas.store import Atlas
from vcell.config.schema import VCellConfig
from vcell.data.resolve import select_genes
from vcell.errors import VCellError
from vcell.models.catalogue import NEEDS
from vcell.models.spec import CONDITION_ROLES, ModelSpec, spec_from_atlas
from vcell.models.flops import context_tokens, training_flops_per_cell
from vcell.models.zoo import build_model, count_parameters
from vcell.train.memory_estimate import memory_by_strategy, memory_parts


def with_model_inputs(config: VCellConfig, atlas: Atlas) -> VCellConfig:
    """`config` whose loader carries the obs columns and raw counts the model reads."""
    columns = atlas.attrs["obs_columns"]
    wanted = [getattr(config.model.columns, role) for role in CONDITION_ROLES]
    wanted += [config.model.columns.batch] if config.model.batch_covariate else []
    labels = list(config.loader.labels) + [c for c in wanted if c and c in columns and c not in config.loader.labels]
    needs_counts = any("counts" in NEEDS[name] for name in config.model.enhancements)
    keep_counts = config.loader.keep_counts or (needs_counts and atlas.attrs.get("values") == "counts")
    loader = config.loader.model_copy(update={"labels": labels, "keep_counts": keep_counts})
    return config.model_copy(update={"loader": loader})


def model_spec(config: VCellConfig, atlas: Atlas) -> ModelSpec:
    """The model's view of the atlas (genes in loader order, annotations), or a VCellError."""
    genes = select_genes(atlas, config.loader.genes)
    loader = config.loader
    return spec_from_atlas(atlas, config.model, genes, counts=loader.keep_counts, normalize=loader.normalize)


def resolved_precision(config: VCellConfig) -> str:
    if config.train.precision != "auto":
        return config.train.precision
    return "bf16-mixed" if config.scaling.gpus_per_worker else "32-true"


def check_resources(config: VCellConfig, cluster: dict[str, float]) -> None:
    """Workers must fit the cluster's CPUs and GPUs (Ray's `cluster_resources()`); an elastic run's
    fewest (scaling.min_workers)."""
    scaling = config.scaling
    cpus, gpus = cluster.get("CPU", 0), cluster.get("GPU", 0)
    workers, key = scaling.fewest_workers, "scaling.workers" if scaling.min_workers is None else "scaling.min_workers"
    if workers * scaling.cpus_per_worker > cpus:
        raise VCellError(
            f"{key}={workers} x scaling.cpus_per_worker={scaling.cpus_per_worker} needs "
            f"{workers * scaling.cpus_per_worker} CPUs; the Ray cluster has {cpus:g}",
            hint=f"lower {key} or scaling.cpus_per_worker, or add nodes",
        )
    if scaling.gpus_per_worker and workers * scaling.gpus_per_worker > gpus:
        raise VCellError(
            f"scaling.gpus_per_worker={scaling.gpus_per_worker} with {workers} workers needs "
            f"{workers * scaling.gpus_per_worker} GPUs; the Ray cluster has {gpus:g}",
            hint="set scaling.gpus_per_worker=0 to train on CPU, or run on a cluster with GPUs",
        )


@dataclass
class TrainingPlan:
    parameters: int
    genes: int
    cells: int
    strategy: str
    precision: str
    workers: int
    memory_per_worker_gb: float
    parts: dict[str, float]  # memory estimate by part, GB
    by_strategy: dict[str, float]  # GB per worker under each strategy (`memory_estimate.STRATEGIES`)
    flops_per_cell: float  # training FLOPs per cell (`vcell.models.flops`) at `tokens_per_cell`
    tokens_per_cell: float  # transformer: the atlas's mean expressed genes per cell, up to the context; else 0
    flops_per_cell_full_context: float  # transformer: at a full context (the most a cell can cost)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def training_plan(config: VCellConfig, atlas: Atlas) -> TrainingPlan:
    """Builds the model on the meta device (allocates nothing) and estimates memory per worker
    under the configured strategy and every other (`vcell.train.memory_estimate`)."""
    spec = model_spec(config, atlas)
    parameters = count_parameters(build_model(config.model, spec, device="meta"))
    train, precision = config.train, resolved_precision(config)
    stage = train.deepspeed.stage if train.strategy == "deepspeed" else 0
    offload = train.strategy == "deepspeed" and train.deepspeed.offload
    parts = memory_parts(config, parameters, spec.n_genes, stage, offload, precision)
    # the atlas's non-zeros per cell, scaled to the genes the loader keeps
    expressed = atlas.attrs["nnz"] / max(atlas.n_cells, 1) * spec.n_genes / max(atlas.n_genes, 1)
    tokens = round(min(expressed, context_tokens(config.model, spec.n_genes)), 1)
    return TrainingPlan(
        parameters=parameters, genes=spec.n_genes, cells=atlas.n_cells,
        strategy=f"deepspeed ZeRO-{stage}{' + CPU offload' if offload else ''}" if stage else "ddp",
        precision=precision, workers=config.scaling.workers,
        memory_per_worker_gb=round(sum(parts.values()) / 2**30, 3),
        parts={k: round(v / 2**30, 4) for k, v in parts.items()},
        by_strategy=memory_by_strategy(config, parameters, spec.n_genes, precision),
        flops_per_cell=training_flops_per_cell(config.model, spec.n_genes, tokens),
        tokens_per_cell=tokens, flops_per_cell_full_context=training_flops_per_cell(config.model, spec.n_genes),
    )


def describe_workers(plan: TrainingPlan, config: VCellConfig) -> str:
    """'2 worker(s) x (1 CPU), ddp, precision 32-true, 400 steps of 256 cells per worker'."""
    device = f"{config.scaling.gpus_per_worker} GPU + " if config.scaling.gpus_per_worker else ""
    elastic = f"{config.scaling.min_workers}-" if config.scaling.min_workers is not None else ""
    return (f"{elastic}{plan.workers} worker(s) x ({device}{config.scaling.cpus_per_worker} CPU), {plan.strategy}, "
            f"precision {plan.precision}, {config.train.steps} steps of {config.loader.batch_size} cells per worker, "
            f"placement {config.scaling.placement_strategy}")


def format_plan(plan: TrainingPlan, config: VCellConfig, checks: dict[str, str] | None = None) -> str:
    """The dry run's table; `checks`: `preflight`'s findings (e.g. the init_from coverage)."""
    parts = ", ".join(f"{k} {v:.3f}" for k, v in plan.parts.items())
    return "\n".join([
        f"run         {config.name}: model '{config.model.name}' ({', '.join(config.model.enhancements) or 'base'}), "
        f"{config.model.describe_size()}",
        f"parameters  {plan.parameters:,} for {plan.genes:,} genes; atlas {config.data.atlas} ({plan.cells:,} cells)",
        f"plan        {describe_workers(plan, config)}",
        f"memory      ~{plan.memory_per_worker_gb:.3f} GB per worker (estimate, GB: {parts})",
        "strategies  GB per worker: " + ", ".join(f"{name} {gb:.3f}" for name, gb in plan.by_strategy.items())
        + " (weights, gradients, optimiser, activations; vcell/train/memory_estimate.py)",
        f"flops       {plan.flops_per_cell:.3g} per cell per training step (forward + backward; vcell/models/flops.py)"
        + (f" at the atlas's mean {plan.tokens_per_cell:,.0f} gene tokens per cell; {plan.flops_per_cell_full_context:.3g} "
           f"at a full context of {context_tokens(config.model, plan.genes):,}" if plan.tokens_per_cell else ""),
        f"outputs     {config.scaling.storage_path}/{config.name}/",
        *describe_strategy(config),
        *(f"{name:<11} {line}" for name, line in (checks or {}).items()),
    ])


def describe_strategy(config: VCellConfig) -> list[str]:
    """DeepSpeed: the ZeRO JSON file the run reads (resolved now, so a dry run finds a missing one)."""
    if config.train.strategy != "deepspeed":
        return []
    from vcell.train.deepspeed_cpu import CONFIG_DIRECTORY, load_deepspeed_config

    settings = config.train.deepspeed
    resolved = load_deepspeed_config(settings.stage, settings.offload, settings.overrides)
    offload = resolved["zero_optimization"].get("offload_optimizer", {}).get("device", "none")
    return [f"deepspeed   ZeRO-{settings.stage} from {CONFIG_DIRECTORY / f'zero{settings.stage}.json'} "
            f"(optimizer offload: {offload})"]


def steady_state(values: list[float]) -> float:
    """Median of the second half of a series (skips warm-up)."""
    return float(np.median(values[len(values) // 2:])) if values else float("nan")
