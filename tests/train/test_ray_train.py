"""The training driver end to end on a real local Ray cluster: what a run writes, fault
tolerance with exactly-once data, bitwise resume parity, and errors before any worker starts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.train.conftest import run_config
from vcell.atlas.store import open_atlas
from vcell.data.split import SPLITS
from vcell.errors import VCellError
from vcell.models.zoo import build_model
from vcell.train.callbacks import read_audit
from vcell.train.checkpoint import CheckpointStore, load_exported, model_state, write_manifest
from vcell.train.preflight import model_spec, with_model_inputs
from vcell.evaluate.evaluation import evaluate_finished
from vcell.train.ray_train import RunHooks, train
from vcell.train.run import prepare_run, run_directory
from vcell.train.tracking import read_history


def weight_differences(first, second) -> list[str]:
    """Names of the exported tensors that are not bitwise equal between two runs."""
    a, b = load_exported(run_directory(first) / "model"), load_exported(run_directory(second) / "model")
    assert a.keys() == b.keys()
    return [name for name in a if not torch.equal(a[name], b[name])]


def losses(config) -> np.ndarray:
    return np.array([float(row["train/loss"]) for row in read_history(run_directory(config) / "history.csv")])


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def reference(ray_cluster, train_atlas, storage):
    """An uninterrupted 2-worker DDP run (W&B offline): what the other runs are compared with."""
    config = run_config(train_atlas, storage, "reference", "wandb.mode=offline", "evaluate.at_end=true")
    return config, train(config, hooks=RunHooks(evaluate=evaluate_finished))


def test_a_run_writes_its_whole_directory(reference, capsys):
    config, metrics = reference
    directory = run_directory(config)
    for name in ("config.yaml", "history.csv", "metrics.json", "model/model.safetensors", "model/config.yaml", "split.json"):
        assert (directory / name).is_file(), name
    history = read_history(directory / "history.csv")
    assert [int(row["step"]) for row in history] == list(range(1, 13))
    assert {"lr", "cells_per_s", "step_s", "data_wait_fraction", "train/reconstruction", "train/loss"} <= set(history[0])
    validated = [int(row["step"]) for row in history if row.get("val/loss")]
    assert validated == [6, 12]  # validation losses beside the step they were measured at
    assert metrics == {**json.loads((directory / "metrics.json").read_text()), "seconds_total": metrics["seconds_total"]}
    assert metrics["final_train"]["train/loss"] < metrics["first_train_loss"]
    assert "val/loss" in metrics["final_validation"]
    kept = CheckpointStore(directory).complete()
    assert [c.step for c in kept] == [8, 12]  # keep_checkpoints=2
    assert kept[-1].manifest["world_size"] == 2 and len(kept[-1].manifest["files"]) == 3
    assert list((directory / "wandb").glob("offline-run-*-vcell-*"))
    evaluation = metrics["evaluation"]  # evaluated at the end of the job (evaluate.at_end)
    assert {"embedding", "reconstruction", "perturbation", "enhancements"} <= set(evaluation)
    assert "pca" in evaluation["embedding"]["baselines"] and evaluation["data"]["held_out_split"] == "val"
    assert "plots/training_curves.png" in evaluation["plots"] and (directory / "plots" / "embedding_tsne.png").is_file()
    assert (directory / "embeddings.h5ad").is_file()
    capsys.readouterr()
    assert train(config, hooks=RunHooks(evaluate=evaluate_finished))["steps"] == 12  # the same command again: nothing left to do
    assert "already complete" in capsys.readouterr().out


def test_exported_weights_load_into_a_fresh_model_and_match_the_checkpoint(reference, train_atlas):
    config, _ = reference
    exported = load_exported(run_directory(config) / "model")
    final = CheckpointStore(run_directory(config)).latest()
    from_checkpoint = model_state(final)
    assert exported.keys() == from_checkpoint.keys()
    assert all(torch.equal(exported[k], from_checkpoint[k]) for k in exported)
    atlas = open_atlas(train_atlas)
    config = with_model_inputs(config, atlas)
    model = build_model(config.model, model_spec(config, atlas))
    model.load_state_dict(exported, strict=True)
    from vcell.data.memory import load_cells

    cells = {k: v[:50] for k, v in load_cells(atlas, config.loader, "val").items()}
    twin = build_model(config.model, model_spec(config, atlas))
    twin.load_state_dict(from_checkpoint, strict=True)
    torch.testing.assert_close(model.reconstruct(cells).expression, twin.reconstruct(cells).expression, rtol=0, atol=0)


def test_a_finished_run_exports_a_self_contained_model_with_a_card(reference, tmp_path, capsys):
    from vcell.cli import main
    from vcell.evaluate.export import load_trained

    config, metrics = reference
    out = tmp_path / "export"
    assert main(["export", str(run_directory(config)), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.yaml", "spec.json", "categories.json",
                                              "normalization.json", "genes.txt", "MODEL_CARD.md"}
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Evaluation" in card and "embedding: knn_accuracy" in card  # the run was evaluated at its end
    assert "`full` model" in card and f"{metrics['final_validation']['val/loss']:.4f}" in card
    exported_config, model = load_trained(out)  # no atlas needed
    assert exported_config.model == config.model and not model.training
    reference_weights = load_exported(run_directory(config) / "model")
    assert all(torch.equal(value, reference_weights[name]) for name, value in model.state_dict().items())
    assert main(["export", str(run_directory(config)), "--out", str(out)]) == 2  # not over a non-empty folder
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "no-run"), "--out", str(tmp_path / "x")]) == 2
    assert "neither a run" in capsys.readouterr().err


def test_a_killed_worker_restarts_from_the_last_checkpoint_with_every_cell_once(reference, train_atlas, storage,
                                                                               monkeypatch, tmp_path):
    monkeypatch.setenv("VCELL_FAULT_STEP", "6")  # rank 1 is killed after step 6; the checkpoint of step 4 survives
    monkeypatch.setenv("VCELL_FAULT_MARKER", str(tmp_path / "killed"))
    config = run_config(train_atlas, storage, "killed")
    metrics = train(config)
    assert (tmp_path / "killed").exists() and metrics["resumed_from_step"] == 4
    assert weight_differences(reference[0], config) == []  # bitwise: resumed equals uninterrupted

    audit = read_audit(run_directory(config) / "audit")  # rank, resumed_from, step, epoch, cell
    assert set(audit[:, 1]) == {0, 4}
    replayed = (audit[:, 1] == 0) & (audit[:, 2] > 4)  # the first attempt's steps after its last checkpoint
    assert set(audit[replayed, 2]) == {5, 6}
    kept = audit[~replayed]
    codes = np.load(run_directory(config) / "split_codes.npy")
    train_cells = np.flatnonzero(codes == SPLITS.index("train"))
    for epoch in np.unique(kept[:, 3]):
        cells = np.sort(kept[kept[:, 3] == epoch, 4])
        assert np.array_equal(cells, train_cells), f"epoch {epoch}: not every train cell exactly once"


def test_driver_restart_resumes_and_a_dropped_loader_state_is_caught(reference, train_atlas, storage, monkeypatch, tmp_path):
    monkeypatch.setenv("VCELL_FAULT_STEP", "6")
    monkeypatch.setenv("VCELL_FAULT_MARKER", str(tmp_path / "killed"))
    interrupted = run_config(train_atlas, storage, "interrupted", "scaling.max_failures=0")
    with pytest.raises(Exception, match="(?i)fail|died|exit"):
        train(interrupted)
    broken = run_config(train_atlas, storage, "broken", "scaling.max_failures=0")
    shutil.copytree(run_directory(interrupted), run_directory(broken))
    drop_loader_position(CheckpointStore(run_directory(broken)).latest())

    assert train(interrupted)["resumed_from_step"] == 4  # the same command again continues the run
    assert weight_differences(reference[0], interrupted) == []
    assert train(broken)["resumed_from_step"] == 4
    assert weight_differences(reference[0], broken), "a resume that lost the loader position must not match"


def drop_loader_position(checkpoint) -> None:
    """Rewinds every rank's loader to the start of the epoch and re-signs the checkpoint."""
    for rank in range(checkpoint.world_size):
        state = checkpoint.rank_state(rank)
        state["loader"]["next_batch"] = 0
        torch.save(state, checkpoint.path / f"rank-{rank}.pt")
    manifest = checkpoint.manifest
    write_manifest(checkpoint.path, manifest["step"], manifest["config_hash"], manifest["world_size"], manifest["strategy"])


def test_one_worker_and_deepspeed_follow_the_ddp_loss(reference, train_atlas, storage):
    single = run_config(train_atlas, storage, "single", "scaling.workers=1", "loader.batch_size=128")
    zero2 = run_config(train_atlas, storage, "zero2", "train.strategy=deepspeed", "train.deepspeed.stage=2")
    zero3 = run_config(train_atlas, storage, "zero3", "train.strategy=deepspeed", "train.deepspeed.stage=3",
                       "train.deepspeed.offload=true")
    for config in (single, zero2, zero3):
        train(config)
    ddp = losses(reference[0])
    # the same cells, the same global batch: ZeRO-2 and ZeRO-3 (sharded weights, offloaded
    # optimiser) take the very steps DDP takes, and their sharded checkpoints export the same model
    np.testing.assert_allclose(losses(zero2), ddp, rtol=1e-3)
    np.testing.assert_allclose(losses(zero3), ddp, rtol=1e-3)
    exported = load_exported(run_directory(zero3) / "model")
    assert all(torch.allclose(value, load_exported(run_directory(reference[0]) / "model")[name], atol=1e-4)
               for name, value in exported.items())
    # one process sees other cells in each batch: the same curve within sampling noise
    assert np.abs(losses(single) - ddp).mean() / ddp.mean() < 0.1
    assert weight_differences(reference[0], zero2)  # (not bitwise: other reduction order)


def test_a_changed_config_is_refused_with_the_difference(reference):
    config, _ = reference
    changed = config.model_copy(update={"train": config.train.model_copy(update={"steps": 20})})
    with pytest.raises(VCellError, match=r"train\.steps: 12 -> 20"):
        prepare_run(changed)
    assert prepare_run(changed, resume_with_changes=True).resumed


def test_storage_that_cannot_be_written_fails_before_training(ray_cluster, train_atlas, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(VCellError, match="cannot write the run folder"):
        train(run_config(train_atlas, blocker / "runs", "nowhere"))


@pytest.mark.parametrize("override, message", [
    ("scaling.workers=9", r"needs 9 CPUs; the Ray cluster has 4"),
    ("scaling.gpus_per_worker=1", r"needs 2 GPUs; the Ray cluster has 0"),
])
def test_impossible_resources_fail_before_any_worker_starts(ray_cluster, train_atlas, tmp_path, override, message):
    config = run_config(train_atlas, tmp_path, "impossible", override)
    with pytest.raises(VCellError, match=message):
        train(config)
    assert not run_directory(config).exists()  # nothing written
