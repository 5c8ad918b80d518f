"""Saved runs read as the runs they were: every config key is either known to older runs or declared.

A run's config.yaml holds every key vcell had when it was written; a key added later is absent there
and the run is read with the key's default (`vcell.train.run.read_saved_config`). A default that
changes what the model computes would silently load an older model as another one, so each new key
needs a decision (see the header of saved_keys.txt) and these tests make it impossible to skip.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from vcell.config.loader import dump_config
from vcell.config.schema import VCellConfig
from vcell.train.run import BEFORE_THE_KEY, as_saved
from vcell.trees import flatten

KNOWN = Path(__file__).with_name("saved_keys.txt")


def saved_keys() -> dict[str, object]:
    """Dotted key -> default of every key a run saved with vcell's defaults holds."""
    return flatten(yaml.safe_load(dump_config(VCellConfig())))


def known_keys() -> set[str]:
    lines = (line.strip() for line in KNOWN.read_text().splitlines())
    return {line for line in lines if line and not line.startswith("#")}


def without(tree: dict, dotted: str) -> dict:
    """`tree` with the leaf `dotted` removed (in place), as a run saved before the key lacks it."""
    *sections, leaf = dotted.split(".")
    node = tree
    for section in sections:
        node = node[section]
    del node[leaf]
    return tree


def test_every_saved_key_is_known_or_declared():
    new = sorted(set(saved_keys()) - known_keys())
    assert not new, (
        f"config keys a run saved before them lacks: {new}. If a key's default changes what vcell computed "
        f"without it, add it to BEFORE_THE_KEY (vcell/train/run.py) with the value that does; then list it in {KNOWN}"
    )


def test_the_known_keys_hold_no_key_vcell_no_longer_has():
    # a stale line would let a removed key come back later, with another meaning, unexamined
    assert not sorted(known_keys() - set(saved_keys()))


def test_a_run_saved_before_each_declared_key_reads_as_it_was():
    defaults = saved_keys()
    for key, value in BEFORE_THE_KEY.items():
        assert key in defaults, f"BEFORE_THE_KEY names {key}, which no config has"
        assert defaults[key] != value, f"{key}: its default already does what runs before it did; drop it from BEFORE_THE_KEY"
        older = without(yaml.safe_load(dump_config(VCellConfig())), key)
        assert flatten(VCellConfig.model_validate(as_saved(older)).model_dump(mode="json"))[key] == value
