"""Run configs for the distributed-training tests (the atlas, `train_atlas`, is in tests/conftest.py).

Runs go through the real driver (`vcell.train.ray_train.train`) on the session's local Ray
cluster; each takes ~10-20 s here, so a few reference runs are shared by module fixtures.
"""

from __future__ import annotations

from vcell.config import load_config


def run_config(atlas, storage, name: str, *overrides: str):
    """A tiny full-model run: 2 CPU workers, 64 cells per batch, 12 steps, checkpoints every 4."""
    return load_config(None, [
        f"name={name}", f"data.atlas={atlas}", "data.synthesize_if_missing=false", f"scaling.storage_path={storage}",
        "model.size=tiny", "loader.batch_size=64", "loader.block_cells=100", "loader.buffer_cells=256",
        "loader.split.val_fraction=0.1", "loader.split.test_fraction=0.0", "loader.split.holdout=[]", "train.steps=12", "train.checkpoint_every=4",
        "train.validate_every=6", "train.validation_batches=2", "train.deterministic=true", "train.audit_cells=true",
        "train.progress_bar=false", "wandb.mode=disabled", "scaling.max_failures=1", "evaluate.at_end=false", *overrides,
    ])
