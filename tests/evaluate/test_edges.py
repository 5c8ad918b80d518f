"""The network-inference baselines: a knockdown's effect on each target, and its sum with partial correlation."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vcell.evaluate.edges import combined_evidence, knockdown_effects, with_background_corrected


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), groups=st.integers(1, 4), shift=st.floats(1.5, 3.0), cells=st.integers(40, 120))
@example(seed=57805, groups=4, shift=2.0, cells=117)  # the noise gene's z was 4.53 here
def test_a_knockdowns_targets_get_large_z_and_its_other_genes_and_unknocked_regulators_none(seed, groups, shift, cells):
    """Gene 0 is knocked down (code 1) and lowers genes 3-4 by `shift` sd in every group; gene 1 is
    a regulator nobody knocked down; gene 2 is constant. Edges: 0->3, 0->4 (real), 0->5, 0->2, 1->3."""
    rng = np.random.default_rng(seed)
    n_genes = 8
    group = np.repeat(np.arange(groups), 2 * cells)
    perturbation = np.tile(np.repeat([0, 1], cells), groups)  # 0 = control
    x = rng.normal(size=(len(group), n_genes)) + group[:, None]  # groups differ in level: compared within
    x[:, 2] = 1.0
    x[perturbation == 1, 3:5] -= shift
    source, target = np.array([0, 0, 0, 0, 1]), np.array([3, 4, 5, 2, 3])
    z = knockdown_effects(x, perturbation, group, np.array([-1, 0]), 0, source, target)
    assert z.shape == (5,) and np.isnan(z[4])  # gene 1 was never knocked down
    expected = -shift * np.sqrt(cells / 2 * groups) / np.sqrt(1 + shift**2 / 4)  # z of the shift, sd within groups
    # within 4 sd of it (the error is 0.2 +- 0.35: ~11 sd of margin); a constant gene; and gene 5, pure
    # noise, whose z is standard normal: a 4.5 sd cut failed 1 draw in ~200,000 (seed 57805, 4 groups,
    # 117 cells; ~1 CI run in 7,000), 6 sd fails ~1e-9 while a z that grew with the cells would still fail
    assert (z[:2] < expected + 4).all() and abs(z[2]) < 6 and z[3] == 0
    fewer = knockdown_effects(x, perturbation, group, np.array([-1, 0]), 0, source, target, min_cells=10 * cells)
    assert np.isnan(fewer).all()  # too few cells anywhere: untested, not zero


def test_combined_evidence_adds_the_knockdown_only_where_there_was_one_and_takes_its_sign():
    partial = np.array([0.1, -0.1, 0.0, 0.3])
    knockdown = np.array([4.0, np.nan, -2.0, np.nan])
    combined = combined_evidence(partial, knockdown, n_cells=111, n_genes=10)
    observational = np.arctanh(np.abs(partial)) * 10.0  # Fisher z with 111 - 10 - 1 degrees of freedom
    np.testing.assert_allclose(np.abs(combined[[1, 3]]), observational[[1, 3]])
    np.testing.assert_allclose(np.abs(combined[[0, 2]]), (observational[[0, 2]] + np.array([4.0, 2.0])) / np.sqrt(2))
    assert abs(combined[0]) > abs(combined[1])  # the same |partial correlation|, with a knockdown's effect beside it
    # a target that rises when its regulator is knocked down: a repressing (negative) edge, whatever the partial says
    np.testing.assert_array_equal(np.sign(combined), [-1, -1, 1, 1])


def test_the_interventional_baseline_reads_only_otherwise_basal_cells_and_needs_perturbation_labels():
    from types import SimpleNamespace

    from vcell.evaluate.edges import interventional_baseline, knockdowns_of

    rng = np.random.default_rng(0)
    n = 400
    perturbation = np.repeat([0, 1], n // 2)
    time = np.tile([0.0, 4.0], n // 2)  # half the cells are stimulated: only the others count
    x = rng.normal(size=(n, 4))
    x[(perturbation == 1) & (time == 0), 1] -= 3.0  # the knockdown of gene 0 lowers gene 1 in basal cells
    x[(perturbation == 1) & (time > 0), 2] += 3.0  # ... and a stimulus-only shift that is not the knockdown's
    grn = SimpleNamespace(source=np.array([0, 0, 3]), target=np.array([1, 2, 1]))
    spec = SimpleNamespace(grn=grn, perturbation_gene=np.array([-1, 0]), control_code=0)
    cells = {"x": x, "perturbation": perturbation, "time": time}
    z = knockdowns_of(cells, spec)
    assert z[0] < -10 and abs(z[1]) < 4 and np.isnan(z[2])
    assert interventional_baseline(cells, spec)[0] > 0  # the target fell: a positive edge
    assert interventional_baseline({"x": x}, spec) is None


def test_each_baseline_is_also_scored_background_corrected_with_its_sign():
    import torch

    from vcell.models.grn import background_corrected

    source, target = np.array([0, 0, 1, 1, 2]), np.array([3, 4, 3, 4, 3])
    partial = np.array([0.5, -0.1, -0.2, 0.0, 0.3])
    scores = with_background_corrected({"partial correlation": partial}, source, target)
    assert list(scores) == ["partial correlation", "partial correlation, background-corrected"]
    assert scores["partial correlation"] is partial  # the raw values are kept as they are
    corrected = scores["partial correlation, background-corrected"]
    assert np.array_equal(np.sign(corrected), np.sign(partial))
    expected = background_corrected(torch.tensor(np.abs(partial)), torch.tensor(source), torch.tensor(target)).numpy()
    assert np.allclose(np.abs(corrected), expected)
