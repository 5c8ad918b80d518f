"""GRN recovery on data vcell's simulator did not make (SERGIO): slow, and only with the optional
`science` extra installed (`pip install -e ".[science]"`); skipped otherwise."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("SERGIO", reason="SERGIO is not installed: pip install -e '.[science]' (sergio-scsim)")

from vcell.evaluate.independent import evaluate_on_sergio, full_prior, run_sergio_benchmark  # noqa: E402

pytestmark = pytest.mark.slow


def test_regulatory_beats_base_and_network_baselines_on_sergio(tmp_path):
    # ~2,100 cells x 100 genes; about a minute on 2 cores (SERGIO ~15 s, two 300-step trainings)
    result = run_sergio_benchmark(tmp_path, steps=300, cells_per_condition=100)
    assert result.cells == 2100 and result.genes == 100
    assert result.edges > 10 * result.true_edges  # every regulator -> gene pair: mostly non-edges
    model = result.scores["regulatory"]
    for name in ("base (attribution)", "co-expression", "partial correlation", "knockdown effect + partial correlation"):
        assert model.auprc > result.scores[name].auprc, name
    assert model.auroc > result.scores["partial correlation"].auroc
    assert (tmp_path / "sergio-0-100.h5ad").exists() and (tmp_path / "sergio-0-100-network.tsv").exists()


def test_the_standard_evaluation_runs_on_sergio_cells(tmp_path):
    """A catalogue model trained from its config on SERGIO's cells gets `vcell evaluate`'s table; its
    count likelihood beats the library-size NB on held-out cells (a win that holds on these data)."""
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "configs" / "models" / "stochastic.yaml"
    results = evaluate_on_sergio(tmp_path, {"stochastic": config}, steps=300, cells_per_condition=100)["stochastic"]
    assert results["data"]["held_out_split"] == "test" and results["data"]["held_out_cells"] > 500
    likelihood = results["reconstruction"]["log_likelihood"]
    assert likelihood["model"] > likelihood["baselines"]["library_size_nb"]
    seen = results["perturbation"]["seen_perturbations"]
    assert len(seen["perturbations"]) == 6 and "training_pseudobulk" in seen["vs_observed"]["baselines"]
    assert any("no simulator truth" in note for note in results["notes"])


def test_full_prior_pairs_every_regulator_with_every_other_gene():
    from vcell.evaluate.independent import SergioNetwork

    network = SergioNetwork([f"g{i}" for i in range(5)], np.array([0, 0, 1]), np.array([1, 2, 3]), np.ones(3), np.array([0]))
    source, target = full_prior(network)
    assert len(source) == 2 * 4 and not (source == target).any()
    assert set(zip(network.source, network.target)) <= set(zip(source, target))


def test_the_regulatory_residual_fits_seen_knock_downs_the_network_cannot_carry(tmp_path):
    """`regulatory.residual_rank` (opt-in): seen perturbations' Pearson delta against held-out cells
    rises well past the network alone (SERGIO 200 cells per condition, seeds 0 / 1: 0.752 / 0.732 ->
    0.912 / 0.908), and the overrides reach the run (its own name, its own config)."""
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "configs" / "models" / "regulatory.yaml"
    seen = {}
    for overrides in ([], ["model.regulatory.residual_rank=4"]):
        results = evaluate_on_sergio(tmp_path, {"regulatory": config}, steps=300, cells_per_condition=100,
                                     overrides=overrides)["regulatory"]
        seen[len(overrides)] = results["perturbation"]["seen_perturbations"]["vs_observed"]["model"]["pearson_delta"]
    assert seen[1] > seen[0] + 0.05, seen
    runs = sorted(path.name for path in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 and runs[0] == "sergio-regulatory-0"
