"""The registry of enhancements: each one is a single `Enhancement` object, declared in one file.

    from vcell.models.registry import Enhancement, register_enhancement
    register_enhancement(Enhancement(name="toy", title="Toy", summary="...", config=ToyConfig, install=install))

Everything else that knows about enhancements reads this registry: the config schema (each
registered enhancement's section `model.<name>`, validated by its own class), the catalogue and
its order and compatibility checks (`catalogue.py`), `vcell models`, the data requirements checked
against an atlas (`spec.py`), the input files made absolute for Ray workers, the evaluation
sections, the learning checks and the figures. Adding an enhancement is one file and one call.

The seven built-in enhancements live in `vcell/models/enhancements/`, one module each, listed
in install order by that package; they are registered the first time the registry is read, so
importing this module (and the config) stays free of torch.

Hooks of the evaluation layer (`evaluation`, `figure`, `science_check`) may be given as the
callable or as "package.module:function": the built-ins use the text form, because the model
layer never imports the evaluation layer above it; `resolve` imports it when evaluation runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from vcell.errors import VCellError

Hook = Callable[..., Any] | str
BUILTIN_PACKAGE = "vcell.models.enhancements"

# What an enhancement may need from the data (`needs`), checked against the atlas before training:
NEED_KINDS = frozenset({
    "counts",  # raw counts in the batch (an atlas of counts, loader.keep_counts)
    "time", "history",  # obs columns by role (model.columns.time / .history)
    "gene_sets",  # pathway annotations (GMT + compartment TSV: model.hierarchical.*)
    "grn",  # a gene regulatory network prior (model.regulatory.edges)
})


@dataclass(frozen=True)
class Enhancement:
    """Everything about one enhancement (see the module doc and CONTRIBUTING.md)."""

    name: str  # the key in model.enhancements and the config section model.<name>
    title: str  # for people: `vcell models`, reports (e.g. "Temporal dynamics")
    summary: str  # one line: what it models; what it lets a biologist read off
    config: type[BaseModel]  # its typed section (a vcell.config.section.Section: unknown keys are errors)
    install: Callable[..., None]  # (slots, model config, spec) -> None: fills the model's slots
    needs: frozenset[str] = frozenset()  # of NEED_KINDS
    requires: tuple[str, ...] = ()  # enhancements it cannot work without (must be registered earlier)
    requires_why: str = ""  # why, for the error message
    input_files: tuple[str, ...] = ()  # fields of its section holding file paths (resolved for Ray workers)
    evaluation: Hook | None = None  # (HeldOut) -> (section dict with model + baselines, arrays for the figure)
    figure: Hook | None = None  # (HeldOut, its arrays, plots folder) -> list of PNG paths written
    science_check: Hook | None = None  # (ScienceSetup) -> ScienceRow: enhanced vs base on its own metric

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise VCellError(f"enhancement name {self.name!r} must be a Python identifier (it is a config key)")
        unknown = set(self.needs) - NEED_KINDS
        if unknown:
            raise VCellError(f"enhancement '{self.name}': unknown needs {sorted(unknown)}",
                             hint=f"choose from {', '.join(sorted(NEED_KINDS))}")

    @property
    def standalone(self) -> bool:
        """Whether it makes a catalogue model on its own (it needs no other enhancement)."""
        return not self.requires


_registered: dict[str, Enhancement] = {}
_builtins_loaded = False


def register_enhancement(enhancement: Enhancement, *, replace: bool = False) -> Enhancement:
    """Add `enhancement` after those registered so far (install order = registration order)."""
    load_builtins()
    return _add(enhancement, replace)


def _add(enhancement: Enhancement, replace: bool) -> Enhancement:
    name = enhancement.name
    if name in _registered and not replace:
        raise VCellError(f"enhancement '{name}' is already registered", hint="pass replace=True to redefine it")
    missing = [other for other in enhancement.requires if other not in _registered]
    if missing:
        raise VCellError(f"enhancement '{name}' requires {missing}, which are not registered before it")
    _registered[name] = enhancement
    return enhancement


def unregister_enhancement(name: str) -> None:
    """Remove a registered enhancement (tests, notebooks); built-ins another one requires cannot go."""
    dependants = [other.name for other in _registered.values() if name in other.requires]
    if dependants:
        raise VCellError(f"enhancement '{name}' is required by {dependants}")
    _registered.pop(name, None)


def load_builtins() -> None:
    """Register the built-in enhancements (once): importing their package registers them."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        package = importlib.import_module(BUILTIN_PACKAGE)
        for enhancement in package.BUILTIN:
            if enhancement.name not in _registered:
                _add(enhancement, replace=False)


def enhancements() -> dict[str, Enhancement]:
    """Every registered enhancement by name, in install order (a copy)."""
    load_builtins()
    return dict(_registered)


def get_enhancement(name: str) -> Enhancement:
    registered = enhancements()
    if name not in registered:
        raise VCellError(f"unknown enhancement '{name}'", hint=f"choose from {', '.join(registered)}")
    return registered[name]


def resolve(hook: Hook) -> Callable[..., Any]:
    """The callable behind a hook ("package.module:function" is imported now)."""
    if callable(hook):
        return hook
    module, _, attribute = hook.partition(":")
    return getattr(importlib.import_module(module), attribute)


T = TypeVar("T")


class RegistryView(Mapping[str, T]):
    """A read-only mapping recomputed from the registry on every access, so a name imported once
    (`CATALOGUE`, `NEEDS`, `CHECKS`) also sees enhancements registered later."""

    def __init__(self, compute: Callable[[], Mapping[str, T]]) -> None:
        self._compute = compute

    def __getitem__(self, key: str) -> T:
        return self._compute()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._compute())

    def __len__(self) -> int:
        return len(self._compute())

    def __repr__(self) -> str:
        return repr(dict(self._compute()))
