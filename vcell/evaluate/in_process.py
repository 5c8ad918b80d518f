"""Train a config's model in this process (no Ray, one device) into an ordinary run folder.

    run = train_in_process(load_config("configs/models/temporal.yaml", overrides), progress_every=50)
    evaluate_run(run.directory)          # metrics vs baselines, plots/, biology/, embeddings.h5ad

For notebooks and small atlases: the split's training cells are read into memory and trained with
the plain loop (`vcell.train.plain.fit`) using `config.train`'s steps, learning rate, weight decay,
schedule and clipping and `config.loader.batch_size`. The folder, `<scaling.storage_path>/<name>/`,
holds what `vcell train` writes apart from checkpoints and W&B: `config.yaml`, `history.csv`,
`metrics.json` and `model/`, so `vcell evaluate`, `embed`, `export` and `predict` read it alike.
`vcell train` with the same config on Ray is the way to scale the same run (it restarts a folder
without checkpoints, see `vcell.train.run`). Training here again under the same name starts the
run over (as `vcell train --restart`: the earlier model and what its evaluation wrote go, once the
new one has trained); a folder with `vcell train`'s checkpoints is refused, never replaced.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vcell.atlas.store import open_atlas
from vcell.config.schema import VCellConfig
from vcell.data.memory import load_cells
from vcell.errors import VCellError
from vcell.evaluate.export import save_trained
from vcell.files import atomic_write
from vcell.models.model import VirtualCell
from vcell.models.zoo import build_model, count_parameters
from vcell.train.plain import fit
from vcell.train.run import has_checkpoints, prepare_run, run_directory
from vcell.train.tracking import History
from vcell.train.training_plan import model_spec, with_model_inputs


@dataclass
class InProcessRun:
    directory: Path  # the run folder
    config: VCellConfig  # as trained (the loader carries the columns and counts the model reads)
    model: VirtualCell  # trained, in evaluation mode
    history: list[dict[str, float]]  # loss terms per step


def train_in_process(config: VCellConfig, *, progress_every: int = 0) -> InProcessRun:
    """Train `config`'s model on its atlas's training split here; the run folder as the module says."""
    directory = run_directory(config)
    if has_checkpoints(directory):  # before training, not after minutes of it
        raise VCellError(f"{directory} holds a run that `vcell train` wrote (checkpoints/), which this one would replace",
                         hint=f"give this run another name (name=...), or remove {directory} first")
    atlas = open_atlas(config.data.atlas)
    config = with_model_inputs(config, atlas)
    torch.manual_seed(config.seed)
    model = build_model(config.model, model_spec(config, atlas))
    cells = load_cells(atlas, config.loader, "train")
    settings = config.train
    started = time.perf_counter()
    history = fit(model, cells, steps=settings.steps, batch_size=config.loader.batch_size,
                  learning_rate=settings.learning_rate, seed=config.seed, clip=settings.gradient_clip,
                  weight_decay=settings.weight_decay, warmup_fraction=settings.warmup_fraction,
                  final_lr_fraction=settings.final_lr_fraction, progress_every=progress_every)
    seconds = time.perf_counter() - started
    directory = prepare_run(config, restart=True).directory  # an earlier run of this name, and its evaluation, go
    write_history(directory / "history.csv", history, config.loader.batch_size, seconds)
    save_trained(model, config, directory / "model", step=settings.steps)
    write_training_metrics(directory, config, history, count_parameters(model), seconds)
    return InProcessRun(directory, config, model, history)


def write_history(path: Path, history: list[dict[str, float]], batch_size: int, seconds: float) -> None:
    """history.csv in the training job's columns (step, train/<term>, train/loss, cells/s)."""
    rows = History(path, resume_step=-1)  # a new run: earlier rows of this path are dropped
    cells_per_s = batch_size * len(history) / seconds if seconds > 0 else float("nan")
    for step, terms in enumerate(history, start=1):
        rows.append({"step": step, "cells_per_s": cells_per_s, **{f"train/{name}": value for name, value in terms.items()},
                     "train/loss": sum(terms.values())})
    rows.flush()


def write_training_metrics(directory: Path, config: VCellConfig, history: list[dict[str, float]], parameters: int,
                           seconds: float) -> None:
    """metrics.json with the training job's keys that a plain-loop run has (an evaluation adds its own)."""
    first, last = (history[0], history[-1]) if history else ({}, {})
    metrics = {
        "run": config.name, "steps": len(history), "parameters": parameters, "trained": "in process (plain loop)",
        "first_train_loss": sum(first.values()) if first else None,
        "final_train": {**{f"train/{name}": value for name, value in last.items()}, "train/loss": sum(last.values())},
        "seconds_this_attempt": round(seconds, 2),
    }
    text = json.dumps(metrics, indent=2).encode()
    atomic_write(directory / "metrics.json", lambda stream: stream.write(text))
