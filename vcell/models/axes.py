"""How a module says which dimensions of its parameters run over a vocabulary (genes, pathways,
compartments, perturbation categories), so `vcell.models.transfer` can move weights between
models built on different atlases.

    class MyTerm(nn.Module):
        AXES = {"weight": (Axis("gene"), None), "bias": (Axis("gene"),)}   # like STATS

Keys are parameter paths relative to the declaring module; values have one entry per dimension:
`None` (positional: must match exactly), an `Axis` or a `Stacked` of parts.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Axis:
    """One dimension of a parameter that runs over items of a vocabulary (see module doc).

    kind: "gene", "pathway", "compartment", "perturbation" (any key of the vocabulary), or a
    tuple of kinds for edges (each position is a (source, target) pair).
    index: buffer(s) of the declaring module holding each position's item code (one per kind),
    when the positions are a subset or a list of pairs; None: position i is item i.
    rows: a buffer of the declaring module mapping item code -> position (-1: no position),
    when only some items have a position (routed perturbations).
    """

    kind: str | tuple[str, ...]
    index: str | tuple[str, ...] | None = None
    rows: str | None = None


@dataclass(frozen=True)
class Stacked:
    """A dimension made of parts laid end to end (a layer reading [hidden, pathways, compartments]);
    `None` is the one positional part, whose size is what the other parts leave."""

    parts: tuple[Axis | None, ...]


AxisEntry = Axis | Stacked | None


def declared_axes(model: nn.Module) -> dict[str, tuple[str, tuple[AxisEntry, ...]]]:
    """Full parameter name -> (the declaring module's path, axis entries), from every module's
    `AXES` (a class attribute or one set in `__init__`)."""
    declared = {}
    for prefix, module in model.named_modules():
        for name, axes in getattr(module, "AXES", {}).items():
            declared[f"{prefix}.{name}" if prefix else name] = (prefix, tuple(axes))
    return declared
