"""DeepSpeed ZeRO (stages 1-3) under Lightning on CPU, for tests and CPU-only clusters.

Why this exists: Lightning's `DeepSpeedStrategy` (and Ray's `RayDeepSpeedStrategy`) refuse to run
without CUDA, and past that check they assume a CUDA device index in two places. DeepSpeed itself
trains fine on CPU with the gloo backend. `CPUDeepSpeedStrategy` removes the CUDA assumptions and
nothing else; on GPUs `deepspeed_strategy` returns the stock strategy.

It overrides these private Lightning methods, so pytorch-lightning is pinned to 2.6.x because of it
(written against 2.6.6; the project's bound should read <2.7, and a test fails on any other minor
version: re-read these methods before moving the pin):

- `setup_environment`: skips the "only supported on CUDA GPUs" check.
- `setup_distributed`: skips `_validate_device_index_selection`, which compares device indices
  with local ranks (CPU devices have index None); then initialises DeepSpeed's communication as
  Lightning does (`_init_deepspeed_distributed`: exports RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR, MASTER_PORT, so DeepSpeed does not fall back to MPI discovery, and reuses a
  process group that Ray Train has already created).
- `root_device`: always `cpu`; Lightning indexes its device list by local rank, which under Ray
  (one device per worker, several workers per node) is out of range.
- `_setup_model_and_optimizer` (fit) and `_initialize_deepspeed_inference` (a standalone
  validate/test/predict): call `deepspeed.initialize` with `device_rank=0` instead of the CUDA
  index (None on CPU, which DeepSpeed compares with 0: TypeError).

CPU notes: DeepSpeed JIT-compiles a shared-memory communication op on first use (about 20 s and
several GiB; point TORCH_EXTENSIONS_DIR at a persistent cache); fp16 is refused on CPU (use
32-true or bf16); give DeepSpeed a torch optimizer (its CPUAdam needs a long compile), which is
why the configs set "zero_force_ds_cpu_optimizer": false.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from lightning_fabric.utilities.seed import reset_seed
from pytorch_lightning.strategies import DeepSpeedStrategy, Strategy
from pytorch_lightning.strategies.ddp import DDPStrategy
from pytorch_lightning.strategies.deepspeed import remove_module_hooks

from vcell.config.loader import PACKAGE_CONFIGS
from vcell.config.train import ZERO_STAGES
from vcell.trees import merge_trees

CONFIG_DIRECTORY = PACKAGE_CONFIGS / "deepspeed"
GPU_ACCELERATORS = ("gpu", "cuda")
# Lightning before 2.1 wrapped the module, and old checkpoints still carry the wrapper's prefix.
WRAPPER_PREFIX = "_forward_module."


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeed strategy with the CUDA assumptions removed (gloo, device `cpu`)."""

    def setup_environment(self) -> None:
        if self.precision_plugin.precision in ("16-mixed", "16-true"):
            raise ValueError("DeepSpeed has no fp16 on CPU: use precision '32-true' or 'bf16-mixed'")
        # The parent's CUDA check is the only thing skipped: run DDP's environment setup directly.
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu")

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        engine, deepspeed_optimizer, _, _ = deepspeed.initialize(
            args=self._device_arguments(), config=self.config, model=model,
            model_parameters=[parameter for parameter in model.parameters() if parameter.requires_grad],
            optimizer=optimizer, lr_scheduler=lr_scheduler, dist_init_required=False,
        )
        return engine, deepspeed_optimizer

    def _initialize_deepspeed_inference(self, model) -> None:
        import deepspeed

        # As the parent: a throughput-logging batch size, the precision, and ZeRO-3's partitioning.
        config = {"train_micro_batch_size_per_gpu": 1}
        config.update({key: self.config[key] for key in ("fp16", "bf16") if key in self.config})
        if self.zero_stage_3:
            config.update({key: self.config[key] for key in ("zero_allow_untested_optimizer", "zero_optimization")})
        remove_module_hooks(model)  # hooks of an earlier engine would fire twice
        self.model, _, _, _ = deepspeed.initialize(
            args=self._device_arguments(), config=config, model=model, optimizer=None,
            lr_scheduler=None, model_parameters=[], dist_init_required=False,
        )

    @staticmethod
    def _device_arguments() -> argparse.Namespace:
        # DeepSpeed reads world size and rank from the process group only when device_rank >= 0;
        # on its CPU accelerator every rank's device is "cpu" whatever the number.
        return argparse.Namespace(device_rank=0)


def deepspeed_strategy(config: dict, accelerator: str) -> Strategy:
    """The stock strategy on GPUs, `CPUDeepSpeedStrategy` otherwise ("auto" follows CUDA)."""
    on_gpu = accelerator in GPU_ACCELERATORS or (accelerator == "auto" and torch.cuda.is_available())
    return DeepSpeedStrategy(config=config) if on_gpu else CPUDeepSpeedStrategy(config=config)


def load_deepspeed_config(stage: int, offload: bool, overrides: dict) -> dict:
    """configs/deepspeed/zero{stage}.json with optional CPU offload, then `overrides` deep-merged.

    Offload moves the optimizer state to CPU memory (any stage) and, in stage 3, the parameters too.
    """
    if stage not in ZERO_STAGES:
        raise ValueError(f"DeepSpeed ZeRO stage must be 1, 2 or 3, not {stage!r}")
    path = CONFIG_DIRECTORY / f"zero{stage}.json"
    if not path.is_file():
        raise ValueError(f"DeepSpeed config for ZeRO stage {stage} not found: {path}")
    config = json.loads(path.read_text())
    if offload:
        zero = config.setdefault("zero_optimization", {})
        # Pinned memory needs CUDA; the default (False) works on both kinds of machine.
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return merge_trees(config, overrides)


def consolidate_zero_checkpoint(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """The fp32 weights of a sharded DeepSpeed checkpoint (any ZeRO stage, any world size).

    `checkpoint_dir` is the directory written by `trainer.save_checkpoint(path)` under DeepSpeed;
    the result loads into the bare LightningModule with `load_state_dict(..., strict=True)`.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / "latest").is_file():
        raise ValueError(f"not a DeepSpeed checkpoint directory (no 'latest' file): {checkpoint_dir}")
    state_dict = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir))
    # The tensors are views into the memory-mapped shards; clone so they outlive the files.
    return {_strip_wrapper_prefix(name): tensor.clone() for name, tensor in state_dict.items()}


def _strip_wrapper_prefix(name: str) -> str:
    return name[len(WRAPPER_PREFIX):] if name.startswith(WRAPPER_PREFIX) else name

