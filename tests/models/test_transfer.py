"""Weights between models on different vocabularies: every row whose gene ID or category name
both have is copied exactly, every other row keeps its fresh initialisation, whatever the
overlap and order; parameters that are not gene- or category-indexed must match exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcell.config.model import ColumnsConfig, ModelConfig
from vcell.config.train import FREEZABLE
from vcell.errors import VCellError
from vcell.models.model import VirtualCell
from vcell.models.spec import CONDITION_ROLES, Edges, ModelSpec
from vcell.models.transfer import freeze, transfer_weights, vocabulary_of
from vcell.models.zoo import build_model

POOL = [f"ENSG{i:04d}" for i in range(40)]  # genes both vocabularies draw from
PERTURBATIONS = [f"P{i}" for i in range(10)]
COLUMNS = ColumnsConfig()


def make_spec(genes: list[str], perturbations: list[str], seed: int) -> tuple[ModelSpec, dict]:
    """A spec on `genes` with two pathways, a GRN among them and `perturbations` (+ control)."""
    rng = np.random.default_rng(seed)
    n = len(genes)
    pathway_gene = np.arange(n)
    grn_source, grn_target = rng.integers(0, n, 2 * n), rng.integers(0, n, 2 * n)
    keep = grn_source != grn_target
    names = ["control", *perturbations]
    target = np.array([-1] + [genes.index(p) if p in genes else -1 for p in perturbations], dtype=np.int64)
    spec = ModelSpec(
        gene_ids=list(genes), inputs=frozenset(CONDITION_ROLES),
        pathway_names=["PW_A", "PW_B"], gene_pathway=Edges(pathway_gene, pathway_gene % 2),
        compartment_names=["C1"], pathway_compartment=Edges(np.arange(2), np.zeros(2, dtype=np.int64)),
        grn=Edges(grn_source[keep], grn_target[keep], np.ones(int(keep.sum()))),
        perturbation_gene=target, control_code=0,
    )
    return spec, {"perturbation": names}


def built(spec: ModelSpec, enhancements: list[str], seed: int) -> VirtualCell:
    torch.manual_seed(seed)
    return build_model(ModelConfig(name="custom", enhancements=enhancements, size="tiny"), spec)


vocabularies = st.tuples(
    st.lists(st.sampled_from(POOL), min_size=4, max_size=25, unique=True),
    st.lists(st.sampled_from(POOL), min_size=4, max_size=25, unique=True),
    st.lists(st.sampled_from(PERTURBATIONS), max_size=6, unique=True),
    st.lists(st.sampled_from(PERTURBATIONS), max_size=6, unique=True),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vocabularies, st.sampled_from([["hierarchical", "regulatory"], ["stochastic", "temporal"]]))
def test_matched_rows_are_copied_exactly_and_the_others_untouched(case, enhancements):
    old_genes, new_genes, old_perturbations, new_perturbations = case
    old_spec, old_categories = make_spec(old_genes, old_perturbations, seed=1)
    new_spec, new_categories = make_spec(new_genes, new_perturbations, seed=2)
    old, new = built(old_spec, enhancements, 0), built(new_spec, enhancements, 1)
    fresh = {name: value.clone() for name, value in new.state_dict().items()}
    report = transfer_weights(new, old.state_dict(), vocabulary_of(old_spec, old_categories, COLUMNS),
                              vocabulary_of(new_spec, new_categories, COLUMNS))

    # the fresh mask tells the truth about every entry of every parameter
    for name, parameter in new.named_parameters():
        mask = report.fresh[name]
        assert torch.equal(parameter[mask], fresh[name][mask]), name
    # genes by ID: decoder rows and encoder columns
    decoder = f"decoder.{len(new.decoder) - 1}.weight"
    encoder = "encoder.inner.network.0.weight" if "hierarchical" in enhancements else "encoder.network.0.weight"
    state, old_state = new.state_dict(), old.state_dict()
    for position, gene in enumerate(new_genes):
        if gene in old_genes:
            assert torch.equal(state[decoder][position], old_state[decoder][old_genes.index(gene)])
            assert torch.equal(state[encoder][:, position], old_state[encoder][:, old_genes.index(gene)])
        else:
            assert torch.equal(state[decoder][position], fresh[decoder][position])
            assert torch.equal(state[encoder][:, position], fresh[encoder][:, position])
    assert report.coverage["gene"] == {"matched": len(set(old_genes) & set(new_genes)), "total": len(new_genes),
                                       "pretrained": len(old_genes)}
    if "regulatory" in enhancements:
        check_edges(old, new, old_spec, new_spec, fresh)


def check_edges(old, new, old_spec, new_spec, fresh) -> None:
    """A GRN edge keeps its learned weight when its (source, target) IDs are an edge of the old
    model too; an edge listed k times takes the old model's k-th copy while there is one."""
    name = "gene_terms.0.edges.raw_weight"

    def occurrences(spec: ModelSpec) -> dict:
        seen: dict = {}
        for position, (s, t) in enumerate(zip(spec.grn.source, spec.grn.target)):
            seen.setdefault((spec.gene_ids[s], spec.gene_ids[t]), []).append(position)
        return seen

    before = occurrences(old_spec)
    for pair, positions in occurrences(new_spec).items():
        for k, position in enumerate(positions):
            previous = before.get(pair, [])
            expected = old.state_dict()[name][previous[k]] if k < len(previous) else fresh[name][position]
            assert torch.equal(new.state_dict()[name][position], expected)


def test_perturbation_rows_move_by_name_and_new_categories_get_fresh_rows():
    old_spec, old_categories = make_spec(POOL[:10], ["P1", "P2", "P3"], seed=1)
    new_spec, new_categories = make_spec(POOL[:10], ["P3", "P9", "P1"], seed=1)
    old, new = built(old_spec, [], 0), built(new_spec, [], 1)
    fresh = new.dynamics.embedding.weight.detach().clone()
    report = transfer_weights(new, old.state_dict(), vocabulary_of(old_spec, old_categories, COLUMNS),
                              vocabulary_of(new_spec, new_categories, COLUMNS))
    old_rows, new_rows = old.dynamics.embedding.weight, new.dynamics.embedding.weight  # control has no row
    assert torch.equal(new_rows[0], old_rows[2]) and torch.equal(new_rows[2], old_rows[0])  # P3, P1
    assert torch.equal(new_rows[1], fresh[1])  # P9 is new
    assert report.coverage["perturbation"] == {"matched": 3, "total": 4, "pretrained": 4}  # control included
    # the copied rows carry what the pretrained model learned; P9's row is its random start and moves nothing
    assert new.dynamics.trained_cells.tolist() == [1.0, 0.0, 1.0]


def test_a_different_hidden_width_is_refused_naming_the_parameter():
    spec, categories = make_spec(POOL[:10], ["P1"], seed=1)
    small = build_model(ModelConfig(size="tiny", hidden_dim=16), spec)
    wide = build_model(ModelConfig(size="tiny", hidden_dim=24), spec)
    vocabulary = vocabulary_of(spec, categories, COLUMNS)
    with pytest.raises(VCellError, match=r"'encoder.network.0.weight' has shape \(16, 10\), this model's \(24, 10\)"):
        transfer_weights(wide, small.state_dict(), vocabulary, vocabulary)


def test_freezing_keeps_pretrained_entries_fixed_and_trains_new_rows():
    old_spec, old_categories = make_spec(POOL[:10], [], seed=1)
    new_spec, new_categories = make_spec(POOL[5:15], [], seed=1)
    old, new = built(old_spec, [], 0), built(new_spec, [], 1)
    report = transfer_weights(new, old.state_dict(), vocabulary_of(old_spec, old_categories, COLUMNS),
                              vocabulary_of(new_spec, new_categories, COLUMNS))
    frozen = freeze(new, ["encoder", "latent"], report.fresh)
    first = "encoder.network.0.weight"
    assert first in frozen.partly and frozen.partly[first] == 5 * new.encoder.network[0].weight.shape[0]
    assert "latent.project.weight" in frozen.whole and not new.latent.project.weight.requires_grad
    before = {name: value.detach().clone() for name, value in new.named_parameters()}
    optimizer = torch.optim.SGD([p for p in new.parameters() if p.requires_grad], lr=0.1)
    new.train()
    new({"x": torch.rand(16, 10), "library_size": torch.full((16,), 100.0)}).loss.backward()
    optimizer.step()
    weight, mask = new.encoder.network[0].weight, report.fresh[first]
    assert torch.equal(weight[~mask], before[first][~mask])  # the 5 shared genes' columns stay
    assert not torch.equal(weight[mask], before[first][mask])  # the 5 new genes' columns learn
    assert torch.equal(new.latent.project.weight, before["latent.project.weight"])
    assert not torch.equal(new.decoder[-1].weight, before[f"decoder.{len(new.decoder) - 1}.weight"])


def test_the_freezable_slots_are_the_models_top_level_modules():
    spec, _ = make_spec(POOL[:10], ["P1"], seed=1)
    model = build_model(ModelConfig(name="full", size="tiny"), spec)
    assert set(FREEZABLE) == {name for name, _ in model.named_children()}


def test_batch_offsets_move_by_batch_name_and_new_batches_start_at_no_offset():
    old_spec, categories = make_spec(POOL[:10], ["P1"], seed=1)
    old_spec.batch_names, new_spec = ["lane1", "lane2"], make_spec(POOL[:10], ["P1"], seed=1)[0]
    new_spec.batch_names = ["lane3", "lane2"]
    config = ModelConfig(name="base", size="tiny", batch_covariate=True)
    old, new = build_model(config, old_spec), build_model(config, new_spec)
    with torch.no_grad():
        old.batch_offset.scaled_offset.normal_()
    report = transfer_weights(new, old.state_dict(), vocabulary_of(old_spec, categories, COLUMNS),
                              vocabulary_of(new_spec, categories, COLUMNS))
    assert torch.equal(new.batch_offset.scaled_offset[1], old.batch_offset.scaled_offset[1])  # lane2
    assert torch.equal(new.batch_offset.scaled_offset[0], torch.zeros(10))  # lane3: not seen in pretraining
    assert report.coverage["batch"] == {"matched": 1, "total": 2, "pretrained": 2}
