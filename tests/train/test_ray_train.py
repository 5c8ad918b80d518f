"""The training driver end to end on a real local Ray cluster: what a run writes, fault
tolerance with exactly-once data, bitwise resume parity, and errors before any worker starts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.train.conftest import (
    audit_after_one_resume, losses, run_config, strategy_weight_differences, weight_differences, weights_not_close,
)
from vcell.atlas.store import open_atlas
from vcell.config.schema import VCellConfig
from vcell.data.split import SPLITS
from vcell.errors import VCellError
from vcell.models.zoo import build_model
from vcell.train.callbacks import read_audit
from vcell.train.checkpoint import CheckpointStore, model_state, resume_point, write_manifest
from vcell.train.model_folder import load_exported
from vcell.train.training_plan import model_spec, with_model_inputs
from vcell.train.ray_train import finished_run, train
from vcell.train.run import config_hash, prepare_run, run_directory
from vcell.train.tracking import read_history


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


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
    assert {"biology/grn_edges.tsv", "biology/response_half_times.tsv"} <= set(evaluation["biology"]["files"])
    capsys.readouterr()
    assert train(config)["steps"] == 12  # the same command again: nothing left to do
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
                                              "normalization.json", "genes.txt", "MODEL_CARD.md", "biology"}
    assert (out / "biology" / "grn_edges.tsv").is_file()  # the full model's network, as a TSV
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Evaluation" in card and "embedding: knn_accuracy" in card  # the run was evaluated at its end
    assert "`full` model" in card and f"{metrics['final_validation']['val/loss']:.4f}" in card
    assert "12 steps, 2 worker(s) in the last attempt, strategy ddp" in card
    exported_config, model = load_trained(out)  # no atlas needed
    assert exported_config.model == config.model and not model.training
    reference_weights = load_exported(run_directory(config) / "model")
    assert all(torch.equal(value, reference_weights[name]) for name, value in model.state_dict().items())
    assert main(["export", str(run_directory(config)), "--out", str(out)]) == 2  # not over a non-empty folder
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "no-run"), "--out", str(tmp_path / "x")]) == 2
    assert "neither a run" in capsys.readouterr().err
    edited = tmp_path / "edited-run"  # a run folder is trusted input: one whose checkpoint does not verify is refused
    shutil.copytree(run_directory(config), edited)
    manifest = CheckpointStore(edited).latest().path / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "files": []}))
    assert main(["export", str(edited), "--out", str(tmp_path / "from-edited")]) == 2
    assert "does not verify" in capsys.readouterr().err and not (tmp_path / "from-edited").exists()


def test_a_killed_worker_restarts_from_the_last_checkpoint_with_every_cell_once(reference, train_atlas, storage,
                                                                               monkeypatch, tmp_path):
    monkeypatch.setenv("VCELL_FAULT_STEP", "6")  # rank 1 is killed after step 6; the checkpoint of step 4 survives
    monkeypatch.setenv("VCELL_FAULT_MARKER", str(tmp_path / "killed"))
    config = run_config(train_atlas, storage, "killed")
    metrics = train(config)
    assert (tmp_path / "killed").exists() and metrics["resumed_from_step"] == 4
    assert weight_differences(reference[0], config) == []  # bitwise: resumed equals uninterrupted

    # the first attempt's steps after its last checkpoint (5, 6) are replayed, every other cell is used once
    audit_after_one_resume(config, resumed_from=4, replayed_steps={5, 6})


def not_replayed(audit: np.ndarray) -> np.ndarray:
    """The audit rows of steps that count: each attempt's steps up to where the next one resumed."""
    attempts = sorted(set(audit[:, 1].tolist()))
    replayed = np.zeros(len(audit), dtype=bool)
    for attempt, next_attempt in zip(attempts, attempts[1:]):
        replayed |= (audit[:, 1] == attempt) & (audit[:, 2] > next_attempt)
    return audit[~replayed]


def test_an_epoch_resumed_on_1_then_3_workers_trains_every_cell_once(reference, train_atlas, storage, monkeypatch,
                                                                     tmp_path):
    """2 workers, killed after step 6 -> resumed from step 4 on 1 worker, killed after step 10 ->
    resumed from step 8 on 3 workers: the rest of the epoch is re-planned twice."""
    config = run_config(train_atlas, storage, "elastic", "scaling.max_failures=0")
    for attempt, (workers, kill_step, kill_rank) in enumerate([(2, 6, 1), (1, 10, 0)]):
        monkeypatch.setenv("VCELL_FAULT_STEP", str(kill_step))
        monkeypatch.setenv("VCELL_FAULT_RANK", str(kill_rank))
        monkeypatch.setenv("VCELL_FAULT_MARKER", str(tmp_path / f"killed-{attempt}"))
        with pytest.raises(Exception, match="(?i)fail|died|exit"):
            train(config.model_copy(update={"scaling": config.scaling.model_copy(update={"workers": workers})}))
    monkeypatch.delenv("VCELL_FAULT_STEP")
    metrics = train(config.model_copy(update={"scaling": config.scaling.model_copy(update={"workers": 3})}))
    assert (metrics["resumed_from_step"], metrics["workers"], metrics["steps"]) == (8, 3, 12)

    audit = not_replayed(read_audit(run_directory(config) / "audit"))  # rank, resumed_from, step, epoch, cell
    ranks = {step: len(set(audit[audit[:, 2] == step, 0].tolist())) for step in range(1, 13)}
    assert ranks == {**dict.fromkeys(range(1, 5), 2), **dict.fromkeys(range(5, 9), 1), **dict.fromkeys(range(9, 13), 3)}
    codes = np.load(run_directory(config) / "split_codes.npy")
    train_cells = np.flatnonzero(codes == SPLITS.index("train"))
    assert set(audit[:, 3].tolist()) == {0}  # 2 workers x 12 steps x 64 cells: one epoch (1,440 cells)
    assert np.array_equal(np.sort(audit[:, 4]), train_cells), "not every train cell of the epoch exactly once"

    # the loss curve continues: the first 4 steps are the uninterrupted run's; after them (other cells
    # in each step) it stays closer to the uninterrupted curve than that curve's own step-to-step noise
    resumed, uninterrupted = losses(config), losses(reference[0])
    assert [int(row["step"]) for row in read_history(run_directory(config) / "history.csv")] == list(range(1, 13))
    assert np.array_equal(resumed[:4], uninterrupted[:4])
    noise = np.abs(np.diff(uninterrupted)).max()  # ~3 on a loss of ~16 here: small batches
    assert np.abs(resumed - uninterrupted).max() < noise
    # no jump where it resumed. A step's loss averages the cells of every worker's batch, so the
    # step-to-step noise of a 2 -> 1 or 1 -> 3 worker change is sqrt(1/a + 1/b) times the 2-worker
    # curve's (1.22 and 1.15): a restart from the wrong weights would jump by the whole descent
    for step, (before, after) in ((4, (2, 1)), (8, (1, 3))):
        assert abs(resumed[step] - resumed[step - 1]) < noise * np.sqrt(1 / before + 1 / after), step


@pytest.mark.slow
def test_an_elastic_run_that_loses_a_node_continues_on_fewer_workers(train_atlas, tmp_path):
    """scaling.min_workers: Ray Train restarts the run on the workers left after a node is removed
    (3 -> 1, see tests/train/elastic_cluster.py), and the epoch still trains every cell once."""
    ray_directory = Path(tempfile.mkdtemp(prefix="ve", dir="/tmp"))  # short: Ray's socket paths have a length limit
    # Ray's resource view refreshes every 20 s, so right after the loss it first asks for 3 workers
    # again and waits for them until this timeout (60 s by default) before starting on 1
    environment = {**os.environ, "RAY_TMPDIR": str(ray_directory), "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "25"}
    try:
        done = subprocess.run([sys.executable, "-m", "tests.train.elastic_cluster", str(train_atlas), str(tmp_path)],
                              capture_output=True, text=True, timeout=900, env=environment, cwd=Path(__file__).parents[2])
    finally:
        shutil.rmtree(ray_directory, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["node_removed"] and result["metrics"]["workers"] == 1 and result["metrics"]["steps"] == 16
    resumed_from = result["metrics"]["resumed_from_step"]
    assert resumed_from >= 4 and resumed_from % 4 == 0

    directory = tmp_path / "elastic-nodes"
    audit = not_replayed(read_audit(directory / "audit"))  # rank, resumed_from, step, epoch, cell
    ranks = {step: len(set(audit[audit[:, 2] == step, 0].tolist())) for step in range(1, 17)}
    assert ranks == {step: 3 if step <= resumed_from else 1 for step in range(1, 17)}
    train_cells = np.flatnonzero(np.load(directory / "split_codes.npy") == SPLITS.index("train"))
    assert np.array_equal(np.sort(audit[audit[:, 3] == 0, 4]), train_cells), "epoch 0: not every train cell once"
    later = audit[audit[:, 3] == 1, 4]
    assert len(later) and len(np.unique(later)) == len(later)  # the next epoch (1 worker's plain plan): no repeats


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
    # the same weights within float tolerance; bitwise equality is neither promised nor excluded
    # (another reduction order may or may not change the last bits; the NB dispersions of barely
    # constrained genes drift further: see strategy_weight_differences)
    ddp_weights = load_exported(run_directory(reference[0]) / "model")
    for config in (zero2, zero3):
        assert strategy_weight_differences(load_exported(run_directory(config) / "model"), ddp_weights, train_atlas) == []
    # the comparison can fail: a copy with one weight moved by 1e-3 is caught, by name
    name = next(name for name in sorted(ddp_weights) if ddp_weights[name].is_floating_point())
    moved = {**ddp_weights, name: ddp_weights[name].clone()}
    moved[name].view(-1)[0] += 1e-3
    assert weights_not_close(moved, ddp_weights, atol=1e-4) == [name]
    # one process sees other cells in each batch: the same curve within sampling noise
    assert np.abs(losses(single) - ddp).mean() / ddp.mean() < 0.1


class WorkerSockets:
    """Polls, in a thread, the listening sockets of this session's Ray Train worker processes."""

    def __init__(self) -> None:
        self.listening: set[tuple[int, str, int]] = set()  # (pid, address, port)
        self.pids: set[int] = set()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def poll(self) -> None:
        import psutil

        while not self.stopped.wait(0.2):
            for process in psutil.Process(os.getpid()).children(recursive=True):
                try:
                    if "RayTrainWorker" not in " ".join(process.cmdline()):
                        continue
                    self.pids.add(process.pid)
                    self.listening |= {(process.pid, c.laddr.ip, c.laddr.port)
                                       for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
                except psutil.Error:  # the process ended between listing and asking
                    continue

    def __enter__(self) -> "WorkerSockets":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()


NOISE = ("find_unused_parameters=True", "your dataloader is not resumable", "generated new fontManager",
         "Reporting training result", "TrainingReport(")


def test_a_healthy_run_and_its_resume_are_quiet_and_listen_on_loopback_only(ray_cluster, train_atlas, tmp_path, capfd):
    import matplotlib

    shutil.rmtree(matplotlib.get_cachedir(), ignore_errors=True)  # the workers' too (same HOME): a first run's state
    first = run_config(train_atlas, tmp_path, "quiet", "train.steps=4")
    with WorkerSockets() as sockets:
        train(first)
        resumed = train(first.model_copy(update={"train": first.train.model_copy(update={"steps": 8})}),
                        resume_with_changes=True)
    assert resumed["resumed_from_step"] == 4  # mid-epoch: where Lightning would warn about the loader
    # item 14: torch's rendezvous store (and gloo) listen on the node's Ray address, 127.0.0.1 here
    assert sockets.listening, "no listening socket of a training worker was seen"
    wildcard = [entry for entry in sockets.listening if entry[1] in ("0.0.0.0", "::", "::ffff:0.0.0.0")]
    assert wildcard == [], f"bound to every interface: {wildcard}"
    # item 12: nothing a user should not see, in the driver's output or in any worker's log
    logs = Path(ray_cluster._private.worker.global_worker.node.get_logs_dir_path())
    worker_logs = [path for pid in sockets.pids for path in logs.glob(f"worker-*-{pid}.*")]
    assert worker_logs, f"no log of the worker processes {sockets.pids} in {logs}"
    captured = capfd.readouterr()
    texts = {"driver": captured.out + captured.err, **{path.name: path.read_text(errors="replace") for path in worker_logs}}
    shown = {(name, noise) for name, text in texts.items() for noise in NOISE if noise in text}
    assert not shown, f"noise in a healthy run: {sorted(shown)}"


def test_a_vcell_error_in_a_worker_stops_the_run_at_once_with_one_message(ray_cluster, train_atlas, tmp_path, monkeypatch):
    attempts = tmp_path / "attempts"
    monkeypatch.setenv("VCELL_FAULT_STEP", "2")  # rank 1 raises a VCellError at step 2, on every attempt
    monkeypatch.setenv("VCELL_FAULT_KIND", "error")
    monkeypatch.setenv("VCELL_FAULT_MARKER", str(attempts))
    config = run_config(train_atlas, tmp_path, "deterministic", "scaling.max_failures=2")
    with pytest.raises(VCellError, match="worker 1: fault drill: a deterministic error on rank 1 at step 2") as failed:
        train(config)
    assert attempts.read_text().count("error on rank 1") == 1  # not retried: max_failures is for dead workers
    log = Path(re.search(r"worker log: (\S+)", str(failed.value)).group(1))
    assert log.is_file() and "Traceback" not in log.read_text()  # the message is the whole story


def test_a_changed_config_is_refused_with_the_difference(reference, tmp_path):
    config, _ = reference
    shutil.copytree(run_directory(config), tmp_path / config.name)  # resuming rewrites the shared run's config.yaml
    changed = config.model_copy(update={"train": config.train.model_copy(update={"steps": 20}),
                                        "scaling": config.scaling.model_copy(update={"storage_path": str(tmp_path)})})
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


def test_a_run_written_before_a_config_key_existed_is_still_the_same_run(reference, tmp_path):
    """Upgrading vcell adds config keys; a run saved without one (at its default) is neither
    'a different config' nor a stranger to its own checkpoints."""
    directory = tmp_path / "older"
    shutil.copytree(run_directory(reference[0]), directory)
    saved = yaml.safe_load((directory / "config.yaml").read_text())
    resolved = VCellConfig.model_validate(saved)  # as `train` resolves it: with the atlas's model inputs
    older = resolved.model_copy(update={"name": "older", "scaling": resolved.scaling.model_copy(
        update={"storage_path": str(tmp_path)})})
    del saved["train"]["compile"]  # a key added to vcell after this run was written, at its default
    (directory / "config.yaml").write_text(yaml.safe_dump(saved))
    store = CheckpointStore(directory)
    for checkpoint in store.complete():  # checkpoints carry the hash of the config they were written with
        write_manifest(checkpoint.path, checkpoint.step, config_hash(saved), checkpoint.world_size, "ddp")
    assert config_hash(saved) != config_hash(older)

    assert finished_run(older) is not None  # complete: not trained again
    run = prepare_run(older)
    assert run.resumed and config_hash(saved) in run.accepted_hashes
    assert resume_point(store, run.accepted_hashes, False, world_size=2).step == older.train.steps

    latest = store.latest()  # a checkpoint of another computation is refused before the folder is touched
    write_manifest(latest.path, latest.step, "0123456789abcdef", latest.world_size, "ddp")
    before = (directory / "config.yaml").read_bytes()
    with pytest.raises(VCellError, match="written with another config"):
        prepare_run(older)
    assert (directory / "config.yaml").read_bytes() == before

    saved["train"]["steps"] = 99  # a real difference is still one
    (directory / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(VCellError, match=r"train\.steps: 99 -> 12"):
        prepare_run(older)
    saved["train"]["steps"] = 12  # ... and so is a new key set away from its default
    (directory / "config.yaml").write_text(yaml.safe_dump(saved))
    compiled = older.model_copy(update={"train": older.train.model_copy(update={"compile": True})})
    with pytest.raises(VCellError, match=r"train\.compile: '<absent>' -> True"):
        prepare_run(compiled)
