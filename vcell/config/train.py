"""The `train`, `scaling` and `wandb` sections: how long and how a run trains, on what, logged where.

    train:   {steps: 400, strategy: deepspeed, deepspeed: {stage: 2}, checkpoint_every: 100}
    scaling: {workers: 8, gpus_per_worker: 1, cpus_per_worker: 8}
    wandb:   {mode: offline, project: vcell}

Keys that change how a run is executed but not what it computes (where the cluster is, how
often to retry, whether W&B uploads) are `OPERATIONAL`: changing them never counts as a
different run when a run is resumed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vcell.config.section import Section

OPERATIONAL = (
    # how many workers a run has is not what it computes: an elastic run changes it as nodes come
    # and go, and resuming on another number re-plans the rest of the epoch (data.epoch_plan)
    "scaling.workers", "scaling.min_workers",
    "scaling.address", "scaling.max_failures", "scaling.include_dashboard", "scaling.storage_path",
    "scaling.placement_strategy",
    "wandb.mode", "data.synthesize_if_missing", "train.progress_bar",
    "model.columns.batch",  # read by evaluation only (batch mixing) unless model.batch_covariate (run.identity)
)
# the model's slots (`vcell.models.slots`) a fine-tune may freeze; tests check the model has these
FREEZABLE = ("encoder", "latent", "dynamics", "decoder", "head", "gene_terms", "auxiliary", "readouts", "residuals")
ZERO_STAGES = (1, 2, 3)  # configs/deepspeed/zero<stage>.json; also checked by train.deepspeed_cpu for direct callers
ZeroStage = Literal[ZERO_STAGES]


class DeepSpeedConfig(Section):
    """DeepSpeed ZeRO: configs/deepspeed/zero<stage>.json, offload and overrides on top."""

    stage: ZeroStage = Field(2, description="ZeRO stage: 1 shards optimiser states, 2 also gradients, 3 also parameters")
    offload: bool = Field(False, description="keep optimiser states (and, at stage 3, parameters) in CPU memory")
    overrides: dict = Field(default_factory=dict, description="keys merged into the JSON config (e.g. {zero_optimization: {reduce_bucket_size: 1e7}})")


class TrainConfig(Section):
    """The optimisation: steps, optimiser, schedule, precision, strategy, checkpoints, validation."""

    steps: int = Field(300, ge=1, description="optimiser steps of the whole run")
    learning_rate: float = Field(1e-3, gt=0, description="AdamW peak learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="linear warm-up over this fraction of the steps")
    final_lr_fraction: float = Field(0.1, ge=0, le=1, description="cosine decay ends at this fraction of the peak")
    gradient_clip: float | None = Field(5.0, gt=0, description="clip the gradient norm to this (null: no clipping)")
    accumulate: int = Field(1, ge=1, description="batches whose gradients add up to one optimiser step")
    strategy: Literal["ddp", "deepspeed"] = Field("ddp", description="data parallelism: PyTorch DDP or DeepSpeed ZeRO")
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    precision: Literal["auto", "32-true", "bf16-mixed"] = Field(
        "auto", description="'auto': 32-true on CPU, bf16-mixed on GPU"
    )
    checkpoint_every: int = Field(100, ge=1, description="save a checkpoint every this many steps (and at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="complete checkpoints kept (the oldest are deleted)")
    validate_every: int | None = Field(100, ge=1, description="validation loss every this many steps (null: only at the end)")
    validation_batches: int = Field(8, ge=1, description="batches per rank in each validation")
    compile: bool = Field(
        False, description="torch.compile the model (Inductor; needs a C++ compiler on CPU); the first steps compile"
    )
    deterministic: bool = Field(False, description="deterministic algorithms (bitwise resume on CPU; slower on GPU)")
    audit_cells: bool = Field(
        False, description="record every trained cell (step, epoch, atlas row) per rank in audit/: proves exactly-once delivery"
    )
    progress_bar: bool = Field(True, description="a progress bar on rank 0 (other ranks are always quiet)")
    init_from: str | None = Field(
        None, description="start from the weights of a finished run or `vcell export` folder (another atlas is fine): "
        "genes matched by ID, categories by name, unmatched rows fresh; null = random initialisation"
    )
    freeze: list[Literal[FREEZABLE]] = Field(
        default_factory=list, description="slots whose pretrained weights stay fixed (needs init_from), e.g. "
        "[encoder, latent]; rows of new genes and categories in them still train"
    )
    init_min_gene_overlap: float = Field(
        0.5, ge=0, le=1, description="init_from is refused when fewer than this share of the model's genes "
        "are in the pretrained model's vocabulary"
    )

    @model_validator(mode="after")
    def _freeze_needs_weights(self) -> TrainConfig:
        if self.freeze and not self.init_from:
            raise ValueError("train.freeze keeps pretrained weights fixed, but train.init_from is not set "
                             "(freezing random weights would train nothing there): set train.init_from or drop train.freeze")
        if len(set(self.freeze)) != len(self.freeze):
            raise ValueError(f"train.freeze lists a slot twice: {self.freeze}")
        return self


class ScalingSection(Section):
    """Where and on how many workers a run trains (Ray Train's ScalingConfig and RunConfig)."""

    workers: int = Field(2, ge=1, description="data-parallel workers (one process each); with min_workers, the most")
    min_workers: int | None = Field(
        None, ge=1,
        description="elastic run: Ray Train starts and restarts the run on min_workers..workers workers, as many as "
        "the cluster has room for (each resize resumes from the last checkpoint; DDP only). null: exactly `workers`",
    )
    cpus_per_worker: int = Field(1, ge=1, description="CPU cores per worker (also its torch threads)")
    gpus_per_worker: int = Field(0, ge=0, le=1, description="GPUs per worker: 0 trains on CPU, 1 on one GPU each")
    address: str | None = Field(
        None, description="Ray cluster to join ('auto' or host:port); null starts a local one on 127.0.0.1"
    )
    include_dashboard: bool = Field(
        False, description="the Ray dashboard of a local cluster (off: nothing listens; on needs ray[default])"
    )
    storage_path: str = Field(
        "runs", description="folder holding runs/<name>/: local, or a filesystem every node mounts on clusters"
    )
    max_failures: int = Field(2, ge=-1, description="worker-group restarts after a failure (-1: unlimited)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the workers on nodes: PACK fills a node first, SPREAD uses as many nodes "
        "as it can (and, after a node dies, the ones left), STRICT_* insist (and wait for enough nodes)"
    )

    @model_validator(mode="after")
    def _check_range(self) -> ScalingSection:
        if self.min_workers is not None and self.min_workers > self.workers:
            raise ValueError(f"min_workers ({self.min_workers}) must be <= workers ({self.workers}), the most an "
                             "elastic run uses")
        return self

    @property
    def fewest_workers(self) -> int:
        """The fewest workers a run starts with: what the cluster must have room for."""
        return self.workers if self.min_workers is None else self.min_workers


class WandbConfig(Section):
    """Weights & Biases: offline by default (sync later with the printed command); never stores a key."""

    mode: Literal["offline", "online", "disabled"] = Field("offline", description="'online' needs WANDB_API_KEY in the environment")
    project: str = Field("vcell", description="W&B project")
    entity: str | None = Field(None, description="W&B entity (team or user)")
    group: str | None = Field(None, description="W&B group (a campaign sets it)")
    tags: list[str] = Field(default_factory=list, description="W&B tags")

    @model_validator(mode="after")
    def _no_secrets(self) -> WandbConfig:
        for value in (self.project, self.entity or "", self.group or "", *self.tags):
            if len(value) >= 40 and value.isalnum():
                raise ValueError("a W&B value looks like an API key: keys belong in WANDB_API_KEY, never in a config")
        return self
