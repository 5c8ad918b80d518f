"""DeepSpeed ZeRO checkpoints resumed on another number of workers (`vcell.train.repartition`), on
the session's real Ray cluster: a ZeRO-2 run on 2 workers is killed and resumed on 1, against the
same run under DDP (whose state is whole on every rank); its universal copy against the shards it
came from; reuse, repair and crash recovery of the copy."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from tests.train.conftest import losses, run_config, strategy_weight_differences
from vcell.data.split import SPLITS
from vcell.errors import VCellError
from vcell.train.callbacks import read_audit
from vcell.train.checkpoint import CheckpointStore
from vcell.train.model_folder import load_exported
from vcell.train.deepspeed_cpu import consolidate_zero_checkpoint
from vcell.train.ray_train import train
from vcell.train.repartition import deepspeed_tag, universal_copy, write_universal
from vcell.train.run import run_directory


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("repartition")


def interrupt(config, marker) -> None:
    """Runs `config` until rank 1 is killed after step 6: its checkpoint of step 4 survives."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VCELL_FAULT_STEP", "6")
        patch.setenv("VCELL_FAULT_MARKER", str(marker))
        with pytest.raises(Exception, match="(?i)fail|died|exit"):
            train(config)


def on_workers(config, workers: int):
    return config.model_copy(update={"scaling": config.scaling.model_copy(update={"workers": workers})})


# half the cells held out: 2 workers x 4 steps + 1 worker x 8 steps of 64 cells finish the epoch (~800
# training cells) and start the next, as the 12-step reference's 2 x 12 x 64 cells do with 1,440
RESIZED = ("scaling.max_failures=0", "loader.split.val_fraction=0.5")


@pytest.fixture(scope="module")
def zero2(ray_cluster, train_atlas, storage):
    """A ZeRO-2 run interrupted on 2 workers, and an untouched copy of its folder (checkpoint of step 4)."""
    config = run_config(train_atlas, storage, "zero2-resized", *RESIZED, "train.strategy=deepspeed",
                        "train.deepspeed.stage=2")
    interrupt(config, storage / "killed-zero2")
    pristine = storage / "zero2-pristine"
    shutil.copytree(run_directory(config), pristine)
    return config, pristine


def test_a_zero2_run_resumes_on_1_worker_with_its_optimiser_and_every_cell_once(zero2, train_atlas, storage):
    config, _ = zero2
    metrics = train(on_workers(config, 1))
    assert (metrics["resumed_from_step"], metrics["workers"], metrics["steps"]) == (4, 1, 12)
    audit = read_audit(run_directory(config) / "audit")  # rank, resumed_from, step, epoch, cell
    kept = audit[(audit[:, 1] == 4) | (audit[:, 2] <= 4)]  # the first attempt's steps 5 and 6 were replayed
    assert {step: len(set(kept[kept[:, 2] == step, 0].tolist())) for step in range(1, 13)} == {
        step: 2 if step <= 4 else 1 for step in range(1, 13)}
    train_cells = np.flatnonzero(np.load(run_directory(config) / "split_codes.npy") == SPLITS.index("train"))
    assert np.array_equal(np.sort(kept[kept[:, 3] == 0, 4]), train_cells), "epoch 0: not every train cell once"
    later = kept[kept[:, 3] == 1, 4]
    assert len(later) and len(np.unique(later)) == len(later)  # the next epoch has begun, without repeats

    # DDP resumed the same way carries the whole optimiser on every rank: the same steps mean Adam's
    # moments and step count, and the model's running buffers, came through the universal copy
    ddp = run_config(train_atlas, storage, "ddp-resized", *RESIZED)
    interrupt(ddp, storage / "killed-ddp")
    train(on_workers(ddp, 1))
    resumed, twin = losses(config), losses(ddp)
    np.testing.assert_allclose(resumed, twin, rtol=1e-3)
    exported, twin_weights = load_exported(run_directory(config) / "model"), load_exported(run_directory(ddp) / "model")
    # everything agrees to float precision except the NB dispersions of barely constrained genes
    # (measured 3e-4 apart): see strategy_weight_differences
    assert strategy_weight_differences(exported, twin_weights, train_atlas) == []
    noise = np.abs(np.diff(resumed[:4])).max()  # steps 1-4 on 2 workers: the curve's own step-to-step noise
    assert abs(resumed[4] - resumed[3]) < noise  # no jump where it resumed

    store = CheckpointStore(run_directory(config))
    final = store.latest()
    assert final.world_size == 1 and adam_steps(final) == [12.0]  # counted on from the checkpoint's 4, not 8
    assert store.universal_directories() == []  # the copy went with its checkpoint (keep_checkpoints=2)


def adam_steps(checkpoint) -> list[float]:
    """Adam's step count in each of rank 0's ZeRO-1/2 parameter groups."""
    tag = checkpoint.lightning_path / deepspeed_tag(checkpoint.lightning_path)
    saved = torch.load(tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt", weights_only=False)["optimizer_state_dict"]
    return [float(state["step"]) for state in saved["base_optimizer_state"]["state"].values()]


def zero2_partitions(checkpoint) -> tuple[list[dict], list[dict[str, torch.Tensor]]]:
    """(parameter shapes, flat fp32 / exp_avg / exp_avg_sq) of each parameter group of a ZeRO-1/2
    checkpoint: every rank's partition of the group's flat buffers, in rank order."""
    tag = checkpoint.lightning_path / deepspeed_tag(checkpoint.lightning_path)
    shapes = torch.load(tag / "mp_rank_00_model_states.pt", weights_only=False)["param_shapes"]
    ranks = [torch.load(tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", weights_only=False)["optimizer_state_dict"]
             for rank in range(checkpoint.world_size)]
    assert all(not any(rank["param_alignment_paddings"][group]) for rank in ranks for group in range(len(shapes)))
    flat = [{"fp32": torch.cat([rank["single_partition_of_fp32_groups"][group] for rank in ranks]),
             **{key: torch.cat([rank["base_optimizer_state"]["state"][group][key] for rank in ranks])
                for key in ("exp_avg", "exp_avg_sq")}} for group in range(len(shapes))]
    return shapes, flat


def test_the_universal_copy_holds_each_parameter_whole_as_the_shards_saved_it(zero2, tmp_path):
    _, pristine = zero2
    store = CheckpointStore(shutil.copytree(pristine, tmp_path / "run"))
    checkpoint = store.latest()
    assert (checkpoint.step, checkpoint.world_size) == (4, 2)
    zero = universal_copy(checkpoint, store, rank=0, barrier=lambda: None) / "checkpoint" / "zero"
    shapes, flat = zero2_partitions(checkpoint)
    for group_shapes, group_flat in zip(shapes, flat):
        assert group_flat["exp_avg"].abs().sum() > 0 and group_flat["exp_avg_sq"].abs().sum() > 0
        for key, values in group_flat.items():
            offset = 0
            for name, shape in group_shapes.items():
                whole = torch.load(zero / name / f"{key}.pt", weights_only=False)["param"]
                assert whole.shape == shape and torch.equal(whole.flatten(), values[offset:offset + shape.numel()]), name
                offset += shape.numel()
        assert all(float(torch.load(zero / name / "step.pt", weights_only=False)) == 4.0 for name in group_shapes)
    weights = consolidate_zero_checkpoint(checkpoint.lightning_path)  # what vcell exports, another DeepSpeed path
    assert all(torch.equal(torch.load(zero / name / "fp32.pt", weights_only=False)["param"], weights[name])
               for group_shapes in shapes for name in group_shapes)


def test_the_copy_is_reused_written_again_when_damaged_and_a_dead_conversion_is_cleared(zero2, tmp_path, caplog):
    _, pristine = zero2
    store = CheckpointStore(shutil.copytree(pristine, tmp_path / "run"))
    checkpoint = store.latest()
    dead = store.universal_root / ".step-00000004.a1b2c3"  # a conversion killed mid-way
    (dead / "lightning.ckpt").mkdir(parents=True)
    mine = store.universal_root / "notes.txt"  # not vcell's: never touched
    mine.write_text("keep")
    with caplog.at_level(logging.INFO, logger="vcell.train.repartition"):
        target = write_universal(checkpoint, store)
    assert not dead.exists() and mine.read_text() == "keep"
    assert [p.name for p in store.universal_root.iterdir() if p.name.startswith(".")] == []
    manifest = (target / "manifest.json").stat().st_mtime_ns
    assert write_universal(checkpoint, store) == target and (target / "manifest.json").stat().st_mtime_ns == manifest
    assert sum("re-partitioned" in record.message for record in caplog.records) == 1  # converted once

    moment = next(target.rglob("exp_avg.pt"))
    moment.write_bytes(moment.read_bytes()[:-8])  # damaged: the copy is converted again, with a warning
    with caplog.at_level(logging.INFO, logger="vcell.train.repartition"):
        write_universal(checkpoint, store)
    assert "writing the universal copy" in caplog.text and "bytes, the manifest says" in caplog.text
    assert universal_copy(checkpoint, store, rank=1, barrier=lambda: None) == target / "lightning.ckpt"

    moment.write_bytes(b"edited")  # a rank that finds the copy changed under it refuses to load it
    with pytest.raises(VCellError, match="worker 1: the universal copy .* does not verify"):
        universal_copy(checkpoint, store, rank=1, barrier=lambda: None)


def test_a_checkpoint_deepspeed_cannot_convert_is_a_clear_error(zero2, tmp_path):
    _, pristine = zero2
    store = CheckpointStore(shutil.copytree(pristine, tmp_path / "run"))
    checkpoint = store.latest()
    (checkpoint.lightning_path / "latest").write_text("../elsewhere")
    with pytest.raises(VCellError, match="names the tag '../elsewhere'"):
        write_universal(checkpoint, store)
    (checkpoint.lightning_path / "latest").write_text("checkpoint")
    for shard in checkpoint.lightning_path.glob("checkpoint/*optim_states.pt"):
        shard.unlink()
    with pytest.raises(VCellError, match="could not convert .* into a universal checkpoint") as refused:
        write_universal(checkpoint, store)
    assert "scaling.workers=2" in refused.value.hint
    assert [p.name for p in store.universal_root.iterdir()] == []  # nothing half-written left behind
