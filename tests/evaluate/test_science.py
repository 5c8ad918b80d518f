"""Learning checks on the simulator's ground truth, small enough for the suite (marked `science`).

The full table, with longer training, is `python benchmarks/science.py`; here a 6,000-cell
atlas and a few hundred steps must already show the checks that are clear at that scale (the
count likelihood, response half-times, memory; the GRN's edges against base and partial
correlation); the others need the benchmark's scale to say anything (see its table).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vcell.atlas.synth import sample_condition
from vcell.evaluate.representation import PCA, embedding_scores, latent_of
from vcell.evaluate.science import codes, prepare_science, trained
from vcell.evaluate.science_checks import check_regulatory, check_stochastic
from vcell.evaluate.science_time import check_memory, check_temporal

pytestmark = pytest.mark.science


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return prepare_science(
        tmp_path_factory.mktemp("science"), cells=6000, steps=300, batch_size=256,
        model_overrides={"hidden_dim": 64, "n_layers": 1},
    )


def test_noisy_prior_holds_every_true_edge_and_twice_as_many_decoys(setup):
    lines = setup.prior.read_text().splitlines()[1:]
    pairs = {tuple(line.split("\t")[:2]) for line in lines}
    assert len(pairs) == len(lines) == 3 * len(setup.true_edges)
    assert setup.true_edges <= pairs


def test_held_out_time_is_only_in_the_test_split(setup):
    assert not (setup.train["time"] == 4.0).any()
    assert (setup.test["time"] == 4.0).any()


def test_simulated_conditions_match_the_atlas(setup):
    """Monte Carlo truth is drawn from the same mechanism and noise as the atlas's cells."""
    counts = sample_condition(setup.truth, 0, 4000, np.random.default_rng(0))
    cells = setup.train
    control = codes(setup, "perturbation").index("control")
    basal = (cells["perturbation"] == control) & (cells["time"] == 0) & torch.isnan(cells["hours_since_pulse"])
    observed = cells["library_size"][basal & (cells["cell_type"] == 0)]
    assert len(observed) > 50
    assert counts.sum(1).mean() == pytest.approx(observed.mean().item(), rel=0.1)


# Training seeds 0 / 1 / 2: stochastic -298.6 / -298.1 / -299.0 nats per cell, base (Gaussian) -482, per-gene NB
# knowing the library size -334.8, and the cell type too -323.9 (the strongest baseline).
def test_stochastic_beats_a_gaussian_and_a_cell_type_nb_on_held_out_counts(setup):
    row = check_stochastic(setup)
    assert row.baseline_name == "per-gene NB with library size and cell type"
    assert row.reference["per-gene NB with library size (no cell state)"] < row.baseline
    assert row.wins and row.enhanced > row.base + 50 and row.enhanced > row.baseline + 10  # nats per cell


# Seed-to-seed noise on this setup (seeds 0, 1, 2: training seed and truth draws; 300 steps; measured
# before the truth's conditions were coupled and before the models read the batch label, both of
# which these margins survived):
#   temporal  relative error of the 4 h change  0.749 0.754 0.752 (base 1.000; interpolation 1.84)
#             Pearson of the 4 h change          0.663 0.659 0.659 (interpolation 0.489 0.486 0.490)
#             half-time Spearman vs truth        0.534 0.301 0.461 (observed time course 0.04, base NaN)
#   memory    Pearson of primed - naive          0.849 0.822 0.845 (observed primed - naive 0.11, base 0)
# Asserted: margins well above those spreads. Before the Gaussian decoder started at the genes'
# means (`model.start_decoder_at`) and basal cells were response targets, the Pearson lost to
# interpolation here (0.40-0.42), the relative error was 0.95-0.98 and memory 0.42-0.49.
def test_temporal_reads_half_times_and_beats_interpolation_on_the_held_out_change(setup):
    row = check_temporal(setup)
    reference = row.reference
    assert row.enhanced < row.baseline - 0.5  # relative error vs interpolating the observed neighbours
    assert row.enhanced < row.base - 0.15  # vs base, which predicts no change (1.0)
    assert reference["pearson_temporal"] > reference["pearson_interpolated_in_log_time"] + 0.1
    assert reference["half_time_spearman_temporal"] > reference["half_time_spearman_observed_time_course"] + 0.2
    assert reference["half_time_spearman_temporal"] > 0.2


def test_memory_recovers_the_primed_minus_naive_difference(setup):
    row = check_memory(setup)
    assert row.wins and row.enhanced > row.baseline + 0.15  # observed primed - naive mean
    assert row.enhanced > row.base + 0.2 and row.enhanced > row.reference["temporal_without_memory"] + 0.2


def test_regulatory_edges_beat_base_and_partial_correlation(setup):
    """Measured over seeds 0, 1, 2 of this setup (prior decoys, initialisation and batches; ~20 s
    a seed), with the background-corrected edge score: AUPRC model 0.457 / 0.460 / 0.457 vs base
    0.366 / 0.363 / 0.371 (model - base 0.086-0.097; 0.440-0.446 before the correction); AUROC model
    0.616 / 0.620 / 0.609 vs partial correlation 0.530 / 0.540 / 0.528 and knockdown effect + partial
    correlation 0.551 / 0.565 / 0.546; sign agreement model 0.783-0.796 vs partial correlation 0.612.
    The best baseline here, co-expression background-corrected, is within noise of the model
    (AUPRC 0.448 / 0.446 / 0.454, AUROC 0.604 / 0.606 / 0.602), so it is not asserted; at the
    benchmark's 30,000 cells the model beats every baseline's AUPRC (see the README)."""
    row = check_regulatory(setup)
    reference = row.reference
    assert row.enhanced > row.base + 0.05
    assert reference["auroc_regulatory"] > reference["auroc_partial correlation"] + 0.05
    assert reference["auroc_regulatory"] > reference["auroc_knockdown effect + partial correlation"] + 0.03
    assert reference["sign_agreement_regulatory"] > reference["sign_agreement_partial correlation"] + 0.1


# Measured on this setup over seeds 0, 1, 2 (300 steps, hidden 64), against PCA's kNN accuracy
# 0.943 / 0.940 / 0.943, ARI 0.528 / 0.441 / 0.693 and NMI 0.588 / 0.603 / 0.718:
#   base  kNN 0.986 / 0.984 / 0.983, ARI 0.954 / 0.954 / 0.950, NMI 0.946 / 0.938 / 0.936
#   full  kNN 0.977 / 0.978 / 0.984, ARI 0.800 / 0.939 / 0.930, NMI 0.821 / 0.922 / 0.915
# Before a count model's decoder started at the genes' count shares and the hierarchical encoder
# at the encoder it wraps, `full` lost to PCA here (seeds 0 / 1: kNN 0.899 / 0.909). Asserted:
# both keep up with PCA, within those spreads.
@pytest.mark.parametrize("name", ["base", "full"])
def test_embedding_keeps_up_with_pca(setup, name):
    model, train, test = trained(setup, name), setup.train, setup.test
    labels_train, labels_test = train["cell_type"].numpy(), test["cell_type"].numpy()
    ours = embedding_scores(latent_of(model, train), labels_train, latent_of(model, test), labels_test, setup.seed)
    pca = PCA(train["x"].numpy(), model.config.dimensions()[2], seed=setup.seed)
    theirs = embedding_scores(pca.transform(train["x"].numpy()), labels_train, pca.transform(test["x"].numpy()),
                              labels_test, setup.seed)
    assert ours["knn_accuracy"] >= theirs["knn_accuracy"]
    assert ours["ari"] >= 0.9 * theirs["ari"] and ours["nmi"] >= 0.9 * theirs["nmi"]
