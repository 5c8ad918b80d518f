#!/usr/bin/env bash
# MFU and cells/s of the ~100M and ~1B transformer presets in bf16 on one GPU (a few minutes).
# On a GPU machine with this repository, once:
#   make install TORCH_SPEC=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cu128
# then:
#   bash benchmarks/pretrain_gpu.sh                  # extra arguments go to benchmarks/pretrain_gpu.py
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" exec "$PYTHON" benchmarks/pretrain_gpu.py --presets 100m 1b "$@"
