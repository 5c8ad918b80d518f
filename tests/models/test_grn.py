"""The network's helpers (vcell.models.grn): measurement reliability, gradient scaling, the background
correction of edge scores, the edge table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vcell.config.model import ModelConfig
from vcell.models.enhancements.regulatory import RegulatoryPropagation
from vcell.models.grn import background_corrected, edge_table, measurement_reliability, scale_gradient
from vcell.models.spec import reference_spec


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), depth=st.sampled_from([300.0, 3000.0, 30000.0]), share=st.floats(1e-3, 0.05))
def test_measurement_reliability_is_near_0_for_counting_noise_and_near_1_for_real_variation(seed, depth, share):
    """Three genes with the same mean share of the library: one constant in every cell (only counting
    noise), one varying x2-x3 between cells, one whose counts are nearly all zeros."""
    rng = np.random.default_rng(seed)
    cells = 4000
    library = rng.uniform(0.5, 1.5, cells) * depth
    varying = share * np.exp(rng.normal(0.0, 1.0, cells))  # real cell-to-cell variation
    rates = np.stack([np.full(cells, share), varying, np.full(cells, 0.2 / depth)], axis=1) * library[:, None]
    counts = torch.as_tensor(rng.poisson(rates), dtype=torch.float32)
    reliability = measurement_reliability(counts, torch.as_tensor(library, dtype=torch.float32))
    assert ((reliability >= 0) & (reliability <= 1)).all()
    assert reliability[0] < 0.2 and reliability[2] < 0.2, reliability
    expected = 1 - 1 / (1 + share * depth * (np.e - 1))  # variance of a log-normal share vs its Poisson noise, roughly
    assert reliability[1] > min(0.8, expected - 0.2), (reliability, expected)


def test_a_gene_that_never_varies_is_unreliable_not_a_division_by_zero():
    counts = torch.tensor([[5.0, 0.0], [7.0, 0.0], [6.0, 0.0]])
    reliability = measurement_reliability(counts, torch.tensor([100.0, 120.0, 90.0]))
    assert torch.isfinite(reliability).all() and reliability[1] == 0


@given(share=st.floats(0.0, 1.0))
def test_scale_gradient_keeps_the_value_and_scales_only_the_gradient(share):
    value = torch.tensor([1.5, -2.0], requires_grad=True)
    scaled = scale_gradient(value, torch.tensor(share))
    assert torch.allclose(scaled, value)
    (scaled * torch.tensor([3.0, 4.0])).sum().backward()
    assert torch.allclose(value.grad, share * torch.tensor([3.0, 4.0]))


def test_edge_table_lists_every_prior_edge_strongest_first_with_the_learned_signed_weights():
    spec = reference_spec(40, n_perturbations=4)
    propagation = RegulatoryPropagation(spec, ModelConfig(name="regulatory"))
    with torch.no_grad():
        propagation.edges.weight.copy_(torch.linspace(-1.0, 1.0, len(spec.grn)))
    table = edge_table(propagation, spec)
    assert len(table) == len(spec.grn)
    assert list(table.columns) == ["source", "target", "prior_sign", "weight", "score", "true_level_weight",
                                   "source_reliability", "standardised_weight"]
    assert (table["score"].diff().dropna() <= 0).all()
    ids = np.asarray(spec.gene_ids)
    assert set(table["source"]) <= set(ids[spec.grn.source]) and set(table["target"]) <= set(ids[spec.grn.target])
    # each row is one edge of the prior with the module's weight (x its gain): the table is the
    # edges in the spec's order, sorted by score (stable, so ties keep that order)
    weight, score = propagation.edge_weight().detach().numpy(), propagation.edge_score().detach().numpy()
    order = np.argsort(-score, kind="stable")
    assert np.allclose(table["weight"], weight[order]) and np.allclose(table["score"], score[order])
    assert (table["source"] == ids[spec.grn.source][order]).all() and (table["target"] == ids[spec.grn.target][order]).all()


def test_edge_table_gives_each_edge_its_effect_per_unit_of_the_source_true_level():
    """Counting noise dilutes a slope fitted on measured levels by the source's reliability r: the
    table carries r and the weight the propagation applies to a true change, weight / max(r, floor)."""
    spec = reference_spec(40, n_perturbations=4)
    propagation = RegulatoryPropagation(spec, ModelConfig(name="regulatory"))  # dilution_correction 0.8: floor 0.2
    reliability = torch.linspace(0.0, 1.0, spec.n_genes)
    with torch.no_grad():
        propagation.edges.weight.copy_(torch.linspace(-1.0, 1.0, len(spec.grn)))
        propagation.level_reliability.copy_(reliability)
    table = edge_table(propagation, spec)
    by_edge = {(source, target): row for source, target, row in zip(table["source"], table["target"], table.itertuples())}
    ids = np.asarray(spec.gene_ids)
    weight = propagation.edge_weight().detach().numpy()
    for edge, (source, target) in enumerate(zip(spec.grn.source, spec.grn.target)):
        row = by_edge[ids[source], ids[target]]
        r = float(reliability[source])
        assert row.source_reliability == pytest.approx(r)
        assert row.true_level_weight == pytest.approx(weight[edge] / max(r, 0.2), rel=1e-5)
    off = RegulatoryPropagation(spec, ModelConfig(name="regulatory", regulatory={"dilution_correction": 0.0}))
    off.load_state_dict(propagation.state_dict())
    assert np.allclose(edge_table(off, spec)["true_level_weight"], edge_table(off, spec)["weight"])  # no correction: the same


def test_an_edge_into_a_target_that_barely_varies_does_not_top_the_ranking():
    """The score standardises by the target's sd, floored at a tenth of the median gene's: a gene
    detected in a handful of cells (sd ~1e-5) leaves its edges' weights ~0 and unconstrained, and
    dividing by its sd put those edges first (the demo atlas's top 20 had median |W| 1e-4)."""
    spec = reference_spec(40, n_perturbations=4)
    propagation = RegulatoryPropagation(spec, ModelConfig(name="regulatory"))
    quiet = int(np.setdiff1d(spec.grn.target, spec.grn.source)[0])  # a regulated gene that regulates nothing
    sd = torch.full((spec.n_genes,), 0.5)
    sd[quiet] = 1e-5
    weight = torch.full((len(spec.grn),), 0.3)
    weight[torch.as_tensor(spec.grn.target) == quiet] = 1e-4
    with torch.no_grad():
        propagation.level_sd.copy_(sd)
        propagation.edges.weight.copy_(weight / propagation.gain)
    score = propagation.edge_score().detach().numpy()
    into_quiet = np.asarray(spec.grn.target) == quiet
    assert score[into_quiet].max() < score[~into_quiet].min()
    standardised = propagation.standardised_weight().detach().numpy()
    assert np.allclose(standardised[into_quiet], 1e-4 * 0.5 / (0.1 * 0.5), rtol=1e-4)  # its sd floored at 0.1 x median
    assert np.allclose(standardised[~into_quiet], 0.3, rtol=1e-4)  # the others: W sd_s / sd_t as before
    assert np.allclose(edge_table(propagation, spec).sort_values(["source", "target"])["standardised_weight"],
                       pd.DataFrame({"s": np.asarray(spec.gene_ids)[spec.grn.source], "t": np.asarray(spec.gene_ids)[
                           spec.grn.target], "v": standardised}).sort_values(["s", "t"])["v"])


@st.composite
def networks(draw):
    """(values, source, target) of a network of up to 40 edges among up to 12 genes, some values 0."""
    size = draw(st.integers(1, 40))
    genes = draw(st.integers(2, 12))
    source = draw(st.lists(st.integers(0, genes - 1), min_size=size, max_size=size))
    target = draw(st.lists(st.integers(0, genes - 1), min_size=size, max_size=size))
    values = draw(st.lists(st.one_of(st.just(0.0), st.floats(1e-4, 1e3)), min_size=size, max_size=size))
    as_tensor = lambda items, dtype: torch.tensor(items, dtype=dtype)  # noqa: E731
    return as_tensor(values, torch.float64), as_tensor(source, torch.long), as_tensor(target, torch.long)


@settings(max_examples=60, deadline=None)
@given(network=networks(), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_background_correction_is_scale_free_order_free_and_zero_only_where_the_value_is(network, scale, seed):
    values, source, target = network
    corrected = background_corrected(values, source, target)
    assert corrected.shape == values.shape and torch.isfinite(corrected).all() and (corrected >= 0).all()
    assert torch.equal(corrected == 0, values == 0)
    assert torch.allclose(background_corrected(values * scale, source, target), corrected, rtol=1e-9)
    genes = int(max(source.max(), target.max())) + 1 + seed % 5  # the model passes its gene count
    assert torch.equal(background_corrected(values, source, target, n_nodes=genes), corrected)
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(values)))
    assert torch.allclose(background_corrected(values[order], source[order], target[order]), corrected[order])


@given(regulator_scale=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=5),
       target_scale=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=6))
def test_background_correction_halves_each_regulators_and_each_targets_own_scale(regulator_scale, target_scale):
    """Every regulator -> target pair with value a_s x b_t (a regulator that acts strongly on all its
    targets, a target every regulator moves a lot): the score is the geometric mean of the edge
    against its regulator's edges and against its target's, sqrt(a_s b_t / (rms(a) rms(b))), so on a
    log scale each node's own scale counts half (the correction that ranked best, see the module doc)."""
    a, b = torch.tensor(regulator_scale, dtype=torch.float64), torch.tensor(target_scale, dtype=torch.float64)
    source = torch.arange(len(a)).repeat_interleave(len(b))
    target = torch.arange(len(b)).repeat(len(a))
    corrected = background_corrected(a[source] * b[target], source, target)
    rms = lambda values: values.pow(2).mean().sqrt()  # noqa: E731
    assert torch.allclose(corrected, (a[source] * b[target] / (rms(a) * rms(b))).sqrt(), rtol=1e-9)
    single = background_corrected(torch.tensor([0.3]), torch.tensor([0]), torch.tensor([1]))
    assert torch.allclose(single, torch.tensor([1.0]))  # its regulator's and its target's only edge
