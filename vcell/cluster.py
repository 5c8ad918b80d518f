"""The Ray cluster a job runs on: the one connected already, `scaling.address`, or a local one.

    with ray_cluster(config.scaling) as resources:    # {"CPU": 8.0, "GPU": 0.0, ...}
        ...                                           # Ray Train, Ray Tune or Ray tasks

Used by training, campaigns and `vcell embed --tasks`; a local cluster binds to 127.0.0.1 with
the dashboard off (DESIGN.md, promise 5).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from vcell.config.schema import ScalingSection
from vcell.errors import VCellError


def local_resources() -> dict[str, float]:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"CPU": float(cores), "GPU": float(torch.cuda.device_count())}


@contextlib.contextmanager
def ray_cluster(scaling: ScalingSection) -> Iterator[dict[str, float]]:
    """The cluster's resources: an already connected Ray, `scaling.address`, or a new local one
    bound to 127.0.0.1 with the dashboard off (shut down on exit)."""
    if scaling.address is None:
        # read by Ray at import: the local node takes the loopback address and listens only there
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Ray Train's controller polls its workers every 2 s by default: a run's end (and a dead
        # worker) is seen sooner at 0.5 s, which costs nothing on one machine
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        # the preemption watcher polls cloud nodes for spot-instance notices: one more process per run
        # (seconds of start-up on a small machine) for an event a local machine never sees
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    import ray

    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    if scaling.address is not None:
        ray.init(address=scaling.address, log_to_driver=True)
    else:
        # Without the dashboard Ray's state API is absent, and Ray Train's placement-group cleaner
        # warns about it every few seconds: worker processes log errors only.
        try:
            ray.init(num_cpus=int(local_resources()["CPU"]), include_dashboard=scaling.include_dashboard,
                     _node_ip_address="127.0.0.1", configure_logging=False,
                     logging_config=None if scaling.include_dashboard else ray.LoggingConfig(log_level="ERROR"))
        except Exception as error:
            if scaling.include_dashboard and "dashboard" in str(error):
                raise VCellError(f"scaling.include_dashboard=true: {error}",
                                 hint="pip install 'ray[default]' for the dashboard, or leave it off") from None
            raise
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()
