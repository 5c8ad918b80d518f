"""The enhancements, the rules for combining them, and the twelve named models (no torch here).

One place says which combinations are valid and in which order enhancements are installed;
the config validates against it and the model builder calls it again, so an invalid set can
never reach a training worker.

    check_enhancements(["memory", "temporal"])   # -> ("temporal", "memory")
    CATALOGUE["stochastic+resource"]             # -> ("stochastic", "resource")
"""

from __future__ import annotations

from collections.abc import Iterable

from vcell.errors import VCellError

# Install order: encoders before the encoder wrapper that fuses them (multiscale), dynamics
# before the memory that conditions them, heads (stochastic likelihood, resource mean) any time.
ORDER = ("hierarchical", "temporal", "regulatory", "stochastic", "resource", "multiscale", "memory")

SUMMARIES = {
    "hierarchical": "gene -> pathway -> compartment layers from annotations; pathway/compartment activity per cell",
    "temporal": "latent ODE of the response to a stimulus; predicts unseen times, per-gene half-times",
    "regulatory": "perturbation effects travel along a GRN prior over k steps; learned edge weights",
    "stochastic": "variational latent + negative-binomial counts; dispersion, intrinsic/extrinsic variance",
    "resource": "expression = capacity x allocation (genes compete for a finite pool); capacity per cell",
    "multiscale": "gene-, pathway- and cell-level views fused by gates, a loss at each scale",
    "memory": "recurrent memory of earlier stimuli conditions the dynamics (hysteresis)",
}

# enhancement -> (enhancements it cannot work without, why)
REQUIRES = {"memory": (("temporal",), "the memory state conditions the temporal dynamics; without them it acts on nothing")}

CATALOGUE: dict[str, tuple[str, ...]] = {
    "base": (),
    "hierarchical": ("hierarchical",),
    "temporal": ("temporal",),
    "regulatory": ("regulatory",),
    "stochastic": ("stochastic",),
    "resource": ("resource",),
    "multiscale": ("multiscale",),
    "hierarchical+temporal": ("hierarchical", "temporal"),
    "temporal+memory": ("temporal", "memory"),
    "stochastic+resource": ("stochastic", "resource"),
    "hierarchical+regulatory": ("hierarchical", "regulatory"),
    "full": ORDER,
}

TITLES = {
    "base": "Base (masked-expression autoencoder)",
    "hierarchical": "Hierarchical",
    "temporal": "Temporal dynamics",
    "regulatory": "Regulatory-constrained",
    "stochastic": "Stochastic",
    "resource": "Resource-constrained",
    "multiscale": "Multi-scale",
    "hierarchical+temporal": "Hierarchical + Temporal",
    "temporal+memory": "Temporal + Memory",
    "stochastic+resource": "Stochastic + Resource",
    "hierarchical+regulatory": "Hierarchical + Regulatory",
    "full": "Full virtual cell (all enhancements)",
}


def check_enhancements(names: Iterable[str]) -> tuple[str, ...]:
    """The enhancements in install order, or a VCellError saying what is wrong and how to fix it."""
    names = list(names)
    unknown = [name for name in names if name not in ORDER]
    if unknown:
        raise VCellError(
            f"model.enhancements: unknown enhancement(s) {unknown}",
            hint=f"choose from {', '.join(ORDER)} (or name a catalogue model: {', '.join(CATALOGUE)})",
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise VCellError(f"model.enhancements: {repeated} listed more than once", hint="list each enhancement once")
    for name in names:
        needed, why = REQUIRES.get(name, ((), ""))
        missing = [other for other in needed if other not in names]
        if missing:
            raise VCellError(
                f"model.enhancements: '{name}' needs {missing}: {why}",
                hint=f"add {missing} (e.g. the catalogue model 'temporal+memory') or drop '{name}'",
            )
    return tuple(name for name in ORDER if name in names)


def catalogue_enhancements(name: str) -> tuple[str, ...]:
    if name not in CATALOGUE:
        raise VCellError(f"model.name: '{name}' is not a catalogue model", hint=f"choose from {', '.join(CATALOGUE)}")
    return CATALOGUE[name]


# What each enhancement needs from the data, checked against the atlas before training starts:
# counts (raw counts in the batch), obs columns by role (model.columns), annotation files.
NEEDS: dict[str, frozenset[str]] = {
    "hierarchical": frozenset({"gene_sets"}),
    "temporal": frozenset({"time"}),
    "regulatory": frozenset({"grn"}),
    "stochastic": frozenset({"counts"}),
    "resource": frozenset({"counts"}),
    "multiscale": frozenset({"gene_sets"}),
    "memory": frozenset({"time", "history"}),
}
