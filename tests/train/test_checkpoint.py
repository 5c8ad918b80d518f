"""Checkpoint completeness, pruning, RNG round trips and the history file, without Ray."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from vcell.errors import VCellError
from vcell.train import checkpoint as ckpt
from vcell.train.tracking import History, read_history, wandb_run_id


def fake_checkpoint(store: ckpt.CheckpointStore, step: int, world_size: int = 2, manifest: bool = True):
    directory = store.path(step)
    directory.mkdir(parents=True)
    torch.save({"state_dict": {"model.weight": torch.full((3,), float(step))}}, directory / ckpt.LIGHTNING)
    for rank in range(world_size):
        ckpt.write_rank_state(directory, rank, {"next_batch": step, "rank": rank})
    if manifest:
        ckpt.write_manifest(directory, step, "hash", world_size, "ddp")
    return directory


def test_only_checkpoints_with_a_matching_manifest_count(tmp_path):
    store = ckpt.CheckpointStore(tmp_path)
    fake_checkpoint(store, 10)
    fake_checkpoint(store, 20)
    fake_checkpoint(store, 30, manifest=False)  # died while saving
    assert [c.step for c in store.complete()] == [10, 20]
    damaged = store.path(20) / "rank-1.pt"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"x")  # same size, other bytes
    assert store.latest().step == 10
    (store.path(10) / "rank-0.pt").unlink()
    assert store.latest() is None


def test_pruning_keeps_the_newest_complete_checkpoints(tmp_path):
    store = ckpt.CheckpointStore(tmp_path)
    for step in (5, 10, 15):
        fake_checkpoint(store, step)
    fake_checkpoint(store, 12, manifest=False)
    fake_checkpoint(store, 20, manifest=False)  # newer than the newest complete one: left alone
    store.prune(keep=2)
    assert sorted(p.name for p in store.root.iterdir()) == ["step-00000010", "step-00000015", "step-00000020"]


def test_rank_state_round_trips_the_random_generators(tmp_path):
    store = ckpt.CheckpointStore(tmp_path)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    directory = fake_checkpoint(store, 4)
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.restore_rng(store.latest().rank_state(0)["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(2), expected[2])
    assert store.latest().rank_state(1)["loader"] == {"next_batch": 4, "rank": 1}
    with pytest.raises(VCellError, match="scaling.workers=2"):
        ckpt.read_checkpoint(directory, verify=True).rank_state(2)


def test_weights_come_out_of_the_lightning_file_without_the_module_prefix(tmp_path):
    store = ckpt.CheckpointStore(tmp_path)
    fake_checkpoint(store, 7)
    state = ckpt.model_state(store.latest())
    assert list(state) == ["weight"] and torch.equal(state["weight"], torch.full((3,), 7.0))
    ckpt.export_weights(store.latest(), tmp_path / "model", "name: x\n", {"gene_ids": ["g1", "g2"]}, {"cell_type": ["T"]},
                        {"target_sum": 1e4, "log1p": True, "clip": None, "gene_mean": None, "gene_scale": None})
    assert torch.equal(ckpt.load_exported(tmp_path / "model")["weight"], state["weight"])
    assert (tmp_path / "model" / "genes.txt").read_text() == "g1\ng2\n"


def test_weights_vcell_did_not_write_are_refused(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "foreign").mkdir()
    save_file({"weight": torch.zeros(3)}, tmp_path / "foreign" / "model.safetensors")
    with pytest.raises(VCellError, match="not written by vcell"):
        ckpt.load_exported(tmp_path / "foreign")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(VCellError, match="not a readable safetensors"):
        ckpt.load_exported(tmp_path / "broken")
    with pytest.raises(VCellError, match="no exported model"):
        ckpt.load_exported(tmp_path / "missing")


def test_history_forgets_steps_after_the_resumed_checkpoint(tmp_path):
    path = tmp_path / "history.csv"
    history = History(path)
    for step in range(1, 7):
        history.append({"step": step, "train/loss": 1.0 / step, **({"train/response": 0.5} if step % 2 else {})})
    history.flush()
    assert [r["train/response"] for r in read_history(path)] == ["0.5", "", "0.5", "", "0.5", ""]
    resumed = History(path, resume_step=4)
    resumed.append({"step": 5, "train/loss": 0.1})
    resumed.flush()
    assert [int(r["step"]) for r in read_history(path)] == [1, 2, 3, 4, 5]


def test_wandb_ids_are_stable_and_distinct():
    assert wandb_run_id("quickstart") == wandb_run_id("quickstart")
    assert len({wandb_run_id("a"), wandb_run_id("b"), wandb_run_id("a", "trial-1")}) == 3
