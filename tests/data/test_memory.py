"""`load_cells`: a whole split in memory, whatever the loader's training batch size."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.data.conftest import loader_config
from vcell.atlas.store import open_atlas
from vcell.data.memory import load_cells
from vcell.data.split import SPLITS, assign_splits
from vcell.errors import VCellError


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch_size=st.integers(1, 2000), test_fraction=st.floats(0.001, 0.3), split=st.sampled_from(SPLITS),
       seed=st.integers(0, 5))
def test_every_cell_of_the_split_once_in_atlas_order(atlas_path, reference, batch_size, test_fraction, split, seed):
    """Including splits smaller than the batch (the pbmc68k benchmark's held-out 124 cells vs 128 crashed)."""
    config = loader_config(batch_size=batch_size, buffer_cells=max(256, batch_size),
                           split={"val_fraction": 0.1, "test_fraction": test_fraction, "seed": seed})
    codes = assign_splits(open_atlas(atlas_path), config.split)
    expected = np.flatnonzero(codes == SPLITS.index(split))
    if len(expected) == 0:
        with pytest.raises(VCellError, match=f"'{split}' split .* has no cells"):
            load_cells(atlas_path, config, split)
        return
    cells = load_cells(atlas_path, config, split)
    np.testing.assert_array_equal(cells["cell_index"].numpy(), expected)
    dense = np.asarray(reference.X[expected].todense(), dtype=np.float32)
    assert cells["x"].shape == (len(expected), reference.n_vars)
    assert np.isfinite(cells["x"].numpy()).all() and (cells["x"].numpy() >= 0).all()
    assert (cells["x"].numpy() > 0).sum(1).tolist() == (dense > 0).sum(1).tolist()


def test_without_a_split_every_cell_is_training(atlas_path):
    config = loader_config()
    assert len(load_cells(atlas_path, config, "train")["x"]) == open_atlas(atlas_path).n_cells
    with pytest.raises(VCellError, match="'test' split .* has no cells"):
        load_cells(atlas_path, config, "test")
