"""The search space of a campaign: checked against the config tree, then turned into Ray Tune domains.

    space = parse_space(config)             # every key and value checked; VCellError names the bad one
    domains = space.tune_domains()          # {"train.learning_rate": tune.loguniform(...), ...}
    trial = apply_values(base_tree, {"train.learning_rate": 3e-4})   # one trial's config tree

Keys are dotted paths of the same tree `vcell train` reads. A key that would make trials
incomparable or fight over resources (the atlas, its split, scaling, W&B, evaluation, the
campaign itself) cannot be searched. Every value a distribution can produce is validated
before any trial runs: both bounds of a range and a point inside it (which also catches a
float range on a whole-number key), every listed choice.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from vcell.config.loader import allowed_keys, section_model
from vcell.config.schema import VCellConfig
from vcell.errors import VCellError

# prefix -> why it cannot be searched
FIXED = {
    "name": "the campaign names its trials",
    "tune.": "the campaign's own settings are not searched",
    "scaling.": "every trial gets the same resources, so trials never starve each other",
    "data.": "every trial trains on the same atlas",
    "loader.split.": "every trial must be scored on the same held-out cells",
    "wandb.": "logging settings are the campaign's",
    "evaluate.": "every trial must be scored the same way",
}
LISTED = ("choice", "grid")
# train keys a PBT exploit may change when a trial continues from another trial's checkpoint
# (anything that changes shapes, steps or the data order cannot continue a checkpoint)
PBT_MUTABLE = ("train.learning_rate", "train.weight_decay", "train.gradient_clip", "train.final_lr_fraction")


@dataclass(frozen=True)
class Dimension:
    key: str
    kind: str  # choice | grid | uniform | loguniform | int
    values: tuple

    @property
    def listed(self) -> bool:
        return self.kind in LISTED

    def tune_domain(self, as_grid: bool = False):
        from ray import tune

        if self.kind == "grid" or (as_grid and self.kind == "choice"):
            return tune.grid_search(list(self.values))
        low, high = (self.values + (None, None))[:2]
        return {
            "choice": lambda: tune.choice(list(self.values)),
            "uniform": lambda: tune.uniform(low, high),
            "loguniform": lambda: tune.loguniform(low, high),
            "int": lambda: tune.randint(low, high + 1),  # ours is inclusive, Tune's upper bound is not
        }[self.kind]()


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]

    @property
    def keys(self) -> list[str]:
        return [dimension.key for dimension in self.dimensions]

    def tune_domains(self, search: str = "random") -> dict[str, Any]:
        return {d.key: d.tune_domain(as_grid=search == "grid") for d in self.dimensions}

    def grid_size(self, search: str = "random") -> int:
        """Combinations of the values that run whole (grid keys; with search=grid, choices too)."""
        return math.prod(len(d.values) for d in self.dimensions if d.kind == "grid" or (search == "grid" and d.listed))

    def pbt_mutations(self) -> dict[str, Any]:
        """The domains PBT may re-draw when it copies a trial (train keys that can continue a checkpoint)."""
        return {d.key: Dimension(d.key, "choice" if d.listed else d.kind, d.values).tune_domain()
                for d in self.dimensions if d.key in PBT_MUTABLE}


def leaf_field(key: str):
    """The pydantic field at a dotted key, or a VCellError naming the closest real key."""
    parts = key.split(".")
    section = section_model(VCellConfig, parts[:-1])
    if section is None or parts[-1] not in allowed_keys(section):
        where = section or VCellConfig
        for depth in range(len(parts) - 1):  # the deepest section that exists, for the suggestion
            model = section_model(VCellConfig, parts[: depth + 1])
            if model is None:
                break
            where = model
        close = difflib.get_close_matches(parts[-1], list(allowed_keys(where)), n=1)
        hint = f"did you mean '{'.'.join(parts[:-1] + [close[0]])}'?" if close else "see `vcell train --print-config`"
        raise VCellError(f"tune.space: '{key}' is not a key of the config tree", hint=hint)
    annotation = allowed_keys(section)[parts[-1]]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        raise VCellError(f"tune.space: '{key}' is a section, not a value", hint="search one of its keys")
    return section.model_fields[parts[-1]]


def apply_values(tree: dict, values: dict[str, Any]) -> dict:
    """A copy of the config `tree` with each dotted key set to its value."""
    tree = copy.deepcopy(tree)
    for key, value in values.items():
        node = tree
        *sections, leaf = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return tree


def check_value(base: dict, key: str, value: Any, what: str) -> None:
    try:
        VCellConfig.model_validate(apply_values(base, {key: value}))
    except ValidationError as error:
        problem = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        raise VCellError(f"tune.space: '{key}' {what} {value!r} is not allowed: {problem}") from None


def parse_dimension(base: dict, key: str, entry: dict[str, Any]) -> Dimension:
    kind, values = next(iter(entry.items()))
    if not isinstance(values, list) or not values:
        shape = "[low, high]" if kind not in LISTED else "a non-empty list of values"
        raise VCellError(f"tune.space: '{key}': {kind} needs {shape}, got {values!r}")
    if kind in LISTED:
        for value in values:
            check_value(base, key, value, f"{kind} value")
        return Dimension(key, kind, tuple(values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise VCellError(f"tune.space: '{key}': {kind} needs two numbers [low, high], got {values!r}")
    low, high = values
    if kind == "int" and not all(float(v).is_integer() for v in values):
        raise VCellError(f"tune.space: '{key}': int bounds must be whole numbers, got {values!r}")
    if not low < high:
        raise VCellError(f"tune.space: '{key}': {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise VCellError(f"tune.space: '{key}': loguniform needs positive bounds, got [{low}, {high}]",
                         hint="use uniform for a range that includes 0 or negative values")
    inside = round(low + 0.37 * (high - low)) if kind == "int" else low + 0.37 * (high - low)
    for value, what in ((low, "lower bound"), (high, "upper bound"), (inside, "value (inside the range)")):
        check_value(base, key, int(value) if kind == "int" else value, f"{kind} {what}")
    return Dimension(key, kind, (int(low), int(high)) if kind == "int" else (float(low), float(high)))


def parse_space(config: VCellConfig) -> SearchSpace:
    """The campaign's space, every key and value checked (see module doc); VCellError on the first problem."""
    settings = config.tune
    if not settings.space:
        raise VCellError("tune.space is empty: nothing to search",
                         hint="add e.g. `train.learning_rate: {loguniform: [1.0e-4, 3.0e-3]}` under tune.space")
    base = config.model_dump(mode="json")
    base.pop("tune")
    dimensions = []
    for key, entry in settings.space.items():
        for prefix, reason in FIXED.items():
            if key == prefix or key.startswith(prefix):
                raise VCellError(f"tune.space: '{key}' cannot be searched: {reason}",
                                 hint="set it in the campaign's config instead")
        leaf_field(key)
        dimensions.append(parse_dimension(base, key, entry))
    space = SearchSpace(tuple(dimensions))
    check_search(space, settings.search, settings.scheduler.name)
    return space


def check_search(space: SearchSpace, search: str, scheduler: str) -> None:
    grids = [d.key for d in space.dimensions if d.kind == "grid"]
    ranges = [d.key for d in space.dimensions if not d.listed]
    if search == "grid" and ranges:
        raise VCellError(f"tune.search=grid needs a list of values for every key; {', '.join(ranges)} "
                         "is a range", hint="use {grid: [...]} or {choice: [...]}, or tune.search=random")
    if search == "optuna" and grids:
        raise VCellError(f"tune.search=optuna samples every key; {', '.join(grids)} is a grid",
                         hint="use {choice: [...]} with Optuna, or tune.search=random to run the grid")
    if scheduler == "pbt":
        if search == "optuna":
            raise VCellError("tune.scheduler.name=pbt explores by itself: it cannot follow Optuna",
                             hint="use tune.search=random with PBT")
        if not space.pbt_mutations():
            raise VCellError(f"tune.scheduler.name=pbt needs at least one key it may mutate mid-run: "
                             f"{', '.join(PBT_MUTABLE)}", hint="add one of them to tune.space")
