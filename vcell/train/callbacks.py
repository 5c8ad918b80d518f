"""Lightning callbacks of a training worker: checkpoints, telemetry, the cell audit, fault drills.

They run in every rank; each decides what its rank does (rank 0 writes shared files, every
rank writes its own state). None of them knows about Ray: the worker wires them up.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from vcell.errors import VCellError
from vcell.train import checkpoint as ckpt
from vcell.train.throughput import peak_flops
from vcell.train.tracking import History



class Checkpointing(pl.Callback):
    """Every `every` steps and at the end: Lightning state, each rank's RNG and loader position,
    then (rank 0, after a barrier) the manifest that marks the checkpoint complete."""

    def __init__(self, store: ckpt.CheckpointStore, every: int, keep: int, config_hash: str, strategy: str,
                 on_saved=None) -> None:
        self.store, self.every, self.keep, self.config_hash, self.strategy = store, every, keep, config_hash, strategy
        self.on_saved = on_saved  # called on every rank with the step after a checkpoint completes
        self.last_saved = -1

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every == 0 and step != self.last_saved:
            self.save(trainer, step)

    def on_train_end(self, trainer, module) -> None:
        if trainer.global_step != self.last_saved:
            self.save(trainer, trainer.global_step)

    def save(self, trainer: pl.Trainer, step: int) -> None:
        directory = self.store.path(step)
        strategy = trainer.strategy
        if trainer.is_global_zero and directory.exists():  # left by an attempt that died while saving
            shutil.rmtree(directory)
        strategy.barrier("vcell-checkpoint-start")
        directory.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(directory / ckpt.LIGHTNING, weights_only=False)
        ckpt.write_rank_state(directory, trainer.global_rank, trainer.datamodule.train_position())
        strategy.barrier("vcell-checkpoint-files")
        if trainer.is_global_zero:
            ckpt.write_manifest(directory, step, self.config_hash, trainer.world_size, self.strategy)
            self.store.prune(self.keep)
        strategy.barrier("vcell-checkpoint-done")
        self.last_saved = step
        if self.on_saved is not None:
            self.on_saved(step)


class RestoreRng(pl.Callback):
    """Puts back this rank's RNG states just before the first resumed step."""

    def __init__(self, state: dict | None) -> None:
        self.state = state

    def on_train_start(self, trainer, module) -> None:
        if self.state is not None:
            ckpt.restore_rng(self.state)
            self.state = None


class RestoreBuffers(pl.Callback):
    """Puts back the model's buffers (`repartition.load_buffers`) after a universal DeepSpeed load,
    which restores parameters and optimiser state but never the module's state dict."""

    def __init__(self, buffers: dict[str, torch.Tensor]) -> None:
        self.buffers = buffers

    def on_train_start(self, trainer, module) -> None:
        own = dict(module.named_buffers())
        missing = sorted(set(self.buffers) - set(own))
        if missing:
            raise VCellError(f"the checkpoint's buffers {missing[:3]} are not in this model",
                             hint="resume with the config that wrote the checkpoint, or --restart")
        with torch.no_grad():
            for name, value in self.buffers.items():
                own[name].copy_(value)


class Telemetry(pl.Callback):
    """Per optimiser step: loss terms, lr, cells/s, gene tokens/s (transformer), step time,
    fraction of time waiting for data, model TFLOP/s (the model's own formula,
    `vcell.models.flops`), and on GPU memory and MFU (against the device's bf16 dense peak, where
    `throughput.PEAK_BF16` knows it) into history.csv and the tracker, from rank 0. Rates over all ranks are
    rank 0's counts x world size (ranks take equal batches)."""

    def __init__(self, history: History, tracker, flush_every: int) -> None:
        self.history, self.tracker, self.flush_every = history, tracker, flush_every
        self.last_end: float | None = None
        self.started = 0.0
        self.wait = 0.0
        # summed over the micro-batches of one optimiser step (train.accumulate)
        self.step_cells, self.step_wait, self.step_total, self.last_step = 0, 0.0, 0.0, None
        self.step_tokens, self.step_flops = 0, 0.0

    def on_train_start(self, trainer, module) -> None:
        self.last_step = trainer.global_step  # 0, or the step a resumed run starts from

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        now = time.perf_counter()
        self.wait = 0.0 if self.last_end is None else now - self.last_end  # fetching this batch
        self.started = now

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        now = time.perf_counter()
        compute, self.last_end = now - self.started, now
        self.step_cells += module.cells_in_step * trainer.world_size
        self.step_tokens += module.tokens_in_step * trainer.world_size
        self.step_flops += module.flops_in_step * trainer.world_size
        self.step_wait += self.wait
        self.step_total += compute + self.wait
        if trainer.global_step == self.last_step:  # accumulating: no optimiser step yet
            return
        self.last_step = trainer.global_step
        cells, wait, total = self.step_cells, self.step_wait, max(self.step_total, 1e-9)
        tokens, flops = self.step_tokens, self.step_flops
        self.step_cells, self.step_wait, self.step_total, self.step_tokens, self.step_flops = 0, 0.0, 0.0, 0, 0.0
        if trainer.is_global_zero:
            self.record(trainer, module, (cells, tokens, flops), wait, total)

    def record(self, trainer, module, done: tuple[int, int, float], wait: float, total: float) -> None:
        cells, tokens, flops = done
        row = {
            "step": trainer.global_step, "epoch": trainer.datamodule.train_position()["epoch"], "time": round(time.time(), 3),
            "lr": trainer.optimizers[0].param_groups[0]["lr"], "cells_per_s": round(cells / total, 1),
            "step_s": round(total, 5), "data_wait_fraction": round(wait / total, 4),
            "tflops_per_s": round(flops / total / 1e12, 6),
        }
        if tokens:
            row["tokens_per_s"] = round(tokens / total, 1)
        row.update({key: round(float(value), 6) for key, value in trainer.callback_metrics.items() if key.startswith("train/")})
        if torch.cuda.is_available() and module.device.type == "cuda":
            row["gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            peak = peak_flops()
            if peak is not None:
                row["mfu"] = round(flops / trainer.world_size / total / peak, 4)
        self.history.append(row)
        self.tracker.log(row, step=trainer.global_step)
        if trainer.global_step % self.flush_every == 0:
            self.history.flush()

    def on_validation_end(self, trainer, module) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            values = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            # step 0: an attempt that only validates a finished checkpoint (its steps are in the history)
            if values and trainer.global_step > 0:
                self.tracker.log(values, step=trainer.global_step)
                self.history.annotate(trainer.global_step, values)  # beside the step's training losses
                self.history.flush()

    def on_train_end(self, trainer, module) -> None:
        if trainer.is_global_zero:
            self.history.flush()


class ValidationReport(pl.Callback):
    """After every validation during fit, every rank calls `report(metrics)` with the step, the
    validation and latest training losses, and the newest complete checkpoint's step: what a
    campaign's scheduler acts on (`report` is `ray.train.report`, which every rank must call)."""

    def __init__(self, report, checkpointing: Checkpointing) -> None:
        self.report, self.checkpointing = report, checkpointing

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()
                   if key.startswith(("val/", "train/"))}
        self.report({"step": trainer.global_step, "checkpoint_step": self.checkpointing.last_saved, **metrics})


class LineProgress(pl.Callback):
    """Rank 0's progress as plain lines (a worker's output is a log, not a terminal):
    `step 60/300 (20%)  loss 2.61  val 2.58  930 cells/s  eta 4m12s`, about `lines` times a run."""

    def __init__(self, total_steps: int, lines: int = 20) -> None:
        self.total, self.every = total_steps, max(1, total_steps // lines)
        self.started: float | None = None
        self.start_step = 0
        self.cells = 0

    def on_train_start(self, trainer, module) -> None:
        self.started, self.start_step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        self.cells += module.cells_in_step * trainer.world_size
        step = trainer.global_step
        if not trainer.is_global_zero or not (step % self.every == 0 or step == self.total) or self.started is None:
            return
        elapsed = time.perf_counter() - self.started
        done = max(step - self.start_step, 1)
        eta = elapsed / done * (self.total - step)
        metrics = trainer.callback_metrics
        validation = f"  val {float(metrics['val/loss']):.4f}" if "val/loss" in metrics else ""
        line = (f"step {step}/{self.total} ({step / self.total:.0%})  loss {float(metrics.get('train/loss', float('nan'))):.4f}"
                f"{validation}  {self.cells / elapsed:,.0f} cells/s  eta {int(eta // 60)}m{int(eta % 60):02d}s\n")
        # not print(): Ray Train patches it to log as well as print, so each line would show twice
        sys.stdout.write(line)
        sys.stdout.flush()


class CellAudit(pl.Callback):
    """Appends (resumed_from, step, epoch, atlas row) of every trained cell to audit/rank-<r>.bin
    (int64); `read_audit` reads it back. Replayed steps appear once per attempt."""

    def __init__(self, directory: Path, resumed_from: int) -> None:
        self.directory, self.resumed_from = directory, resumed_from

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        cells = batch["cell_index"][batch["valid"]].cpu().numpy().astype(np.int64)
        epoch = trainer.datamodule.train_position()["epoch"]
        rows = np.stack([np.full_like(cells, self.resumed_from), np.full_like(cells, trainer.global_step),
                         np.full_like(cells, epoch), cells], axis=1)
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"rank-{trainer.global_rank}.bin", "ab") as stream:
            rows.tofile(stream)


def read_audit(directory: Path) -> np.ndarray:
    """(n, 5) int64: rank, resumed_from, step, epoch, atlas row, over every rank's file."""
    parts = []
    for path in sorted(Path(directory).glob("rank-*.bin")):
        rows = np.fromfile(path, dtype=np.int64).reshape(-1, 4)
        parts.append(np.column_stack([np.full(len(rows), int(path.stem.removeprefix("rank-"))), rows]))
    return np.concatenate(parts) if parts else np.zeros((0, 5), dtype=np.int64)


FAULT_KINDS = ("kill", "error", "hold")


class FaultDrill(pl.Callback):
    """Kills this worker process at a step, once (a marker file remembers): failure drills.
    With VCELL_FAULT_KIND=error it raises a VCellError there instead, on every attempt (a
    deterministic error), and appends a line to the marker each time. With VCELL_FAULT_KIND=hold
    it stops there, once, for VCELL_FAULT_HOLD_S seconds (default 60) after writing the marker:
    a drill from outside (a node killed) then strikes at a known step, after a known checkpoint.

    Set by the environment of the driver: VCELL_FAULT_STEP, VCELL_FAULT_RANK (default 1),
    VCELL_FAULT_MARKER (a path; the kill or hold happens only while it does not exist)."""

    def __init__(self, step: int, rank: int, marker: Path, kind: str = "kill", hold_s: float = 60.0) -> None:
        if kind not in FAULT_KINDS:
            raise VCellError(f"VCELL_FAULT_KIND={kind!r} is not a fault drill", hint=f"use one of {', '.join(FAULT_KINDS)}")
        self.step, self.rank, self.marker, self.kind, self.hold_s = step, rank, marker, kind, hold_s

    @classmethod
    def from_environment(cls) -> FaultDrill | None:
        if "VCELL_FAULT_STEP" not in os.environ:
            return None
        return cls(int(os.environ["VCELL_FAULT_STEP"]), int(os.environ.get("VCELL_FAULT_RANK", 1)),
                   Path(os.environ["VCELL_FAULT_MARKER"]), os.environ.get("VCELL_FAULT_KIND", "kill"),
                   float(os.environ.get("VCELL_FAULT_HOLD_S", 60)))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index) -> None:
        if trainer.global_step != self.step or trainer.global_rank != self.rank:
            return
        if self.kind == "error":
            with open(self.marker, "a") as stream:
                stream.write(f"error on rank {self.rank} at step {self.step}\n")
            raise VCellError(f"fault drill: a deterministic error on rank {self.rank} at step {self.step}")
        if self.marker.exists():
            return
        if self.kind == "hold":
            self.marker.write_text(f"holding rank {self.rank} at step {self.step} (pid {os.getpid()})\n")
            time.sleep(self.hold_s)  # the other ranks wait in the next step's all-reduce meanwhile
            return
        self.marker.write_text(f"killed rank {self.rank} at step {self.step}\n")
        os.kill(os.getpid(), signal.SIGKILL)
