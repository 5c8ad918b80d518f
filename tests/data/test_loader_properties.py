"""Property-based checks of the whole loader on real atlases: any split size, shard size, block
size, batch size, buffer, rank count, threads or DataLoader workers and remainder policy.

Three atlases are built once (one shard; small shards; shards that do not divide the cell count);
the split being read is any subset of their cells (chosen by hypothesis), so one atlas stands for
every split size from one cell to all of them. Checked for each draw:
  - every cell of the split exactly once per epoch over all ranks ('pad'), or never twice and
    only the remainder missing ('drop'); the same number of batches on every rank;
  - each batch's rows are the cells it says (library size and label of the atlas row);
  - resuming at any batch from `state_dict()` gives the rest of the uninterrupted stream;
  - a split too small for one batch per rank is refused with a clear error, never a crash.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcell.atlas.anndata_source import AnnDataSource
from vcell.atlas.build import build_atlas
from vcell.atlas.store import open_atlas
from vcell.config.schema import BuildConfig, LoaderConfig
from vcell.data.datamodule import AtlasDataModule
from vcell.data.loader import AtlasLoader
from vcell.data.epoch_plan import Blocks
from vcell.data.reader import AtlasReader, read_window
from vcell.errors import VCellError

N_GENES = 12
ATLASES = {"one-shard": (1500, 4096), "small-shards": (1500, 97), "uneven-shards": (1301, 500)}


def write_atlas(directory, n_cells: int, shard_cells: int, seed: int):
    """A real atlas built from an h5ad of random counts with a categorical cell_type."""
    rng = np.random.default_rng(seed)
    matrix = sp.random(n_cells, N_GENES, density=0.4, format="csr", random_state=rng, dtype=np.float32)
    matrix.data = rng.integers(1, 50, matrix.nnz).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["a", "b", "c"], n_cells))},
                       index=[f"cell{i}" for i in range(n_cells)])
    ad.AnnData(matrix, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(N_GENES)])).write_h5ad(directory / "in.h5ad")
    return build_atlas([AnnDataSource(directory / "in.h5ad")], directory / "atlas.zarr",
                       BuildConfig(shard_cells=shard_cells), progress=False)


@pytest.fixture(scope="module")
def atlases(tmp_path_factory):
    """name -> (path, library size per atlas row, cell-type code per atlas row)."""
    built = {}
    for seed, (name, (n_cells, shard_cells)) in enumerate(ATLASES.items()):
        path = write_atlas(tmp_path_factory.mktemp(name), n_cells, shard_cells, seed)
        atlas = open_atlas(path)
        library = np.concatenate([np.asarray(ad.read_zarr(path / "shards" / s["name"]).X.sum(axis=1)).ravel()
                                  for s in atlas.shards])
        built[name] = (path, library, AtlasReader(atlas, ["cell_type"]).read_labels("cell_type"))
    return built


@st.composite
def loader_setups(draw):
    name = draw(st.sampled_from(sorted(ATLASES)))
    n_cells = ATLASES[name][0]
    split_cells = draw(st.one_of(st.integers(1, 40), st.integers(1, n_cells)))
    threads, processes = draw(st.sampled_from([(0, 0), (0, 0), (1, 0), (2, 0), (0, 2)]))
    batch_size = draw(st.one_of(st.integers(1, 20), st.integers(20, 700)))
    config = LoaderConfig(
        batch_size=batch_size, block_cells=draw(st.one_of(st.integers(1, 40), st.integers(40, 2000))),
        buffer_cells=batch_size * draw(st.integers(1, 6)), remainder=draw(st.sampled_from(["pad", "drop"])),
        threads=threads, processes=processes, labels=["cell_type"], prefetch_batches=draw(st.integers(1, 3)),
    )
    return dict(
        name=name, config=config, world=draw(st.integers(1, 4)), seed=draw(st.integers(0, 1000)),
        members=pick_members(n_cells, split_cells, draw(st.integers(0, 2**16)), draw(st.booleans())),
        shuffle=draw(st.booleans()),
        stop_fraction=draw(st.floats(0, 1)),
    )


def pick_members(n_cells: int, split_cells: int, seed: int, scattered: bool) -> list[int]:
    """A split of `split_cells` cells: scattered at random, or one contiguous run (a held-out group)."""
    if scattered:
        return sorted(np.random.default_rng(seed).choice(n_cells, split_cells, replace=False).tolist())
    start = seed % (n_cells - split_cells + 1)
    return list(range(start, start + split_cells))


def split_codes(n_cells: int, members: list[int]) -> np.ndarray:
    codes = np.full(n_cells, 2, dtype=np.uint8)  # every other cell is in the test split
    codes[members] = 0
    return codes


def make_loader(path, setup: dict, rank: int) -> AtlasLoader:
    n_cells = ATLASES[setup["name"]][0]
    return AtlasLoader(path, setup["config"], "train", seed=setup["seed"], rank=rank, world_size=setup["world"],
                       shuffle=setup["shuffle"], split_codes=split_codes(n_cells, setup["members"]))


def read_epoch(loader: AtlasLoader, library: np.ndarray, cell_types: np.ndarray, limit: int | None = None):
    """(rows, valid) per batch; checks each batch's contents against the atlas row it names."""
    out = []
    for batch in loader:
        rows = batch["cell_index"].numpy()
        assert len(rows) == loader.config.batch_size
        np.testing.assert_allclose(batch["library_size"].numpy(), library[rows], rtol=1e-6)
        assert np.array_equal(batch["cell_type"].numpy(), cell_types[rows])
        out.append((rows.copy(), batch["valid"].numpy().copy()))
        if limit is not None and len(out) == limit:
            break
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(setup=loader_setups())
def test_exactly_once_correct_rows_and_resume_anywhere(atlases, setup):
    path, library, cell_types = atlases[setup["name"]]
    config, world, members = setup["config"], setup["world"], np.sort(setup["members"])
    if len(members) // world < config.batch_size:
        with pytest.raises(VCellError, match="larger than the .* cells"):
            make_loader(path, setup, 0)
        return
    epochs = [read_epoch(make_loader(path, setup, rank), library, cell_types) for rank in range(world)]
    assert len({len(batches) for batches in epochs}) == 1
    valid_rows = np.concatenate([rows[valid] for batches in epochs for rows, valid in batches])
    if config.remainder == "pad":
        assert np.array_equal(np.sort(valid_rows), members)
    else:
        assert len(np.unique(valid_rows)) == len(valid_rows) and np.isin(valid_rows, members).all()
        assert len(members) - len(valid_rows) < world * config.batch_size

    # Resume: stop rank `world - 1` after k batches, continue in a new loader from its state.
    rank, uninterrupted = world - 1, epochs[-1]
    stop_at = int(setup["stop_fraction"] * len(uninterrupted))
    interrupted = make_loader(path, setup, rank)
    consumed = read_epoch(interrupted, library, cell_types, limit=stop_at) if stop_at else []
    resumed = make_loader(path, setup, rank)
    resumed.load_state_dict(interrupted.state_dict())
    rest = read_epoch(resumed, library, cell_types) if stop_at < len(uninterrupted) else []
    assert len(consumed) + len(rest) == len(uninterrupted)
    for (rows, valid), (rows_again, valid_again) in zip(uninterrupted, consumed + rest):
        assert np.array_equal(rows, rows_again) and np.array_equal(valid, valid_again)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(ATLASES)), block_cells=st.integers(1, 3000), data=st.data())
def test_a_window_reads_any_rows_in_any_order(atlases, name, block_cells, data):
    """read_window (shared by the training stream and evaluation's sampled rows): repeats, rows
    out of order, rows that revisit a block, single rows."""
    path, library, cell_types = atlases[name]
    atlas = open_atlas(path)
    n_cells = atlas.n_cells
    rows = np.array(data.draw(st.lists(st.integers(0, n_cells - 1), min_size=1, max_size=300)), dtype=np.int64)
    blocks = Blocks.from_shards([s["start"] for s in atlas.shards], [s["n_cells"] for s in atlas.shards], block_cells)
    window, local = read_window(AtlasReader(atlas, ["cell_type"]), blocks, rows)
    matrix = sp.csr_matrix((window.data, window.indices, window.indptr), shape=(len(window.indptr) - 1, atlas.n_genes))
    np.testing.assert_allclose(np.asarray(matrix[local].sum(axis=1)).ravel(), library[rows], rtol=1e-6)
    assert np.array_equal(window.labels["cell_type"][local], cell_types[rows])


@pytest.mark.parametrize(("n_cells", "world"), [(700, 1), (2048, 1), (4096, 1), (3000, 2)])
def test_the_sizes_that_crashed_with_the_default_settings(tmp_path, n_cells, world):
    """Issue 15 item 1: the default loader (blocks of 2,048, buffer 16,384, batches of 256, 5% val
    and 5% test) crashed on these atlas sizes. Every rank reads its whole epoch of every split;
    validation and test splits smaller than a batch per rank are read in smaller batches."""
    path = write_atlas(tmp_path, n_cells, 4096, seed=n_cells)
    config = LoaderConfig(threads=0, split={"val_fraction": 0.05, "test_fraction": 0.05})
    modules = [AtlasDataModule(path, config, rank=rank, world_size=world) for rank in range(world)]
    for code, split in enumerate(("train", "val", "test")):
        loaders = [module.loader(split) for module in modules]
        assert len({len(loader) for loader in loaders}) == 1
        seen = np.concatenate([b["cell_index"][b["valid"]].numpy() for loader in loaders for b in loader])
        assert np.array_equal(np.sort(seen), np.flatnonzero(modules[0].split_codes == code))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(ATLASES)), val=st.floats(0, 0.4), test=st.floats(0, 0.4),
       holdout=st.sampled_from([None, ("val", "a"), ("test", "b"), ("test", "c")]), world=st.integers(1, 4),
       batch_size=st.sampled_from([1, 32, 256]), seed=st.integers(0, 100))
def test_train_val_and_test_streams_cover_every_cell_once(atlases, name, val, test, holdout, world, batch_size, seed):
    """Seeded fractions and held-out groups: each cell lands in one split, held-out groups whole in
    theirs, and the three streams over all ranks read every cell of the atlas exactly once."""
    path, _, cell_types = atlases[name]
    split = {"val_fraction": val, "test_fraction": test, "seed": seed}
    if holdout:
        split["holdout"] = [{"column": "cell_type", holdout[0]: [holdout[1]]}]
    config = LoaderConfig(batch_size=batch_size, buffer_cells=max(batch_size, 512), threads=0, split=split)
    modules = [AtlasDataModule(path, config, rank=rank, world_size=world) for rank in range(world)]
    try:
        for module in modules:
            module.setup()
    except VCellError as error:  # only a training split too small for one batch per rank is refused
        assert "larger than the" in str(error) and "'train' split" in str(error)
        return
    codes = modules[0].split_codes
    if holdout:
        held = cell_types == ["a", "b", "c"].index(holdout[1])
        assert (codes[held] == ("train", "val", "test").index(holdout[0])).all()
    seen = [b["cell_index"][b["valid"]].numpy() for module in modules for split_name in ("train", "val", "test")
            if split_name in module.loaders for b in module.loaders[split_name]]
    expected = np.flatnonzero(np.isin(codes, [code for code, s in enumerate(("train", "val", "test"))
                                              if s in modules[0].loaders])) if codes is not None else np.arange(len(cell_types))
    assert np.array_equal(np.sort(np.concatenate(seen)), expected)
    assert set(np.unique(codes if codes is not None else [0])) <= {0, 1, 2}
