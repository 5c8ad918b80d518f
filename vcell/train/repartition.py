"""A DeepSpeed ZeRO checkpoint resumed on another number of workers, through its universal copy.

    path = universal_copy(checkpoint, store, rank)   # every rank: rank 0 writes it, all wait, all verify it
    make_strategy(config, load_universal=True)        # DeepSpeed's config gains {"checkpoint": {"load_universal": true}}
    trainer.fit(module, ckpt_path=str(path))          # + RestoreBuffers(path): what DeepSpeed's universal load skips

ZeRO cuts flat buffers of the fp32 master weights and of Adam's moments into one slice per rank
(stage 1; stage 2 also the gradients, stage 3 also the weights), so a checkpoint's shards fit only
the number of ranks that wrote them. DeepSpeed's universal checkpoint
(`deepspeed.checkpoint.ds_to_universal`, all three stages in DeepSpeed 0.19) stores each parameter
whole instead (fp32 weights, exp_avg, exp_avg_sq, step), and a universal load slices them again
for the ranks there are now. Lightning's own state (loops, scheduler, step) rides along in the
model-states file, which the conversion copies.

    checkpoints/universal/step-00000004/
        lightning.ckpt/latest_universal        the tag DeepSpeed's universal load reads ("checkpoint")
        lightning.ckpt/checkpoint/             model-states file(s) + zero/<parameter>/{fp32,exp_avg,exp_avg_sq,step}.pt
        buffers.pt                             the model's persistent buffers (tensors only)
        manifest.json                          sha256 of the source checkpoint's manifest, every file: written last

A universal load restores parameters through the optimiser and never reads the module's state
dict, so buffers that training changes (the KL warm-up's step counter, running gene SDs) would
restart from their initial values: `buffers.pt` carries them, and `RestoreBuffers` puts them back.

The copy is written into a temporary folder beside it (`.step-00000004.<random>`) and renamed into
place after its manifest. A conversion that died leaves only such a folder, which the next one
removes; a copy whose manifest does not match its files or its source is written again; a whole
one is reused. It is pruned with its checkpoint (`CheckpointStore.prune`). NVMe-offloaded
optimiser state cannot be re-partitioned (`checkpoint.resume_point` refuses it).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch

from vcell.errors import VCellError
from vcell.files import atomic_write, current_umask, sha256_file
from vcell.train import checkpoint as ckpt

log = logging.getLogger(__name__)
UNIVERSAL_LOAD = {"checkpoint": {"load_universal": True}}  # merged into DeepSpeed's config for the load
LATEST_UNIVERSAL = "latest_universal"  # DeepSpeed's name for the file naming a universal checkpoint's tag
BUFFERS = "buffers.pt"
MANIFEST_FIELDS = {"format": int, "step": int, "source": str, "source_world_size": int, "files": list}
TAG = re.compile(r"[A-Za-z0-9_.-]+")


def universal_copy(checkpoint: ckpt.Checkpoint, store: ckpt.CheckpointStore, rank: int,
                   barrier: Callable[[], None] | None = None) -> Path:
    """The Lightning path to resume `checkpoint` from on another number of workers: rank 0 writes (or
    reuses) its universal copy while the others wait at `barrier` (torch.distributed's when None),
    then every rank verifies it before DeepSpeed unpickles anything in it."""
    if rank == 0:
        write_universal(checkpoint, store)
    (barrier or torch.distributed.barrier)()
    directory = store.universal_path(checkpoint.step)
    try:
        check_universal(directory, checkpoint, verify=True)
    except ckpt.IncompleteCheckpoint as problem:
        raise VCellError(f"worker {rank}: the universal copy {directory} does not verify: {problem}",
                         hint="a shared run folder must show every worker the same files (scaling.storage_path)") from None
    return directory / ckpt.LIGHTNING


def write_universal(checkpoint: ckpt.Checkpoint, store: ckpt.CheckpointStore) -> Path:
    """The universal copy of `checkpoint`: reused when whole, else converted into a temporary folder
    and renamed into place (see module doc)."""
    target = store.universal_path(checkpoint.step)
    try:
        check_universal(target, checkpoint, verify=True)
        return target
    except ckpt.IncompleteCheckpoint as problem:
        if target.exists():  # named as only vcell names its copies: ours to replace
            log.warning("writing the universal copy %s again: %s", target, problem)
            shutil.rmtree(target)
    store.universal_root.mkdir(parents=True, exist_ok=True)
    for folder, name in store.universal_directories():  # the temporary folder of a conversion that died
        if name == target.name and folder.name.startswith("."):
            shutil.rmtree(folder, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=store.universal_root, prefix=f".{target.name}."))
    try:
        started = time.perf_counter()
        convert(checkpoint, staging)
        ckpt.write_manifest_json(staging, {
            "format": ckpt.FORMAT, "step": checkpoint.step, "source": source_sha256(checkpoint),
            "source_world_size": checkpoint.world_size, "files": ckpt.file_entries(staging),
        })
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700; run folders are shared like any
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("re-partitioned %s (ZeRO state of %d worker(s)) into %s in %.1f s", checkpoint.path,
             checkpoint.world_size, target, time.perf_counter() - started)
    return target


def convert(checkpoint: ckpt.Checkpoint, staging: Path) -> None:
    """DeepSpeed's universal conversion of `checkpoint`'s shards, and its buffers, into `staging`."""
    from deepspeed.checkpoint.ds_to_universal import main as to_universal

    tag = deepspeed_tag(checkpoint.lightning_path)
    arguments = argparse.Namespace(
        input_folder=str(checkpoint.lightning_path / tag), output_folder=str(staging / ckpt.LIGHTNING / tag),
        # in-process (worker pools would fork a training worker); Lightning's checkpoints carry no
        # universal-checkpoint metadata, which plain data parallelism does not need: injected
        num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True,
    )
    chatter = io.StringIO()  # progress lines and bars: the worker's log gets one line instead
    try:
        with redirect_stdout(chatter), redirect_stderr(chatter):
            to_universal(arguments)
    except Exception as error:
        raise VCellError(
            f"DeepSpeed could not convert {checkpoint.lightning_path} into a universal checkpoint "
            f"({type(error).__name__}: {error}); its output ended with: {chatter.getvalue()[-500:]!r}",
            hint=f"resume with scaling.workers={checkpoint.world_size} (the workers that wrote it), or --restart",
        ) from error
    buffers = model_buffers(checkpoint.lightning_path / tag)
    atomic_write(staging / BUFFERS, lambda stream: torch.save(buffers, stream))


def deepspeed_tag(lightning_path: Path) -> str:
    """The tag folder DeepSpeed saved under (Lightning's: "checkpoint"), as its `latest` file names it."""
    tag = (lightning_path / "latest").read_text().strip()
    if not TAG.fullmatch(tag) or tag in (".", ".."):
        raise VCellError(f"{lightning_path / 'latest'} names the tag {tag!r}, not a folder inside the checkpoint",
                         hint="resume with the number of workers that wrote it, or --restart")
    return tag


def model_buffers(tag_folder: Path) -> dict[str, torch.Tensor]:
    """The persistent buffers of the module, from DeepSpeed's model-states file (whole at every
    stage: ZeRO partitions parameters only). The checkpoint is verified before this unpickles it."""
    files = sorted(tag_folder.glob("*model_states.pt"))
    state = torch.load(files[0], map_location="cpu", weights_only=False)
    names = set(state.get("buffer_names") or [])
    return {name: value.clone() for name, value in state["module"].items() if name in names}


def check_universal(directory: Path, checkpoint: ckpt.Checkpoint, verify: bool) -> None:
    """`IncompleteCheckpoint` unless `directory` holds a whole universal copy of `checkpoint`: a
    manifest naming its source's manifest, listing every file, each of its size and sha256."""
    path = directory / ckpt.MANIFEST
    manifest = ckpt.read_manifest_json(path)
    ckpt.check_fields(manifest, MANIFEST_FIELDS, str(path))
    ckpt.check_file_entries(manifest["files"], path)
    if manifest["format"] != ckpt.FORMAT:
        raise ckpt.IncompleteCheckpoint(f"{path}: format {manifest['format']} (this vcell writes format {ckpt.FORMAT})")
    if manifest["source"] != source_sha256(checkpoint) or manifest["step"] != checkpoint.step:
        raise ckpt.IncompleteCheckpoint(f"{path}: converted from another checkpoint than {checkpoint.path}")
    ckpt.check_files(directory, manifest["files"], {f"{ckpt.LIGHTNING}/{LATEST_UNIVERSAL}", BUFFERS}, verify)


def source_sha256(checkpoint: ckpt.Checkpoint) -> str:
    return sha256_file(checkpoint.path / ckpt.MANIFEST)


def load_buffers(lightning_path: Path) -> dict[str, torch.Tensor]:
    """The buffers saved beside a universal copy's Lightning folder (tensors: no pickle)."""
    return torch.load(Path(lightning_path).parent / BUFFERS, map_location="cpu", weights_only=True)
