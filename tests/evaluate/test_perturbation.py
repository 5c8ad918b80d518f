"""Perturbation deltas: the observed target shares no sampling noise with the baselines."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from vcell.evaluate.heldout import HeldOut
from vcell.evaluate.perturbation import DeltaBuilder, group_section, reference_controls_note

GENES, TYPES, PERTURBATIONS = 1000, 2, 20
CATEGORIES = {"cell_type": ["alpha", "beta"], "perturbation": ["control", *(f"P{i}" for i in range(PERTURBATIONS))]}


def cells(rng: np.random.Generator, type_means: np.ndarray, groups: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
    """Cells of (cell type, perturbation code, how many): each its type's mean plus unit noise;
    no perturbation changes anything."""
    types = np.concatenate([[t] * n for t, _, n in groups])
    codes = np.concatenate([[code] * n for _, code, n in groups])
    x = type_means[types] + rng.normal(size=(len(types), GENES))
    return {"x": torch.as_tensor(x, dtype=torch.float32), "cell_type": torch.as_tensor(types),
            "perturbation": torch.as_tensor(codes)}


def null_held_out(held_out_controls: int, seed: int = 0) -> HeldOut:
    """Reference and held-out cells of perturbations with no effect, and a model predicting none;
    `held_out_controls` control cells per type among the held-out ones."""
    rng = np.random.default_rng(seed)
    type_means = rng.normal(scale=2.0, size=(TYPES, GENES))
    perturbed = range(1, PERTURBATIONS + 1)
    train = cells(rng, type_means, [(t, 0, 150) for t in range(TYPES)] + [(t, p, 20) for t in range(TYPES) for p in perturbed])
    test = cells(rng, type_means, [(t, 0, held_out_controls) for t in range(TYPES)]
                 + [(t, p, 30) for t in range(TYPES) for p in perturbed])
    columns = SimpleNamespace(context="cell_type", perturbation="perturbation", time=None, history=None, control="control")
    model = SimpleNamespace(spec=SimpleNamespace(perturbation_gene=np.full(PERTURBATIONS + 1, -1)),
                            predict_measured=lambda basal, conditions: basal["x"])
    trained = SimpleNamespace(config=SimpleNamespace(model=SimpleNamespace(columns=columns)), model=model)
    return HeldOut(trained, Path("null.zarr"), train, test, pd.DataFrame(), CATEGORIES)


def mean_perturbation_score(data: HeldOut) -> tuple[float, DeltaBuilder]:
    builder = DeltaBuilder(data)
    rows = [builder.deltas(code) for code in range(1, PERTURBATIONS + 1)]
    section = group_section(rows, CATEGORIES["perturbation"][1:], has_truth=False)
    return section["vs_observed"]["baselines"]["mean_perturbation"]["pearson_delta"], builder


def test_a_baseline_cannot_score_by_predicting_the_reference_controls_noise():
    """No perturbation does anything, so no prediction can correlate with the observed deltas.
    Measured from the reference controls (what every baseline subtracts), the mean perturbation
    would correlate through their shared sampling noise; from held-out controls it does not."""
    scores = [mean_perturbation_score(null_held_out(held_out_controls=40, seed=seed))[0] for seed in range(3)]
    assert abs(np.mean(scores)) < 0.05, scores
    # with too few held-out controls the reference ones stand in: the shared noise shows, and is said
    data = null_held_out(held_out_controls=2)
    inflated, builder = mean_perturbation_score(data)
    assert inflated > 0.2 and builder.reference_target_types == {0, 1}
    note = reference_controls_note(data, builder.reference_target_types)
    assert "fewer than 3 control cells of alpha, beta" in note and "inflated" in note


def test_the_observed_delta_is_the_held_out_perturbed_mean_minus_the_held_out_controls_weighted_by_type():
    data = null_held_out(held_out_controls=40)
    builder = DeltaBuilder(data)
    test = data.test
    perturbed = (test["perturbation"] == 3) & (test["cell_type"] == 1)
    test["perturbation"][torch.nonzero(perturbed)[:10, 0]] = -1  # type beta: 20 cells left against alpha's 30
    observed = builder.deltas(3)["observed"]
    mine = test["perturbation"] == 3
    control = sum(weight * test["x"][(test["perturbation"] == 0) & (test["cell_type"] == t)].double().mean(0)
                  for t, weight in ((0, 0.6), (1, 0.4)))
    np.testing.assert_allclose(observed, (test["x"][mine].double().mean(0) - control).numpy(), atol=1e-9)
    assert builder.reference_target_types == set()


def test_a_model_without_a_network_knocks_an_unseen_gene_down_and_beats_the_mean_perturbation(evaluation_atlas, tmp_path):
    """`base` (no network) trained without one gene perturbation: predicted by knocking the gene down
    in silico (`vcell.models.knock`), its delta against the simulator's truth beats the mean
    perturbation's (3 seeds: Pearson delta and top-20 0.999-1.0 against -0.005 and -0.079)."""
    from vcell.atlas.store import open_atlas
    from vcell.config import load_config
    from vcell.data.memory import load_cells
    from vcell.evaluate.export import open_trained, save_trained
    from vcell.evaluate.heldout import held_out_cells
    from vcell.evaluate.perturbation import perturbation_metrics
    from vcell.models.zoo import build_model
    from vcell.train.plain import fit
    from vcell.train.training_plan import model_spec, with_model_inputs
    from tests.evaluate.conftest import HELD_OUT_PERTURBATION_INDEX

    atlas = open_atlas(evaluation_atlas)
    held_out = atlas.attrs["obs_categories"]["perturbation"][HELD_OUT_PERTURBATION_INDEX]
    config = with_model_inputs(load_config(None, [
        "name=base", f"data.atlas={evaluation_atlas}", "model.size=tiny", "model.name=base", "model.enhancements=[]",
        "loader.split.test_fraction=0.15", "loader.split.val_fraction=0.05",
        f"loader.split.holdout=[{{column: perturbation, test: [{held_out}]}}]", "evaluate.max_cells=400",
    ]), atlas)
    torch.manual_seed(0)
    model = build_model(config.model, model_spec(config, atlas))
    fit(model, load_cells(atlas, config.loader, "train"), steps=60, batch_size=128, seed=0)
    save_trained(model.eval(), config, tmp_path / "base" / "model", step=60)
    section, arrays = perturbation_metrics(held_out_cells(open_trained(tmp_path / "base"), max_cells=400, seed=0))
    unseen = section["unseen_perturbations"]
    assert unseen["perturbations"] == [held_out]
    scores, mean = unseen["vs_truth"]["model"], unseen["vs_truth"]["baselines"]["mean_perturbation"]
    for metric in ("pearson_delta", "pearson_delta_top20"):
        assert scores[metric] > mean[metric] + 0.5, metric
    gene = int(model.spec.perturbation_gene[HELD_OUT_PERTURBATION_INDEX])
    assert gene >= 0 and arrays["unseen_perturbations/model"][0, gene] < 0  # the knocked gene itself goes down
