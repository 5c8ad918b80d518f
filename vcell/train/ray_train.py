"""The training driver: checks, Ray cluster, TorchTrainer, summary. `vcell train` calls `train`.

    summary = train(load_config(None))  # the main job (`vcell train`)
    train(config, restart=True)                           # forget the earlier run of this name

`evaluate.at_end` evaluates the run when it has trained; the evaluation layer sits above this one,
so its evaluator is named by text and imported when needed (`RunHooks.evaluate` may replace it).

Everything that can be checked before a worker starts is checked here (config against the run
folder, atlas against the model, resources against the cluster, storage from every node), so a
mistake costs seconds, not a failed cluster job. Workers run `worker.train_worker`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vcell.atlas.store import Atlas, open_atlas
from vcell.cluster import local_resources, ray_cluster
from vcell.config.schema import VCellConfig
from vcell.errors import VCellError
from vcell.models.registry import enhancements, resolve
from vcell.train.checkpoint import CheckpointStore
from vcell.train.preflight import preflight
from vcell.train.training_plan import check_resources, describe_workers, format_plan, training_plan, with_model_inputs
from vcell.train.run import Run, accepted_hashes, check_run, prepare_run, probe_writable, run_directory
from vcell.train.tracking import wandb_run_id, wandb_sync_command

log = logging.getLogger(__name__)
FORWARDED_ENVIRONMENT = ("TORCH_EXTENSIONS_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")


def prepare_atlas(config: VCellConfig, progress: bool = True, *, dry_run: bool = False) -> Atlas:
    """The run's atlas; only the demo atlas is simulated when missing, never on a dry run (`job_atlas`)."""
    from vcell.atlas.ensure import job_atlas

    return open_atlas(job_atlas(config.data, config.build, dry_run=dry_run, progress=progress))


def probe_storage(directory: Path) -> None:
    """Every alive node writes and deletes a file in the run folder before any worker starts."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def probe(path: str, node: str) -> str | None:
        try:
            probe_writable(Path(path), f"node {node}")
        except VCellError as error:
            return str(error)
        return None

    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]
    errors = ray.get([
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            str(directory), n["NodeManagerAddress"]) for n in nodes
    ])
    problems = [e for e in errors if e]
    if problems:
        raise VCellError(problems[0])


def worker_failure(error: Exception) -> VCellError | None:
    """The user-facing error behind a failed run, if a worker raised one."""
    from vcell.train.failures import user_error

    return next((cause for failure in getattr(error, "worker_failures", {}).values()
                 if (cause := user_error(failure)) is not None), None)


def absolute_paths(config: VCellConfig) -> VCellConfig:
    """`config` with every input path absolute: Ray workers run in their own working folders."""
    tree = config.model_dump(mode="json")
    model, genes = tree["model"], tree["loader"]["genes"]
    inputs = [(model[name], key) for name, enhancement in enhancements().items() for key in enhancement.input_files]
    for section, key in ((tree["data"], "atlas"), *inputs, (genes, "file"), (tree["train"], "init_from")):
        if section.get(key):
            section[key] = str(Path(section[key]).resolve())
    tree["scaling"]["storage_path"] = str(Path(tree["scaling"]["storage_path"]).resolve())
    return VCellConfig.model_validate(tree)


def worker_entry(payload: dict) -> None:
    """`worker.train_worker`, imported in the worker: the driver (or a campaign's trial) then never
    imports Lightning, seconds of start-up on a small machine."""
    # Lightning imports torchmetrics, which imports matplotlib: on a machine without its font cache
    # each worker builds one and logs "generated new fontManager" (INFO, which Ray's workers show)
    logging.getLogger("matplotlib.font_manager").setLevel(logging.WARNING)
    import ray.train

    from vcell.train.failures import raise_user_error
    from vcell.train.worker import train_worker

    try:
        train_worker(payload)
    except VCellError as error:  # the same on every attempt: not retried (failures.NoRetryOfUserErrors)
        raise_user_error(error, ray.train.get_context().get_world_rank())


DEFAULT_EVALUATOR = "vcell.evaluate.evaluation:evaluate_finished"


@dataclass(frozen=True)
class RunHooks:
    """What a job running `train` inside a larger one (a campaign's trial) adds to the run."""

    callbacks: tuple = ()  # Ray Train callbacks of the TorchTrainer
    wandb_id: str | None = None  # None: derived from the run name
    report_validation: bool = False  # workers report every validation with ray.train.report
    probe_storage: bool = True  # False when the caller has checked the storage from every node
    # (run folder, progress) -> None, run when evaluate.at_end. Named by text by default: the
    # evaluation layer sits above training, so it is bound late (like an enhancement's hooks).
    evaluate: Callable[[Path, bool], None] | str = DEFAULT_EVALUATOR

    def wandb_run_id(self, config: VCellConfig) -> str:
        return self.wandb_id or wandb_run_id(config.name)

    def evaluate_run(self, directory: Path, progress: bool) -> None:
        resolve(self.evaluate)(directory, progress)


def run_workers(config: VCellConfig, run: Run, allow_changes: bool, hooks: RunHooks = RunHooks()) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from vcell.train.failures import user_errors_not_retried
    from vcell.train.rendezvous import BoundTorchConfig

    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker, **({"GPU": scaling.gpus_per_worker} if scaling.gpus_per_worker else {})}
    environment = {k: v for k, v in os.environ.items() if k.startswith("VCELL_") or k in FORWARDED_ENVIRONMENT}
    environment["OMP_NUM_THREADS"] = str(scaling.cpus_per_worker)
    trainer = TorchTrainer(
        worker_entry,
        train_loop_config={
            "config": absolute_paths(config).model_dump(mode="json"), "run_directory": str(run.directory),
            "config_hash": run.config_hash, "accepted_hashes": list(run.accepted_hashes),
            "allow_changes": allow_changes, "wandb_id": hooks.wandb_run_id(config),
            "report_validation": hooks.report_validation,
        },
        # a (fewest, most) range makes the run elastic: Ray Train restarts the worker group on as many
        # workers as fit after a failure (and grows it when room appears); each start resumes from the
        # newest checkpoint, whatever number of workers wrote it
        scaling_config=ScalingConfig(
            num_workers=scaling.workers if scaling.min_workers is None else (scaling.min_workers, scaling.workers),
            use_gpu=bool(scaling.gpus_per_worker), resources_per_worker=resources,
            placement_strategy=scaling.placement_strategy),
        # the rendezvous store listens on the node's Ray address only (torch's own: every interface)
        torch_config=BoundTorchConfig(backend="nccl" if scaling.gpus_per_worker else "gloo"),
        run_config=RunConfig(
            name="ray", storage_path=str(run.directory),  # Ray's own bookkeeping: runs/<name>/ray/
            failure_config=FailureConfig(max_failures=scaling.max_failures, controller_failure_limit=2),
            worker_runtime_env={"env_vars": environment}, callbacks=list(hooks.callbacks),
        ),
    )
    try:
        with user_errors_not_retried():
            trainer.fit()
    except Exception as error:  # Ray wraps worker errors: show ours plainly
        cause = worker_failure(error)
        if cause is not None:
            raise cause from None
        raise


def train(config: VCellConfig, *, restart: bool = False, resume_with_changes: bool = False, dry_run: bool = False,
          progress: bool = True, hooks: RunHooks = RunHooks()) -> dict:
    """Train `config` to the end (resuming an earlier attempt of the same run); the run's metrics."""
    started = time.perf_counter()
    atlas = prepare_atlas(config, progress, dry_run=dry_run)
    config = with_model_inputs(config, atlas)
    plan = training_plan(config, atlas)  # builds the model on the meta device: annotations, inputs
    checks = preflight(config, atlas)  # atlas metadata, labels, split, storage: before anything is written
    if dry_run:
        check_resources(config, local_resources() if config.scaling.address is None else {"CPU": 1e9, "GPU": 1e9})
        print(format_plan(plan, config, checks))
        return plan.as_dict()
    if check_run(config, restart=restart, resume_with_changes=resume_with_changes):
        finished = finished_run(config, hooks)
        if finished is not None:
            return finished
    with ray_cluster(config.scaling) as resources:
        check_resources(config, resources)
        run = prepare_run(config, restart=restart, resume_with_changes=resume_with_changes)
        latest = run.latest  # checked (and hashed) once, by prepare_run
        if latest is not None:
            log.info("resuming run '%s' from step %d (%s, written by %d worker(s))", config.name, latest.step,
                     latest.path, latest.world_size)
        if hooks.probe_storage:
            probe_storage(run.directory)
        log.info("training '%s': %s", config.name, describe_workers(plan, config))
        run_workers(config, run, resume_with_changes, hooks)
    if config.evaluate.at_end:  # after Ray has given the cores back
        hooks.evaluate_run(run.directory, progress)
    metrics = json.loads((run.directory / "metrics.json").read_text())  # training's and evaluation's
    metrics["seconds_total"] = round(time.perf_counter() - started, 2)
    print(format_summary(metrics, run, config, hooks))
    return metrics


def finished_run(config: VCellConfig, hooks: RunHooks = RunHooks()) -> dict | None:
    """The metrics of this run when it already trained to `train.steps` with this config."""
    directory = run_directory(config)
    latest = CheckpointStore(directory).latest()
    metrics_path = directory / "metrics.json"
    if latest is None or latest.step < config.train.steps or not metrics_path.is_file():
        return None
    if latest.manifest["config_hash"] not in accepted_hashes(config):
        return None
    print(f"run '{config.name}' is already complete (step {latest.step}); --restart trains it again")
    if config.evaluate.at_end and "evaluation" not in json.loads(metrics_path.read_text()):  # stopped while evaluating
        hooks.evaluate_run(directory, True)
    metrics = json.loads(metrics_path.read_text())
    print(format_summary({**metrics, "seconds_total": 0.0}, Run(directory, latest.manifest["config_hash"], True), config,
                         hooks))
    return metrics


def throughput_line(metrics: dict) -> str:
    """Steady-state cells/s, gene tokens/s, model TFLOP/s and MFU (those the run measured), data wait."""
    formats = {"cells_per_s": "{:,.0f} cells/s (steady state)", "tokens_per_s": "{:,.0f} gene tokens/s",
               "tflops_per_s": "{:.3g} model TFLOP/s", "mfu": "MFU {:.1%}", "data_wait_fraction": "waiting for data {:.1%}"}
    return "throughput  " + ", ".join(text.format(metrics[key]) for key, text in formats.items() if key in metrics)


def format_summary(metrics: dict, run: Run, config: VCellConfig, hooks: RunHooks = RunHooks()) -> str:
    validation = metrics["final_validation"].get("val/loss")
    lines = [
        f"run '{metrics['run']}' finished: {metrics['steps']} steps on {metrics['workers']} worker(s) ({metrics['strategy']}), "
        f"{metrics['seconds_total']:.0f} s",
        f"train loss  {metrics['first_train_loss']:.4f} -> {metrics['final_train'].get('train/loss', float('nan')):.4f}"
        + (f"; validation loss {validation:.4f}" if validation is not None else ""),
        throughput_line(metrics),
        f"outputs     {run.directory}/ (config.yaml, checkpoints/, model/, history.csv, metrics.json"
        + (", plots/, embeddings.h5ad)" if "evaluation" in metrics else ")"),
    ]
    if config.wandb.mode == "offline":
        command = wandb_sync_command(run.directory, hooks.wandb_run_id(config))
        if command:
            lines.append(f"W&B         offline; upload with: {command}")
    return "\n".join(lines)
