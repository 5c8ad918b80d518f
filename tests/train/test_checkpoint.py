"""Checkpoint completeness, pruning, RNG round trips and the history file, without Ray."""

from __future__ import annotations

import json
import logging
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


def edit_files(edit):
    def apply(manifest: dict, directory) -> dict:
        edit(manifest["files"], directory)
        return manifest
    return apply


def drop_rank_file(files, directory):
    files[:] = [entry for entry in files if entry["path"] != "rank-1.pt"]
    (directory / "rank-1.pt").unlink()


EDITED_MANIFESTS = {  # name -> (edit of the manifest dict, or raw text), words the warning must contain
    "empty file list": (lambda m, d: {**m, "files": []}, "does not list: lightning.ckpt, rank-0.pt"),
    "a rank's state neither listed nor there": (edit_files(drop_rank_file), "does not list: rank-1.pt"),
    "an unlisted extra file": (lambda m, d: (d / "extra.pt").write_bytes(b"x") and m, "does not list: extra.pt"),
    "step as text": (lambda m, d: {**m, "step": "20"}, "'step' missing or not of type int"),
    "world size true": (lambda m, d: {**m, "world_size": True}, "'world_size' missing or not of type int"),
    "no config hash": (lambda m, d: {k: v for k, v in m.items() if k != "config_hash"}, "'config_hash' missing"),
    "step of another folder": (lambda m, d: {**m, "step": 10}, "does not match the folder name"),
    "entry without sha256": (edit_files(lambda f, d: f[0].pop("sha256")), "'sha256' missing"),
    "entry not an object": (edit_files(lambda f, d: f.append("rank-9.pt")), "a 'files' entry is not a JSON object"),
    "path outside the folder": (edit_files(lambda f, d: f[0].update(path="../../x")), "not a plain path"),
    "wrong size": (edit_files(lambda f, d: f[0].update(bytes=f[0]["bytes"] + 1)), "the manifest says"),
    "wrong sha256": (edit_files(lambda f, d: f[0].update(sha256="0" * 64)), "sha256 differs"),
    "unknown strategy": (lambda m, d: {**m, "strategy": "fsdp"}, "strategy 'fsdp'"),
    "not JSON": ("{\"step\": 20,", "is not valid JSON"),
    "a list": ("[]", "is not a JSON object"),
}


@pytest.mark.parametrize("name", EDITED_MANIFESTS)
def test_an_edited_manifest_is_ignored_on_resume_with_a_warning_naming_it(tmp_path, caplog, name):
    store = ckpt.CheckpointStore(tmp_path)
    fake_checkpoint(store, 10)
    directory = fake_checkpoint(store, 20)
    edit, reason = EDITED_MANIFESTS[name]
    manifest_path = directory / ckpt.MANIFEST
    text = edit if isinstance(edit, str) else json.dumps(edit(json.loads(manifest_path.read_text()), directory))
    manifest_path.write_text(text)
    with caplog.at_level(logging.WARNING, logger=ckpt.__name__):
        assert store.latest().step == 10  # the edited newest one is skipped, no traceback
    assert f"ignoring checkpoint {directory}" in caplog.text and reason in caplog.text
    with pytest.raises(VCellError, match="does not verify") as refused:  # pointed at explicitly: refused
        ckpt.verify_checkpoint(directory)
    assert reason in str(refused.value)


def test_a_deepspeed_checkpoint_must_list_its_shards(tmp_path):
    store = ckpt.CheckpointStore(tmp_path)
    directory = fake_checkpoint(store, 4, manifest=False)
    ckpt.write_manifest(directory, 4, "hash", 2, "deepspeed")  # a DDP file where DeepSpeed's folder belongs
    with pytest.raises(VCellError, match="does not list: lightning.ckpt/<tag>/mp_rank_00_model_states.pt, lightning.ckpt/latest"):
        ckpt.verify_checkpoint(directory)


def test_pruning_keeps_the_newest_complete_checkpoints(tmp_path):
    store = ckpt.CheckpointStore(tmp_path)
    for step in (5, 10, 15):
        fake_checkpoint(store, step)
    fake_checkpoint(store, 12, manifest=False)
    fake_checkpoint(store, 20, manifest=False)  # newer than the newest complete one: left alone
    store.prune(keep=2)
    assert sorted(p.name for p in store.root.iterdir()) == ["step-00000010", "step-00000015", "step-00000020"]


def test_folders_vcell_did_not_name_are_never_read_or_pruned(tmp_path):
    store = ckpt.CheckpointStore(tmp_path)
    for step in (5, 10):
        fake_checkpoint(store, step)
    for name in ("step-abc", "step-1", "step-00000003-notes"):  # a user's folders beside ours
        (store.root / name).mkdir()
        (store.root / name / "keep.txt").write_text("mine")
    (store.root / "step-00000001").write_text("a file, not a folder")
    store.prune(keep=1)
    assert sorted(p.name for p in store.root.iterdir()) == [
        "step-00000001", "step-00000003-notes", "step-00000010", "step-1", "step-abc"]
    assert store.latest().step == 10


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


def fake_zero_checkpoint(store: ckpt.CheckpointStore, step: int, extra: tuple[str, ...] = ()):
    """A DeepSpeed checkpoint's files (empty shards) as 2 ranks write them, plus `extra` files."""
    directory = store.path(step)
    for name in ("tag/mp_rank_00_model_states.pt", *(f"tag/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(2)),
                 *extra):
        (directory / ckpt.LIGHTNING / name).parent.mkdir(parents=True, exist_ok=True)
        torch.save({}, directory / ckpt.LIGHTNING / name)
    (directory / ckpt.LIGHTNING / "latest").write_text("tag")
    for rank in range(2):
        ckpt.write_rank_state(directory, rank, {"next_batch": step, "rank": rank})
    ckpt.write_manifest(directory, step, "hash", 2, "deepspeed")
    return directory


def test_another_number_of_workers_resumes_ddp_and_zero_checkpoints_but_not_nvme_offloaded_ones(tmp_path):
    store = ckpt.CheckpointStore(tmp_path)
    fake_checkpoint(store, 4)
    latest = ckpt.resume_point(store, "hash", False, world_size=3)  # DDP: the state is whole on every rank
    assert latest.step == 4 and latest.loader_states() == [{"next_batch": 4, "rank": 0}, {"next_batch": 4, "rank": 1}]
    fake_zero_checkpoint(store, 8)  # ZeRO: re-partitioned through a universal copy (vcell.train.repartition)
    assert ckpt.resume_point(store, "hash", False, world_size=1).step == 8
    # NVMe offload: DeepSpeed restores the optimiser state only from each old rank's swap files
    fake_zero_checkpoint(store, 12, extra=("tag/offloaded_tensors/rank00/state.swp",))
    assert ckpt.resume_point(store, "hash", False, world_size=2).step == 12
    with pytest.raises(VCellError, match="offloaded to NVMe per worker") as refused:
        ckpt.resume_point(store, "hash", False, world_size=1)
    assert "scaling.workers=2" in refused.value.hint


def test_universal_copies_go_with_their_checkpoints_and_nothing_else_in_their_folder(tmp_path):
    store = ckpt.CheckpointStore(tmp_path)
    for step in (4, 8, 12):
        fake_checkpoint(store, step)
    ours = [store.universal_path(4), store.universal_root / ".step-00000004.k2x_9", store.universal_path(8),
            store.universal_path(12), store.universal_root / ".step-00000012.abc"]
    not_ours = [store.universal_root / "notes", store.universal_root / "step-4", store.universal_root / "step-00000004.x"]
    for directory in ours + not_ours:
        directory.mkdir(parents=True)
    store.prune(keep=2)
    assert [c.step for c in store.complete()] == [8, 12]
    assert [path.exists() for path in ours] == [False, False, True, True, True]
    assert all(path.exists() for path in not_ours)


def test_the_universal_folder_goes_once_its_last_copy_is_pruned(tmp_path):
    store = ckpt.CheckpointStore(tmp_path)
    for step in (4, 8):
        fake_checkpoint(store, step)
    store.universal_path(4).mkdir(parents=True)
    store.prune(keep=1)
    assert not store.universal_root.exists() and [c.step for c in store.complete()] == [8]
    store.prune(keep=1)  # nothing to prune, no folder: no error


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
