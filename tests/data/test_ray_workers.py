"""The loader inside real Ray Train workers: ranks come from the process group Ray sets up."""

from __future__ import annotations

import numpy as np


def read_one_epoch(config: dict) -> None:
    """Runs in each Ray Train worker: read one epoch and save which cells this rank saw."""
    import ray.train
    import torch.distributed

    from vcell.config.schema import LoaderConfig
    from vcell.data.loader import AtlasLoader

    assert torch.distributed.is_initialized()
    loader = AtlasLoader(config["atlas"], LoaderConfig(**config["loader"]))  # rank from torch.distributed
    rank = ray.train.get_context().get_world_rank()
    assert (loader.rank, loader.world_size) == (rank, 2)
    cells = np.concatenate([b["cell_index"][b["valid"]].numpy() for b in loader])
    np.save(f"{config['out']}/rank{rank}.npy", cells)
    ray.train.report({"batches": len(loader)})


def test_two_ray_train_workers_share_an_epoch_exactly_once(ray_cluster, atlas_path, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    loader = {"batch_size": 64, "block_cells": 50, "buffer_cells": 256, "threads": 1,
              "split": {"val_fraction": 0.0, "test_fraction": 0.0}}
    trainer = TorchTrainer(
        read_one_epoch,
        train_loop_config={"atlas": str(atlas_path), "loader": loader, "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="loader-ranks"),
    )
    trainer.fit()
    first, second = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    assert not set(first.tolist()) & set(second.tolist())
    assert sorted(first.tolist() + second.tolist()) == list(range(1230))
