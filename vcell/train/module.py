"""`VCellModule`: the LightningModule around the one `VirtualCell`, for any set of enhancements.

    module = VCellModule(config.model, spec, config.train)
    trainer.fit(module, datamodule=datamodule)

It sums the model's named loss terms (adding an enhancement never edits this file), logs each
term, and owns the optimiser (AdamW + warm-up/cosine, stepped per optimiser step). Padding rows
(`valid=False`, the loader's top-up of an epoch's last batch) are dropped before the forward, so
every cell counts exactly once per epoch. Nothing here knows about Ray.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytorch_lightning as pl
import torch

from vcell.compat import set_scheduler_last_lr
from vcell.config.model import ModelConfig
from vcell.config.train import TrainConfig
from vcell.models.spec import ModelSpec
from vcell.models.zoo import build_model, compile_regions
from vcell.train.schedule import parameter_groups, warmup_cosine


def valid_rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without its padding rows (a no-op copy-free view when all rows are valid)."""
    valid = batch.get("valid")
    if valid is None or bool(valid.all()):
        return batch
    # the loader's sparse option gives CSR x, which has no boolean row indexing
    return {key: (value if value.layout == torch.strided else value.to_dense())[valid] for key, value in batch.items()}


def count_valid(batch: dict[str, torch.Tensor]) -> int:
    valid = batch.get("valid")
    return batch["x"].shape[0] if valid is None else int(valid.sum())


def every_parameter_term(model: torch.nn.Module) -> torch.Tensor:
    """0 x (one element of every trainable parameter): adds nothing to the loss or to any gradient,
    but puts every parameter in this step's graph.

    Why: a batch can leave a path idle (no perturbed cell with a basal partner: the response path
    and its dynamics get no gradient). DDP then needs `find_unused_parameters=True`, an extra walk
    of the autograd graph every step and a warning on runs where nothing is idle. With this term
    each parameter gets a gradient (zero where idle, as DeepSpeed gives idle parameters) every step,
    so DDP runs with the flag off (`strategy.py`). Not used under DeepSpeed: ZeRO-3 keeps
    parameters partitioned (empty) outside their module's forward."""
    return torch.stack([parameter.reshape(-1)[0] for parameter in model.parameters() if parameter.requires_grad]).sum() * 0.0


def running_statistics(model: torch.nn.Module) -> list[torch.Tensor]:
    """The buffers a model updates from each training batch's cells (each module's RUNNING_STATISTICS)."""
    return [getattr(module, name) for module in model.modules() for name in getattr(module, "RUNNING_STATISTICS", ())]


@contextlib.contextmanager
def statistics_kept(model: torch.nn.Module) -> Iterator[None]:
    """Leaves the running statistics (and the update counters that go with them, RUNNING_COUNTERS)
    as they were before the block.

    Why: an all-padding batch's rows are real cells, wrapped around from the start of the rank's
    slice; its forward must run (for DDP's gradient reduction) but must not fold those cells into
    the statistics a second time this epoch."""
    buffers = running_statistics(model) + [getattr(module, name) for module in model.modules()
                                           for name in getattr(module, "RUNNING_COUNTERS", ())]
    saved = [buffer.clone() for buffer in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


@torch.no_grad()
def average_across_ranks(buffers: list[torch.Tensor]) -> None:
    """Each buffer set, in place, to its mean over the ranks of the default process group (a bool
    buffer: true where any rank's is), in one all-reduce; nothing without one, or with one rank.

    Why: every rank updates these from its own cells. DDP broadcasts rank 0's buffers before each
    forward, so the other ranks' cells never counted; DeepSpeed does not, so each rank ran with its
    own values, which is why ZeRO and DDP took different steps on the same cells. Averaged, every
    strategy and every rank uses the statistics of the whole global batch."""
    distributed = torch.distributed
    if not buffers or not (distributed.is_available() and distributed.is_initialized()):
        return
    ranks = distributed.get_world_size()
    if ranks < 2:
        return
    flat = torch.cat([buffer.reshape(-1).to(torch.float64) for buffer in buffers])  # float64: exact sums of bools
    distributed.all_reduce(flat)
    flat /= ranks
    for buffer, mean in zip(buffers, flat.split([buffer.numel() for buffer in buffers])):
        buffer.copy_((mean > 0 if buffer.dtype == torch.bool else mean).view_as(buffer))


class VCellModule(pl.LightningModule):
    """Training, validation and optimiser for one `VirtualCell` (see module doc)."""

    def __init__(self, model_config: ModelConfig, spec: ModelSpec, train_config: TrainConfig) -> None:
        super().__init__()
        self.model_config, self.spec, self.train_config = model_config, spec, train_config
        self.model = build_model(model_config, spec)
        self.no_weight_decay: set[str] = set()  # partly frozen parameters (`transfer.freeze`): no decay of fixed rows
        if train_config.compile:
            compile_regions(self.model)
        # the last training batch, for throughput: valid cells, their gene tokens (transformer), FLOPs
        self.cells_in_step, self.tokens_in_step, self.flops_in_step = 0, 0, 0.0

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.model(batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        if count_valid(batch) == 0:
            # All padding: this rank's share of the epoch ended a batch before the longest rank's.
            # Its step must still run backward (DDP reduces every rank's gradients), so it
            # contributes a zero loss with the graph intact (a mean over no rows would be NaN), and
            # leaves the running statistics alone (its rows are cells this epoch already counted).
            self.cells_in_step, self.tokens_in_step, self.flops_in_step = 0, 0, 0.0
            with statistics_kept(self.model):
                loss = self.model(batch).loss * 0.0
        else:
            batch = valid_rows(batch)
            self.cells_in_step = len(batch["x"])
            output = self.model(batch)
            tokens = output.stats.get("gene_tokens")
            self.tokens_in_step = 0 if tokens is None else int(tokens.sum())
            self.flops_in_step = self.model.training_flops(output)
            for name, value in output.losses.items():
                self.log(f"train/{name}", value.detach(), batch_size=self.cells_in_step)
            loss = output.loss
            self.log("train/loss", loss.detach(), batch_size=self.cells_in_step, prog_bar=True)
        if self.train_config.strategy == "ddp":
            loss = loss + every_parameter_term(self.model)
        # every rank, every step, here rather than in on_train_batch_end: Lightning runs the callbacks'
        # hooks (the checkpoint's) before the module's, and a checkpoint must hold the averaged values
        average_across_ranks(running_statistics(self.model))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> None:
        if count_valid(batch) == 0:  # all padding (every rank has valid cells in its earlier batches)
            return
        batch = valid_rows(batch)
        output = self.model(batch)
        size = len(batch["x"])
        for name, value in output.losses.items():
            self.log(f"val/{name}", value, batch_size=size, sync_dist=True)
        self.log("val/loss", output.loss, batch_size=size, sync_dist=True, prog_bar=True)

    def on_train_start(self) -> None:
        """A resumed run takes this config's peak learning rate and weight decay, keeping the restored
        schedule position: a campaign's PBT exploit (or --resume-with-changes) may have changed them,
        and the optimiser state in the checkpoint would otherwise bring the old ones back."""
        settings = self.train_config
        for scheduler_config in self.trainer.lr_scheduler_configs:
            scheduler = scheduler_config.scheduler
            groups = scheduler.optimizer.param_groups
            decay = [settings.weight_decay if g.get("decay", True) else 0.0 for g in groups]  # partly frozen: none
            if all(g.get("initial_lr") == settings.learning_rate and g["weight_decay"] == d for g, d in zip(groups, decay)):
                continue
            for group, multiplier, weight_decay in zip(groups, scheduler.lr_lambdas, decay):
                group.update(initial_lr=settings.learning_rate, weight_decay=weight_decay,
                             lr=settings.learning_rate * multiplier(scheduler.last_epoch))
            scheduler.base_lrs = [settings.learning_rate] * len(groups)
            set_scheduler_last_lr(scheduler, [group["lr"] for group in groups])  # what get_last_lr() reports

    def configure_optimizers(self):
        settings = self.train_config
        # Torch AdamW everywhere: DeepSpeed wraps it (its CPUAdam/FusedAdam JIT-compile for 40+ s).
        optimizer = torch.optim.AdamW(parameter_groups(self.model, settings.weight_decay, self.no_weight_decay),
                                      lr=settings.learning_rate, weight_decay=settings.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(settings.steps, settings.warmup_fraction, settings.final_lr_fraction)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
