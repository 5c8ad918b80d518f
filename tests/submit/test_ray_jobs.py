"""`vcell submit --target ray` against a real Ray cluster with token auth (the `ray_head` fixture):
submit and wait, resubmit (idempotent), status and logs, a job that fails, stopping a running
job, and the errors that submit nothing (wrong token, no such job, no cluster, laptop paths).
Every command runs as a user would run it: the `vcell` executable in a subprocess."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.submit.conftest import BIN

pytestmark = pytest.mark.slow


def tiny_run(atlas, storage, name: str, *overrides: str) -> list[str]:
    """A 6-step tiny full-model run on 2 CPU workers (the training tests' settings)."""
    return [f"name={name}", f"data.atlas={atlas}", "data.synthesize_if_missing=false", f"scaling.storage_path={storage}",
            "model.size=tiny", "loader.batch_size=64", "loader.block_cells=100", "loader.buffer_cells=256",
            "loader.split.val_fraction=0.1", "loader.split.test_fraction=0.0", "loader.split.holdout=[]",
            "train.steps=6", "train.checkpoint_every=3", "train.validate_every=3", "train.validation_batches=1",
            "wandb.mode=disabled", "evaluate.at_end=false", *overrides]


def vcell(head, cwd, *args: str, token: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "vcell"), *args], cwd=cwd, env=head.environment(token), capture_output=True,
                          text=True, timeout=timeout)


def submit(head, cwd, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return vcell(head, cwd, "submit", "--target", "ray", "--address", head.address, *args, **kwargs)


def test_submit_wait_resubmit_status_logs(ray_head, train_atlas, tmp_path):
    storage = tmp_path / "runs"
    job = ["--", "train", *tiny_run(train_atlas, storage, "submitted")]
    started = time.perf_counter()
    first = submit(ray_head, tmp_path, "--wait", *job)
    assert first.returncode == 0, first.stdout + first.stderr
    print(f"submit --wait of a 6-step run: {time.perf_counter() - started:.1f} s")
    assert "submitted job 'submitted'" in first.stdout and "job 'submitted' SUCCEEDED" in first.stdout
    run = storage / "submitted"
    assert (run / "metrics.json").is_file() and (run / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    assert ray_head.token not in first.stdout + first.stderr
    assert not any(ray_head.token in p.read_text(errors="ignore") for p in run.rglob("*") if p.is_file())

    again = submit(ray_head, tmp_path, "--wait", *job)
    assert again.returncode == 0, again.stderr
    assert "already SUCCEEDED on the cluster: nothing submitted" in again.stdout

    status = vcell(ray_head, tmp_path, "submit", "status", "submitted", "--address", ray_head.address)
    assert status.returncode == 0 and "job 'submitted': SUCCEEDED" in status.stdout
    assert "python -m vcell.cli train --config config.yaml --address auto" in status.stdout
    logs = vcell(ray_head, tmp_path, "submit", "logs", "submitted", "--address", ray_head.address)
    assert logs.returncode == 0 and "submitted" in logs.stdout and "steps" in logs.stdout


def test_a_failing_job_exits_non_zero_with_its_message(ray_head, train_atlas, tmp_path):
    # 8 workers on a 2-CPU cluster: the job's own resource check fails before any worker starts
    job = ["--", "train", *tiny_run(train_atlas, tmp_path / "runs", "too-big", "scaling.workers=8")]
    failed = submit(ray_head, tmp_path, "--wait", *job)
    assert failed.returncode == 1
    assert "error:" in failed.stdout and "scaling.workers" in failed.stdout  # the job's own message, tailed
    assert "job 'too-big' FAILED" in failed.stderr
    assert not (tmp_path / "runs" / "too-big" / "checkpoints").exists()
    refused = submit(ray_head, tmp_path, *job)
    assert refused.returncode == 2 and "already ran on the cluster and FAILED" in refused.stderr
    assert "--resubmit" in refused.stderr
    # the failed start left nothing behind, so the corrected run (same name) starts cleanly
    retried = submit(ray_head, tmp_path, "--resubmit", "--wait", *job[:-1], "scaling.workers=2")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert (tmp_path / "runs" / "too-big" / "metrics.json").is_file()


def test_stop_a_running_job(ray_head, train_atlas, tmp_path):
    job = ["--", "train", *tiny_run(train_atlas, tmp_path / "runs", "long", "train.steps=100000")]
    submitted = submit(ray_head, tmp_path, *job)
    assert submitted.returncode == 0, submitted.stderr
    deadline = time.monotonic() + 120
    while "RUNNING" not in (status := vcell(ray_head, tmp_path, "submit", "status", "long", "--address",
                                            ray_head.address)).stdout:
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(2)
    stopped = vcell(ray_head, tmp_path, "submit", "stop", "long", "--address", ray_head.address)
    assert stopped.returncode == 0 and "stopping job 'long'" in stopped.stdout
    followed = vcell(ray_head, tmp_path, "submit", "logs", "long", "--follow", "--address", ray_head.address)
    assert followed.returncode == 1 and "job 'long' STOPPED" in followed.stderr


def test_errors_submit_nothing(ray_head, train_atlas, tmp_path):
    job = ["--", "train", *tiny_run(train_atlas, tmp_path / "runs", "never")]
    wrong = submit(ray_head, tmp_path, *job, token="0" * 64)
    assert wrong.returncode == 2 and "refused the token" in wrong.stderr and "RAY_AUTH_TOKEN" in wrong.stderr
    missing = vcell(ray_head, tmp_path, "submit", "status", "no-such-run", "--address", ray_head.address)
    assert missing.returncode == 2 and "has no job 'no-such-run'" in missing.stderr
    relative = submit(ray_head, tmp_path, "--", "train", *tiny_run(train_atlas, "runs", "never"))
    assert relative.returncode == 2 and "scaling.storage_path=runs is relative" in relative.stderr
    nowhere = vcell(ray_head, tmp_path, "submit", "--target", "ray", "--address", "http://127.0.0.1:26999", *job)
    assert nowhere.returncode == 2 and "cannot reach the Ray Jobs API at http://127.0.0.1:26999" in nowhere.stderr
    listed = vcell(ray_head, tmp_path, "submit", "status", "never", "--address", ray_head.address)
    assert "has no job 'never'" in listed.stderr  # none of the above submitted anything
