"""A small simulated atlas and a `full` model trained on it in-process (plain loop), saved as a
model folder: what `vcell embed / evaluate / predict` read. One perturbation is held out whole."""

from __future__ import annotations

import shutil

import pytest
import torch

from vcell.atlas.store import open_atlas
from vcell.atlas.synth import synthesize_atlas
from vcell.config import load_config
from vcell.config.schema import BuildConfig, SynthConfig
from vcell.data.memory import load_cells
from vcell.evaluate.export import save_trained
from vcell.train.plain import fit
from vcell.train.training_plan import model_spec, with_model_inputs
from vcell.models.zoo import build_model

HELD_OUT_PERTURBATION_INDEX = 2  # of the atlas's perturbation categories


@pytest.fixture(scope="session")
def evaluation_atlas(tmp_path_factory):
    synth = SynthConfig(cells=1500, genes=100, transcription_factors=12, pathways=6, compartments=3, perturbations=5,
                        chunk_cells=750, truth_draws=16)
    out = tmp_path_factory.mktemp("evaluate") / "atlas.zarr"
    return synthesize_atlas(out, synth, BuildConfig(shard_cells=500), progress=False)


@pytest.fixture(scope="session")
def trained_folder(evaluation_atlas, tmp_path_factory):
    """A run-like folder with model/ (a tiny `full` model, 60 plain-loop steps)."""
    atlas = open_atlas(evaluation_atlas)
    held_out = atlas.attrs["obs_categories"]["perturbation"][HELD_OUT_PERTURBATION_INDEX]
    config = load_config(None, [
        "name=tiny", f"data.atlas={evaluation_atlas}", "model.size=tiny", "loader.split.test_fraction=0.15",
        "loader.split.val_fraction=0.05", f"loader.split.holdout=[{{column: perturbation, test: [{held_out}]}}]",
        "evaluate.max_cells=400", "evaluate.tsne_cells=150",
    ])
    config = with_model_inputs(config, atlas)
    torch.manual_seed(0)
    model = build_model(config.model, model_spec(config, atlas))
    fit(model, load_cells(atlas, config.loader, "train"), steps=60, batch_size=128, seed=0)
    folder = tmp_path_factory.mktemp("run") / "tiny"
    save_trained(model.eval(), config, folder / "model", step=60)
    return folder


@pytest.fixture
def run_copy(trained_folder, tmp_path):
    """A private copy of the trained folder (tests that write into it)."""
    return shutil.copytree(trained_folder, tmp_path / "tiny")
