"""The catalogue of named models, and the rules for combining enhancements (no torch here).

Derived from the registry (`vcell.models.registry`): the install order is the registration
order, the requirements are each enhancement's own. One place says which combinations are
valid; the config validates against it and the model builder calls it again, so an invalid set
can never reach a training worker.

    check_enhancements(["memory", "temporal"])   # -> ("temporal", "memory")
    CATALOGUE["stochastic+resource"]             # -> ("stochastic", "resource")

The catalogue: `base`, one model per enhancement that stands alone, the named combinations
below, and `full` (every registered enhancement).
"""

from __future__ import annotations

from collections.abc import Iterable

from vcell.errors import VCellError
from vcell.models.registry import RegistryView, enhancements

BASE_TITLE = "Base (masked-expression autoencoder)"
FULL_TITLE = "Full virtual cell (all enhancements)"

# name -> (enhancements, title): the combinations the product brief names
COMBINATIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "hierarchical+temporal": (("hierarchical", "temporal"), "Hierarchical + Temporal"),
    "temporal+memory": (("temporal", "memory"), "Temporal + Memory"),
    "stochastic+resource": (("stochastic", "resource"), "Stochastic + Resource"),
    "hierarchical+regulatory": (("hierarchical", "regulatory"), "Hierarchical + Regulatory"),
}


def enhancement_order() -> tuple[str, ...]:
    """Install order: encoders before the encoder wrapper that fuses them (multiscale), dynamics
    before the memory that conditions them, heads any time (the order they were registered in)."""
    return tuple(enhancements())


def catalogue() -> dict[str, tuple[str, ...]]:
    """Catalogue name -> its enhancements in install order."""
    registered = enhancements()
    singles = {name: (name,) for name, enhancement in registered.items() if enhancement.standalone}
    combinations = {name: members for name, (members, _) in COMBINATIONS.items()}
    return {"base": (), **singles, **combinations, "full": tuple(registered)}


def titles() -> dict[str, str]:
    """Catalogue name -> title for people."""
    singles = {name: enhancement.title for name, enhancement in enhancements().items() if enhancement.standalone}
    combinations = {name: title for name, (_, title) in COMBINATIONS.items()}
    return {"base": BASE_TITLE, **singles, **combinations, "full": FULL_TITLE}


CATALOGUE = RegistryView(catalogue)
# What each enhancement needs from the data, checked against the atlas before training starts:
# counts (raw counts in the batch), obs columns by role (model.columns), annotation files.
NEEDS = RegistryView(lambda: {name: enhancement.needs for name, enhancement in enhancements().items()})


def check_enhancements(names: Iterable[str]) -> tuple[str, ...]:
    """The enhancements in install order, or a VCellError saying what is wrong and how to fix it."""
    names = list(names)
    registered = enhancements()
    unknown = [name for name in names if name not in registered]
    if unknown:
        raise VCellError(
            f"model.enhancements: unknown enhancement(s) {unknown}",
            hint=f"choose from {', '.join(registered)} (or name a catalogue model: {', '.join(catalogue())})",
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise VCellError(f"model.enhancements: {repeated} listed more than once", hint="list each enhancement once")
    for name in names:
        enhancement = registered[name]
        missing = [other for other in enhancement.requires if other not in names]
        if missing:
            example = next((model for model, members in catalogue().items() if set(members) == {*missing, name}), None)
            raise VCellError(
                f"model.enhancements: '{name}' needs {missing}: {enhancement.requires_why}",
                hint=f"add {missing}{f' (e.g. the catalogue model {example!r})' if example else ''} or drop '{name}'",
            )
    return tuple(name for name in registered if name in names)
