"""The cells an evaluation scores: held-out cells, a reference sample of training cells, truth.

    data = held_out_cells(trained, "data/demo.zarr", max_cells=10000)
    data.test["x"], data.test["cell_type"], data.train["x"]      # dicts of tensors, one row per cell

On the training atlas the split is the run's own (recomputed from the config, exactly as the
loader assigned it): test cells, else validation cells, are the held-out set; a seeded sample
of training cells is the reference that baselines (PCA, mean perturbation, nearest time
point) and kNN classifiers are fitted on. Any other atlas is all new to the model: its cells
are split in half, seeded, into reference and held-out. A simulator atlas brings its truth.

Attribute names match the learning checks' setup (`science.ScienceSetup`), so their helpers
(basal cells by type, true expression, kinetics) work on either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vcell.atlas.store import open_atlas
from vcell.atlas.synth_truth import Truth
from vcell.data.split import assign_splits
from vcell.evaluate.cells import CellStream, open_cells
from vcell.evaluate.export import Trained

log = logging.getLogger(__name__)
SAMPLE_STREAM = 11


@dataclass
class HeldOut:
    trained: Trained
    atlas: Path
    train: dict[str, torch.Tensor]  # reference sample of training cells (model-coded labels)
    test: dict[str, torch.Tensor]  # held-out cells
    test_obs: pd.DataFrame
    categories: dict[str, list[str]]  # the model's categories per obs column
    truth: Truth | None = None
    truth_order: np.ndarray | None = None  # truth gene index of each model gene
    seed: int = 0
    notes: list[str] = field(default_factory=list)
    description: dict = field(default_factory=dict)

    @property
    def model(self):
        return self.trained.model

    def truth_obsm(self, key: str) -> np.ndarray | None:
        """(n held-out, k) a per-cell truth array the simulator stored in the shards' obsm, if any."""
        import zarr

        atlas = open_atlas(self.atlas)
        groups = [zarr.open_group(str(self.atlas / "shards" / shard["name"] / "obsm"), mode="r") for shard in atlas.shards]
        if not all(key in group for group in groups):
            return None
        return np.concatenate([group[key][...] for group in groups])[self.test["cell_index"].numpy()]

    def column(self, role: str) -> str | None:
        """The obs column the model reads for a role (context, perturbation, time, history)."""
        return getattr(self.trained.config.model.columns, role)

    def code(self, role: str, name: str) -> int | None:
        column = self.column(role)
        names = self.categories.get(column or "", [])
        return names.index(name) if name in names else None


def sample_rows(candidates: np.ndarray, limit: int, seed: int, stream: int) -> np.ndarray:
    """Up to `limit` of the candidate rows, uniformly at random (seeded), sorted."""
    if len(candidates) <= limit:
        return candidates
    rng = np.random.default_rng([seed, SAMPLE_STREAM, stream])
    return np.sort(rng.choice(candidates, size=limit, replace=False))


def read_cells(atlas: Path, trained: Trained, rows: np.ndarray, batch_size: int = 2048,
               counts: bool = False) -> tuple[dict[str, torch.Tensor], CellStream]:
    """The chosen atlas rows in memory (model inputs, `cell_index` = atlas row), and their stream
    (its obs and warnings); `counts`: with the atlas's raw counts whether or not the model reads them."""
    stream = open_cells(atlas, trained, rows=rows, counts=counts)
    parts = [batch for _, batch in stream.batches(batch_size)]
    cells = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    cells["cell_index"] = torch.as_tensor(rows)
    return cells, stream


def held_out_cells(trained: Trained, atlas: str | Path | None = None, *, max_cells: int = 10000, seed: int = 0) -> HeldOut:
    """Held-out and reference cells of `atlas` (default: the run's training atlas)."""
    config = trained.config
    atlas_path = Path(atlas or config.data.atlas)
    opened = open_atlas(atlas_path)
    notes: list[str] = []
    same_atlas = atlas is None or atlas_path.resolve() == Path(config.data.atlas).resolve()
    if same_atlas:
        codes = assign_splits(opened, config.loader.split)
        if codes is None or not (codes > 0).any():
            raise_no_held_out(atlas_path)
        held_out_code = 2 if (codes == 2).any() else 1
        if held_out_code == 1:
            notes.append("the run has no test split: validation cells are the held-out set")
        held_out, reference = np.flatnonzero(codes == held_out_code), np.flatnonzero(codes == 0)
    else:
        halves = np.random.default_rng([seed, SAMPLE_STREAM, 0]).random(opened.n_cells) < 0.5
        held_out, reference = np.flatnonzero(~halves), np.flatnonzero(halves)
        notes.append(f"{atlas_path} is not the training atlas: half its cells (seeded) are the reference for "
                     "baselines and kNN, the other half are scored")
    test_rows = sample_rows(held_out, max_cells, seed, 1)
    train_rows = sample_rows(reference, max_cells, seed, 2)
    if len(test_rows) < len(held_out):
        notes.append(f"scored a random {len(test_rows):,} of {len(held_out):,} held-out cells")
    log.info("reading %d held-out and %d reference cells of %s", len(test_rows), len(train_rows), atlas_path)
    # raw counts for every model (where the atlas has them): the count baselines score Gaussian models too
    test, stream = read_cells(atlas_path, trained, test_rows, counts=True)
    data = HeldOut(
        trained, atlas_path, read_cells(atlas_path, trained, train_rows, counts=True)[0], test, stream.obs, trained.categories, seed=seed, notes=notes + stream.warnings,
        description={"atlas": str(atlas_path), "held_out_cells": int(len(test_rows)),
                     "held_out_available": int(len(held_out)), "reference_cells": int(len(train_rows)),
                     "held_out_split": "test" if same_atlas and held_out_code == 2 else ("val" if same_atlas else "half")},
    )
    attach_truth(data, opened)
    return data


def raise_no_held_out(atlas: Path) -> None:
    from vcell.errors import VCellError

    raise VCellError(f"the run trained on every cell of {atlas}: nothing is held out to evaluate on",
                     hint="evaluate on another atlas (--atlas PATH), or train with loader.split.test_fraction > 0")


def attach_truth(data: HeldOut, opened) -> None:
    """The simulator's truth, when the atlas has it, with the model's genes mapped into it."""
    if "truth" not in opened.root:
        data.notes.append("no simulator truth in this atlas: metrics against the truth are skipped")
        return
    from vcell.atlas.synth_store import open_truth

    truth = open_truth(data.atlas)
    position = {gene: index for index, gene in enumerate(truth.gene_ids.tolist())}
    genes = data.model.spec.gene_ids
    if any(gene not in position for gene in genes):
        data.notes.append("the model's genes are not all simulator genes: metrics against the truth are skipped")
        return
    data.truth, data.truth_order = truth, np.array([position[gene] for gene in genes])
