"""The function every Ray Train worker runs: Lightning on this rank's share of the atlas.

    train_worker({"config": ..., "run_directory": ..., "config_hash": ..., "accepted_hashes": [...],
                  "allow_changes": False})

Start (or restart after a failure): find the newest complete checkpoint of the run and continue
from it (weights, optimiser, schedule and step through Lightning; this rank's RNG and loader
position from its own file). A checkpoint written by another number of workers (an elastic
run) continues too: the rest of the epoch is re-planned from every old rank's loader position,
each rank's random streams start afresh from (seed, rank, step), and a DeepSpeed ZeRO checkpoint
is loaded through its universal copy (`repartition`: rank 0 converts it once, every rank waits).
Then train to `train.steps`, checkpointing on the way, validate, and (rank 0) export the weights
and write metrics.json.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from vcell.atlas.store import open_atlas
from vcell.compat import quiet_ray_train_report_log
from vcell.config.schema import VCellConfig
from vcell.config.loader import dump_config
from vcell.data.datamodule import AtlasDataModule
from vcell.files import atomic_write
from vcell.models.zoo import count_parameters
from vcell.train import checkpoint as ckpt
from vcell.train import model_folder
from vcell.train.callbacks import (
    CellAudit, Checkpointing, FaultDrill, LineProgress, RestoreBuffers, RestoreRng, Telemetry, ValidationReport,
)
from vcell.train.init_from import coverage_line, read_record, start_from_pretrained, write_record
from vcell.train.module import VCellModule
from vcell.train.repartition import load_buffers, universal_copy
from vcell.train.training_plan import model_spec, resolved_precision, steady_state
from vcell.train.run import probe_writable
from vcell.train.strategy import make_strategy
from vcell.train.tracking import History, open_tracker, read_history

log = logging.getLogger(__name__)


def build_trainer(config: VCellConfig, callbacks: list, has_validation: bool, load_universal: bool = False) -> pl.Trainer:
    from ray.train.lightning import RayLightningEnvironment

    train = config.train
    return pl.Trainer(
        accelerator="gpu" if config.scaling.gpus_per_worker else "cpu", devices="auto",
        strategy=make_strategy(config, load_universal), plugins=[RayLightningEnvironment()],
        precision=resolved_precision(config), max_steps=train.steps, max_epochs=-1,
        gradient_clip_val=train.gradient_clip, accumulate_grad_batches=train.accumulate,
        check_val_every_n_epoch=None, val_check_interval=(train.validate_every or train.steps) * train.accumulate,
        limit_val_batches=train.validation_batches if has_validation else 0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=False, deterministic=train.deterministic,
        use_distributed_sampler=False, callbacks=callbacks,
    )


def train_worker(payload: dict) -> None:
    import ray.train

    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning sees a loader without `state_dict` (the datamodule hands it a view, lightning_state=False)
    # and warns that a mid-epoch resume is unreliable; ours restores its position itself from
    # rank-<r>.pt (`datamodule.resume_from`), and the resume-parity tests hold it to bitwise equality
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended "
                            r"and your dataloader is not resumable")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # device banners and tips, once per rank
    quiet_ray_train_report_log()
    config = VCellConfig.model_validate(payload["config"])
    run_directory = Path(payload["run_directory"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    threads = config.scaling.cpus_per_worker
    os.environ["OMP_NUM_THREADS"] = str(threads)  # two workers fighting over the same cores run ~10x slower
    torch.set_num_threads(threads)
    probe_writable(run_directory, f"worker {rank} on {os.uname().nodename}")

    store = ckpt.CheckpointStore(run_directory)
    latest = ckpt.resume_point(store, tuple(payload["accepted_hashes"]), payload["allow_changes"], world_size)
    start_step = latest.step if latest else 0
    resized = latest is not None and latest.world_size != world_size
    rank_state = latest.rank_state(rank) if latest and not resized else None
    resume_path = latest.lightning_path if latest else None
    # ZeRO's shards fit only the workers that wrote them: a universal copy re-partitions them
    universal = resized and latest.manifest["strategy"] == "deepspeed" and start_step < config.train.steps
    if universal:
        resume_path = universal_copy(latest, store, rank)

    atlas = open_atlas(config.data.atlas)
    datamodule = AtlasDataModule(atlas.path, config.loader, seed=config.seed, rank=rank, world_size=world_size,
                                 lightning_state=False)
    datamodule.setup()
    if rank_state is not None:
        datamodule.resume_from(rank_state["loader"])
    elif resized:  # every old rank's position (read only now: W files on every rank)
        datamodule.replan_from(latest.loader_states())
    if rank == 0:
        datamodule.save_split(run_directory)
    spec = model_spec(config, atlas)
    pl.seed_everything(config.seed, workers=False, verbose=False)  # the same initial weights on every rank
    module = VCellModule(config.model, spec, config.train)
    if config.train.init_from:  # also on a resume: the checkpoint then overwrites the weights, the freeze stays
        record, frozen = start_from_pretrained(module.model, config, spec, model_folder.model_categories(config, atlas))
        module.no_weight_decay = set(frozen.partly)
        if rank == 0 and latest is None:
            write_record(run_directory, record)
            print(coverage_line(record), flush=True)
    pl.seed_everything(rank_seed(config.seed, rank, start_step if resized else 0), workers=False, verbose=False)

    history = History(run_directory / "history.csv", resume_step=start_step)
    tracker = open_tracker(config, run_directory, rank, payload.get("wandb_id"))
    callbacks: list[pl.Callback] = [
        RestoreRng(rank_state["rng"] if rank_state else None),
        Telemetry(history, tracker, flush_every=config.train.checkpoint_every),
    ]
    if universal:
        callbacks.append(RestoreBuffers(load_buffers(resume_path)))
    if config.train.progress_bar:
        callbacks.append(LineProgress(config.train.steps))
    if config.train.audit_cells:
        callbacks.append(CellAudit(run_directory / "audit", start_step))
    checkpointing = Checkpointing(
        store, config.train.checkpoint_every, config.train.keep_checkpoints, payload["config_hash"], config.train.strategy,
        on_saved=lambda step: history.flush() if rank == 0 else None,
    )
    callbacks.append(checkpointing)
    if payload.get("report_validation"):  # a campaign's trial: its scheduler acts on every validation
        callbacks.append(ValidationReport(ray.train.report, checkpointing))
    drill = FaultDrill.from_environment()
    if drill is not None:
        callbacks.append(drill)

    trainer = build_trainer(config, callbacks, "val" in datamodule.loaders, load_universal=universal)
    started = time.perf_counter()
    if start_step < config.train.steps:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_path) if resume_path else None)
    elapsed = time.perf_counter() - started
    validation = [{}]
    if "val" in datamodule.loaders:  # weights from the checkpoint when this attempt had nothing left to train
        reload = str(latest.lightning_path) if latest and start_step >= config.train.steps else None
        validation = trainer.validate(module, datamodule=datamodule, ckpt_path=reload, verbose=False)
    if rank == 0:
        final = store.latest()
        spec_values, categories, normalization = model_folder.model_inputs_description(config, atlas, spec)
        model_folder.export_weights(final, run_directory / "model", dump_config(config), spec_values, categories, normalization)
        write_metrics(run_directory, config, validation[0], start_step, elapsed, count_parameters(module), world_size)
    tracker.finish()
    ray.train.report({})  # every rank must report; the metrics are in metrics.json (Ray would print them whole)


def rank_seed(seed: int, rank: int, resized_at: int) -> int:
    """Each rank its own masks: seed + 1000 * rank; after a resize at step s (whose ranks have no
    saved random state of their own) a stream of (seed, rank, s), so no step's masks repeat."""
    if not resized_at:
        return seed + 1000 * rank
    return int(np.random.SeedSequence([seed, rank, resized_at]).generate_state(1)[0])


def write_metrics(run_directory: Path, config: VCellConfig, validation: dict, start_step: int, elapsed: float,
                  parameters: int, workers: int) -> dict:
    rows = read_history(run_directory / "history.csv")
    first, last = (rows[0], rows[-1]) if rows else ({}, {})
    losses = {key: float(value) for key, value in last.items() if key.startswith("train/") and value != ""}
    metrics = {
        "run": config.name, "steps": int(last.get("step", 0) or 0), "resumed_from_step": start_step,
        "parameters": parameters, "first_train_loss": float(first.get("train/loss", "nan") or "nan"),
        "final_train": losses, "final_validation": {k: float(v) for k, v in validation.items()},
        "cells_per_s": steady_state([float(r["cells_per_s"]) for r in rows if r.get("cells_per_s")]),
        "data_wait_fraction": steady_state([float(r["data_wait_fraction"]) for r in rows if r.get("data_wait_fraction")]),
        **{key: steady_state([float(r[key]) for r in rows if r.get(key)])  # present when the history has them
           for key in ("tokens_per_s", "tflops_per_s", "mfu") if any(r.get(key) for r in rows)},
        "seconds_this_attempt": round(elapsed, 2), "workers": workers, "strategy": config.train.strategy,
    }
    if config.train.init_from:
        metrics["init_from"] = read_record(run_directory)
    text = json.dumps(metrics, indent=2).encode()
    atomic_write(run_directory / "metrics.json", lambda stream: stream.write(text))
    return metrics
