"""The Lightning strategy of a run, from `train.strategy`: DDP or DeepSpeed ZeRO 1-3.

    strategy = make_strategy(config)    # inside a Ray Train worker

DDP is Ray's `RayDDPStrategy` (the process group Ray Train has set up, the device Ray chose),
with unused-parameter detection off: the training step puts every parameter in each step's graph
(`module.every_parameter_term`), so a batch without perturbed cells leaves no parameter without a
gradient, and DDP skips the per-step graph walk that detection costs. DeepSpeed reads configs/deepspeed/zero<stage>.json (+ offload and
overrides) and uses the stock strategy on GPU or our CPU subclass (`deepspeed_cpu`); a resume on
another number of workers loads DeepSpeed's universal checkpoint (`repartition`).
"""

from __future__ import annotations

from pytorch_lightning.strategies import Strategy

from vcell.config.schema import VCellConfig
from vcell.trees import merge_trees


def make_strategy(config: VCellConfig, load_universal: bool = False) -> Strategy:
    """`load_universal`: DeepSpeed resumes from a universal checkpoint (`vcell.train.repartition`)."""
    accelerator = "gpu" if config.scaling.gpus_per_worker else "cpu"
    if config.train.strategy == "deepspeed":
        from vcell.train.deepspeed_cpu import deepspeed_strategy, load_deepspeed_config
        from vcell.train.repartition import UNIVERSAL_LOAD

        settings = config.train.deepspeed
        deepspeed_config = load_deepspeed_config(settings.stage, settings.offload, settings.overrides)
        return deepspeed_strategy(merge_trees(deepspeed_config, UNIVERSAL_LOAD) if load_universal else deepspeed_config,
                                  accelerator)
    from ray.train.lightning import RayDDPStrategy

    return RayDDPStrategy(find_unused_parameters=False)
