"""What a module in each slot of the VirtualCell must provide: one `typing.Protocol` per slot.

Shapes: B cells, G genes, H hidden width, D latent dimension, R cells moved by the dynamics.
Every slot module also declares `STATS`: the statistics it emits (name -> symbolic shape, e.g.
`{"pathway_activity": ("B", "P")}`), collected by `VirtualCell.stat_shapes` and checked against
the emitted tensors by the tests. A module that wraps or holds others declares only its own.

Optional capabilities are part of a contract, with a neutral default, instead of attributes the
model probes for: every latent has `tick()` (a KL warm-up counts steps; others do nothing), every
head has `likelihood` (None unless it scores raw counts), and a stimulus response that takes a
memory of earlier stimuli says so with `attach_memory` (`MemoryHook`).

The protocols are structural: an enhancement's module satisfies one by having the methods, it
need not inherit from it. They are documentation a type checker can read, the annotations of
`Slots`, and (runtime-checkable) what tests/models/test_contracts.py checks every slot against.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch

from vcell.models.inputs import CellInputs, Conditions, Prediction

Stats = dict[str, torch.Tensor]
Losses = dict[str, torch.Tensor]


@runtime_checkable
class DeclaresStats(Protocol):
    STATS: Mapping[str, tuple[str, ...]]  # statistic name -> symbolic shape; {} when none


@runtime_checkable
class Encoder(DeclaresStats, Protocol):
    """Expression -> hidden features: (x (B, G), cells) -> (h (B, H), losses, stats); `n_out` is H.

    x is what the encoder may see (in training the hidden genes are 0; `cells.hidden` marks them,
    `cells.x` holds their true values for a loss only). Losses: an encoder's own objective (the
    transformer's masked-value loss); a wrapper passes its inner encoder's on."""

    n_out: int

    def __call__(self, x: torch.Tensor, cells: CellInputs) -> tuple[torch.Tensor, Losses, Stats]: ...


@runtime_checkable
class Latent(DeclaresStats, Protocol):
    """Hidden features -> cell state: h (B, H) -> (z (B, D), losses, stats)."""

    def __call__(self, h: torch.Tensor) -> tuple[torch.Tensor, Losses, Stats]: ...

    def tick(self) -> None:
        """One training step done (the model calls it once per training forward): a schedule
        such as the KL warm-up advances here; a latent without one does nothing."""


@runtime_checkable
class Dynamics(DeclaresStats, Protocol):
    """A state moved to conditions: (z (B, D), conditions) -> (z' (B, D), stats). Called on the R
    cells of the response pairs in training, on any cells in `predict`."""

    def __call__(self, z: torch.Tensor, conditions: Conditions) -> tuple[torch.Tensor, Stats]: ...


@runtime_checkable
class MemoryHook(DeclaresStats, Protocol):
    """A memory of earlier stimuli inside a stimulus response that accepts one (`AcceptsMemory`):
    (share (B, G) of each gene's stimulated effect a cell shows now, conditions) -> the share
    plus what an earlier pulse left behind (B, G)."""

    def __call__(self, share: torch.Tensor, conditions: Conditions) -> torch.Tensor: ...


@runtime_checkable
class AcceptsMemory(DeclaresStats, Protocol):
    """A stimulus response that a memory can condition (temporal's gene term): the memory
    enhancement attaches itself through this hook, never by setting an attribute of another module."""

    def attach_memory(self, memory: MemoryHook) -> None: ...


@runtime_checkable
class Decoder(Protocol):
    """Cell state -> gene scores: z (B, D) -> scores (B, G) (what the head turns into expression)."""

    def __call__(self, z: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class GeneTerm(DeclaresStats, Protocol):
    """A term added to the decoder's scores, in order: (scores (B, G), z (B, D), conditions or None
    for a cell's own state) -> scores (B, G)."""

    def __call__(self, scores: torch.Tensor, z: torch.Tensor, conditions: Conditions | None) -> torch.Tensor: ...


@runtime_checkable
class Residual(DeclaresStats, Protocol):
    """A residual route: conditions -> (B, G) a learned correction added to the gene scores of cells
    under them (None when it has none for them). The model trains it only on what the rest of the
    model leaves: its response loss scores the targets' detached scores plus the correction
    (`vcell.models.residual`). In training `half` (B,) gives each target's half of a fixed split of
    the cells (`CellInputs.split_half`), so a route can fit each half apart; None at prediction."""

    def __call__(self, conditions: Conditions | None, half: torch.Tensor | None = None) -> torch.Tensor | None: ...

    def covers(self, conditions: Conditions | None) -> torch.Tensor:
        """(B,) bool: the cells whose conditions this route corrects (the rows its loss is scored on)."""


@runtime_checkable
class CountLikelihood(DeclaresStats, Protocol):
    """A distribution of raw counts around the head's expected counts `prediction.mean` (B, G)."""

    def extras(self, z: torch.Tensor) -> dict[str, torch.Tensor]: ...  # further (B, G) parameters from z

    def log_prob(self, counts: torch.Tensor, prediction: Prediction) -> torch.Tensor: ...  # (B, G)

    def sample(self, prediction: Prediction) -> torch.Tensor: ...  # (B, G) counts

    # a training step's counts and its cells' expected counts (B, G), for statistics the likelihood keeps
    # (no gradient; a no-op for a likelihood that keeps none)
    def fit(self, counts: torch.Tensor, prediction: Prediction) -> None: ...

    # (B, G) E[log1p(scale x counts)], scale (B, 1): the expected normalised expression (`vcell.models.expected`);
    # detected: over the cells in which the gene is detected (counts > 0)
    def expected_log1p(self, prediction: Prediction, scale: torch.Tensor, detected: bool = False,
                       entries: torch.Tensor | None = None) -> torch.Tensor: ...

    def statistics(self, prediction: Prediction) -> Stats: ...


@runtime_checkable
class MeanModel(DeclaresStats, Protocol):
    """Expected counts of a count head: (scores (B, G), basal_scores (B, G), library (B,)) ->
    (mean (B, G), extra per-cell tensors for `Prediction.extra`).

    `basal_scores` are the gene scores of the cell before any condition (the same tensor as
    `scores` when decoding a cell as it is); `library` the observed total of the cell as it is.
    `predicts_total`: whether a condition may move the expected total away from `library`; such a
    model also returns extra["log_total_ratio"] (B,), log(expected total / library), which the
    response loss scores against the observed shift (`model.at_observed_total`)."""

    predicts_total: bool

    def __call__(
        self, scores: torch.Tensor, basal_scores: torch.Tensor, library: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def statistics(self, prediction: Prediction) -> Stats: ...


@runtime_checkable
class Head(DeclaresStats, Protocol):
    """Scores -> prediction, its loss and its statistics. `basal_scores` (B, G) are the scores of
    the state before any condition (resource compares the two); `library` (B,) total counts.
    `likelihood` is the count model when the head scores raw counts, else None; `predicts_total`
    as for `MeanModel` (False for heads without one). Optional: `knock(scores, current, reference,
    knock, zero_level) -> scores`, the scores with each cell's perturbed gene at its measured share
    of its level in `reference` (`vcell.models.knock`); a head without it reads the gene as decoded."""

    likelihood: CountLikelihood | None
    predicts_total: bool

    def predict(
        self, scores: torch.Tensor, z: torch.Tensor, basal_scores: torch.Tensor, library: torch.Tensor
    ) -> Prediction: ...

    def loss(self, prediction: Prediction, target: CellInputs) -> torch.Tensor: ...  # scalar

    # (B, G) the mean of measured log1p(counts per 10,000) of cells so predicted: what pseudobulks compare
    def measured(self, prediction: Prediction) -> torch.Tensor: ...

    # (B, G) the same over the cells in which the gene is detected (counts > 0): a hidden gene's value
    def detected(self, prediction: Prediction) -> torch.Tensor: ...

    def statistics(self, prediction: Prediction) -> Stats: ...


@runtime_checkable
class Auxiliary(DeclaresStats, Protocol):
    """Extra losses and statistics of each cell's own state: (z (B, D), cells) -> (losses, stats)."""

    def __call__(self, z: torch.Tensor, cells: CellInputs) -> tuple[Losses, Stats]: ...


@runtime_checkable
class Readout(DeclaresStats, Protocol):
    """Statistics read off each cell's own reconstruction (no losses, no parameters a loss trains):
    (prediction, cells, residual) -> stats. Pathway activity as a projection of the decoded expression
    is one. A read-out whose `reads_residual` is true at the call is also handed `residual` (B, G), the
    measured cell minus its reconstruction as measured; others are called with the first two."""

    def __call__(self, prediction: Prediction, cells: CellInputs, residual: torch.Tensor | None = None) -> Stats: ...
