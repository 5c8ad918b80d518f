"""DeepSpeed ZeRO 1-3 under Lightning on CPU: real training in this process and in two Ray Train
workers, checked against plain Lightning (or plain PyTorch) with the same seed."""

from __future__ import annotations

import os

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import DeepSpeedStrategy
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from vcell.train import deepspeed_cpu
from vcell.train.deepspeed_cpu import (
    CPUDeepSpeedStrategy, consolidate_zero_checkpoint, deepspeed_strategy, load_deepspeed_config,
)

# DeepSpeed compiles a communication op on first use (~20 s); a fixed cache outlives HOME changes.
EXTENSIONS_DIR = os.environ.get("TORCH_EXTENSIONS_DIR", "/tmp/vcell-torch-extensions")
N_SAMPLES, BATCH_SIZE = 48, 16  # three batches an epoch: three steps end an epoch exactly


class TinyRegression(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_index):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_index):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-2)


def regression_data(n_samples: int = N_SAMPLES) -> TensorDataset:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(n_samples, 16, generator=generator)
    y = x[:, :4].sum(dim=1, keepdim=True) + 0.1 * torch.randn(n_samples, 1, generator=generator)
    return TensorDataset(x, y)


def new_module() -> TinyRegression:
    pl.seed_everything(0, verbose=False)
    return TinyRegression()


def zero_config(stage: int, offload: bool = False) -> dict:
    # A zero threshold partitions even these tiny layers, so ZeRO-3 really shards parameters.
    overrides = {"zero_optimization": {"stage3_param_persistence_threshold": 0}} if stage == 3 else {}
    return load_deepspeed_config(stage, offload, overrides)


def full_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Whole parameters on every rank; under ZeRO-3 each rank holds only its shard until gathered."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters())):
        return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def dataset_loss(weights: dict[str, torch.Tensor], dataset: TensorDataset) -> float:
    module = TinyRegression()
    module.load_state_dict(weights)
    x, y = dataset.tensors
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(module(x), y))


def learned(weights: dict[str, torch.Tensor], dataset: TensorDataset) -> bool:
    """Loss over the whole dataset at least 10% below the untrained model's."""
    return dataset_loss(weights, dataset) < 0.9 * dataset_loss(new_module().state_dict(), dataset)


def fit(
    module: TinyRegression, stage: int | None, max_steps: int, ckpt_path=None, checkpoint=None, offload: bool = False,
) -> pl.Trainer:
    """Plain Lightning when `stage` is None; same batches in the same order either way."""
    strategy = "auto" if stage is None else deepspeed_strategy(zero_config(stage, offload), "cpu")
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, strategy=strategy, max_steps=max_steps, precision="32-true",
        logger=False, enable_checkpointing=checkpoint is not None, callbacks=[checkpoint] if checkpoint else None,
        enable_progress_bar=False, enable_model_summary=False,
        # Lightning's distributed sampler would shuffle; keep the plain run's order.
        use_distributed_sampler=False,
    )
    trainer.fit(module, DataLoader(regression_data(), batch_size=BATCH_SIZE), ckpt_path=ckpt_path)
    return trainer


def destroy_process_group() -> None:
    """DeepSpeed caches the groups it derives from the world group; its own teardown releases them,
    so the next Trainer in this process builds fresh ones."""
    import deepspeed.comm

    if deepspeed.comm.is_initialized():
        deepspeed.comm.destroy_process_group()
    elif torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.fixture
def clean_process():
    """Lightning and DeepSpeed export rank variables and keep a process group and thread count;
    a Ray cluster started later would inherit the variables (and hang). Put everything back."""
    saved_environment, saved_threads = dict(os.environ), torch.get_num_threads()
    os.environ["TORCH_EXTENSIONS_DIR"] = EXTENSIONS_DIR
    yield
    destroy_process_group()
    os.environ.clear()
    os.environ.update(saved_environment)
    torch.set_num_threads(saved_threads)


@pytest.mark.parametrize(("stage", "offload"), [(1, False), (2, False), (3, False), (3, True)])
def test_zero_stage_trains_exactly_like_plain_lightning(clean_process, stage, offload):
    plain = new_module()
    fit(plain, None, max_steps=5)
    zero = new_module()
    fit(zero, stage, max_steps=5, offload=offload)

    trained = full_weights(zero)
    assert learned(trained, regression_data())
    # One process, fp32, no clipping (Lightning sets DeepSpeed's gradient_clipping to 0): ZeRO runs the
    # same AdamW arithmetic on its fp32 partitions; here the results are bit-identical.
    torch.testing.assert_close(trained, plain.state_dict(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("stage", [2, 3])
def test_consolidated_checkpoint_loads_into_the_bare_module(clean_process, tmp_path, stage):
    module = new_module()
    trainer = fit(module, stage, max_steps=5)
    trainer.save_checkpoint(tmp_path / "checkpoint")

    bare = TinyRegression()
    bare.load_state_dict(consolidate_zero_checkpoint(tmp_path / "checkpoint"), strict=True)
    x = regression_data().tensors[0]
    trained = TinyRegression()
    trained.load_state_dict(full_weights(module))
    with torch.no_grad():
        torch.testing.assert_close(bare(x), trained(x), rtol=0, atol=0)


@pytest.mark.parametrize("stage", [2, 3])
def test_resuming_from_a_checkpoint_equals_uninterrupted_training(clean_process, tmp_path, stage):
    uninterrupted = new_module()
    fit(uninterrupted, stage, max_steps=5)

    # Saved by the callback at the end of step 3, as in real runs. (A checkpoint written by
    # trainer.save_checkpoint after max_steps stopped the fit resumes one batch off, with or
    # without DeepSpeed: Lightning's own loop bookkeeping, not this strategy.)
    every_three_steps = ModelCheckpoint(dirpath=tmp_path, filename="step3", every_n_train_steps=3, save_top_k=-1)
    fit(new_module(), stage, max_steps=3, checkpoint=every_three_steps)
    resumed = new_module()
    trainer = fit(resumed, stage, max_steps=5, ckpt_path=tmp_path / "step3.ckpt")

    assert trainer.global_step == 5
    torch.testing.assert_close(full_weights(resumed), full_weights(uninterrupted), rtol=0, atol=0)


@pytest.mark.parametrize("stage", [2, 3])
def test_validation_on_its_own_uses_the_trained_weights(clean_process, stage):
    module = new_module()
    fit(module, stage, max_steps=5)
    # Outside fit Lightning builds a separate inference engine (the other device-rank override).
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, strategy=deepspeed_strategy(zero_config(stage), "cpu"), precision="32-true",
        logger=False, enable_progress_bar=False, enable_model_summary=False,
    )
    [metrics] = trainer.validate(module, DataLoader(regression_data(), batch_size=N_SAMPLES))
    assert metrics["val_loss"] == pytest.approx(dataset_loss(full_weights(module), regression_data()), rel=1e-6)


def test_bf16_trains_and_fp16_is_refused_with_a_clear_message(clean_process):
    module = new_module()
    bf16 = pl.Trainer(
        accelerator="cpu", devices=1, strategy=deepspeed_strategy(zero_config(2), "cpu"), max_steps=5,
        precision="bf16-mixed", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    bf16.fit(module, DataLoader(regression_data(), batch_size=BATCH_SIZE))
    assert learned(full_weights(module), regression_data())

    fp16 = pl.Trainer(
        accelerator="cpu", devices=1, strategy=deepspeed_strategy(zero_config(2), "cpu"), precision="16-mixed",
        logger=False,
    )
    with pytest.raises(ValueError, match="no fp16 on CPU"):
        fp16.fit(new_module(), DataLoader(regression_data(), batch_size=BATCH_SIZE))


def test_configs_take_offload_and_deep_merged_overrides():
    config = load_deepspeed_config(3, True, {"zero_optimization": {"overlap_comm": False}, "bf16": {"enabled": True}})
    zero = config["zero_optimization"]
    assert (zero["stage"], zero["overlap_comm"], zero["contiguous_gradients"]) == (3, False, True)
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert config["bf16"] == {"enabled": True}
    assert "offload_param" not in load_deepspeed_config(2, True, {})["zero_optimization"]  # stage 3 only
    for stage in (1, 2, 3):
        config = load_deepspeed_config(stage, False, {})
        assert config["zero_optimization"]["stage"] == stage
        assert (config["zero_allow_untested_optimizer"], config["zero_force_ds_cpu_optimizer"]) == (True, False)
        # Lightning fills these from the Trainer and refuses some of them in the config.
        lightning_keys = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "fp16"}
        assert not lightning_keys & set(config)


def test_bad_stage_missing_config_or_checkpoint_is_a_clear_error(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="stage must be 1, 2 or 3"):
        load_deepspeed_config(4, False, {})
    monkeypatch.setattr(deepspeed_cpu, "CONFIG_DIRECTORY", tmp_path)
    with pytest.raises(ValueError, match="zero2.json"):
        load_deepspeed_config(2, False, {})
    with pytest.raises(ValueError, match="not a DeepSpeed checkpoint"):
        consolidate_zero_checkpoint(tmp_path)


def test_the_strategy_follows_the_accelerator():
    assert type(deepspeed_strategy({}, "gpu")) is DeepSpeedStrategy
    assert type(deepspeed_strategy({}, "cpu")) is CPUDeepSpeedStrategy


def test_lightning_is_the_version_the_overrides_were_written_for():
    # CPUDeepSpeedStrategy overrides private Lightning methods: re-read them before moving past 2.6.
    assert pl.__version__.startswith("2.6."), pl.__version__


RAY_STEPS, RAY_SAMPLES = 4, 64  # two ranks x two batches of 16 an epoch: two epochs


def train_on_ray_worker(config: dict) -> None:
    """Runs in each Ray Train worker (gloo process group already up): ZeRO training for a few steps,
    then a sharded checkpoint (every rank writes its part) and this rank's gathered weights."""
    import ray.train
    from ray.train.lightning import RayLightningEnvironment

    # Two workers on two cores: more threads each run ten times slower. torch is already imported
    # here, so set its thread count directly as well as the variable (for anything started later).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    os.environ["TORCH_EXTENSIONS_DIR"] = config["extensions_dir"]
    module, strategy = new_module(), deepspeed_strategy(zero_config(config["stage"]), "cpu")
    trainer = pl.Trainer(
        accelerator="cpu", devices="auto", num_nodes=1, strategy=strategy,
        # Ranks and world size come from Ray; with Lightning's default environment each worker would
        # count devices x nodes = 1 process and export WORLD_SIZE=1 to DeepSpeed.
        plugins=[RayLightningEnvironment()], max_steps=RAY_STEPS, precision="32-true",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(regression_data(RAY_SAMPLES), batch_size=BATCH_SIZE))
    trainer.save_checkpoint(config["checkpoint"])
    rank = ray.train.get_context().get_world_rank()
    torch.save(full_weights(module), f"{config['out']}/rank{rank}.pt")


def two_rank_reference() -> dict[str, torch.Tensor]:
    """The same training in plain PyTorch: each step averages the loss over both ranks' batches,
    drawn by the distributed sampler Lightning inserts (shuffled, seed 0, reseeded each epoch)."""
    dataset, module = regression_data(RAY_SAMPLES), new_module()
    optimizer = module.configure_optimizers()
    samplers = [DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0) for rank in (0, 1)]
    steps_per_epoch = RAY_SAMPLES // 2 // BATCH_SIZE
    for step in range(RAY_STEPS):
        epoch, batch = divmod(step, steps_per_epoch)
        for sampler in samplers:
            sampler.set_epoch(epoch)
        step_rows = slice(batch * BATCH_SIZE, (batch + 1) * BATCH_SIZE)
        rows = torch.cat([torch.tensor(list(sampler))[step_rows] for sampler in samplers])
        x, y = dataset[rows]
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(module(x), y).backward()
        optimizer.step()
    return {name: tensor.detach() for name, tensor in module.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [3])  # ZeRO-2 across Ray workers runs through the driver in test_ray_train
def test_two_ray_workers_train_one_model(ray_cluster, tmp_path, stage):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = {"stage": stage, "extensions_dir": EXTENSIONS_DIR, "out": str(tmp_path),
              "checkpoint": str(tmp_path / "checkpoint")}
    TorchTrainer(
        train_on_ray_worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="ds"),
    ).fit()

    first, second = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(consolidate_zero_checkpoint(tmp_path / "checkpoint"), first, rtol=0, atol=0)
    assert learned(first, regression_data(RAY_SAMPLES))
    # Gradients averaged across ranks equal the gradient of the mean over both batches (fp32 sums
    # in another order: a few ulps).
    torch.testing.assert_close(first, two_rank_reference(), rtol=1e-5, atol=1e-6)
