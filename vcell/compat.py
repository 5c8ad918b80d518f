"""Every private API of Ray, torch and Lightning that vcell touches, each in one place.

Checked against Ray 2.60.0, torch 2.13.0 and pytorch-lightning 2.6.6 (the versions pyproject.toml
admits). Each function says what it reaches into, why no public API does the job, and what
breaks if it moves; `tests/test_compat.py` exercises each one against the installed versions,
so an upgrade that moves one fails there first, by name. Imports happen inside the functions:
importing this module costs nothing and loads no Ray.

Not here: `vcell.train.deepspeed_cpu.CPUDeepSpeedStrategy` overrides two private methods of
Lightning's DeepSpeedStrategy (`_setup_model_and_optimizer`, `_initialize_deepspeed_inference`);
an override has to live in its subclass, whose docstring names the version and the reason.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

CHECKED_AGAINST = {"ray": "2.60.0", "torch": "2.13.0", "pytorch-lightning": "2.6.6"}

# Ray Train logs a worker's exception with its traceback under this logger before it reports the
# failure to the controller (ray/train/v2/_internal/util.py). Moved: that traceback shows again
# beside our one-line message (cosmetic).
RAY_TRAIN_WORKER_ERROR_LOGGER = "ray.train.v2._internal.util"


# -- Ray Train v2 ------------------------------------------------------------------------------
def ray_train_callback_bases() -> tuple[type, type]:
    """(ControllerCallback, WorkerGroupCallback): the callback kinds that see the Train controller
    start and the worker group's placement group. The public `UserCallback` sees neither, and a
    campaign's trial needs both to stop its run and free its cores (vcell/tune/trial.py).
    Moved: `vcell tune` cannot import (a clear ImportError at start)."""
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

    return ControllerCallback, WorkerGroupCallback


def worker_group_placement_group(worker_group) -> Any | None:
    """The placement group a Train worker group holds (its state object is not public), or None
    where this Ray keeps it elsewhere (then a stopped trial's cores are freed when Ray notices)."""
    try:
        return worker_group.get_worker_group_state().placement_group_handle.placement_group
    except AttributeError:
        return None


def placement_group_from_hex(identifier: str):
    """A handle to a placement group known by its hex id (Ray's public API gives handles only to
    the process that created the group; a trial records the id in a file so the driver can free
    the group of a trial that died). Moved: ImportError when a campaign cleans up."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    return PlacementGroup(PlacementGroupID(bytes.fromhex(identifier)))


def ray_train_failure_policy_bases() -> tuple[type, Any]:
    """(DefaultFailurePolicy, FailureDecision): Ray Train's failure policy, to subclass. Ray 2.60
    has no public setting for which failures are retried (`FailureConfig` only counts them)."""
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision

    return DefaultFailurePolicy, FailureDecision


@contextlib.contextmanager
def ray_train_failure_policy(policy_class: type) -> Iterator[None]:
    """While the block runs, `TorchTrainer.fit` builds `policy_class(failure_config)` instead of
    Ray's default policy: `fit` calls the module-level factory `create_failure_policy`, which we
    stand in for (the driver runs one fit at a time). Moved: the stand-in is never called, and
    vcell errors in workers are retried again (tests/train/test_ray_train.py catches it)."""
    from ray.train.v2.api import data_parallel_trainer

    original = data_parallel_trainer.create_failure_policy
    data_parallel_trainer.create_failure_policy = policy_class
    try:
        yield
    finally:
        data_parallel_trainer.create_failure_policy = original


def quiet_ray_train_report_log() -> None:
    """Ray Train logs each `ray.train.report` whole, at INFO, on every rank (`Reporting training
    result ... TrainingReport(...)`), under a logger named by its file's path. Moved: the lines
    come back (cosmetic)."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def ray_logs_directory() -> str:
    """The folder this Ray node writes its logs to (no public getter in a worker process)."""
    import ray

    return str(ray._private.worker.global_worker.node.get_logs_dir_path())


# -- torch ---------------------------------------------------------------------------------------
def set_scheduler_last_lr(scheduler, learning_rates: list[float]) -> None:
    """What `scheduler.get_last_lr()` reports, after the optimiser's learning rates were changed
    outside a scheduler step (a resumed run taking a new peak learning rate). torch keeps it in
    `_last_lr` and offers no setter. Moved: the logged learning rate lags one step (cosmetic)."""
    scheduler._last_lr = list(learning_rates)
