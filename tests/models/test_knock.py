"""In-silico knock-down of a gene perturbation no training cell carried (`vcell.models.knock`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.models.test_zoo import N_CELLS, SPEC, random_batch
from vcell.config.model import ModelConfig
from vcell.models.inputs import CellInputs, Conditions
from vcell.models.knock import GeneKnock, knock_entries
from vcell.models.zoo import build_model

CONTROL = 0


def knocked_cells(fractions: dict[int, float], n_genes: int, zero: torch.Tensor, cells: int = 6,
                  scale: torch.Tensor | None = None) -> CellInputs:
    """Basal cells at levels 1..G above zero, then `cells` cells per perturbation code (its gene in
    `spec`: code = gene + 1 here) with the gene at its fraction of that level; values
    `scale` x level + zero (an affine normalisation)."""
    level = torch.arange(1, n_genes + 1, dtype=torch.float32).repeat(2 * cells, 1)  # (basal cells, G)
    codes = [CONTROL] * len(level)
    for gene, fraction in fractions.items():
        knocked = torch.arange(1, n_genes + 1, dtype=torch.float32).repeat(cells, 1)
        knocked[:, gene] *= fraction
        level = torch.cat([level, knocked])
        codes += [gene + 1] * cells
    scale = torch.ones(n_genes) if scale is None else scale
    x = level * scale + zero
    return CellInputs(x=x, counts=None, library=torch.full((len(x),), 1e3), context=None,
                      conditions=Conditions(perturbation=torch.tensor(codes)))


def gene_of_code(n_genes: int) -> np.ndarray:
    return np.arange(-1, n_genes)  # code 0: control; code c: gene c - 1


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.0, 3.0), min_size=1, max_size=5), st.floats(-3.0, 3.0), st.floats(0.2, 5.0))
def test_the_measured_knock_is_the_median_share_of_its_level_a_perturbed_gene_keeps(fractions, offset, stretch):
    n_genes = 8
    by_gene = dict(enumerate(fractions))
    knock = GeneKnock(gene_of_code(n_genes), CONTROL, n_genes)
    zero = torch.full((n_genes,), offset)
    knock.observe(knocked_cells(by_gene, n_genes, zero, scale=torch.full((n_genes,), stretch)), zero)
    # the same whatever affine normalisation the loader applied (log1p, z-score: a level above zero)
    assert knock.fraction() == pytest.approx(float(np.median(fractions)), abs=1e-4)


def test_no_knock_is_measured_from_too_few_knocked_cells_or_none():
    n_genes = 6
    zero = torch.zeros(n_genes)
    knock = GeneKnock(gene_of_code(n_genes), CONTROL, n_genes)
    assert knock.fraction() is None  # a fresh model: no in-silico route
    knock.observe(knocked_cells({2: 0.5}, n_genes, zero, cells=2), zero)
    assert knock.fraction() is None  # 2 cells: below MIN_CELLS
    knock.observe(knocked_cells({2: 0.5}, n_genes, zero, cells=2), zero)
    assert knock.fraction() == pytest.approx(0.5)


def test_knock_entries_moves_each_cells_own_gene_only():
    values = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    zero = torch.tensor([1.0, 0.0, -1.0, 0.0])
    knocked = knock_entries(values, torch.tensor([2, -1, 0]), 0.25, zero)
    expected = values.clone()
    expected[0, 2] = -1.0 + 0.25 * (2.0 + 1.0)
    expected[2, 0] = 1.0 + 0.25 * (8.0 - 1.0)
    torch.testing.assert_close(knocked, expected)


def test_a_count_head_reads_the_knocked_gene_at_the_fraction_of_its_log1p_level():
    torch.manual_seed(0)
    head = build_model(ModelConfig(name="stochastic", size="tiny"), SPEC).head
    scores = torch.randn(4, SPEC.n_genes)
    library, z = torch.full((4,), 2e3), torch.zeros(4, 8)
    before = head.predict(scores, z, scores, library)
    genes = torch.tensor([3, 50, -1, 119])
    after = head.predict(head.knock(scores, before, genes, 0.3, torch.zeros(SPEC.n_genes)), z, scores, library)
    for row, gene in enumerate(genes.tolist()):
        if gene >= 0:  # the other genes' shares close up by the little the gene gave away
            assert after.expression[row, gene] == pytest.approx(0.3 * before.expression[row, gene].item(), rel=0.03)
    torch.testing.assert_close(after.expression[2], before.expression[2])


def measured_model(name: str = "base", **settings) -> torch.nn.Module:
    """A tiny model trained one step without perturbation 5, its knock measured at 0.25."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, size="tiny", **settings), SPEC)
    batch = random_batch(0)
    batch["perturbation"] = torch.where(batch["perturbation"] == 5, 4, batch["perturbation"])
    model.train()
    model(batch)
    if model.gene_knock is not None:
        gene = int(SPEC.perturbation_gene[4])
        cells = knocked_cells({gene: 0.25}, SPEC.n_genes, model.zero_level)
        cells.conditions.perturbation = torch.where(cells.conditions.perturbation > 0, 4, SPEC.control_code)
        assert model.gene_knock.sums[1].max() > 0  # the training step counted its basal cells
        model.gene_knock.sums.zero_()
        model.gene_knock.observe(cells, model.zero_level)
    return model.eval()


def under(model, code: int) -> torch.Tensor:
    return model.predict(random_batch(1), Conditions(perturbation=torch.full((N_CELLS,), code))).expression


def test_an_unseen_gene_perturbation_knocks_its_gene_down_and_reads_the_state_with_it_down():
    model = measured_model()
    assert model.gene_knock.fraction() == pytest.approx(0.25)
    gene = int(SPEC.perturbation_gene[5])
    control, knocked = under(model, SPEC.control_code), under(model, 5)
    zero = model.zero_level[gene]
    assert torch.all(knocked[:, gene] - zero < control[:, gene] - zero)  # down, towards zero
    others = torch.ones(SPEC.n_genes, dtype=torch.bool)
    others[gene] = False
    assert (knocked[:, others] - control[:, others]).abs().max() > 0  # the state read with it down moved the rest
    # the gene read at the fraction of the level decoded from that state
    batch = random_batch(1)
    with model.evaluating():
        cells = model.inputs(batch)
        genes = torch.full((N_CELLS,), gene)
        state = model.encode(knock_entries(cells.x, genes, 0.25, model.zero_level), cells)[0]
        decoded = model.gene_scores(state, None, cells.batch)[:, gene]
    torch.testing.assert_close(knocked[:, gene], zero + 0.25 * (decoded - zero))


def test_without_the_knock_switched_on_or_measured_an_unseen_perturbation_predicts_no_change():
    off = measured_model(in_silico_knock=False)
    assert off.gene_knock is None
    torch.testing.assert_close(under(off, 5), under(off, SPEC.control_code))
    model = measured_model()
    saved = {key: value for key, value in model.state_dict().items() if key != "gene_knock.sums"}
    old = build_model(ModelConfig(name="base", size="tiny"), SPEC)
    old.load_state_dict(saved)  # saved before the knock was measured
    old.eval()
    torch.testing.assert_close(under(old, 5), under(old, SPEC.control_code))
    assert not torch.allclose(under(model, 4), under(model, SPEC.control_code))  # a trained row still moves


def test_a_network_model_carries_unseen_perturbations_itself():
    assert build_model(ModelConfig(name="regulatory", size="tiny"), SPEC).gene_knock is None
