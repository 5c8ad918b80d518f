"""What a cluster job runs, and the checks made on the laptop before anything is submitted.

    job = ClusterJob("train", config, flags=("--restart",))
    check_paths(job, Reach.SHARED, shared_roots=("/mnt/vcell",))   # or Reach.LOCAL
    job.entrypoint()   # 'python -m vcell.cli train --config config.yaml --address auto --quiet --restart'

The job carries the resolved config (a file beside the entrypoint) and, for the Ray Jobs API, the
project's code; never the data. Data and runs must be where every node of the cluster reads them:
an absolute path on a shared filesystem. A relative path would be read inside the job's working
folder on the cluster, and a path on the laptop is not on the cluster at all: both are refused here,
naming the key, before anything is submitted.
"""

from __future__ import annotations

import enum
import os
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vcell.config.loader import dump_config
from vcell.config.schema import VCellConfig
from vcell.errors import VCellError
from vcell.models.registry import enhancements

COMMANDS = ("train", "tune")
# flags of `vcell train` / `vcell tune` that a cluster job passes through unchanged
PASSED_FLAGS = {"train": ("--restart", "--resume-with-changes"), "tune": ("--restart", "--retry-errored")}
CONFIG_FILE = "config.yaml"


class Reach(enum.Enum):
    """What the cluster's nodes can read of this machine's filesystem."""

    LOCAL = "local"  # the same machine (a loopback Ray cluster): paths must exist here
    MOUNTED = "mounted"  # submitted from a node of the cluster (a Slurm login node): paths must exist here
    SHARED = "shared"  # a remote cluster: paths must lie under a declared shared root


@dataclass(frozen=True)
class ClusterJob:
    """`vcell <command>` with a resolved config, as a cluster runs it."""

    command: str
    config: VCellConfig
    flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise VCellError(f"cannot submit '{self.command}': a cluster job is one of {', '.join(COMMANDS)}",
                             hint="write the job after '--', e.g. vcell submit --target ray -- train k=v")
        unknown = [flag for flag in self.flags if flag not in PASSED_FLAGS[self.command]]
        if unknown:
            raise VCellError(f"vcell {self.command} on a cluster takes {', '.join(PASSED_FLAGS[self.command])}, "
                             f"not {' '.join(unknown)}")

    @property
    def name(self) -> str:
        """The run (or campaign) name: also the job's id on the cluster, so resubmitting is idempotent."""
        return self.config.name

    def config_text(self) -> str:
        """The resolved config the job reads (`--config config.yaml`); the address is the cluster's."""
        return dump_config(self.config.model_copy(update={"scaling": self.config.scaling.model_copy(
            update={"address": None})}))

    def entrypoint(self, python: str = "python", config_path: str | None = CONFIG_FILE, address: str | None = "auto") -> str:
        """The shell command the cluster runs; `None` leaves `--config` / `--address` for the caller to append."""
        words = [python, "-m", "vcell.cli", self.command, *(["--config", config_path] if config_path else []),
                 *(["--address", address] if address else []), "--quiet", *self.flags]
        return shlex.join(words)


def input_paths(config: VCellConfig) -> list[tuple[str, str]]:
    """(dotted key, path) of everything a job reads or writes on the cluster's filesystem."""
    paths = [("data.atlas", config.data.atlas), ("scaling.storage_path", config.scaling.storage_path)]
    for name, enhancement in enhancements().items():
        section = getattr(config.model, name, None)
        for key in enhancement.input_files:
            value = getattr(section, key, None) if section is not None else None
            if value:
                paths.append((f"model.{name}.{key}", str(value)))
    if config.loader.genes.file:
        paths.append(("loader.genes.file", str(config.loader.genes.file)))
    return paths


def check_paths(job: ClusterJob, reach: Reach, shared_roots: tuple[str, ...] = ()) -> None:
    """Every path of the job is absolute and readable by the cluster's nodes (see `Reach`)."""
    problems = [problem for key, value in input_paths(job.config)
                if (problem := path_problem(key, value, reach, shared_roots))]
    if problems:
        raise VCellError(f"{job.command} '{job.name}' cannot run on the cluster:\n  " + "\n  ".join(problems),
                         hint="put data and runs on a filesystem every node mounts and give absolute paths, e.g. "
                         "data.atlas=/shared/atlases/x.zarr scaling.storage_path=/shared/runs")


def path_problem(key: str, value: str, reach: Reach, shared_roots: tuple[str, ...]) -> str | None:
    if "://" in value:
        return f"{key}={value} is a URL: vcell reads atlases and writes runs on a mounted filesystem"
    if not value.startswith("/"):
        return f"{key}={value} is relative: on the cluster it would be looked up inside the job's working folder"
    if reach is Reach.SHARED:
        if not any(is_under(value, root) for root in shared_roots):
            where = f"under {', '.join(shared_roots)}" if shared_roots else "on a declared shared filesystem"
            return (f"{key}={value} is not {where}: the cluster cannot read this machine's files "
                    "(declare the shared mount with --shared-root PATH)")
        return None
    target = Path(value)
    if key == "scaling.storage_path":
        existing = next((p for p in (target, *target.parents) if p.exists()), Path("/"))
        if not os.access(existing, os.W_OK):
            return f"{key}={value}: {existing} is not writable"
        return None
    if not target.exists():
        return f"{key}={value} does not exist"
    return None


def is_under(path: str, root: str) -> bool:
    path_parts, root_parts = PurePosixPath(path).parts, PurePosixPath(root).parts
    return ".." not in path_parts and path_parts[:len(root_parts)] == root_parts


def check_fits(job: ClusterJob, nodes: int, cpus_per_node: int | None, gpus_per_node: int) -> None:
    """The job's Ray Train workers fit the nodes asked for (per node: whole workers only)."""
    scaling = job.config.scaling
    if scaling.gpus_per_worker and gpus_per_node == 0:
        raise VCellError(f"scaling.gpus_per_worker={scaling.gpus_per_worker} but the job asks for no GPUs",
                         hint="pass --gpus-per-node N, or train on CPU with scaling.gpus_per_worker=0")
    per_node = [gpus_per_node // scaling.gpus_per_worker] if scaling.gpus_per_worker else []
    if cpus_per_node is not None:
        per_node.append(cpus_per_node // scaling.cpus_per_worker)
    if per_node and min(per_node) * nodes < scaling.workers:
        raise VCellError(
            f"scaling.workers={scaling.workers} (x {scaling.cpus_per_worker} CPU, {scaling.gpus_per_worker} GPU each) "
            f"do not fit {nodes} node(s) of {cpus_per_node if cpus_per_node is not None else '?'} CPUs and "
            f"{gpus_per_node} GPUs: at most {min(per_node) * nodes} worker(s)",
            hint="ask for more nodes (--nodes) or fewer workers (scaling.workers=N)")
