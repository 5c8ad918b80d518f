"""The GPU benchmark's step, run on CPU: `benchmarks/pretrain_gpu.py --cpu-smoke` prints its table
(the same code the GPU run takes, bar the device, bf16 and compilation), and the shell wrapper parses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vcell.config.model import ModelConfig
from vcell.models.flops import training_flops_per_cell
from vcell.train.throughput import measure_step

ROOT = Path(__file__).resolve().parents[2]


def test_measured_step_reports_the_formulas_flops_at_a_full_context():
    config = ModelConfig(encoder="transformer", response_weight=0.0, transformer={"size": "tiny", "context_length": 16})
    result = measure_step(config, n_genes=100, batch_size=4, steps=2, device="cpu", bf16=False, warmup=1)
    assert result.tokens_per_s == pytest.approx(16 * result.cells_per_s)  # every cell fills the context
    expected = training_flops_per_cell(config, 100, 16) * result.cells_per_s / 1e12
    assert result.tflops_per_s == pytest.approx(expected) and result.mfu is None and result.peak_memory_gb is None


def test_gpu_benchmark_script_runs_its_cpu_smoke_test():
    done = subprocess.run([sys.executable, "benchmarks/pretrain_gpu.py", "--cpu-smoke"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("| tiny"))
    cells = row.split("|")
    assert float(cells[6].replace(",", "")) > 0 and cells[9].strip() == "-"  # cells/s measured; no MFU on CPU
    assert subprocess.run(["bash", "-n", "benchmarks/pretrain_gpu.sh"], cwd=ROOT).returncode == 0
