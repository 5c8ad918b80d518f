"""Layers shared by the model and its enhancements: MLPs, sparse annotation layers, a fixed-step
ODE solver, count likelihoods. Single-device torch only.

    mlp = MLP(2000, [256, 256], 32)                   # Linear-LayerNorm-GELU stacks
    layer = EdgeLinear(src, dst, n_in=2000, n_out=40) # weights only on annotated (src, dst) pairs
    z_t = integrate(f, z0, duration, n_steps=8)       # RK4, each row its own duration
    log_p = negative_binomial_log_prob(counts, mean, dispersion)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import nn

from vcell.models.axes import Axis


class MLP(nn.Sequential):
    """Linear -> LayerNorm -> GELU (-> Dropout) for each hidden width, then a plain Linear.

    `input_axis` / `output_axis` name the vocabulary its inputs / outputs run over ("gene",
    "pathway"; see `vcell.models.transfer`), so a model on another atlas can take its rows."""

    def __init__(self, n_in: int, hidden: list[int], n_out: int, dropout: float = 0.0, *,
                 input_axis: str | None = None, output_axis: str | None = None) -> None:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(n_in, width), nn.LayerNorm(width), nn.GELU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            n_in = width
        layers.append(nn.Linear(n_in, n_out))
        super().__init__(*layers)
        self.AXES: dict = {}
        if output_axis is not None:  # weight (out, in), bias (out,)
            last = len(layers) - 1
            self.AXES.update({f"{last}.weight": (Axis(output_axis), None), f"{last}.bias": (Axis(output_axis),)})
        if input_axis is not None:  # set after: a single-layer MLP's weight runs over both
            first = self.AXES.get("0.weight", (None, None))[0]
            self.AXES["0.weight"] = (first, Axis(input_axis))


class Float32Statistics(nn.Module):
    """A module of running statistics (its `FLOAT32_BUFFERS`) that move with the model but stay
    float32 when the model is cast: DeepSpeed's bf16 casts every buffer, and these statistics are
    read as differences of close sums or moments, which bf16's 8-bit mantissa cancels to noise."""

    FLOAT32_BUFFERS: tuple[str, ...] = ()

    def _apply(self, fn, recurse: bool = True):
        kept = {name: getattr(self, name) for name in self.FLOAT32_BUFFERS}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = getattr(self, name)
            if after.dtype != before.dtype:  # the device as asked, the values as they were
                setattr(self, name, before.to(device=after.device))
        return self


class EdgeLinear(nn.Module):
    """y[:, dst] += w_e * x[:, src] for each annotated edge e: a linear map with weights only on
    the pairs an annotation allows (gene -> pathway, pathway -> compartment, TF -> target).

    Stored as E weights and two index buffers, so the parameter count is the number of
    annotated pairs, not n_in x n_out. `axes` names the vocabularies of its inputs and outputs
    (("gene", "pathway")), so a model on another atlas takes the weights of the edges it shares.
    """

    def __init__(
        self, source, target, n_in: int, n_out: int, *, bias: bool = True,
        init: Literal["random", "mean"] = "random", init_scale: float | None = None, positive: bool = False,
        axes: tuple[str, str] | None = None,
    ) -> None:
        super().__init__()
        if len(source) != len(target):
            raise ValueError(f"EdgeLinear: {len(source)} sources but {len(target)} targets")
        self.n_in, self.n_out = n_in, n_out
        source, target = np.asarray(source, dtype=np.int64), np.asarray(target, dtype=np.int64)
        self.register_buffer("source", torch.as_tensor(source))
        self.register_buffer("target", torch.as_tensor(target))
        # fan-in of each output (numpy: also works while building on the meta device)
        fan_in = np.maximum(np.bincount(target, minlength=n_out), 1)[target].astype(np.float32)
        if init == "mean":  # each output starts as the mean of its inputs (e.g. a gene-set score)
            weight = torch.as_tensor(1.0 / fan_in)
        else:  # so an output with many inputs starts no larger than one with few
            scale = torch.as_tensor(fan_in ** -0.5 if init_scale is None else np.full(len(source), init_scale, np.float32))
            weight = torch.randn(len(source)) * scale
        self.positive = positive  # weights = softplus(raw): every connection keeps its sign (+)
        if positive:
            weight = torch.log(torch.expm1(weight.abs().clamp(min=1e-4)))
        self.raw_weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None
        self.AXES: dict = {}
        if axes is not None:  # each weight is the edge (source item, target item); the bias runs over targets
            self.AXES["raw_weight"] = (Axis(tuple(axes), index=("source", "target")),)
            if bias:
                self.AXES["bias"] = (Axis(axes[1]),)

    @property
    def weight(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_weight) if self.positive else self.raw_weight

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """`weight` (E,): the edges' weights to use instead of `self.weight` (the same values with
        their gradient rescaled, say)."""
        # x (B, n_in) -> messages (B, E) -> summed per target (B, n_out)
        messages = x[:, self.source] * (self.weight if weight is None else weight)
        out = x.new_zeros(x.shape[0], self.n_out).index_add_(1, self.target, messages)
        return out if self.bias is None else out + self.bias

    def dense_weight(self) -> torch.Tensor:
        """(n_in, n_out) with zeros off the annotated pairs (for inspection and tests)."""
        dense = self.weight.new_zeros(self.n_in, self.n_out)
        return dense.index_put((self.source, self.target), self.weight, accumulate=True)


def integrate(
    derivative: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], state: torch.Tensor, duration: torch.Tensor,
    n_steps: int, *, trajectory: bool = False,
) -> torch.Tensor:
    """Classic fourth-order Runge-Kutta from t=0 to t=duration in `n_steps` equal steps.

    `derivative(t, state)` gives d state/dt; state (B, D); duration (B,) lets every row run
    for its own time with the same number of steps (a zero duration leaves the row unchanged).
    With `trajectory`, returns (n_steps + 1, B, D) states, else the final (B, D).
    """
    step = (duration / n_steps).unsqueeze(-1)  # (B, 1)
    time = torch.zeros_like(step)
    states = [state]
    for _ in range(n_steps):
        k1 = derivative(time, state)
        k2 = derivative(time + step / 2, state + step / 2 * k1)
        k3 = derivative(time + step / 2, state + step / 2 * k2)
        k4 = derivative(time + step, state + step * k3)
        state = state + step / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        time = time + step
        states.append(state)
    return torch.stack(states) if trajectory else state


def negative_binomial_log_prob(
    counts: torch.Tensor, mean: torch.Tensor, dispersion: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """log NB(counts; mean, inverse dispersion theta), elementwise: Var = mean + mean^2 / theta.

    Written so nothing cancels: log P(0) as -theta log1p(mean / theta), and lgamma(counts + theta)
    - lgamma(theta) by `log_rising_factorial`. A gene with no excess variance takes a theta up to
    its clamp (1.6e5 in the demo's `full`), where float32's plain lgamma difference of two numbers
    near 1.8e6 is ~0.1 off, and theta (log theta - log(theta + mean)) too: the demo's held-out
    log-likelihood read -575.5 nats per cell for -582.8 (14.8 in one cell)."""
    log_ratio = torch.log(mean + eps) - torch.log(dispersion + mean + eps)
    return (negative_binomial_log_zero(mean, dispersion, eps) + counts * log_ratio
            + log_rising_factorial(dispersion, counts) - torch.lgamma(counts + 1.0))


# from this theta on, float32 (and narrower) values take Stirling's series, to its 1/(360 x^3) term:
# its error, below 1/(1260 x^5), is ~1e-8 here, under float32's resolution
STIRLING_FROM = 10.0


def log_rising_factorial(x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """lgamma(x + counts) - lgamma(x), elementwise. In float64, plainly. Narrower, for x >=
    STIRLING_FROM, the difference of Stirling's series, (x - 1/2) log1p(counts / x) + counts (log(x
    + counts) - 1) + s(x + counts) - s(x) with s(y) = 1/(12 y) - 1/(360 y^3), where nothing cancels
    (float64 lgamma agrees to float32's resolution: test); below, plain lgamma (small values)."""
    if x.dtype == torch.float64:
        return torch.lgamma(x + counts) - torch.lgamma(x)
    large = x >= STIRLING_FROM
    safe = torch.where(large, x, torch.full_like(x, STIRLING_FROM))  # keeps the unused branch finite

    def series(y: torch.Tensor) -> torch.Tensor:
        return 1.0 / (12.0 * y) - 1.0 / (360.0 * y.pow(3))

    stirling = ((safe - 0.5) * torch.log1p(counts / safe) + counts * (torch.log(safe + counts) - 1.0)
                + series(safe + counts) - series(safe))
    small = torch.where(large, torch.ones_like(x), x)
    return torch.where(large, stirling, torch.lgamma(small + counts) - torch.lgamma(small))


def negative_binomial_log_zero(mean: torch.Tensor, dispersion: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """log NB(0; mean, theta) = theta log(theta / (theta + mean)), as -theta log1p(mean / theta)."""
    return -dispersion * torch.log1p(mean / (dispersion + eps))


def zero_inflated_negative_binomial_log_prob(
    counts: torch.Tensor, mean: torch.Tensor, dispersion: torch.Tensor, zero_logits: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """log ZINB: with probability sigmoid(zero_logits) an extra zero, else NB(mean, dispersion)."""
    nb = negative_binomial_log_prob(counts, mean, dispersion, eps)
    log_pi, log_not_pi = nn.functional.logsigmoid(zero_logits), nn.functional.logsigmoid(-zero_logits)
    zero_case = torch.logaddexp(log_pi, log_not_pi + negative_binomial_log_zero(mean, dispersion, eps))
    return torch.where(counts < 0.5, zero_case, log_not_pi + nb)


def poisson_log_prob(counts: torch.Tensor, mean: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return counts * torch.log(mean + eps) - mean - torch.lgamma(counts + 1.0)


def gene_set_means(x: torch.Tensor, gene: torch.Tensor, group: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """(B, n_groups) mean of x over each group's genes; membership as (gene, group) pairs."""
    sums = x.new_zeros(x.shape[0], len(size)).index_add_(1, group, x[:, gene])
    return sums / size.clamp(min=1)


# Ridge of the gene-set projection, in genes: keeps nested or duplicated gene sets (common in GO
# and MSigDB files) solvable, splitting a shared signal between them evenly. On the science atlas
# the activity Pearson is 0.6133 at 0.001, 0.6127 at 1 and 0.6008 at 30: the choice hardly matters.
PROJECTION_RIDGE = 1.0


def gene_set_projector(gene, group, n_groups: int, ridge: float = PROJECTION_RIDGE) -> torch.Tensor:
    """(n_groups, n_groups) inverse of (overlap + ridge I), overlap[p, q] = genes in both p and q:
    with it, `project_on_gene_sets` solves the joint least squares x ~ a M over all sets at once.
    Computed in NumPy (membership as (gene, group) index arrays), so it also works while a model
    is built on the 'meta' device."""
    gene, group = np.asarray(gene, dtype=np.int64), np.asarray(group, dtype=np.int64)
    membership = np.zeros((n_groups, int(gene.max()) + 1 if len(gene) else 0))
    membership[group, gene] = 1.0
    overlap = membership @ membership.T
    return torch.as_tensor(np.linalg.inv(overlap + ridge * np.eye(n_groups)), dtype=torch.float32)


def project_on_gene_sets(x: torch.Tensor, gene: torch.Tensor, group: torch.Tensor, projector: torch.Tensor) -> torch.Tensor:
    """(B, n_groups) activities a minimising |x - a M|^2 + ridge |a|^2, M the 0/1 membership (n_groups, G).

    Unlike gene-set means, a gene in two sets is not counted in full for both: its value is
    shared out between them, so overlapping sets stop echoing each other. Per-gene constants of
    x add only a constant to each activity (correlations over cells do not see them)."""
    sums = x.new_zeros(x.shape[0], len(projector)).index_add_(1, group, x[:, gene])  # (B, P) = x M^T
    return sums @ projector.T


def load_rescaled(state_dict: dict, prefix: str, legacy: str, name: str, factor: float) -> None:
    """For weights saved before a parameter moved onto a step scale (or a larger one): the value held
    under `legacy`, times `factor`, becomes parameter `name`, so the loaded module computes what the
    saved one did. Call from `_load_from_state_dict` before the default loading."""
    value = state_dict.pop(prefix + legacy, None)
    if value is not None and prefix + name not in state_dict:
        state_dict[prefix + name] = value * factor
