"""Run configs for the distributed-training tests (the atlas, `train_atlas`, is in tests/conftest.py),
the uninterrupted reference run other runs are compared with, and the comparison.

Runs go through the real driver (`vcell.train.ray_train.train`) on the session's local Ray
cluster; each takes ~10-20 s here, so the reference run is shared by the whole session.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vcell.config import load_config


def run_overrides(atlas, storage, name: str, *overrides: str) -> list[str]:
    """The `key=value` overrides of a tiny full-model run: 2 CPU workers, 64 cells per batch, 12 steps,
    checkpoints every 4 (also what `vcell train` takes on its command line)."""
    return [
        f"name={name}", f"data.atlas={atlas}", "data.synthesize_if_missing=false", f"scaling.storage_path={storage}",
        "model.size=tiny", "loader.batch_size=64", "loader.block_cells=100", "loader.buffer_cells=256",
        "loader.split.val_fraction=0.1", "loader.split.test_fraction=0.0", "loader.split.holdout=[]", "train.steps=12", "train.checkpoint_every=4",
        "train.validate_every=6", "train.validation_batches=2", "train.deterministic=true", "train.audit_cells=true",
        "train.progress_bar=false", "wandb.mode=disabled", "scaling.max_failures=1", "evaluate.at_end=false", *overrides,
    ]


def run_config(atlas, storage, name: str, *overrides: str):
    """The config of `run_overrides`."""
    return load_config(None, run_overrides(atlas, storage, name, *overrides))


def weight_differences(first, second) -> list[str]:
    """Names of the exported tensors that are not bitwise equal between two runs (configs)."""
    from vcell.train.model_folder import load_exported
    from vcell.train.run import run_directory

    a, b = load_exported(run_directory(first) / "model"), load_exported(run_directory(second) / "model")
    assert a.keys() == b.keys()
    return [name for name in a if not torch.equal(a[name], b[name])]


def weights_not_close(first: dict, second: dict, atol: float) -> list[str]:
    """Names of the tensors not within `atol` (+ 1e-5 relative) everywhere, of another shape, or missing."""
    return [name for name in first.keys() | second.keys()
            if name not in first or name not in second or first[name].shape != second[name].shape
            or not torch.allclose(first[name], second[name], atol=atol)]


DISPERSION = "head.likelihood.scaled_log_dispersion"


def strategy_weight_differences(first: dict, second: dict, atlas) -> list[str]:
    """Names of the exported tensors of two runs that took the same steps under different strategies
    (DDP, ZeRO) and do not agree: every tensor within 1e-4, except the NB dispersions. Adam steps a
    parameter by ~its learning rate whatever the gradient's size, so where a dispersion's gradient
    is ~0 the strategies' different summation orders steer it apart. Genes detected in >= 1% of
    cells: within 1e-3 (measured 6e-6 in 12 steps, 6e-4 before the running statistics were
    averaged across ranks, when DeepSpeed ranks each ran with their own; 3e-4 across a ZeRO-2 run
    resumed on 1 worker from a universal checkpoint); the rest, barely constrained by their counts:
    within 5e-3 (measured 1e-3). The detected level's running sums: within 1e-3 of their size."""
    from vcell.atlas.store import open_atlas

    sums = {key for key in first.keys() | second.keys() if key.endswith("detected_level.sums")}
    different = weights_not_close({k: v for k, v in first.items() if k != DISPERSION and k not in sums},
                                  {k: v for k, v in second.items() if k != DISPERSION and k not in sums}, atol=1e-4)
    # the detected level's running sums add up hundreds of hidden values per gene and, in a count
    # model, read the dispersions: agreement relative to their size
    different += [key for key in sorted(sums) if not torch.allclose(first[key], second[key], rtol=1e-3, atol=1e-3)]
    if DISPERSION in first.keys() | second.keys():
        informed = torch.as_tensor(open_atlas(atlas).root["stats/gene_detection_rate"][:] >= 0.01)
        gap = (first[DISPERSION] - second[DISPERSION]).abs()
        if gap[informed].max() >= 1e-3 or gap.max() >= 5e-3:
            different.append(DISPERSION)
    return different


def losses(config) -> np.ndarray:
    """The training loss of each step in a run's history.csv."""
    from vcell.train.run import run_directory
    from vcell.train.tracking import read_history

    return np.array([float(row["train/loss"]) for row in read_history(run_directory(config) / "history.csv")])


def audit_after_one_resume(config, resumed_from: int, replayed_steps: set[int]) -> np.ndarray:
    """The cell audit of a run resumed once, from its checkpoint of step `resumed_from`, checked: the
    first attempt's steps after that checkpoint are `replayed_steps`, and apart from them every train
    cell was trained exactly once in each epoch. Returns the audit (rank, resumed_from, step, epoch, cell)."""
    from vcell.data.split import SPLITS
    from vcell.train.callbacks import read_audit
    from vcell.train.run import run_directory

    audit = read_audit(run_directory(config) / "audit")
    assert set(audit[:, 1]) == {0, resumed_from}
    replayed = (audit[:, 1] == 0) & (audit[:, 2] > resumed_from)
    assert set(audit[replayed, 2]) == replayed_steps
    kept = audit[~replayed]
    codes = np.load(run_directory(config) / "split_codes.npy")
    train_cells = np.flatnonzero(codes == SPLITS.index("train"))
    for epoch in np.unique(kept[:, 3]):
        cells = np.sort(kept[kept[:, 3] == epoch, 4])
        assert np.array_equal(cells, train_cells), f"epoch {epoch}: not every train cell exactly once"
    return audit


@pytest.fixture(scope="session")
def reference(ray_cluster, train_atlas, tmp_path_factory):
    """An uninterrupted 2-worker DDP run (W&B offline, evaluated at its end): what the other runs are compared with."""
    from vcell.train.ray_train import train

    config = run_config(train_atlas, tmp_path_factory.mktemp("reference"), "reference", "wandb.mode=offline",
                        "evaluate.at_end=true")
    return config, train(config)
