"""The loader's promises: exactly once, resumable, seeded, correct values, clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.data.conftest import loader_config
from vcell.data.loader import AtlasLoader
from vcell.errors import VCellError


def stream(loader, limit=None):
    """(cell_index, valid) per batch of one pass, as numpy arrays."""
    out = []
    for batch in loader:
        out.append((batch["cell_index"].numpy().copy(), batch["valid"].numpy().copy()))
        if limit is not None and len(out) == limit:
            break
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("processes", [0, 1, 2])
def test_every_cell_exactly_once_per_epoch(atlas_path, world, processes):
    config = loader_config(processes=processes)
    seen, batch_counts = [], set()
    for rank in range(world):
        batches = stream(AtlasLoader(atlas_path, config, rank=rank, world_size=world))
        batch_counts.add(len(batches))
        assert all(len(rows) == config.batch_size for rows, _ in batches)  # fixed shapes
        seen += [rows[valid] for rows, valid in batches]
    seen = np.concatenate(seen)
    assert len(batch_counts) == 1  # every rank yields the same number of batches
    assert sorted(seen.tolist()) == list(range(1230))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_drop_remainder_never_repeats_and_keeps_ranks_equal(atlas_path, world):
    config = loader_config(remainder="drop")
    seen, counts = [], set()
    for rank in range(world):
        batches = stream(AtlasLoader(atlas_path, config, rank=rank, world_size=world))
        counts.add(len(batches))
        assert all(valid.all() for _, valid in batches)
        seen += [rows for rows, _ in batches]
    seen = np.concatenate(seen)
    assert len(counts) == 1 and len(seen) == len(set(seen.tolist()))
    assert 1230 - len(seen) < world * config.batch_size


def test_same_stream_whatever_the_threads_or_workers(atlas_path):
    reference = stream(AtlasLoader(atlas_path, loader_config(threads=0), rank=1, world_size=2))
    for overrides in ({"threads": 1}, {"threads": 3, "prefetch_batches": 1}, {"processes": 2}):
        other = stream(AtlasLoader(atlas_path, loader_config(**overrides), rank=1, world_size=2))
        assert all(np.array_equal(a[0], b[0]) for a, b in zip(reference, other)), overrides
        assert len(other) == len(reference)


def test_epochs_differ_and_seeds_reproduce(atlas_path):
    loader = AtlasLoader(atlas_path, loader_config(), seed=7)
    first, second = stream(loader), stream(loader)  # iterating again moves to the next epoch
    assert loader.epoch == 2
    assert not np.array_equal(first[0][0], second[0][0])
    again = AtlasLoader(atlas_path, loader_config(), seed=7)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, stream(again)))
    again.set_epoch(1)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(second, stream(again)))
    other_seed = stream(AtlasLoader(atlas_path, loader_config(), seed=8))
    assert not np.array_equal(first[0][0], other_seed[0][0])


def test_batches_mix_cells_from_across_the_atlas(atlas_path):
    rows, _ = stream(AtlasLoader(atlas_path, loader_config(batch_size=128, buffer_cells=512)))[0]
    blocks = set((rows // 50).tolist())
    assert len(blocks) >= 6  # a batch draws from several blocks of the buffer, not one


@pytest.mark.parametrize("stop_at", [0, 1, 5, 9, 10, 19])
@pytest.mark.parametrize("threads", [0, 2])
def test_resume_at_any_batch_equals_uninterrupted(atlas_path, stop_at, threads):
    config = loader_config(threads=threads)
    uninterrupted_loader = AtlasLoader(atlas_path, config, rank=0, world_size=2, seed=3)
    uninterrupted = stream(uninterrupted_loader) + stream(uninterrupted_loader)  # two epochs, 10 batches each
    interrupted = AtlasLoader(atlas_path, config, rank=0, world_size=2, seed=3)
    consumed = []
    while len(consumed) < stop_at:
        consumed += stream(interrupted, limit=stop_at - len(consumed))
    state = interrupted.state_dict()
    resumed = AtlasLoader(atlas_path, config, rank=0, world_size=2, seed=3)  # a new process
    resumed.load_state_dict(state)
    rest = []
    while len(consumed) + len(rest) < len(uninterrupted):
        rest += stream(resumed)
    for expected, got in zip(uninterrupted, consumed + rest):
        assert np.array_equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])


def test_resume_with_other_world_size_mid_epoch_is_refused(atlas_path):
    loader = AtlasLoader(atlas_path, loader_config(), rank=0, world_size=2)
    stream(loader, limit=3)
    other = AtlasLoader(atlas_path, loader_config(), rank=0, world_size=3)
    with pytest.raises(VCellError, match="repeat or skip cells"):
        other.load_state_dict(loader.state_dict())
    finished = AtlasLoader(atlas_path, loader_config(), rank=0, world_size=2)
    stream(finished)  # a whole epoch: the boundary is a safe place to change the world size
    other.load_state_dict(finished.state_dict())
    assert other.epoch == 1 and other.next_batch == 0 or other.next_batch == len(finished)


def test_an_epoch_resumed_on_other_rank_counts_delivers_every_cell_once(atlas_path):
    """2 ranks stop before batch 3, 3 ranks take the rest and stop before their batch 2, 1 rank
    finishes: every cell exactly once; the next epoch is the plain plan of 1 rank."""
    config, seen, states = loader_config(), [], []
    for world, stop in ((2, 3), (3, 2), (1, None)):
        loaders = [AtlasLoader(atlas_path, config, rank=rank, world_size=world) for rank in range(world)]
        for loader in loaders:
            if states:
                loader.resume(states)
        assert len({len(loader) for loader in loaders}) == 1  # the same number of batches on every rank
        for loader in loaders:
            seen += [rows[valid] for rows, valid in stream(loader, limit=stop)]
        states = [loader.state_dict() for loader in loaders]
        if world == 3:  # a restart on as many ranks as wrote the states (the resizes they carry) continues alike
            again = AtlasLoader(atlas_path, config, rank=1, world_size=3)
            again.resume(states)
            assert np.array_equal(stream(again, limit=1)[0][0], stream(loaders[1], limit=1)[0][0])
    assert sorted(np.concatenate(seen).tolist()) == list(range(1230))
    assert states[0]["epoch"] == 1 and states[0]["resizes"] == []
    plain = AtlasLoader(atlas_path, config, rank=0, world_size=1)
    plain.set_epoch(1)
    assert np.array_equal(stream(loaders[0], limit=1)[0][0], stream(plain, limit=1)[0][0])
    with pytest.raises(VCellError, match="written by rank 1 of 2"):  # states out of rank order
        AtlasLoader(atlas_path, config, rank=0, world_size=3).resume([states[0], {**states[0], "rank": 1, "world_size": 2}][::-1])


def test_resume_with_other_settings_is_refused(atlas_path):
    loader = AtlasLoader(atlas_path, loader_config())
    stream(loader, limit=2)
    other = AtlasLoader(atlas_path, loader_config(batch_size=32))
    with pytest.raises(VCellError, match="batch_size: saved 64, now 32"):
        other.load_state_dict(loader.state_dict())


def test_batch_contents_and_types(atlas_path):
    config = loader_config(labels=["cell_type", "perturbation", "time", "stimulated", "age"], keep_counts=True)
    batch = next(iter(AtlasLoader(atlas_path, config)))
    assert batch["x"].shape == (64, 90) and batch["x"].dtype == torch.float32
    assert batch["counts"].shape == (64, 90)
    assert batch["cell_type"].dtype == torch.int64 and batch["perturbation"].dtype == torch.int64
    assert batch["time"].dtype == torch.float32 and batch["stimulated"].dtype == torch.bool
    assert batch["library_size"].dtype == torch.float32 and batch["cell_index"].dtype == torch.int64


def test_sparse_output_equals_dense(atlas_path):
    dense = next(iter(AtlasLoader(atlas_path, loader_config())))
    sparse = next(iter(AtlasLoader(atlas_path, loader_config(sparse=True))))
    assert sparse["x"].layout == torch.sparse_csr
    assert torch.equal(sparse["x"].to_dense(), dense["x"])


def test_bad_configuration_is_refused_before_reading(atlas_path):
    with pytest.raises(VCellError, match="no obs column 'cell_typo'.*") as error:
        AtlasLoader(atlas_path, loader_config(labels=["cell_typo"]))
    assert "cell_type" in error.value.hint
    with pytest.raises(VCellError, match="2 of 3 genes are not in the atlas.*NOPE1, NOPE2"):
        AtlasLoader(atlas_path, loader_config(genes={"select": "list", "names": ["ENSG00000000003", "NOPE1", "NOPE2"]}))
    with pytest.raises(VCellError, match="batch_size=2000 is larger than the 1,230 cells"):
        AtlasLoader(atlas_path, loader_config(batch_size=2000, buffer_cells=4000))
    with pytest.raises(VCellError, match="larger than the .* cells of the 'val' split"):
        AtlasLoader(atlas_path, loader_config(split={"val_fraction": 0.02}), split="val")
    with pytest.raises(VCellError, match="zscore"):
        AtlasLoader(atlas_path, loader_config(normalize={"zscore": True, "log1p": False}))
    with pytest.raises(VCellError, match="names the loader uses"):
        AtlasLoader(atlas_path, loader_config(labels=["valid"]))
    with pytest.raises(VCellError, match="rank 2 is outside"):
        AtlasLoader(atlas_path, loader_config(), rank=2, world_size=2)


def test_config_refuses_impossible_combinations():
    with pytest.raises(ValueError, match="buffer_cells"):
        loader_config(batch_size=512, buffer_cells=256)
    with pytest.raises(ValueError, match="nothing would be left"):
        loader_config(split={"val_fraction": 0.5, "test_fraction": 0.5})
    with pytest.raises(ValueError, match="clip"):
        loader_config(normalize={"clip": 10})
    with pytest.raises(ValueError, match="sparse=true with normalize.zscore"):  # its unstored zeros would read as 0
        loader_config(sparse=True, normalize={"zscore": True})
    with pytest.raises(ValueError, match="genes.names"):
        loader_config(genes={"select": "list"})


def test_position_of_a_consumed_batch_when_the_trainer_fetched_ahead(atlas_path):
    loader = AtlasLoader(atlas_path, loader_config(threads=2))
    uninterrupted = stream(AtlasLoader(atlas_path, loader_config()))
    iterator = iter(loader)
    for _ in range(5):  # fetched five ...
        next(iterator)
    consumed = [loader.claim() for _ in range(3)]  # ... but the training steps used three
    assert consumed == [(0, 0), (0, 1), (0, 2)]
    resumed = AtlasLoader(atlas_path, loader_config())
    resumed.load_state_dict(loader.state_dict(consumed[-1]))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(uninterrupted[3:], stream(resumed)))


def test_auto_threads_follow_the_cores_each_process_has(monkeypatch):
    from vcell.data.loader import resolve_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert resolve_threads("auto") == 1  # one process on two cores: read and assemble in background
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resolve_threads("auto") == 0  # two workers on two cores: extra threads only contend
    assert resolve_threads(3) == 3
