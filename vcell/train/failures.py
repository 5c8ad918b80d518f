"""Which worker failures a run retries: infrastructure (a dead worker or node), never a vcell error.

    with user_errors_not_retried():      # driver, around TorchTrainer.fit
        trainer.fit()
    raise_user_error(error)              # worker, on a VCellError: one message with the log's path

A `VCellError` in a worker (bad data, a config the atlas cannot serve, a checkpoint that does not
fit) fails the same way on every attempt, so retrying it only prints the same traceback
`scaling.max_failures` more times. Ray Train's `FailureConfig` counts failures but does not say
which ones; its default policy retries every worker-group error. `NoRetryOfUserErrors` raises at
once when any worker failed with a vcell error and defers to Ray's policy otherwise.
"""

from __future__ import annotations

import logging
import os

from ray.train.v2.api.exceptions import TrainingFailedError, WorkerGroupError

from vcell.compat import (
    RAY_TRAIN_WORKER_ERROR_LOGGER, ray_logs_directory, ray_train_failure_policy, ray_train_failure_policy_bases,
)
from vcell.errors import VCellError

DefaultFailurePolicy, FailureDecision = ray_train_failure_policy_bases()


def user_error(error: BaseException | None) -> VCellError | None:
    """The VCellError behind a worker failure (Ray wraps it once or twice), if there is one."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, VCellError):
            return error
        seen.add(id(error))
        error = getattr(error, "_base_exc", None) or error.__cause__  # UserExceptionWithTraceback, or chained
    return None


class NoRetryOfUserErrors(DefaultFailurePolicy):
    """Ray's default failure policy, except that a vcell error in any worker is raised at once."""

    def make_decision(self, training_failed_error: TrainingFailedError) -> FailureDecision:
        if isinstance(training_failed_error, WorkerGroupError) and any(
            user_error(failure) for failure in training_failed_error.worker_failures.values()
        ):
            return FailureDecision.RAISE
        return super().make_decision(training_failed_error)


def user_errors_not_retried():
    """`TorchTrainer.fit` inside builds `NoRetryOfUserErrors` instead of Ray's default policy
    (Ray 2.60 has no public setting for it: see `vcell.compat.ray_train_failure_policy`)."""
    return ray_train_failure_policy(NoRetryOfUserErrors)


class _WithoutTrainingFunctionTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Error in training function")


def raise_user_error(error: VCellError, rank: int) -> None:
    """Re-raise a worker's VCellError naming the rank and this worker's log, without Ray's
    traceback of it in the log (the message is the whole story; the driver shows it once)."""
    logging.getLogger(RAY_TRAIN_WORKER_ERROR_LOGGER).addFilter(_WithoutTrainingFunctionTraceback())
    raise VCellError(f"worker {rank}: {error}\n  worker log: {worker_log()}") from None


def worker_log() -> str:
    """The file this process's stderr goes to (Ray's worker-*.err), or Ray's log folder."""
    try:
        return os.readlink("/proc/self/fd/2")
    except OSError:  # not Linux: the folder Ray writes worker logs to
        return ray_logs_directory()
