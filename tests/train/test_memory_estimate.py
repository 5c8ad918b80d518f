"""Memory per worker under each strategy (the documented formula), and `--dry-run` of the shipped
pretraining config: parameters, memory per strategy and FLOPs per cell, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from vcell.config import load_config
from vcell.models.flops import training_flops_per_cell
from vcell.train.memory_estimate import STRATEGIES, activation_bytes, memory_by_strategy, state_parts
from vcell.train.ray_train import train

PRETRAIN = Path(__file__).resolve().parents[2] / "configs" / "experiments" / "pretrain.yaml"
P = 1_000_000


@pytest.mark.parametrize("stage, offload, bf16, expected", [
    (0, False, False, {"weights": 4 * P, "gradients": 4 * P, "optimiser": 8 * P, "master": 0}),
    (0, False, True, {"weights": 4 * P, "gradients": 4 * P, "optimiser": 8 * P, "master": 0}),  # DDP: fp32 either way
    (1, False, False, {"weights": 4 * P, "gradients": 4 * P, "optimiser": 2 * P, "master": 0}),
    (2, False, True, {"weights": 2 * P, "gradients": P / 2, "optimiser": 2 * P, "master": P}),
    (3, False, True, {"weights": P / 2, "gradients": P / 2, "optimiser": 2 * P, "master": P}),
    (2, True, True, {"weights": 2 * P, "gradients": P / 2, "optimiser": 0, "master": 0}),
    (3, True, True, {"weights": 0, "gradients": P / 2, "optimiser": 0, "master": 0}),
], ids=["ddp", "ddp-bf16", "zero1", "zero2-bf16", "zero3-bf16", "zero2-offload", "zero3-offload"])
def test_model_states_per_worker_follow_the_formula(stage, offload, bf16, expected):
    assert state_parts(P, workers=4, stage=stage, offload=offload, bf16=bf16) == pytest.approx(expected)


def transformer(*overrides: str):
    return load_config(PRETRAIN, ["model.transformer.size=10m", "loader.batch_size=32", *overrides])


def test_checkpointing_and_bf16_shrink_the_transformers_activations():
    plain = activation_bytes(transformer(), n_genes=2000, bf16=False)
    checkpointed = activation_bytes(transformer("model.transformer.activation_checkpointing=true"), n_genes=2000, bf16=False)
    half = activation_bytes(transformer(), n_genes=2000, bf16=True)
    decoder = 32 * 8 * 2000 * 4.0  # (B, G) outputs, targets and gradients: the same in every case
    assert (checkpointed - decoder) < (plain - decoder) / 4  # 6 blocks: inputs + one block instead of 34 values each
    assert half - decoder == pytest.approx((plain - decoder) / 2)


def test_sharding_lowers_memory_per_worker_in_stage_order():
    config = transformer("scaling.workers=8", "train.precision=bf16-mixed")
    memory = memory_by_strategy(config, parameters=100 * P, n_genes=20000, precision="bf16-mixed")
    assert list(memory) == list(STRATEGIES)
    assert memory["ddp"] > memory["zero1"] > memory["zero2"] > memory["zero3"] > memory["zero3+offload"]


def test_pretraining_config_dry_run_prints_parameters_memory_and_flops(train_atlas, tmp_path, capsys):
    config = load_config(PRETRAIN, [f"data.atlas={train_atlas}", "data.synthesize_if_missing=false",
                                    f"scaling.storage_path={tmp_path / 'runs'}", "loader.split.holdout=[]"])
    assert config.model.encoder == "transformer" and config.model.response_weight == 0
    plan = train(config, dry_run=True)
    out = capsys.readouterr().out
    assert "transformer `3m`: width 64 x 4 blocks" in out and f"parameters  {plan['parameters']:,}" in out
    assert "strategies  GB per worker: ddp" in out and "zero3+offload" in out
    assert plan["flops_per_cell"] == pytest.approx(training_flops_per_cell(config.model, 120, plan["tokens_per_cell"]))
    assert 0 < plan["tokens_per_cell"] < 120 and "gene tokens per cell" in out
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
