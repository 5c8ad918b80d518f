"""An enhancement defined entirely in this file, registered, and then used as any built-in one:
listed by `vcell models`, configured (strictly) in YAML, built, trained with the plain loop,
evaluated and plotted, without an edit under vcell/. The worked example of CONTRIBUTING.md.

The toy: a "latent tidiness" prior. It adds an auxiliary loss, weight x mean squared latent
state, and reports each cell's latent norm; its evaluation compares held-out cells' norms with a
baseline (an untrained standard-normal latent), and its figure is a histogram of the norms.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import Field
from torch import nn

from vcell.cli import main
from vcell.config import load_config
from vcell.config.model import ModelConfig
from vcell.config.section import Section
from vcell.errors import VCellError
from vcell.models.catalogue import CATALOGUE, check_enhancements
from vcell.models.inputs import CellInputs
from vcell.models.registry import Enhancement, enhancements, register_enhancement, unregister_enhancement
from vcell.models.slots import Slots
from vcell.models.spec import ModelSpec


# -- 1. its typed config section: model.toy ------------------------------------------------------
class ToyConfig(Section):
    """A prior that keeps latent states near the origin."""

    weight: float = Field(0.1, ge=0, description="weight of the latent-norm loss")


# -- 2. its module(s): here one auxiliary, (z (B, D), cells) -> (losses, statistics) ----------------
class LatentTidiness(nn.Module):
    STATS = {"latent_norm": ("B",)}  # statistic name -> symbolic shape (B cells)

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, z: torch.Tensor, cells: CellInputs) -> tuple[dict, dict]:
        return {"tidiness": self.weight * z.pow(2).mean()}, {"latent_norm": z.norm(dim=-1).detach()}


def install(slots: Slots, config: ModelConfig, spec: ModelSpec) -> None:
    slots.auxiliary.append(LatentTidiness(config.toy.weight))


# -- 3. its evaluation (held-out cells; model vs baseline) and its figure ------------------------
def evaluate_toy(data) -> tuple[dict, dict]:
    norms = data.model.describe(data.test).stats["latent_norm"].numpy()
    baseline = float(np.sqrt(data.model.config.dimensions()[2]))  # E|z| of a standard-normal latent, about
    section = {"definition": "mean latent norm of held-out cells", "model": {"mean_norm": float(norms.mean())},
               "baselines": {"standard_normal": {"mean_norm": baseline}}}
    return section, {"norms": norms}


def plot_toy(data, arrays: dict, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(4, 3))
    axes.hist(arrays["norms"], bins=20)
    axes.set_xlabel("latent norm")
    path = directory / "toy_latent_norm.png"
    figure.savefig(path)
    pyplot.close(figure)
    return [path]


# -- 4. the one object that declares it ---------------------------------------------------------
TOY = Enhancement(
    name="toy",
    title="Toy (latent tidiness)",
    summary="keeps latent states near the origin; latent norm per cell",
    config=ToyConfig,
    install=install,
    evaluation=evaluate_toy,
    figure=plot_toy,
)


@pytest.fixture
def toy():
    register_enhancement(TOY)
    yield TOY
    unregister_enhancement("toy")


def test_registered_toy_is_in_the_catalogue_and_the_listing(toy, capsys):
    assert list(enhancements())[-1] == "toy"  # installed after the built-ins
    assert CATALOGUE["toy"] == ("toy",) and "toy" in CATALOGUE["full"]
    assert main(["models", "--json", "--genes", "200", "--size", "tiny"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["toy"]["title"] == "Toy (latent tidiness)"
    assert rows["toy"]["summary"] == "keeps latent states near the origin"
    assert rows["toy"]["parameters"] == rows["base"]["parameters"]  # a loss, no parameters


def test_unregistered_toy_is_gone():
    assert "toy" not in CATALOGUE and "toy" not in ModelConfig().model_dump()
    with pytest.raises(VCellError, match=r"unknown enhancement\(s\) \['toy'\]"):
        check_enhancements(["toy"])


def test_toy_section_is_typed_and_strict(toy, tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("model:\n  name: toy\n  toy: {weight: 0.5}\n")
    config = load_config(path)
    assert config.model.enhancements == ["toy"]
    assert isinstance(config.model.toy, ToyConfig) and config.model.section("toy").weight == 0.5
    assert load_config(path, ["model.toy.weight=0.25"]).model.toy.weight == 0.25
    path.write_text("model:\n  name: toy\n  toy: {wieght: 0.5}\n")
    with pytest.raises(VCellError, match=rf"unknown key 'model.toy.wieght' in {path} \(did you mean 'weight'\?\)"):
        load_config(path)
    path.write_text("model:\n  name: toy\n  toy: {weight: -1}\n")
    with pytest.raises(VCellError, match=rf"'model.toy.weight' in {path}: Input should be greater than or equal to 0"):
        load_config(path)
    path.write_text("model:\n  name: toy\n  toyy: {weight: 1}\n")
    with pytest.raises(VCellError, match=rf"unknown key 'model.toyy' in {path} \(did you mean 'toy'\?\)"):
        load_config(path)


def test_toy_trains_is_evaluated_and_plotted(toy, tmp_path):
    from vcell.atlas.store import open_atlas
    from vcell.atlas.synth import synthesize_atlas
    from vcell.config.schema import BuildConfig, SynthConfig
    from vcell.data.memory import load_cells
    from vcell.evaluate.export import save_trained
    from vcell.evaluate.evaluation import evaluate_run
    from vcell.models.zoo import build_model
    from vcell.train.plain import fit
    from vcell.train.training_plan import model_spec, with_model_inputs

    synth = SynthConfig(cells=400, genes=60, transcription_factors=8, pathways=4, compartments=2, perturbations=3,
                        chunk_cells=400, truth_draws=8)
    atlas_path = synthesize_atlas(tmp_path / "atlas.zarr", synth, BuildConfig(shard_cells=200), progress=False)
    atlas = open_atlas(atlas_path)
    config = load_config(None, [
        "name=toy-run", f"data.atlas={atlas_path}", "model.name=toy", "model.size=tiny", "model.toy.weight=0.5",
        "loader.split.holdout=[]", "loader.split.test_fraction=0.2", "evaluate.max_cells=200", "evaluate.tsne_cells=100",
        "evaluate.embeddings=none",
    ])
    config = with_model_inputs(config, atlas)
    torch.manual_seed(0)
    model = build_model(config.model, model_spec(config, atlas))
    assert "latent_norm" in model.stat_shapes()
    history = fit(model, load_cells(atlas, config.loader, "train"), steps=5, batch_size=64, seed=0)
    assert all("tidiness" in step and np.isfinite(step["tidiness"]) for step in history)
    save_trained(model.eval(), config, tmp_path / "run" / "model", step=5)

    results = evaluate_run(tmp_path / "run", progress=False)
    section = results["enhancements"]["toy"]
    assert section["model"]["mean_norm"] > 0 and "standard_normal" in section["baselines"]
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())["evaluation"]["enhancements"]["toy"]
    assert written["model"]["mean_norm"] == pytest.approx(section["model"]["mean_norm"])
    assert "plots/toy_latent_norm.png" in results["plots"]
    assert (tmp_path / "run" / "plots" / "toy_latent_norm.png").read_bytes()[:4] == b"\x89PNG"
