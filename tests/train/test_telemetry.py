"""Throughput accounting of a real run: the shipped pretraining config, scaled to the test atlas,
trains end to end on the session's Ray cluster and logs cells/s, gene tokens/s and model
TFLOP/s (the FLOPs formula) per step into history.csv, metrics.json and the summary."""

from __future__ import annotations


from tests.train.test_memory_estimate import PRETRAIN
from vcell.config import load_config
from vcell.train.ray_train import train
from vcell.train.run import run_directory
from vcell.train.tracking import read_history


def test_pretraining_run_logs_tokens_and_flops(ray_cluster, train_atlas, tmp_path, capsys):
    config = load_config(PRETRAIN, [
        f"data.atlas={train_atlas}", "data.synthesize_if_missing=false", f"scaling.storage_path={tmp_path}",
        "model.transformer.size=tiny", "loader.batch_size=32", "loader.block_cells=100", "loader.buffer_cells=256",
        "loader.split.holdout=[]", "train.steps=6", "train.checkpoint_every=6", "train.validate_every=null",
        "train.progress_bar=false", "wandb.mode=disabled",
    ])
    metrics = train(config)
    history = read_history(run_directory(config) / "history.csv")
    assert [int(row["step"]) for row in history] == list(range(1, 7))
    for row in history:
        cells_per_s, tokens_per_s = float(row["cells_per_s"]), float(row["tokens_per_s"])
        assert 0 < cells_per_s < tokens_per_s <= 120 * cells_per_s  # 1 to 120 expressed genes per cell
        assert float(row["tflops_per_s"]) > 0 and "mfu" not in row  # no MFU on CPU
        assert float(row["train/masked_value"]) > 0 and "train/response" not in row  # pretraining objective only
    assert {"tokens_per_s", "tflops_per_s"} <= set(metrics) and "mfu" not in metrics
    assert metrics["final_train"]["train/loss"] < metrics["first_train_loss"]
    assert "gene tokens/s" in capsys.readouterr().out
