"""Nested dicts (config trees, metrics, DeepSpeed JSON): flatten to dotted keys, deep-merge.

    flatten({"a": {"b": 1}, "c": 2})                  # {"a.b": 1, "c": 2}
    merge_trees({"a": {"b": 1}}, {"a": {"c": 2}})     # {"a": {"b": 1, "c": 2}} (a new dict)

One copy of each, used by the config loader, runs, DeepSpeed configs and campaigns.
"""

from __future__ import annotations

import copy
from collections.abc import Callable


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """Dotted key -> leaf value; an empty dict is a leaf (it stays visible in a diff)."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def merge_trees(base: dict, overrides: dict, on_set: Callable[[str], None] | None = None, prefix: str = "") -> dict:
    """A copy of `base` with `overrides` applied: nested dicts merge, anything else replaces.

    `on_set(dotted_key)` is called for every key `overrides` sets, sections included (the config
    loader records which file set each key)."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_trees(merged[key], value, on_set, f"{dotted}.")
        else:
            merged[key] = copy.deepcopy(value)
        if on_set is not None:
            on_set(dotted)
    return merged
