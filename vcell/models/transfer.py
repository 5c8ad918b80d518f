"""Weights from a model trained on another atlas: rows matched by gene ID and category name.

    report = transfer_weights(model, pretrained_state, pretrained_vocabulary, vocabulary_of(spec, categories, columns))
    report.coverage["gene"]          # {"matched": 140, "total": 200, "pretrained": 200}
    freeze(model, ["encoder"], report.fresh)

Which axis of a parameter runs over genes, pathways or perturbation categories is declared by
the module that owns it, as `AXES` (like `STATS`): parameter path relative to the module ->
one entry per dimension, `None` for a dimension that must match exactly (hidden widths) or an
`Axis` naming the vocabulary it runs over. New modules (enhancements, other encoders) declare
their own axes and need no edit here; layers shared by many owners (`MLP`, `EdgeLinear`) take
their axes as constructor arguments. A parameter no module declares must have the same shape in
both models, or the transfer fails naming it.

A row of the new model takes the pretrained row with the same label (gene ID, category name,
(source, target) of an edge); rows without one keep the fresh initialisation, pretrained rows
without one are left behind. Only parameters move: buffers are the new spec's structure (edge
lists, category routes) or running estimates that re-adapt within a few batches. A module whose
buffers describe its rows (which perturbation rows were trained) defines
`weights_transferred(fresh)` and is told which entries were copied (`tell_modules`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from vcell.config.model import ColumnsConfig
from vcell.errors import VCellError
from vcell.models.axes import Axis, AxisEntry, Stacked, declared_axes
from vcell.models.spec import ModelSpec

Label = Hashable
Vocabulary = dict[str, list[str]]  # axis kind -> the names of its items, in code order


def vocabulary_of(spec: ModelSpec, categories: dict[str, list[str]], columns: ColumnsConfig) -> Vocabulary:
    """The names behind every axis kind of a model built on `spec`: its genes and annotations, and
    the category names behind the codes of the obs columns it reads (`categories`, by column).
    "context" (cell types) has no parameters of its own yet: it is there for coverage reports and
    for modules that will declare per-context rows."""
    perturbations = list(categories.get(columns.perturbation, [])) if columns.perturbation else []
    if len(perturbations) != spec.n_perturbations:  # codes without names (a folder from before categories.json)
        perturbations = [f"perturbation code {code}" for code in range(spec.n_perturbations)]
    contexts = list(categories.get(columns.context, [])) if columns.context else []
    return {"gene": list(spec.gene_ids), "pathway": list(spec.pathway_names),
            "compartment": list(spec.compartment_names), "perturbation": perturbations, "context": contexts,
            "batch": list(spec.batch_names)}


@dataclass
class TransferReport:
    """What a transfer did: coverage per vocabulary, entries copied per parameter, and which
    entries of each parameter kept their fresh initialisation (`fresh`, bool like the parameter)."""

    coverage: dict[str, dict[str, int]] = field(default_factory=dict)
    copied: dict[str, int] = field(default_factory=dict)
    fresh: dict[str, torch.Tensor] = field(default_factory=dict)
    new_parameters: list[str] = field(default_factory=list)
    left_behind: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        entries = sum(mask.numel() for mask in self.fresh.values())
        fresh = sum(int(mask.sum()) for mask in self.fresh.values())
        return {"coverage": self.coverage, "entries": entries, "entries_copied": entries - fresh,
                "new_parameters": self.new_parameters, "left_behind": self.left_behind}


def transfer_weights(model: nn.Module, state: dict[str, torch.Tensor], pretrained: Vocabulary,
                     vocabulary: Vocabulary) -> TransferReport:
    """Copy `state` (a pretrained model's state dict) into `model`'s parameters, row by row."""
    report = TransferReport(coverage=coverage(pretrained, vocabulary))
    declared = declared_axes(model)
    buffers = dict(model.named_buffers())
    parameters = dict(model.named_parameters())
    report.left_behind = sorted(name for name in state if name not in parameters and name not in buffers)
    with torch.no_grad():
        for name, parameter in parameters.items():
            if name not in state:
                report.new_parameters.append(name)
                report.fresh[name] = torch.ones_like(parameter, dtype=torch.bool)
                continue
            prefix, axes = declared.get(name, ("", (None,) * parameter.dim()))
            old = state[name]
            check_rank(name, axes, old, parameter)
            new_labels = [labels(entry, size, prefix, buffers, vocabulary, name)
                          for entry, size in zip(axes, parameter.shape)]
            old_labels = [labels(entry, size, prefix, state, pretrained, name)
                          for entry, size in zip(axes, old.shape)]
            matches = [match(new, old_, name, dim, parameter.shape, old.shape)
                       for dim, (new, old_) in enumerate(zip(new_labels, old_labels))]
            copy_rows(parameter, old, matches)
            report.fresh[name] = fresh_mask(parameter, matches)
            report.copied[name] = int((~report.fresh[name]).sum())
    tell_modules(model, report.fresh)
    return report


def tell_modules(model: nn.Module, fresh: dict[str, torch.Tensor]) -> None:
    """Call each module's `weights_transferred(fresh)` (if it has one) with the fresh masks of its
    own parameters, named relative to it: a module whose buffers describe its rows (the
    perturbation shift's trained rows) updates them."""
    for prefix, module in model.named_modules():
        hook = getattr(module, "weights_transferred", None)
        if hook is not None:
            start = f"{prefix}." if prefix else ""
            hook({name[len(start):]: mask for name, mask in fresh.items() if name.startswith(start)})


def coverage(pretrained: Vocabulary, vocabulary: Vocabulary) -> dict[str, dict[str, int]]:
    return {kind: {"matched": len(set(names) & set(pretrained.get(kind, []))), "total": len(names),
                   "pretrained": len(pretrained.get(kind, []))}
            for kind, names in vocabulary.items()}


def check_rank(name: str, axes: tuple, old: torch.Tensor, new: torch.Tensor) -> None:
    if old.dim() != new.dim() or len(axes) != new.dim():
        raise VCellError(f"pretrained parameter '{name}' has shape {tuple(old.shape)}, this model's {tuple(new.shape)}",
                         hint="fine-tune the same model (model.name, model.enhancements) as the pretrained one")


def labels(entry: AxisEntry, size: int, prefix: str, tensors: dict, vocabulary: Vocabulary, name: str) -> list[Label] | None:
    """The label of each position along one dimension (None: positional, must match exactly)."""
    if entry is None:
        return None
    if isinstance(entry, Stacked):
        named = [[(part.kind, label) for label in axis_labels(part, prefix, tensors, vocabulary, name)]
                 for part in entry.parts if part is not None]
        filler = size - sum(len(part) for part in named)
        result, named_parts = [], iter(named)
        for part in entry.parts:
            result += [("position", i) for i in range(filler)] if part is None else next(named_parts)
        return result
    result = axis_labels(entry, prefix, tensors, vocabulary, name)
    if len(result) != size:
        raise VCellError(f"parameter '{name}': a dimension of {size} is declared to run over {len(result)} "
                         f"{entry.kind} items", hint="the module's AXES declaration does not fit the parameter")
    return result


def axis_labels(axis: Axis, prefix: str, tensors: dict, vocabulary: Vocabulary, name: str) -> list[Label]:
    def buffer(local: str) -> list[int]:
        key = f"{prefix}.{local}" if prefix else local
        if key not in tensors:
            raise VCellError(f"parameter '{name}': its axis reads the buffer '{key}', which the model does not have")
        return [int(value) for value in tensors[key].reshape(-1).tolist()]

    kinds = axis.kind if isinstance(axis.kind, tuple) else (axis.kind,)
    names = [vocabulary.get(kind, []) for kind in kinds]
    if axis.rows is not None:
        positions = buffer(axis.rows)
        result: list[Label] = [("unrouted", i) for i in range(max(positions, default=-1) + 1)]
        for code, position in enumerate(positions):
            if position >= 0:
                result[position] = names[0][code]
        return result
    if axis.index is None:
        return list(names[0]) if len(kinds) == 1 else list(zip(*names))
    indexes = axis.index if isinstance(axis.index, tuple) else (axis.index,)
    codes = [buffer(local) for local in indexes]
    pairs = zip(*[[items[code] for code in column] for items, column in zip(names, codes)])
    return [pair[0] for pair in pairs] if len(kinds) == 1 else list(pairs)


def match(new: list[Label] | None, old: list[Label] | None, name: str, dim: int, new_shape, old_shape
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions in the new parameter, their pretrained positions) along one dimension."""
    if new is None or old is None:
        if new_shape[dim] != old_shape[dim]:
            raise VCellError(
                f"pretrained parameter '{name}' has shape {tuple(old_shape)}, this model's {tuple(new_shape)}: "
                f"dimension {dim} is not indexed by genes or categories, so it must match",
                hint="use the pretrained model's size (model.size, hidden_dim, n_layers, latent_dim) and enhancement settings",
            )
        everything = torch.arange(new_shape[dim])
        return everything, everything
    where: dict[Label, list[int]] = {}  # a label may repeat (an edge listed twice): k-th to k-th
    for position, label in reversed(list(enumerate(old))):
        where.setdefault(label, []).append(position)
    pairs = [(position, where[label].pop()) for position, label in enumerate(new) if where.get(label)]
    if not pairs:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return tuple(torch.tensor(column, dtype=torch.long) for column in zip(*pairs))


def grid(indices: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Index tensors broadcast against each other: the outer product of per-dimension positions."""
    n = len(indices)
    return tuple(index.reshape([-1 if d == dim else 1 for d in range(n)]) for dim, index in enumerate(indices))


def copy_rows(parameter: torch.Tensor, old: torch.Tensor, matches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    if any(len(new) == 0 for new, _ in matches):
        return
    new_index = grid([new for new, _ in matches])
    old_index = grid([old_ for _, old_ in matches])
    parameter[new_index] = old[old_index].to(device=parameter.device, dtype=parameter.dtype)


def fresh_mask(parameter: torch.Tensor, matches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    copied = torch.zeros_like(parameter, dtype=torch.bool)
    if all(len(new) for new, _ in matches):
        copied[grid([new for new, _ in matches])] = True
    return ~copied


@dataclass
class Frozen:
    """What `freeze` fixed: whole parameters, and those whose new rows still train (gradient masked)."""

    whole: list[str] = field(default_factory=list)
    partly: dict[str, int] = field(default_factory=dict)  # name -> entries that still train

    def summary(self) -> dict:
        return {"frozen_parameters": len(self.whole) + len(self.partly), "partly_trainable": self.partly}


def freeze(model: nn.Module, slots: Sequence[str], fresh: dict[str, torch.Tensor]) -> Frozen:
    """Stop training the pretrained entries of the parameters in `slots` (top-level modules of the
    model: `vcell.config.train.FREEZABLE`).

    Entries that kept their fresh initialisation (new genes, new categories) keep training: a
    frozen encoder would otherwise read new genes through random weights forever. Their
    parameter gets a gradient mask instead of `requires_grad=False`."""
    frozen = Frozen()
    for name, parameter in model.named_parameters():
        if name.split(".")[0] not in slots:
            continue
        mask = fresh.get(name)
        if mask is None or not mask.any():
            parameter.requires_grad_(False)
            frozen.whole.append(name)
            continue
        keep = mask.to(parameter.dtype)
        parameter.register_hook(lambda gradient, keep=keep: gradient * keep.to(gradient.device))
        frozen.partly[name] = int(mask.sum())
    return frozen
