"""Train / validation / test assignment of an atlas's cells, reproducible and recorded.

Held-out groups are applied first (every cell of a held-out perturbation, time point or
dataset goes to its split, so no trace of it reaches training); the remaining cells are
split at random with a seeded stream drawn in fixed chunks of cells, so the assignment
costs one byte per cell and never depends on how the atlas is sharded. `save_split` writes
the codes and a summary beside a run; `load_split` re-reads them and checks they match.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from vcell.atlas.store import Atlas
from vcell.config.schema import HoldoutConfig, SplitConfig
from vcell.data.reader import AtlasReader
from vcell.errors import VCellError
from vcell.files import atomic_write

SPLITS = ("train", "val", "test")
SPLIT_STREAM = 303
RANDOM_CHUNK = 1 << 20


def needs_split(config: SplitConfig) -> bool:
    return bool(config.val_fraction or config.test_fraction or config.holdout)


def assign_splits(atlas: Atlas, config: SplitConfig) -> np.ndarray | None:
    """(n_cells,) uint8 codes (0 train, 1 val, 2 test); None when every cell is training."""
    if not needs_split(config):
        return None
    codes = np.zeros(atlas.n_cells, dtype=np.uint8)
    for chunk, start in enumerate(range(0, atlas.n_cells, RANDOM_CHUNK)):
        draws = np.random.default_rng([config.seed, SPLIT_STREAM, chunk]).random(min(RANDOM_CHUNK, atlas.n_cells - start))
        part = codes[start: start + len(draws)]
        part[draws < config.val_fraction] = 1
        part[(draws >= config.val_fraction) & (draws < config.val_fraction + config.test_fraction)] = 2
    for holdout in config.holdout:
        for code, groups in ((1, holdout.val), (2, holdout.test)):
            if groups:
                codes[held_out_cells(atlas, holdout, groups)] = code
    return codes


def held_out_cells(atlas: Atlas, holdout: HoldoutConfig, groups: list) -> np.ndarray:
    """Boolean mask of the cells whose `holdout.column` value is one of `groups`."""
    known = atlas.attrs["obs_columns"]
    if holdout.column not in known:  # e.g. a config written for perturbation screens, on an atlas without any
        raise VCellError(
            f"loader.split.holdout: column '{holdout.column}' is not an obs column of {atlas.path}",
            hint=f"set loader.split.holdout=[] to hold out no group, or name one of its columns: {', '.join(sorted(known))}",
        )
    reader = AtlasReader(atlas, [holdout.column])
    values = reader.read_labels(holdout.column)
    if reader.kinds[holdout.column] == "category":
        categories = atlas.attrs["obs_categories"][holdout.column]
        unknown = [g for g in groups if str(g) not in categories]
        if unknown:
            raise VCellError(
                f"loader.split.holdout: {unknown} are not values of obs column '{holdout.column}' in {atlas.path}",
                hint=f"values include: {', '.join(categories[:20])}" + (" ..." if len(categories) > 20 else ""),
            )
        wanted = [categories.index(str(g)) for g in groups]
    else:
        try:
            wanted = [float(g) for g in groups]
        except ValueError:
            raise VCellError(f"loader.split.holdout: column '{holdout.column}' is numeric; {groups} are not numbers") from None
        missing = [g for g in wanted if not np.any(values == g)]
        if missing:
            raise VCellError(f"loader.split.holdout: no cell has {holdout.column} = {missing} in {atlas.path}")
    return np.isin(values, wanted)


def split_summary(codes: np.ndarray | None, n_cells: int, config: SplitConfig) -> dict:
    counts = np.bincount(codes, minlength=3) if codes is not None else np.array([n_cells, 0, 0])
    return {
        "cells": {name: int(count) for name, count in zip(SPLITS, counts)},
        "config": config.model_dump(),
        "sha256": hashlib.sha256(codes.tobytes()).hexdigest() if codes is not None else None,
    }


def save_split(directory: str | Path, codes: np.ndarray | None, summary: dict) -> None:
    """Write split.json (+ split_codes.npy) atomically into `directory`."""
    directory = Path(directory)
    if codes is not None:
        atomic_write(directory / "split_codes.npy", lambda handle: np.save(handle, codes))
    atomic_write(directory / "split.json", lambda handle: handle.write(json.dumps(summary, indent=2).encode()))


def load_split(directory: str | Path) -> tuple[np.ndarray | None, dict]:
    """Codes and summary saved by `save_split`; an error if they were altered."""
    directory = Path(directory)
    summary_path = directory / "split.json"
    if not summary_path.is_file():
        raise VCellError(f"{summary_path}: no recorded split", hint="the run was made before splits were recorded, or the path is wrong")
    summary = json.loads(summary_path.read_text())
    if summary["sha256"] is None:
        return None, summary
    codes = np.load(directory / "split_codes.npy", allow_pickle=False)
    if hashlib.sha256(codes.tobytes()).hexdigest() != summary["sha256"]:
        raise VCellError(f"{directory}/split_codes.npy does not match split.json (checksum differs); the run directory is damaged")
    return codes, summary
