"""Campaign configs for the `vcell tune` tests: tiny one-worker trials on the shared atlas."""

from __future__ import annotations

from tests.train.conftest import run_config


def campaign_config(atlas, storage, name: str, space: str, *overrides: str):
    """12-step full-model trials (1 worker; validation and checkpoints every 4 steps) over `space`
    (YAML); the campaign may use 2 CPUs, so 2 trials run at a time."""
    return run_config(atlas, storage, name, "scaling.workers=1", "train.validate_every=4", "train.audit_cells=false",
                      "train.deterministic=false", "tune.resources.cpus=2", "tune.scheduler.grace_period=4",
                      f"tune.space={space}", *overrides)
