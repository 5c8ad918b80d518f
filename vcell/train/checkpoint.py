"""The only checkpoint I/O: write, find, verify, prune and export checkpoints of a run.

    runs/<name>/checkpoints/step-00000100/
        lightning.ckpt        model, optimiser, scheduler, loop state (a file with DDP; a folder of
                              shards with DeepSpeed)
        rank-<r>.pt           each rank's RNG states and loader position (tensors and plain values)
        manifest.json         step, config hash, world size, every file with size and sha256: written
                              last, so a checkpoint without it (or whose files differ from it) is
                              incomplete and ignored on resume

A crash while saving leaves no manifest; a resume picks the newest checkpoint whose manifest
matches its files: well formed, listing the Lightning state and every rank's file, and every
file in the folder (nothing unlisted), each of the listed size and sha256. A DeepSpeed resume
unpickles its shards, so a run folder is trusted input and this check is what guards it.
`vcell.train.model_folder.export_weights` turns the newest one into `model/model.safetensors`.

A DeepSpeed checkpoint resumed on another number of workers is first copied into a universal
(world-size-free) form under `checkpoints/universal/step-N/`, with a manifest of its own
(`vcell.train.repartition`); it goes when its checkpoint is pruned.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from vcell.errors import VCellError
from vcell.files import atomic_write, sha256_file

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
LIGHTNING = "lightning.ckpt"
UNIVERSAL = "universal"  # checkpoints/universal/step-N/: a DeepSpeed checkpoint's world-size-free copy
NVME_OFFLOAD = "offloaded_tensors"  # DeepSpeed's per-rank NVMe swap files inside its checkpoint
FORMAT = 1


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


CHECKPOINT_NAME = re.compile(r"step-\d{8}")
# a universal copy (step-N), or the temporary folder of its conversion (.step-N.<random>)
UNIVERSAL_NAME = re.compile(r"(\.)?(step-\d{8})(?(1)\.[A-Za-z0-9_]+)")


class IncompleteCheckpoint(VCellError):
    """A checkpoint folder whose manifest is missing, malformed, or does not match its files."""


@dataclass
class Checkpoint:
    step: int
    path: Path
    manifest: dict
    verified: bool = False  # every file's sha256 matched the manifest (not only names and sizes)

    @property
    def lightning_path(self) -> Path:
        return self.path / LIGHTNING

    @property
    def world_size(self) -> int:
        return int(self.manifest["world_size"])

    def rank_state(self, rank: int) -> dict:
        path = self.path / f"rank-{rank}.pt"
        if not path.is_file():
            raise VCellError(
                f"{self.path} was written by {self.world_size} worker(s) and has no state for rank {rank}",
                hint=f"resume with scaling.workers={self.world_size}, or start over with --restart",
            )
        return torch.load(path, weights_only=True)

    def loader_states(self) -> list[dict]:
        """Every rank's loader position, in rank order: what a resume on another number of
        workers re-plans the rest of the epoch from (`AtlasLoader.resume`)."""
        return [self.rank_state(rank)["loader"] for rank in range(self.world_size)]


class CheckpointStore:
    """The checkpoints of one run directory."""

    def __init__(self, run_directory: str | Path) -> None:
        self.root = Path(run_directory) / "checkpoints"

    def path(self, step: int) -> Path:
        return self.root / f"step-{step:08d}"

    @property
    def universal_root(self) -> Path:
        """Where the universal copies of DeepSpeed checkpoints live (`vcell.train.repartition`)."""
        return self.root / UNIVERSAL

    def universal_path(self, step: int) -> Path:
        return self.universal_root / f"step-{step:08d}"

    def directories(self) -> list[Path]:
        """Every folder named as vcell names checkpoints (step-<8 digits>), complete or not, oldest
        first (zero-padded names sort by step). Anything else in checkpoints/ is not ours: it is
        neither read nor ever pruned."""
        if not self.root.is_dir():
            return []
        return sorted(path for path in self.root.glob("step-*") if CHECKPOINT_NAME.fullmatch(path.name) and path.is_dir())

    def complete(self, verify: bool = True) -> list[Checkpoint]:
        """Checkpoints whose manifest is present and matches their files, oldest first."""
        found = []
        for directory in self.directories():
            checkpoint = read_checkpoint(directory, verify)  # warns, with the reason, when incomplete
            if checkpoint is not None:
                found.append(checkpoint)
        return found

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint; only it is hashed unless it turns out incomplete."""
        for directory in reversed(self.directories()):
            checkpoint = read_checkpoint(directory, verify=True)
            if checkpoint is not None:
                return checkpoint
        return None

    def prune(self, keep: int) -> None:
        """Keep the newest `keep` complete checkpoints; drop older and incomplete ones below them."""
        complete = self.complete(verify=False)
        if not complete:
            return
        kept = {c.path for c in complete[-keep:]}
        newest = complete[-1].step
        for directory in self.directories():
            if directory not in kept and int(directory.name.removeprefix("step-")) <= newest:
                shutil.rmtree(directory, ignore_errors=True)
        # a universal copy is only ever read instead of its own checkpoint: it goes with it
        kept_names = {path.name for path in kept}
        for directory, name in self.universal_directories():
            if name not in kept_names and int(name.removeprefix("step-")) <= newest:
                shutil.rmtree(directory, ignore_errors=True)
        with contextlib.suppress(OSError):  # universal/ itself once it is empty (never with anything in it)
            self.universal_root.rmdir()

    def universal_directories(self) -> list[tuple[Path, str]]:
        """(folder, name of its checkpoint) of every universal copy, complete or not, and of every
        conversion's temporary folder (`.step-N.<random>`); nothing else under universal/ is ours."""
        if not self.universal_root.is_dir():
            return []
        named = ((path, UNIVERSAL_NAME.fullmatch(path.name)) for path in sorted(self.universal_root.iterdir()))
        return [(path, match.group(2)) for path, match in named if match and path.is_dir()]


def resume_point(store: CheckpointStore, config_hashes: str | tuple[str, ...], allow_changes: bool,
                 world_size: int) -> Checkpoint | None:
    """The newest complete checkpoint to continue from, refused when it does not fit this run.
    `config_hashes`: this run's hash, or every hash of the same computation (see run.accepted_hashes).
    Another number of workers is fine: the loader re-plans the rest of the epoch; DDP's state is
    whole on every rank, and a DeepSpeed ZeRO checkpoint is re-partitioned through its universal
    copy (`vcell.train.repartition`), unless its optimiser state was offloaded to NVMe."""
    hashes = (config_hashes,) if isinstance(config_hashes, str) else tuple(config_hashes)
    latest = store.latest()
    if latest is None:
        return None
    if latest.manifest["config_hash"] not in hashes and not allow_changes:
        raise VCellError(
            f"the newest checkpoint {latest.path} was written with another config (hash "
            f"{latest.manifest['config_hash']}, now {hashes[0]})",
            hint="resume with --resume-with-changes, or --restart",
        )
    offloaded = [entry["path"] for entry in latest.manifest["files"] if f"/{NVME_OFFLOAD}/" in entry["path"]]
    if latest.world_size != world_size and offloaded:
        # under NVMe offload DeepSpeed restores the optimiser state only by copying each rank's swap
        # files back (its load_checkpoint skips the ZeRO and universal loads): one folder per old rank
        raise VCellError(
            f"{latest.path} holds DeepSpeed optimiser state offloaded to NVMe per worker ({offloaded[0]}, ...); "
            f"this attempt has {world_size} worker(s), and NVMe-offloaded state resumes only on the "
            f"{latest.world_size} that wrote it",
            hint=f"resume with scaling.workers={latest.world_size}, or start over with --restart",
        )
    return latest


def read_checkpoint(directory: Path, verify: bool) -> Checkpoint | None:
    """The checkpoint in `directory`, or None (with a warning saying why) when it is incomplete."""
    try:
        return check_checkpoint(directory, verify)
    except IncompleteCheckpoint as problem:
        log.warning("ignoring checkpoint %s: %s", directory, problem)
        return None


def check_checkpoint(directory: Path, verify: bool = True) -> Checkpoint:
    """The checkpoint in `directory` when its manifest is well formed, lists the files a resume
    needs and every file in the folder, and (with `verify`) matches each file's sha256.

    Resuming a DeepSpeed run unpickles its shards (DeepSpeed loads them with weights_only=False),
    so nothing is trusted that the manifest does not vouch for: an empty or edited manifest, an
    extra file, a missing one. Raises `IncompleteCheckpoint` naming the first problem found."""
    manifest = parse_manifest(directory)
    check_files(directory, manifest["files"], required_files(manifest), verify)
    return Checkpoint(manifest["step"], directory, manifest, verified=verify)


def check_files(directory: Path, files: list[dict], needed: set[str], verify: bool) -> None:
    """`files` (a manifest's entries) are exactly the files under `directory` but the manifest, include
    `needed`, and each has the listed size and (with `verify`) sha256; else `IncompleteCheckpoint`."""
    listed = {entry["path"]: entry for entry in files}
    present = {p.relative_to(directory).as_posix() for p in files_under(directory)}
    for problem, names in (("does not list", needed - set(listed)), ("lists missing files", set(listed) - present),
                           ("does not list", present - set(listed))):
        if names:
            raise IncompleteCheckpoint(f"{directory / MANIFEST} {problem}: {', '.join(sorted(names)[:5])}")
    for name, entry in listed.items():
        path = directory / name
        if path.stat().st_size != entry["bytes"]:
            raise IncompleteCheckpoint(f"{path}: {path.stat().st_size} bytes, the manifest says {entry['bytes']}")
        if verify and sha256_file(path) != entry["sha256"]:
            raise IncompleteCheckpoint(f"{path}: sha256 differs from the manifest (changed or damaged)")


MANIFEST_FIELDS = {"format": int, "step": int, "config_hash": str, "world_size": int, "strategy": str, "files": list}
FILE_FIELDS = {"path": str, "bytes": int, "sha256": str}


def parse_manifest(directory: Path) -> dict:
    """The manifest of `directory` with every field of the type `write_manifest` gives it."""
    path = directory / MANIFEST
    manifest = read_manifest_json(path)
    check_fields(manifest, MANIFEST_FIELDS, str(path))
    check_file_entries(manifest["files"], path)
    if manifest["format"] != FORMAT or manifest["world_size"] < 1 or manifest["strategy"] not in ("ddp", "deepspeed"):
        raise IncompleteCheckpoint(f"{path}: format {manifest['format']}, world_size {manifest['world_size']}, "
                                   f"strategy {manifest['strategy']!r} (this vcell writes format {FORMAT})")
    if directory.name != f"step-{manifest['step']:08d}":
        raise IncompleteCheckpoint(f"{path}: step {manifest['step']} does not match the folder name")
    return manifest


def read_manifest_json(path: Path) -> object:
    """The JSON in `path`, or `IncompleteCheckpoint` when it is missing or not JSON."""
    if not path.is_file():
        raise IncompleteCheckpoint(f"no {MANIFEST} (the save did not finish)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IncompleteCheckpoint(f"{path} is not valid JSON ({error})") from None


def check_file_entries(files: list, path: Path) -> None:
    """Each entry of a manifest's 'files' has a plain relative path, a size and a sha256."""
    for entry in files:
        check_fields(entry, FILE_FIELDS, f"{path}: a 'files' entry")
        name = PurePosixPath(entry["path"])
        if name.is_absolute() or ".." in name.parts or name.as_posix() != entry["path"] or entry["path"] == MANIFEST:
            raise IncompleteCheckpoint(f"{path}: file path {entry['path']!r} is not a plain path inside the checkpoint")


def check_fields(value: object, fields: dict[str, type], where: str) -> None:
    if not isinstance(value, dict):
        raise IncompleteCheckpoint(f"{where} is not a JSON object")
    for key, kind in fields.items():
        # bool is an int subclass in Python: `true` is no step number
        if key not in value or not isinstance(value[key], kind) or isinstance(value[key], bool):
            raise IncompleteCheckpoint(f"{where}: '{key}' missing or not of type {kind.__name__}")


def required_files(manifest: dict) -> set[str]:
    """What a resume reads: the Lightning state and each rank's state. DeepSpeed's state is a folder:
    its `latest` tag and the model states under the tag (the optimiser shards then must be listed
    too, as every file in the folder must)."""
    needed = {f"rank-{rank}.pt" for rank in range(manifest["world_size"])}
    if manifest["strategy"] != "deepspeed":
        return needed | {LIGHTNING}
    model_states = [entry["path"] for entry in manifest["files"]
                    if PurePosixPath(entry["path"]).match(f"{LIGHTNING}/*/*model_states.pt")]
    return needed | {f"{LIGHTNING}/latest"} | set(model_states[:1] or [f"{LIGHTNING}/<tag>/mp_rank_00_model_states.pt"])


def verify_checkpoint(directory: Path) -> Checkpoint:
    """The checkpoint in `directory`, every file verified (sha256); a clear error when it does not
    verify. For a checkpoint the user points at: a run folder is trusted input (see module doc)."""
    try:
        return check_checkpoint(directory, verify=True)
    except IncompleteCheckpoint as problem:
        raise VCellError(f"checkpoint {directory} does not verify: {problem}",
                         hint="vcell reads only checkpoints whose manifest vouches for every file: use runs you "
                         "trained yourself, or train this one again with --restart") from None


def verify_model_source(run_directory: Path) -> Checkpoint:
    """The checkpoint a run's `model/` was exported from (the step in its metadata), verified."""
    from safetensors import safe_open

    model = run_directory / "model" / "model.safetensors"
    try:
        with safe_open(str(model), framework="pt") as handle:
            step = int((handle.metadata() or {})["step"])
    except Exception:  # safetensors raises its own types; a missing or non-numeric step alike
        raise VCellError(f"{model}: no readable step in its metadata", hint="rerun the same `vcell train` command") from None
    return verify_checkpoint(CheckpointStore(run_directory).path(step))


def write_manifest(directory: Path, step: int, config_hash: str, world_size: int, strategy: str) -> Path:
    """The completion mark: called last, by one rank, after every rank has written its files."""
    manifest = {
        "format": FORMAT, "step": step, "config_hash": config_hash, "world_size": world_size,
        "strategy": strategy, "files": file_entries(directory),
    }
    return write_manifest_json(directory, manifest)


def file_entries(directory: Path) -> list[dict]:
    """What a manifest lists: every file under `directory` but the manifest, with size and sha256."""
    return [{"path": p.relative_to(directory).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in files_under(directory)]


def write_manifest_json(directory: Path, manifest: dict) -> Path:
    text = json.dumps(manifest, indent=1).encode()
    return atomic_write(directory / MANIFEST, lambda stream: stream.write(text))


# -- per-rank state --------------------------------------------------------------------------
def capture_rng() -> dict:
    """Python, NumPy and torch RNG states as tensors and plain values (loadable with weights_only)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                  "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_rank_state(directory: Path, rank: int, loader_state: dict) -> None:
    state = {"rng": capture_rng(), "loader": loader_state}
    atomic_write(directory / f"rank-{rank}.pt", lambda stream: torch.save(state, stream))


# -- weights ---------------------------------------------------------------------------------
def model_state(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The `VirtualCell` weights (fp32) of a checkpoint, DDP file or DeepSpeed shards alike."""
    if checkpoint.lightning_path.is_dir():
        from vcell.train.deepspeed_cpu import consolidate_zero_checkpoint

        if not checkpoint.verified:  # DeepSpeed unpickles its shards: only files the manifest vouches for
            checkpoint = check_checkpoint(checkpoint.path, verify=True)

        module_state = consolidate_zero_checkpoint(checkpoint.lightning_path)
    else:
        module_state = torch.load(checkpoint.lightning_path, map_location="cpu", weights_only=True)["state_dict"]
    prefix = "model."
    return {key[len(prefix):]: value.float() if value.is_floating_point() else value
            for key, value in module_state.items() if key.startswith(prefix)}
