"""Run tracking: an offline W&B run read back from its `.wandb` file (a real `wandb.init`, offline),
and the plain loop's progress lines."""

from __future__ import annotations

import math

import pytest
import torch

from vcell.config import load_config
from vcell.errors import VCellError
from vcell.train.plain import fit
from vcell.train.tracking import last_record_kind, open_tracker, read_offline_run, wait_for_exit_record, wandb_records


@pytest.fixture
def offline_run(tmp_path, monkeypatch):
    """A W&B offline run with 40 logged steps (enough records to cross a 32 KiB block of the file)."""
    for variable in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):  # restored after the test
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    config = load_config(None, ["name=tracked", "wandb.mode=offline", "train.steps=40"])
    tracker = open_tracker(config, tmp_path, rank=0)
    for step in range(1, 41):
        tracker.log({"train/loss": 1.0 / step, "lr": 1e-3, "note": "x" * 1000}, step=step)
        if step % 10 == 0:
            tracker.log({"val/loss": 2.0 / step}, step=step)
    tracker.finish()
    return next((tmp_path / "wandb").glob("offline-run-*"))


def test_offline_run_reads_back_what_was_logged(offline_run):
    logged = read_offline_run(offline_run)
    assert logged["config"]["name"] == "tracked" and logged["config"]["train"]["steps"] == 40
    rows = {row["_step"]: row for row in logged["history"]}
    assert sorted(rows) == list(range(1, 41))
    assert all(math.isclose(rows[step]["train/loss"], 1.0 / step) for step in rows)
    assert rows[30]["val/loss"] == pytest.approx(2.0 / 30) and "val/loss" not in rows[31]


def test_finish_returns_only_once_the_offline_log_is_whole(offline_run, tmp_path):
    """W&B's writer can still be flushing after run.finish(): the tracker's finish waits for the
    exit record, so a read-back (or `wandb sync`) right after a run sees every step."""
    assert last_record_kind(offline_run) == "exit"
    file = next(offline_run.glob("run-*.wandb"))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    data = file.read_bytes()
    (unfinished / file.name).write_bytes(data[: len(data.rstrip(b"\0")) - 1])  # the exit record not yet whole
    assert last_record_kind(unfinished) != "exit" and not wait_for_exit_record(unfinished, timeout=0.2)


def test_a_torn_or_foreign_file_is_read_up_to_its_last_whole_record(offline_run, tmp_path):
    file = next(offline_run.glob("run-*.wandb"))
    whole = wandb_records(file)
    torn = tmp_path / "torn" / file.name
    torn.parent.mkdir()
    data = file.read_bytes()
    end = len(data.rstrip(b"\0"))  # the last record's end: a finished file may end in zero padding
    torn.write_bytes(data[: end - 1])  # a writer stopped one byte short of finishing the last record
    assert wandb_records(torn) == whole[:-1]
    foreign = tmp_path / "foreign" / "run-x.wandb"
    foreign.parent.mkdir()
    foreign.write_bytes(b"not a run file at all")
    with pytest.raises(VCellError, match="not a W&B run file"):
        read_offline_run(foreign.parent)
    with pytest.raises(VCellError, match="no run-"):
        read_offline_run(tmp_path)


def test_plain_loop_prints_progress_at_its_cadence_and_the_last_step(capsys):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)

    class Named(torch.nn.Module):  # the model contract the loop relies on: forward -> .loss, .losses
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, batch):
            error = ((self.inner(batch["x"]) - batch["x"]) ** 2).mean()
            return type("Output", (), {"loss": error, "losses": {"reconstruction": error}})()

    cells = {"x": torch.randn(64, 4)}
    history = fit(Named(), cells, steps=7, batch_size=16, progress_every=3, learning_rate=1e-2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[1] for line in lines] == ["3/7", "6/7", "7/7"]
    assert len(history) == 7 and history[-1]["reconstruction"] < history[0]["reconstruction"]
    assert "reconstruction" in lines[-1] and "cells/s" in lines[-1]
