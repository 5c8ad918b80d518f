"""`vcell submit --target slurm` on a real one-node Slurm (the `slurm` fixture): the rendered
script starts a Ray head in the allocation, trains a tiny run and cleans up after itself."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.submit.test_ray_jobs import tiny_run

pytestmark = pytest.mark.slow


def test_sbatch_trains_a_run(slurm, train_atlas, tmp_path):
    storage = tmp_path / "runs"
    submitted = subprocess.run(
        [sys.executable, "-m", "vcell.cli", "submit", "--target", "slurm", "--cpus-per-node", "2", "--time", "00:10:00",
         "--python", sys.executable, "--port-range", "26400-26799", "--", "train", *tiny_run(train_atlas, storage, "slurm-run")],
        cwd=tmp_path, env=slurm, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.search(r"submitted Slurm job (\d+) \(train 'slurm-run'\)", submitted.stdout).group(1)
    started, state = time.monotonic(), ""
    while time.monotonic() - started < 400:
        state = subprocess.run(["scontrol", "show", "job", job_id], env=slurm, capture_output=True, text=True).stdout
        if re.search(r"JobState=(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY)", state):
            break
        time.sleep(3)
    print(f"Slurm job {job_id}: {time.monotonic() - started:.0f} s")
    log = (tmp_path / f"vcell-slurm-run-{job_id}.out").read_text()
    assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state, log[-3000:]
    run = storage / "slurm-run"
    assert (run / "metrics.json").is_file() and (run / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]
    assert f"Ray at 127.0.0.1:{26400 + (int(job_id) % 2) * 200}" in log
    assert not Path(f"/tmp/vcell-{job_id}").exists()  # the job's Ray folder is gone
    leftover = subprocess.run(["pgrep", "-f", f"/tmp/vcell-{job_id}/"], capture_output=True, text=True).stdout
    assert leftover == "", f"processes of the job outlived it: {leftover}"
    assert re.search(r"\b[0-9a-f]{64}\b", log) is None  # the per-job token (64 hex digits) is never printed
