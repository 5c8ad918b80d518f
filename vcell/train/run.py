"""A run's identity and folder: deterministic name, config hash, and the refusal of a changed config.

    run = prepare_run(config, restart=False, resume_with_changes=False)
    run.directory        # <scaling.storage_path>/<name>/ (absolute)
    run.config_hash      # sha256 of the resolved config, operational keys left out

Re-running the same command finds the same folder and resumes. The same name with a different
config is refused with the difference shown, unless the user restarts (the old run is deleted, with
the figures, biology/ and embeddings its evaluation wrote; files vcell did not write stay) or
resumes with changes (e.g. more steps). An attempt that failed before its first checkpoint
protects nothing: a corrected config simply replaces it. Everything is written through temp files + rename.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from vcell.config import dump_config
from vcell.config.loader import read_yaml_mapping
from vcell.config.schema import VCellConfig
from vcell.config.train import OPERATIONAL
from vcell.errors import VCellError
from vcell.files import atomic_write
from vcell.models.registry import resolve
from vcell.train.checkpoint import Checkpoint, CheckpointStore, resume_point
from vcell.trees import flatten

RUN_FILES = ("checkpoints", "model", "history.csv", "metrics.json", "audit", "wandb", "ray", "split.json",
             "split_codes.npy", "config.yaml")
# what an evaluation wrote is removed on a restart too, by the evaluation layer (above this one, so
# named by text), which knows its files: vcell's figures, biology/ and embeddings.h5ad, nothing else
FORGET_EVALUATION = "vcell.evaluate.evaluation:forget_evaluation"


def identity(config: VCellConfig | dict) -> dict[str, object]:
    """The dotted keys that define what a run computes (operational keys left out)."""
    tree = config.model_dump(mode="json") if isinstance(config, VCellConfig) else config
    flat = flatten(tree)
    read = {"model.columns.batch"} if flat.get("model.batch_covariate") else set()  # operational unless the model reads it
    # the name is the folder itself: a copied or renamed run is still the same computation
    return {key: value for key, value in flat.items()
            if (key not in OPERATIONAL or key in read) and key != "name" and not key.startswith(("evaluate.", "tune."))}


def config_hash(config: VCellConfig | dict) -> str:
    return hashlib.sha256(json.dumps(identity(config), sort_keys=True).encode()).hexdigest()[:16]


# Keys added with a default that does not keep the old behaviour: what a run saved without them did.
# A new key fails tests/train/test_saved_keys.py until it is listed in tests/train/saved_keys.txt,
# whose header asks whether it belongs here too.
BEFORE_THE_KEY = {
    "model.batch_covariate": False,
    "model.detected_level": False,  # a squared-error model imputed a hidden gene as its reconstruction
    "model.hierarchical.observed_deviation": False,  # pathway activity was the decoded cell's projection alone
    "model.response_basal_targets": False,  # before it, only perturbed or stimulated cells were response targets
    "model.regulatory.reliability_weighting": False,  # the regression's gradient was not weighted
    "model.regulatory.saturation": None,  # linear propagation (its default became 1.0 without a BEFORE_THE_KEY entry)
    "model.regulatory.dilution_correction": 0.0,
    "model.stochastic.variational": True,  # the stochastic enhancement always installed its variational latent
}


def as_saved(tree: dict) -> dict:
    """A saved config tree (a run's or an export's config.yaml) with each key of BEFORE_THE_KEY that
    it lacks set to what the run did without it, so an older model loads as the model it was
    (only where the key's section is there: nothing else is added)."""
    tree = copy.deepcopy(tree)
    for key, value in BEFORE_THE_KEY.items():
        *sections, leaf = key.split(".")
        node = tree
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value
    return tree


def read_saved_config(directory: str | Path) -> VCellConfig:
    """The config of a model folder (a finished run's or an export's), read as the model it was
    (through `as_saved`): every reader of a saved model goes through here, so a key added to
    BEFORE_THE_KEY reaches them all."""
    path = Path(directory) / "config.yaml"
    hint = "give a folder that a finished run or `vcell export` wrote, with its config.yaml intact"
    if not path.is_file():
        raise VCellError(f"{directory}: not a complete vcell model folder, it has no config.yaml", hint=hint)
    tree = read_yaml_mapping(path)  # names the file when it is not valid YAML or not a mapping
    if not tree:
        raise VCellError(f"{path}: not a vcell config (the file is empty)", hint=hint)
    return VCellConfig.model_validate(as_saved(tree))


def config_diff(saved: dict, current: VCellConfig, identity_of=identity) -> list[str]:
    """'key: saved -> now' for every key of `identity_of` (a run's identity by default) that differs.

    A key the saved config lacks is no difference while the current value is the key's default:
    the key was added to vcell after the run was written, and its default keeps the old behaviour
    (keys in BEFORE_THE_KEY read as their value there instead: the saved tree is read `as_saved`)."""
    before, after, defaults = identity_of(as_saved(saved)), identity_of(current), identity_of(VCellConfig())
    keys = sorted(set(before) | set(after))
    return [f"{key}: {before.get(key, '<absent>')!r} -> {after.get(key, '<absent>')!r}"
            for key in keys if before.get(key) != after.get(key)
            and not (key not in before and key in defaults and after.get(key) == defaults[key])]


def accepted_hashes(config: VCellConfig) -> tuple[str, ...]:
    """The config hashes whose checkpoints continue this run without --resume-with-changes: this
    config's, and that of the run's saved config when it is the same computation written before
    keys were added to vcell (see `config_diff`): its checkpoints carry the older, shorter hash."""
    hashes = [config_hash(config)]
    saved_path = run_directory(config) / "config.yaml"
    if saved_path.is_file():
        saved = read_yaml_mapping(saved_path)
        if not config_diff(saved, config):
            hashes.append(config_hash(saved))
    return tuple(dict.fromkeys(hashes))


@dataclass
class Run:
    directory: Path
    config_hash: str
    resumed: bool  # an earlier attempt of this run exists
    accepted_hashes: tuple[str, ...] = ()  # checkpoints with these hashes continue the run (see accepted_hashes)
    latest: Checkpoint | None = None  # the verified checkpoint this attempt continues from

    @property
    def checkpoints(self) -> Path:
        return self.directory / "checkpoints"


def run_directory(config: VCellConfig) -> Path:
    return (Path(config.scaling.storage_path) / config.name).resolve()


def check_run(config: VCellConfig, *, restart: bool = False, resume_with_changes: bool = False) -> bool:
    """Whether an earlier attempt of this run exists; refuses a changed config (writes nothing)."""
    if "://" in config.scaling.storage_path:
        raise VCellError(
            f"scaling.storage_path={config.scaling.storage_path!r}: runs live on a filesystem every worker mounts",
            hint="mount the bucket (e.g. gcsfuse, s3fs, a shared NFS/Lustre path) and give that path",
        )
    saved_path = run_directory(config) / "config.yaml"
    resumed = saved_path.is_file() and not restart
    if resumed:
        differences = config_diff(read_yaml_mapping(saved_path), config)  # a broken file is named
        if differences and not has_checkpoints(saved_path.parent):
            return False  # an attempt that failed before its first checkpoint: nothing to resume or protect
        if differences and not resume_with_changes:
            shown = "\n    ".join(differences)
            raise VCellError(
                f"run '{config.name}' exists in {saved_path.parent} with a different config:\n    {shown}",
                hint="set the keys you changed back to their saved values to continue the run as it was (keys vcell "
                "derives, such as loader.labels, follow them), pass --resume-with-changes to continue it with these "
                "changes, --restart to start it over, or --name to start a new run",
            )
    return resumed


def has_checkpoints(directory: Path) -> bool:
    """Whether any checkpoint of the run got as far as its manifest (complete or not, unverified)."""
    return any((directory / "checkpoints").glob("step-*/manifest.json"))


def prepare_run(config: VCellConfig, *, restart: bool = False, resume_with_changes: bool = False) -> Run:
    """Check the run folder against `config` and record the config in it (see module doc)."""
    resumed = check_run(config, restart=restart, resume_with_changes=resume_with_changes)
    hashes = accepted_hashes(config) if resumed else (config_hash(config),)  # before config.yaml is rewritten
    directory = run_directory(config)
    # a checkpoint this run cannot continue from is refused before the folder is touched
    latest = None if restart else resume_point(CheckpointStore(directory), hashes, resume_with_changes,
                                               config.scaling.workers)
    failed_start = not resumed and (directory / "config.yaml").is_file()  # and no checkpoint (see check_run)
    if restart or failed_start:
        for name in RUN_FILES:
            path = directory / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        resolve(FORGET_EVALUATION)(directory)  # the old model's figures and network must not pass for this one's
    probe_writable(directory, "the driver")
    text = dump_config(config).encode()
    atomic_write(directory / "config.yaml", lambda stream: stream.write(text))
    return Run(directory, config_hash(config), resumed, hashes, latest)


def probe_writable(directory: Path, who: str) -> None:
    """Fail fast, with the path, when `who` cannot create files in `directory`."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / f".probe-{hashlib.sha1(who.encode()).hexdigest()[:8]}", lambda s: s.write(b"ok")).unlink()
    except OSError as error:
        raise VCellError(
            f"{who} cannot write the run folder {directory}: {error.strerror or error}",
            hint="set scaling.storage_path to a folder every worker can write (a shared filesystem on clusters)",
        ) from None
