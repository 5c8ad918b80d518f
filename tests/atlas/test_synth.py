"""The simulator: determinism, streaming, realistic counts, and that every piece of biology is
really there (checked against the stored truth and in simulated pseudobulk)."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import zarr

from vcell.atlas import synth_model
from vcell.atlas.annotations import read_gmt, read_grn_edges, read_pathway_compartments
from vcell.atlas.sources import looks_like_ensembl, select_gene_ids
from vcell.atlas.synth import SimulatorSource, coupled_poisson, expected_profile, sample_condition
from vcell.atlas.synth_store import open_truth, write_synthetic_extras
from vcell.config.schema import BuildConfig, SynthConfig
from vcell.errors import VCellError

SMALL = dict(genes=200, transcription_factors=20, pathways=8, compartments=4, perturbations=10, truth_draws=64)


def small_config(**changes) -> SynthConfig:
    return SynthConfig(**{"cells": 2000, "chunk_cells": 512, **SMALL, **changes})


def collect(source: SimulatorSource, chunk_cells: int) -> tuple[pd.DataFrame, sp.csr_matrix, np.ndarray]:
    chunks = list(source.chunks(chunk_cells))
    obs = pd.concat([c.obs for c in chunks])
    activity = np.concatenate([c.obsm["truth_pathway_activity"] for c in chunks])
    return obs, sp.vstack([c.X for c in chunks], format="csr"), activity


@pytest.fixture(scope="module")
def source() -> SimulatorSource:
    return SimulatorSource(small_config())


@pytest.fixture(scope="module")
def cells(source):
    return collect(source, 512)


def log_pseudobulk(X: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """log of the mean normalised profile of `rows` (sum of counts / total), (G,)."""
    total = np.asarray(X[rows].sum(0)).ravel()
    return np.log((total + 0.5) / total.sum())


# --- streaming and determinism -------------------------------------------------------------


def test_same_seed_gives_identical_cells_however_sliced(source, cells):
    obs, X, activity = cells
    again = SimulatorSource(small_config())
    for chunk_cells in (300, 2000, 777):
        obs2, X2, activity2 = collect(again, chunk_cells)
        assert (X != X2).nnz == 0
        pd.testing.assert_frame_equal(obs, obs2)
        np.testing.assert_array_equal(activity, activity2)
    other_obs, other_X, _ = collect(SimulatorSource(small_config(seed=1)), 512)
    assert (X != other_X).nnz > 0


@pytest.mark.parametrize("chunk_cells", [7, 333, 512, 5000])
def test_chunks_cover_every_cell_once_with_fixed_categories(source, chunk_cells):
    chunks = list(source.chunks(chunk_cells))
    sizes = [len(c.obs) for c in chunks]
    assert sum(sizes) == source.n_cells and max(sizes) <= chunk_cells
    assert all(size == chunk_cells for size in sizes[:-1])
    names = np.concatenate([c.obs.index.to_numpy() for c in chunks])
    assert len(set(names)) == source.n_cells
    for column in ("cell_type", "batch", "perturbation", "perturbation_type", "history"):
        categories = {tuple(c.obs[column].cat.categories) for c in chunks}
        assert len(categories) == 1, column
    assert all(c.X.shape == (len(c.obs), 200) and c.X.dtype == np.float32 for c in chunks)


def test_var_has_ensembl_like_ids_symbols_and_tfs(source):
    var = source.var
    assert looks_like_ensembl(var.index) and var.index.is_unique
    ids, key = select_gene_ids(var, None, "simulator")
    assert key == "index" and ids.iloc[0] == "ENSVCG00000000001"
    assert var["gene_symbols"].iloc[0] == "TF001" and var["is_tf"].sum() == 20
    description = json.loads(json.dumps(source.describe()))
    assert description["kind"] == "simulator" and description["config"]["seed"] == 0


def test_counts_are_realistic_at_default_gene_count():
    config = SynthConfig(cells=1500, perturbations=10, truth_draws=16)
    obs, X, _ = collect(SimulatorSource(config), 4096)
    assert np.array_equal(X.data, np.round(X.data)) and X.data.min() >= 1
    zeros = 1 - X.nnz / np.prod(X.shape)
    assert 0.90 < zeros < 0.96, zeros  # ~140 of 2,000 genes detected per cell, as in real data
    library = np.asarray(X.sum(1)).ravel()
    assert abs(library.mean() / config.mean_library_size - 1) < 0.15
    assert abs(obs["truth_size_factor"].mean() - 1) < 0.05
    assert obs["truth_capacity_usage"].between(0, 1).all()


# --- perturbations travel through the GRN --------------------------------------------------


def descendants(truth, gene: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for source, target in zip(truth.edge_source, truth.edge_target):
        children.setdefault(int(source), []).append(int(target))
    seen, queue = set(), deque([gene])
    while queue:
        for child in children.get(queue.popleft(), []):
            if child not in seen:
                seen.add(child)
                queue.append(child)
    return seen


def test_tf_knockdown_moves_its_targets_more_than_other_genes():
    config = small_config(cells=3000, fraction_perturbed=0.9, fraction_stimulated=0.0, fraction_primed=0.0, perturbations=4)
    source = SimulatorSource(config)
    truth = source.truth
    tfs = [k for k, gene in enumerate(truth.perturbation_targets) if len(descendants(truth, gene)) >= 5]
    assert tfs, "the simulation should perturb a TF with targets"
    k = max(tfs, key=lambda k: len(descendants(truth, truth.perturbation_targets[k])))
    gene = truth.perturbation_targets[k]
    downstream = np.zeros(truth.n_genes, dtype=bool)
    downstream[list(descendants(truth, gene))] = True
    others = ~downstream
    others[gene] = False

    # Truth, per cell: only the gene and its descendants change rate, by the stored factor.
    control = synth_model.cell_rates(truth, noiseless_states(truth, 1))[0]
    perturbed = synth_model.cell_rates(truth, noiseless_states(truth, 1, perturbation=np.array([k + 1])))[0]
    change = np.log(perturbed / control)
    np.testing.assert_allclose(change[others], 0.0, atol=1e-12)
    assert np.abs(change[downstream]).mean() > 0.1
    assert perturbed[gene] == pytest.approx(control[gene] * truth.perturbation_factor[k])
    # Truth, expected profiles: others move only by the common renormalisation.
    profile_change = np.log(expected_profile(truth, 0, truth.gene_symbols[gene]) / expected_profile(truth, 0))
    shift = np.median(profile_change[others])
    assert np.abs(profile_change[downstream] - shift).mean() > 3 * np.abs(profile_change[others] - shift).mean()

    obs, X, _ = collect(source, 4096)
    is_perturbed = (obs["perturbation"] == truth.gene_symbols[gene]).to_numpy()
    is_control = (obs["perturbation"] == "control").to_numpy()
    observed = np.abs(log_pseudobulk(X, is_perturbed) - log_pseudobulk(X, is_control))
    assert observed[downstream].mean() > 1.5 * observed[others].mean()


def test_coupled_counts_are_poisson_at_the_new_mean_and_equal_where_the_mean_stays():
    rng = np.random.default_rng(0)
    mean = np.array([0.0, 0.0, 0.3, 2.0, 2.0, 2.0, 40.0, 40.0])
    new_mean = np.array([0.0, 1.5, 0.3, 0.5, 2.0, 6.0, 10.0, 55.0])
    draws = 40_000
    counts = rng.poisson(np.tile(mean, (draws, 1)))
    coupled = coupled_poisson(counts, np.tile(mean, (draws, 1)), np.tile(new_mean, (draws, 1)), rng)
    standard_error = np.sqrt(np.maximum(new_mean, 1e-12) / draws)
    assert np.all(np.abs(coupled.mean(0) - new_mean) < 5 * standard_error + 1e-12), coupled.mean(0)
    variance = coupled.var(0)[new_mean > 0] / new_mean[new_mean > 0]  # Poisson: variance = mean
    assert np.all(np.abs(variance - 1) < 0.05), variance
    unchanged = mean == new_mean
    np.testing.assert_array_equal(coupled[:, unchanged], counts[:, unchanged])
    assert np.all(coupled[:, new_mean < mean] <= counts[:, new_mean < mean])  # a fall only removes molecules


def test_two_conditions_drawn_alike_differ_by_the_effect_not_by_sampling_noise(source):
    """The ground truth of a perturbation's delta is a difference of two Monte Carlo means: drawn
    alike, it is the same at 256 cells as at 2,048, and a knock-down of a gene no TF reads out
    moves (almost) only that gene."""
    truth = source.truth
    regulators = set(truth.edge_source.tolist())
    k = next(k for k, gene in enumerate(truth.perturbation_targets) if gene not in regulators) + 1
    gene = truth.perturbation_targets[k - 1]

    def delta(cells: int) -> np.ndarray:
        def mean_log(**condition) -> np.ndarray:
            counts = sample_condition(truth, 0, cells, np.random.default_rng([3, 0]), **condition)
            return np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).mean(0)
        return mean_log(perturbation=k) - mean_log()

    small, large = delta(256), delta(2048)
    assert small[gene] < 0 and large[gene] < 0
    others = np.arange(truth.n_genes) != gene
    assert np.abs(large[others]).sum() < 0.2 * abs(large[gene])  # all other genes together: the renormalisation
    assert abs(small[gene] - large[gene]) < 0.35 * abs(large[gene])  # its own effect: sampled, but no stray noise
    time = [sample_condition(truth, 0, 256, np.random.default_rng([3, 0]), time=4.0) for _ in range(2)]
    np.testing.assert_array_equal(*time)  # same seed, same cells


@pytest.mark.parametrize("condition", [{}, {"perturbation": 2}, {"time": 4.0}, {"hours_since_pulse": 24.0}])
def test_reused_basal_cells_give_the_same_counts_and_leave_the_generator_alike(source, condition):
    truth, cache = source.truth, {}
    for cell_type in (0, 1, 0):  # a cell type's second call reads the cache
        fresh, cached = np.random.default_rng([5, cell_type]), np.random.default_rng([5, cell_type])
        expected = sample_condition(truth, cell_type, 64, fresh, **condition)
        np.testing.assert_array_equal(sample_condition(truth, cell_type, 64, cached, basal_cache=cache, **condition),
                                      expected)
        assert fresh.random() == cached.random()  # whatever the caller draws next is unchanged too
    assert len(cache) == 2


# --- stimulus time course ------------------------------------------------------------------


def noiseless_states(truth, n: int, **changes) -> synth_model.CellStates:
    values = dict(
        cell_type=np.zeros(n, dtype=int),
        master_noise=np.zeros((n, len(truth.master_tfs))),
        pathway_activity=np.tile(truth.pathway_level[0], (n, 1)),
        perturbation=np.zeros(n, dtype=int),
        time=np.zeros(n),
        hours_since_pulse=np.full(n, np.nan),
    )
    return synth_model.CellStates(**{**values, **changes})


def test_time_course_relaxes_with_the_stored_half_times(source, cells):
    truth = source.truth
    times = np.concatenate([[0.0], truth.time_points])
    rates = synth_model.cell_rates(truth, noiseless_states(truth, len(times), time=times))
    start = np.log(rates[0])
    stimulated = synth_model.propagate(truth, noiseless_states(truth, 1), stimulated=True)[0]
    for t, log_rate in zip(times, np.log(rates)):
        expected = start + (stimulated - start) * (1 - 2.0 ** (-t / truth.response_half_time))
        np.testing.assert_allclose(log_rate, expected, atol=1e-9)

    obs, X, _ = collect(source, 4096)
    unstimulated = (~obs["stimulated"] & (obs["perturbation"] == "control") & (obs["history"] == "naive")).to_numpy()
    true_change = np.log(truth_time_profile(truth, times[-1]) / truth_time_profile(truth, 0.0))
    responsive = np.abs(true_change) > 0.3
    correlation, moved = [], []
    for t in (times[1], times[-1]):
        rows = ((obs["time"] == t) & (obs["perturbation"] == "control") & (obs["history"] == "naive")).to_numpy()
        change = log_pseudobulk(X, rows) - log_pseudobulk(X, unstimulated)
        correlation.append(np.corrcoef(change[responsive], true_change[responsive])[0, 1])
        moved.append(np.abs(change[responsive]).mean())
    assert correlation[-1] > 0.6 and moved[-1] > moved[0]


def truth_time_profile(truth, time: float) -> np.ndarray:
    """Expected profile averaged over cell types by their proportions."""
    profiles = [expected_profile(truth, t, time=time) for t in range(len(truth.cell_type_names))]
    return np.average(profiles, axis=0, weights=truth.cell_type_proportions)


# --- capacity, memory, batches, pathways ---------------------------------------------------


def test_raising_one_program_lowers_every_other_genes_share(source):
    truth = source.truth
    rates = synth_model.cell_rates(truth, noiseless_states(truth, 1))
    members = truth.pathway_membership[0]
    raised = rates.copy()
    raised[:, members] *= 5
    share, usage = synth_model.capacity_share(rates, truth.capacity_constant)
    share_raised, usage_raised = synth_model.capacity_share(raised, truth.capacity_constant)
    assert usage_raised[0] > usage[0]
    assert (share_raised[0, ~members] < share[0, ~members]).all()
    assert (share_raised[0, members] > share[0, members]).all()


def test_primed_cells_differ_from_naive_on_memory_genes_only(source):
    truth = source.truth
    memory = np.zeros(truth.n_genes, dtype=bool)
    memory[truth.memory_genes] = True
    naive = synth_model.cell_rates(truth, noiseless_states(truth, 1))
    primed = synth_model.cell_rates(truth, noiseless_states(truth, 1, hours_since_pulse=np.array([12.0])))
    change = np.log(primed / naive)[0]
    np.testing.assert_allclose(change[~memory], 0.0, atol=1e-12)
    assert (np.abs(change[memory]) > 0.05).all()

    memory_config = small_config(cells=3000, fraction_primed=0.5, fraction_stimulated=0.0, fraction_perturbed=0.0)
    obs, X, _ = collect(SimulatorSource(memory_config), 4096)
    rest = (~obs["stimulated"] & (obs["perturbation"] == "control")).to_numpy()
    is_primed = (obs["history"] == "primed").to_numpy()
    observed = np.abs(log_pseudobulk(X, rest & is_primed) - log_pseudobulk(X, rest & ~is_primed))
    detected = np.asarray(X[rest].mean(0)).ravel() > 1.0  # pseudobulk of rare genes is mostly noise
    assert observed[memory & detected].mean() > 2 * observed[~memory & detected].mean()
    assert obs.loc[~is_primed, "hours_since_pulse"].isna().all() and obs.loc[is_primed, "hours_since_pulse"].gt(0).all()


def test_batches_differ_in_capture_and_per_gene_effects(source, cells):
    truth = source.truth
    obs, X, _ = collect(source, 4096)
    library = np.asarray(X.sum(1)).ravel() / obs["truth_size_factor"].to_numpy()
    batch = obs["batch"].cat.codes.to_numpy()
    observed = np.log([library[batch == b].mean() for b in range(len(truth.batch_names))])
    expected = np.log(truth.batch_capture_efficiency)
    np.testing.assert_allclose(observed - observed[0], expected - expected[0], atol=0.1)
    profile_change = log_pseudobulk(X, batch == 1) - log_pseudobulk(X, batch == 0)
    gene_change = np.log(truth.batch_gene_effect[1] / truth.batch_gene_effect[0])
    assert np.corrcoef(profile_change, gene_change)[0, 1] > 0.3


def test_pathway_activity_is_visible_as_co_variation(source, cells):
    truth = source.truth
    obs, X, activity = cells
    assert activity.shape == (source.n_cells, len(truth.pathway_names)) and activity.dtype == np.float32
    normalised = sp.diags(1 / np.maximum(np.asarray(X.sum(1)).ravel(), 1)) @ X
    correlations = []
    for p, members in enumerate(truth.pathway_membership):
        program = np.log(np.asarray(normalised[:, members].sum(1)).ravel() + 1e-4)
        correlations.append(np.corrcoef(program, activity[:, p])[0, 1])
    assert np.median(correlations) > 0.2


# --- stored truth ------------------------------------------------------------------------


def test_truth_round_trips_through_zarr_with_annotations(source, tmp_path):
    truth = source.truth
    atlas = tmp_path / "atlas.zarr"
    write_synthetic_extras(zarr.open_group(atlas, mode="w"), atlas, truth)
    back = open_truth(atlas)
    for name in truth.__dataclass_fields__:
        np.testing.assert_array_equal(np.asarray(getattr(back, name)), np.asarray(getattr(truth, name)), err_msg=name)
    group = zarr.open_group(atlas / "truth", mode="r")
    assert all(group.attrs["arrays"].values()), "every truth array is described"
    table = group["expected_perturbation_profile"]
    assert table.shape == (len(truth.cell_type_names), len(truth.perturbation_targets) + 1, truth.n_genes)
    assert group["expected_time_profile"].shape == (len(truth.cell_type_names), len(truth.time_points) + 1, truth.n_genes)
    np.testing.assert_allclose(expected_profile(atlas, 2, 3), table[2, 3])
    np.testing.assert_allclose(expected_profile(back, "type_1", time=truth.time_points[-1]), group["expected_time_profile"][1, -1])

    sets = read_gmt(atlas / "annotations" / "pathways.gmt")
    assert list(sets) == truth.pathway_names.tolist()
    assert all(set(sets[name]) == set(truth.gene_ids[m]) for name, m in zip(truth.pathway_names, truth.pathway_membership))
    compartments = read_pathway_compartments(atlas / "annotations" / "pathway_compartments.tsv")
    assert compartments == dict(zip(truth.pathway_names, truth.compartment_names[truth.pathway_compartment]))
    edges = read_grn_edges(atlas / "annotations" / "grn_edges.tsv")
    assert len(edges) == len(truth.edge_source) and (edges["source"] == truth.gene_ids[truth.edge_source]).all()


def test_expected_profile_rejects_unknown_conditions(source):
    with pytest.raises(VCellError, match="not a perturbation"):
        expected_profile(source.truth, 0, "NOT_A_GENE")
    with pytest.raises(VCellError, match="unknown cell type"):
        expected_profile(source.truth, "type_99")


def test_synthesize_atlas_end_to_end(tmp_path):
    from vcell.atlas.synth import synthesize_atlas

    out = synthesize_atlas(tmp_path / "demo.zarr", small_config(cells=600), BuildConfig(shard_cells=256), progress=False)
    root = zarr.open_group(out, mode="r")
    assert "truth" in root and (out / "annotations" / "pathways.gmt").is_file()
    assert open_truth(out).n_genes == 200
