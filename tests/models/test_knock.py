"""The perturbed gene read at its measured knock-down, and unseen gene perturbations knocked in silico (`vcell.models.knock`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.models.test_zoo import N_CELLS, SPEC, random_batch
from vcell.config.model import ModelConfig
from vcell.models.inputs import CellInputs, Conditions
from vcell.models.knock import MIN_LEVEL, GeneKnock, Knock, knock_entries
from vcell.models.zoo import build_model

CONTROL = 0


def knocked_cells(fractions: dict[int, float], gene_of: np.ndarray, n_genes: int, zero: torch.Tensor, cells: int = 6,
                  scale: torch.Tensor | None = None) -> CellInputs:
    """Basal cells at levels 1..G above zero, then `cells` cells per perturbation code of
    `fractions` with its gene (`gene_of`) at that fraction of its level; values `scale` x level +
    zero (an affine normalisation)."""
    level = torch.arange(1, n_genes + 1, dtype=torch.float32).repeat(2 * cells, 1)  # (basal cells, G)
    codes = [CONTROL] * len(level)
    for code, fraction in fractions.items():
        knocked = torch.arange(1, n_genes + 1, dtype=torch.float32).repeat(cells, 1)
        knocked[:, int(gene_of[code])] *= fraction
        level = torch.cat([level, knocked])
        codes += [code] * cells
    scale = torch.ones(n_genes) if scale is None else scale
    x = level * scale + zero
    # counts in proportion to the level, of the same library: each share falls by the level's fraction
    return CellInputs(x=x, counts=level.round(), library=torch.full((len(x),), 1e3), context=None,
                      conditions=Conditions(perturbation=torch.tensor(codes)))


def typical_share(knock: GeneKnock) -> float | None:
    """The median measured gene's share of its level (None: none measured)."""
    measured = knock.ratios(0, 2, MIN_LEVEL)
    return None if measured is None else measured[1]


def gene_of_code(n_genes: int) -> np.ndarray:
    return np.arange(-1, n_genes)  # code 0: control; code c: gene c - 1


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.0, 3.0), min_size=1, max_size=5), st.floats(-3.0, 3.0), st.floats(0.2, 5.0))
def test_the_measured_knock_is_the_median_share_of_its_level_a_perturbed_gene_keeps(fractions, offset, stretch):
    n_genes = 8
    by_code = {code + 1: fraction for code, fraction in enumerate(fractions)}
    knock = GeneKnock(gene_of_code(n_genes), CONTROL, n_genes)
    zero = torch.full((n_genes,), offset)
    cells = knocked_cells(by_code, gene_of_code(n_genes), n_genes, zero, scale=torch.full((n_genes,), stretch))
    knock.observe(cells, zero)
    # the same whatever affine normalisation the loader applied (log1p, z-score: a level above zero)
    assert typical_share(knock) == pytest.approx(float(np.median(fractions)), abs=1e-4)
    folds, typical = knock.ratios(4, 5, 0.0)  # the shares of the cells' counts the genes kept
    basal = cells.counts[0, :len(fractions)]
    kept = torch.stack([cells.counts[12 + 6 * gene, gene] for gene in range(len(fractions))]) / basal
    torch.testing.assert_close(folds[:len(fractions)], kept)
    assert typical == pytest.approx(float(kept.median() if len(kept) % 2 else kept.quantile(0.5)), abs=1e-5)


def test_no_knock_is_measured_from_too_few_knocked_cells_or_none():
    n_genes = 6
    zero = torch.zeros(n_genes)
    knock = GeneKnock(gene_of_code(n_genes), CONTROL, n_genes)
    assert typical_share(knock) is None  # a fresh model: no in-silico route
    knock.observe(knocked_cells({3: 0.5}, gene_of_code(n_genes), n_genes, zero, cells=2), zero)
    assert typical_share(knock) is None  # 2 cells: below MIN_CELLS
    knock.observe(knocked_cells({3: 0.5}, gene_of_code(n_genes), n_genes, zero, cells=2), zero)
    assert typical_share(knock) == pytest.approx(0.5)
    shares, typical = knock.ratios(0, 2, 1e-3)
    assert shares[2] == pytest.approx(0.5) and torch.isnan(shares[torch.arange(n_genes) != 2]).all()


def test_knock_entries_moves_each_cells_own_gene_only():
    values = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    zero = torch.tensor([1.0, 0.0, -1.0, 0.0])
    knocked = knock_entries(values, torch.tensor([2, -1, 0]), 0.25, zero)
    expected = values.clone()
    expected[0, 2] = -1.0 + 0.25 * (2.0 + 1.0)
    expected[2, 0] = 1.0 + 0.25 * (8.0 - 1.0)
    torch.testing.assert_close(knocked, expected)


def test_a_count_head_reads_the_knocked_gene_at_its_measured_share_of_the_counts_before():
    torch.manual_seed(0)
    head = build_model(ModelConfig(name="stochastic", size="tiny"), SPEC).head
    basal_scores = torch.randn(4, SPEC.n_genes)
    scores = basal_scores + 0.1 * torch.randn(4, SPEC.n_genes)  # the perturbed state's
    library, z = torch.full((4,), 2e3), torch.zeros(4, 8)
    before = head.predict(basal_scores, z, basal_scores, library)
    current = head.predict(scores, z, basal_scores, library)
    folds = torch.tensor([0.2, 0.05, 0.3, 1.5])
    knock = Knock(torch.tensor([3, 50, -1, 119]), torch.full((4,), 0.5), folds, torch.zeros(4, dtype=torch.bool))
    after = head.predict(head.knock(scores, current, before, knock, torch.zeros(SPEC.n_genes)), z, basal_scores, library)
    for row, (gene, fold) in enumerate(zip(knock.genes.tolist(), folds.tolist())):
        if gene >= 0:  # the other genes' shares close up by the little the gene gave away (or took)
            share = torch.expm1(after.expression[row, gene]) / torch.expm1(before.expression[row, gene])
            assert share.item() == pytest.approx(fold, rel=0.03)
    torch.testing.assert_close(after.expression[2], current.expression[2])
    no_counts = Knock(knock.genes, knock.fractions, None, knock.unseen)  # trained without counts: as decoded
    torch.testing.assert_close(head.knock(scores, current, before, no_counts, torch.zeros(SPEC.n_genes)), scores)


def measured_model(name: str = "base", **settings) -> torch.nn.Module:
    """A tiny model trained one step without perturbation 5; perturbed genes measured keeping 0.25
    (code 4's gene) and 0.75 (code 6's) of their level: typically 0.5."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, size="tiny", **settings), SPEC)
    batch = random_batch(0)
    batch["perturbation"] = torch.where(batch["perturbation"] == 5, 4, batch["perturbation"])
    model.train()
    model(batch)
    if model.gene_knock is not None:
        assert model.gene_knock.sums[1].max() > 0  # the training step counted its basal cells
        model.gene_knock.sums.zero_()
        cells = knocked_cells({4: 0.25, 6: 0.75}, SPEC.perturbation_gene, SPEC.n_genes, model.zero_level)
        model.gene_knock.observe(cells, model.zero_level)
    return model.eval()


def under(model, code: int) -> torch.Tensor:
    return model.predict(random_batch(1), Conditions(perturbation=torch.full((N_CELLS,), code))).expression


def basal_decoding(model, gene: int) -> torch.Tensor:
    """(B,) the gene's level in each cell of random_batch(1) as decoded before any perturbation."""
    with model.evaluating():
        cells = model.inputs(random_batch(1))
        return model.gene_scores(model.encode(cells.x, cells)[0], None, cells.batch)[:, gene]


def test_an_unseen_gene_perturbation_knocks_its_gene_down_and_reads_the_state_with_it_down():
    model = measured_model()
    assert typical_share(model.gene_knock) == pytest.approx(0.5)
    gene = int(SPEC.perturbation_gene[5])
    control, knocked = under(model, SPEC.control_code), under(model, 5)
    zero = model.zero_level[gene]
    # the gene at the typical share of its level before the perturbation
    torch.testing.assert_close(knocked[:, gene], zero + 0.5 * (basal_decoding(model, gene) - zero))
    others = torch.ones(SPEC.n_genes, dtype=torch.bool)
    others[gene] = False
    assert (knocked[:, others] - control[:, others]).abs().max() > 0  # the state read with it down moved the rest
    batch = random_batch(1)
    with model.evaluating():  # that state: the cells encoded with the gene at half its level
        cells = model.inputs(batch)
        state = model.encode(knock_entries(cells.x, torch.full((N_CELLS,), gene), 0.5, model.zero_level), cells)[0]
        decoded = model.gene_scores(state, None, cells.batch)
    torch.testing.assert_close(knocked[:, others], decoded[:, others])


def test_a_seen_gene_perturbation_moves_its_state_and_reads_its_gene_at_its_own_measured_share():
    model = measured_model()
    gene = int(SPEC.perturbation_gene[4])
    shifted = under(model, 4)
    zero = model.zero_level[gene]
    torch.testing.assert_close(shifted[:, gene], zero + 0.25 * (basal_decoding(model, gene) - zero))
    off = measured_model(in_silico_knock=False)  # the same model but for the knock: the shift alone
    others = torch.arange(SPEC.n_genes) != gene
    torch.testing.assert_close(shifted[:, others], under(off, 4)[:, others])


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


def test_a_count_model_reads_a_seen_gene_at_its_measured_share_of_the_counts():
    model = measured_model("stochastic")
    gene = int(SPEC.perturbation_gene[4])
    fold = model.gene_knock.ratios(4, 5, 0.0)[0][gene]
    assert fold == pytest.approx(28 / 113)  # its counts, 113 in basal cells, 28 in knocked ones
    shifted, control = under(model, 4), under(model, SPEC.control_code)  # control: the cell before it
    torch.testing.assert_close(torch.expm1(shifted[:, gene]) / torch.expm1(control[:, gene]),
                               torch.full((N_CELLS,), fold.item()), rtol=0.02, atol=0)


def test_the_sums_stay_float32_and_are_measured_under_a_bf16_cast():
    model = measured_model()
    model.to(torch.bfloat16)
    assert model.gene_knock.sums.dtype == torch.float32
    cells = knocked_cells({4: 0.25, 6: 0.75}, SPEC.perturbation_gene, SPEC.n_genes, model.zero_level)
    model.gene_knock.sums.zero_()
    model.gene_knock.observe(dataclasses.replace(cells, x=cells.x.to(torch.bfloat16)), model.zero_level)
    assert typical_share(model.gene_knock) == pytest.approx(0.5, abs=0.01)  # bf16 inputs, float32 sums
