"""A whole split in memory, for small atlases: learning checks, evaluation, notebooks.

    cells = load_cells("atlas.zarr", loader_config, "test")   # dict of tensors, one row per cell
    for batch in batches_of(cells, 512): ...

Rows come through the streaming loader (same normalisation, labels and counts as training),
in atlas order, without the padding that tops up a last batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from vcell.atlas.store import Atlas, open_atlas
from vcell.config.schema import LoaderConfig
from vcell.data.loader import AtlasLoader
from vcell.data.split import SPLITS, assign_splits
from vcell.errors import VCellError


def load_cells(atlas: str | Path | Atlas, config: LoaderConfig, split: str) -> dict[str, torch.Tensor]:
    """Every cell of `split` as one dict of tensors (dense `x`), sorted by atlas row.

    A split smaller than `config.batch_size` (a small held-out set) is read in one batch of its
    own size: the loader's batch size is a training setting, not a reason to refuse to load.
    """
    if split not in SPLITS:
        raise VCellError(f"split '{split}' is not one of {', '.join(SPLITS)}")
    atlas = atlas if isinstance(atlas, Atlas) else open_atlas(atlas)
    codes = assign_splits(atlas, config.split)
    if codes is None:  # no split configured: every cell is training
        n_cells = atlas.n_cells if split == "train" else 0
    else:
        n_cells = int((codes == SPLITS.index(split)).sum())
    if n_cells == 0:
        raise VCellError(f"the '{split}' split of {atlas.path} has no cells",
                         hint="raise loader.split's fraction for it, or hold out a group of cells for it")
    batch_size = min(config.batch_size, n_cells)
    config = config.model_copy(update={"sparse": False, "remainder": "pad", "batch_size": batch_size})
    loader = AtlasLoader(atlas, config, split, rank=0, world_size=1, shuffle=False, split_codes=codes)
    parts = [batch for batch in loader]
    cells = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    keep = cells.pop("valid")
    order = torch.argsort(cells["cell_index"][keep])
    return {key: value[keep][order] for key, value in cells.items()}


def batches_of(cells: dict[str, torch.Tensor], size: int) -> Iterator[dict[str, torch.Tensor]]:
    n = len(cells["x"])
    for start in range(0, n, size):
        yield {key: value[start : start + size] for key, value in cells.items()}


def select(cells: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    return {key: value[rows] for key, value in cells.items()}
