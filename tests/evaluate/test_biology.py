"""Inferred biology as files: the GRN, half-times and memory TSVs of a run and of an export."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.safety import snapshot
from vcell.atlas.annotations import read_grn_edges
from vcell.data.memory import select
from vcell.errors import VCellError
from vcell.evaluate.biology import (
    BIOLOGY_FILES, HALF_TIME_HOURS, MEMORY_PULSE_HOURS, basal_cells, biology_tables, control_conditions, write_biology,
)
from vcell.evaluate.evaluation import evaluate_run
from vcell.evaluate.export import export_run, open_trained
from vcell.evaluate.heldout import held_out_cells
from vcell.models.enhancements.temporal import response_half_times

FILES = {"grn_edges.tsv", "response_half_times.tsv", "memory_primed_minus_naive.tsv", "pathway_activity_by_cell_type.tsv"}


@pytest.fixture(scope="module")
def evaluated(trained_folder, tmp_path_factory):
    folder = shutil.copytree(trained_folder, tmp_path_factory.mktemp("biology") / "tiny")
    results = evaluate_run(folder, progress=False, overrides={"plots": False, "embeddings": "none"})
    return folder, results


def read(folder, name) -> pd.DataFrame:
    return pd.read_csv(folder / "biology" / name, sep="\t")


def test_a_run_gets_every_file_of_its_enhancements(evaluated):
    folder, results = evaluated
    assert {p.name for p in (folder / "biology").iterdir()} == FILES | {"README.md"}
    assert sorted(results["biology"]["files"]) == sorted(f"biology/{name}" for name in FILES)
    assert results["biology"]["skipped"] == {}
    text = (folder / "biology" / "README.md").read_text()
    assert all(f"`{name}`" in text for name in FILES)


def test_grn_edges_are_the_learned_weights_ranked_and_read_back_as_a_prior(evaluated):
    folder, _ = evaluated
    edges = read(folder, "grn_edges.tsv")
    trained = open_trained(folder)
    spec, model = trained.model.spec, trained.model
    assert list(edges.columns) == ["source", "target", "signed_weight", "score", "sign", "prior_sign", "rank",
                                   "true_level_weight", "source_reliability", "standardised_weight"]
    assert np.array_equal(np.sign(edges["standardised_weight"]), edges["sign"])  # the weight in sds: same sign
    assert edges["source_reliability"].between(0, 1).all()
    floor = 1 - trained.config.model.regulatory.dilution_correction
    assert np.allclose(edges["true_level_weight"], edges["signed_weight"] / edges["source_reliability"].clip(lower=floor),
                       rtol=1e-4, atol=1e-7)  # %.6g
    assert len(edges) == len(spec.grn) and list(edges["rank"]) == list(range(1, len(edges) + 1))
    assert np.all(np.diff(edges["score"]) <= 1e-6)  # strongest (background-corrected standardised |weight|) first
    assert edges["score"].max() == pytest.approx(1.0) and (edges["score"] >= 0).all()
    assert np.array_equal(edges["sign"], np.sign(edges["signed_weight"]))
    learned = model.describe(select(held_out_cells(trained, max_cells=50).test, torch.arange(2))).stats["edge_weight"]
    ids = np.asarray(spec.gene_ids)
    expected = dict(zip(zip(ids[spec.grn.source], ids[spec.grn.target]), learned.detach().numpy().tolist()))
    written = dict(zip(zip(edges["source"], edges["target"]), edges["signed_weight"]))
    assert written.keys() == expected.keys()
    assert np.allclose([written[k] for k in expected], list(expected.values()), rtol=1e-5, atol=1e-7)  # %.6g
    prior = read_grn_edges(folder / "biology" / "grn_edges.tsv")  # what model.regulatory.edges=<file> reads
    assert list(prior["source"]) == list(edges["source"]) and list(prior["sign"]) == list(edges["sign"])
    assert np.allclose(prior["weight"], edges["score"])


@pytest.fixture(scope="module")
def data(trained_folder):
    return held_out_cells(open_trained(trained_folder), max_cells=400, seed=0)


def test_half_times_are_read_off_the_mean_basal_trajectory_per_cell_type(evaluated, data):
    folder, _ = evaluated
    table = read(folder, "response_half_times.tsv")
    groups = basal_cells(data)
    n_genes = data.model.spec.n_genes
    assert list(table.columns) == ["gene_id", "cell_type", "half_time_hours", "change_64h"]
    assert len(table) == n_genes * len(groups) and table["cell_type"].nunique() == len(groups)
    known = table["half_time_hours"].dropna()
    assert known.between(0, HALF_TIME_HOURS[-1]).all() and len(known) > 0
    cell_type, cells = groups[0]
    path = data.model.trajectory(cells, HALF_TIME_HOURS, control_conditions(data, len(cells["x"]))).double().mean(1).numpy()
    mine = table[table["cell_type"] == cell_type]
    assert list(mine["gene_id"]) == list(data.model.spec.gene_ids)
    expected = response_half_times(path, np.array(HALF_TIME_HOURS))
    assert np.allclose(mine["half_time_hours"], expected, rtol=1e-5, equal_nan=True)
    assert np.allclose(mine["change_64h"], path[-1] - path[0], rtol=1e-5, atol=1e-9)


def test_pathway_activity_is_the_mean_basal_cells_read_out_per_cell_type(evaluated, data):
    folder, _ = evaluated
    table = read(folder, "pathway_activity_by_cell_type.tsv")
    groups, spec = basal_cells(data), data.model.spec
    assert list(table.columns) == ["pathway", "compartment", "cell_type", "cells", "mean_activity", "relative_activity",
                                   "sd_across_cells"]
    assert len(table) == len(spec.pathway_names) * len(groups)
    assert table["compartment"].isin(spec.compartment_names).all()  # the fixture atlas assigns every pathway
    cell_type, cells = groups[0]
    activity = data.model.describe(cells).stats["pathway_activity"].double()
    mine = table[table["cell_type"] == cell_type]
    assert list(mine["pathway"]) == list(spec.pathway_names) and (mine["cells"] == len(activity)).all()
    assert np.allclose(mine["mean_activity"], activity.mean(0).numpy(), rtol=1e-5, atol=1e-9)
    assert np.allclose(mine["sd_across_cells"], activity.std(0).numpy(), rtol=1e-4, atol=1e-9)
    per_pathway = table.groupby("pathway")["relative_activity"].sum()
    assert np.allclose(per_pathway, 0.0, atol=1e-6)  # (6 significant digits in the file) relative to the pathway's mean over cell types


def test_memory_is_primed_minus_naive_per_cell_type_at_rest_and_stimulated(evaluated, data):
    folder, _ = evaluated
    table = read(folder, "memory_primed_minus_naive.tsv")
    groups = basal_cells(data)
    assert list(table.columns) == ["gene_id", "cell_type", "hours_after_stimulus", "primed_minus_naive"]
    assert len(table) == data.model.spec.n_genes * len(groups) * 2
    assert set(table["hours_after_stimulus"]) == {0.0, 2.0}
    cell_type, cells = groups[-1]
    n = len(cells["x"])
    # as measured cells would average (the model here counts: this differs from `expression`)
    primed = data.model.predict_measured(cells, control_conditions(data, n, MEMORY_PULSE_HOURS, 2.0)).double().mean(0)
    naive = data.model.predict_measured(cells, control_conditions(data, n, float("nan"), 2.0)).double().mean(0)
    mine = table[(table["cell_type"] == cell_type) & (table["hours_after_stimulus"] == 2.0)]
    assert np.allclose(mine["primed_minus_naive"], (primed - naive).numpy(), rtol=1e-5, atol=1e-9)


def test_the_biology_folder_is_replaced_only_when_vcell_wrote_all_of_it(tmp_path):
    table = pd.DataFrame({"gene_id": ["a"], "value": [1.0]})
    folder = tmp_path / "biology"
    write_biology(folder, {"grn_edges.tsv": table}, {"response_half_times.tsv": "no basal cells"})
    assert "not written: no basal cells" in (folder / "README.md").read_text()
    write_biology(folder, {"grn_edges.tsv": table * 2}, {})  # ours: replaced whole
    assert pd.read_csv(folder / "grn_edges.tsv", sep="\t")["value"].tolist() == [2.0]
    (folder / "my_notes.txt").write_text("mine")
    before = snapshot(folder)
    with pytest.raises(VCellError, match="my_notes.txt"):
        write_biology(folder, {"grn_edges.tsv": table}, {})
    assert snapshot(folder) == before
    users = tmp_path / "users" / "biology"
    users.mkdir(parents=True)
    (users / "grn_edges.tsv").write_text("theirs")
    with pytest.raises(VCellError, match="no README.md written by vcell"):
        write_biology(users, {"grn_edges.tsv": table}, {})
    assert (users / "grn_edges.tsv").read_text() == "theirs"
    assert not [p for p in tmp_path.rglob(".*")]  # no staging folder left behind


def test_a_model_without_these_enhancements_writes_nothing(tmp_path):
    plain = SimpleNamespace(config=SimpleNamespace(model=SimpleNamespace(enhancements=["stochastic"])), model=None)
    assert biology_tables(plain, None) == ({}, {})
    assert write_biology(tmp_path / "biology", {}, {}) == [] and not (tmp_path / "biology").exists()
    assert {entry.enhancement for entry in BIOLOGY_FILES} == {"regulatory", "temporal", "hierarchical", "memory", "base"}


def test_a_model_whose_perturbations_take_the_shift_writes_its_genes_measured_knockdown():
    from tests.models.test_knock import measured_model
    from tests.models.test_zoo import SPEC
    from vcell.config.model import ModelConfig
    from vcell.models.zoo import build_model

    model = measured_model()  # code 4's gene measured keeping 0.25 of its level, code 6's 0.75
    trained = SimpleNamespace(config=SimpleNamespace(model=SimpleNamespace(enhancements=[])), model=model)
    tables, skipped = biology_tables(trained, None)  # from the model alone: no cells needed
    table = tables["perturbed_gene_knockdown.tsv"].set_index("gene_id")
    routed = sorted({SPEC.gene_ids[g] for g in SPEC.perturbation_gene if g >= 0})
    assert sorted(table.index) == routed and not skipped
    for code, share in ((4, 0.25), (6, 0.75)):
        row = table.loc[SPEC.gene_ids[SPEC.perturbation_gene[code]]]
        assert row["share_of_level"] == pytest.approx(share) and row["share_used"] == pytest.approx(share)
        assert row["knocked_level"] == pytest.approx(share * row["basal_level"])
    unmeasured = table[table["share_of_level"].isna()]
    assert len(unmeasured) and np.allclose(unmeasured["share_used"], 0.5)  # the median gene's
    fresh = SimpleNamespace(config=trained.config, model=build_model(ModelConfig(name="base", size="tiny"), SPEC))
    tables, skipped = biology_tables(fresh, None)
    assert not tables and "no perturbed gene was measured" in skipped["perturbed_gene_knockdown.tsv"]
    regulatory = SimpleNamespace(config=SimpleNamespace(model=SimpleNamespace(enhancements=["regulatory"])),
                                 model=build_model(ModelConfig(name="regulatory", size="tiny"), SPEC))
    assert "perturbed_gene_knockdown.tsv" not in biology_tables(regulatory, None)[0]  # its network learns each knock


def test_a_model_without_biology_removes_the_network_vcell_wrote_for_another_model(tmp_path):
    # a run restarted as `base` under a `regulatory` run's name: the old grn_edges.tsv would pass for this model's
    table = pd.DataFrame({"source": ["TF001"], "target": ["GENE0002"], "signed_weight": [0.5]})
    ours, users = tmp_path / "ours" / "biology", tmp_path / "users" / "biology"
    write_biology(ours, {"grn_edges.tsv": table}, {})
    write_biology(users, {"grn_edges.tsv": table}, {})
    (users / "my_notes.txt").write_text("mine")
    assert write_biology(ours, {}, {}) == [] and not ours.exists()
    assert write_biology(users, {}, {}) == [] and (users / "my_notes.txt").read_text() == "mine"
    assert (users / "grn_edges.tsv").is_file()  # a folder with the user's files in it is never removed


def test_an_export_carries_the_biology_and_says_what_it_could_not_compute(run_copy, tmp_path):
    out = export_run(run_copy, tmp_path / "export")
    assert {p.name for p in (out / "biology").iterdir()} == FILES | {"README.md"}
    assert "## Inferred biology (biology/)" in (out / "MODEL_CARD.md").read_text()
    config_path = run_copy / "model" / "config.yaml"  # the training atlas moved away: the network still goes out
    config = yaml.safe_load(config_path.read_text())
    config["data"]["atlas"] = str(tmp_path / "moved.zarr")
    config_path.write_text(yaml.safe_dump(config))
    alone = export_run(run_copy, tmp_path / "without-atlas")
    assert {p.name for p in (alone / "biology").iterdir()} == {"grn_edges.tsv", "README.md"}
    readme = (alone / "biology" / "README.md").read_text()
    assert "`response_half_times.tsv` (temporal): not written: the training atlas" in readme


def test_the_readme_table_documents_every_file():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme[readme.index("#### What the model inferred, as files"):]
    for entry in BIOLOGY_FILES:
        assert f"| `biology/{entry.name}` | {entry.enhancement} |" in table, entry.name
    for key in ("vcell_pathway_activity", "vcell_compartment_activity", "vcell_capacity", "vcell_free_share",
                "vcell_pathway_allocation"):
        assert key in table, key


def test_a_users_biology_folder_is_kept_and_the_metrics_still_written(run_copy):
    import json

    (run_copy / "biology").mkdir()
    (run_copy / "biology" / "notes.txt").write_text("mine")
    results = evaluate_run(run_copy, progress=False, overrides={"plots": False, "embeddings": "none"})
    assert "no README.md written by vcell" in results["biology"]["error"] and results["biology"]["files"] == []
    assert [p.name for p in (run_copy / "biology").iterdir()] == ["notes.txt"]
    assert "embedding" in json.loads((run_copy / "metrics.json").read_text())["evaluation"]
