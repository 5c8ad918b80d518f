"""Property-based checks of the streams `vcell embed` and `vcell evaluate` read: any rows (sorted,
shuffled, repeated, one cell), any batch size (1 cell up to more than the input), atlas or h5ad
input, a span of it: the cells come out in the order asked, each with its own values, and the
values do not depend on how they were batched."""

from __future__ import annotations

import anndata as ad
import pandas as pd
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vcell.atlas.store import open_atlas
from vcell.evaluate.cells import open_cells
from vcell.errors import VCellError
from vcell.evaluate.export import open_trained

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def trained(trained_folder):
    return open_trained(trained_folder)


@pytest.fixture(scope="module")
def reference(trained, evaluation_atlas):
    """x and library size of every atlas cell, read in one batch in atlas order."""
    n_cells = open_atlas(evaluation_atlas).n_cells
    stream = open_cells(evaluation_atlas, trained)
    (_, batch), = list(stream.batches(n_cells))
    return batch["x"], batch["library_size"]


def streamed(stream, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, list[slice]]:
    positions, xs, libraries = [], [], []
    for where, batch in stream.batches(batch_size):
        assert len(batch["x"]) == where.stop - where.start <= batch_size
        positions.append(where)
        xs.append(batch["x"])
        libraries.append(batch["library_size"])
    return torch.cat(xs), torch.cat(libraries), positions


@PROPERTY_SETTINGS
@given(data=st.data(), batch_size=st.one_of(st.integers(1, 8), st.integers(8, 2000)))
def test_atlas_rows_in_any_order_and_batch_size(trained, evaluation_atlas, reference, data, batch_size):
    n_cells = len(reference[0])
    rows = np.array(data.draw(st.lists(st.integers(0, n_cells - 1), min_size=1, max_size=400)), dtype=np.int64)
    x, library, positions = streamed(open_cells(evaluation_atlas, trained, rows=rows), batch_size)
    assert positions[0].start == 0 and positions[-1].stop == len(rows)
    assert all(a.stop == b.start for a, b in zip(positions, positions[1:]))  # consecutive, in order
    torch.testing.assert_close(x, reference[0][rows], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(library, reference[1][rows])


@PROPERTY_SETTINGS
@given(data=st.data(), batch_size=st.integers(1, 700))
def test_h5ad_spans_match_the_atlas(trained, evaluation_atlas, reference, h5ad_input, data, batch_size):
    """One worker's share of an .h5ad (a span) streams the same values as the atlas rows."""
    n_cells = len(reference[0])
    first = data.draw(st.integers(0, n_cells - 1))
    last = data.draw(st.integers(first + 1, n_cells))
    x, library, _ = streamed(open_cells(h5ad_input, trained, span=(first, last)), batch_size)
    torch.testing.assert_close(x, reference[0][first:last], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(library, reference[1][first:last])


@pytest.fixture(scope="module")
def h5ad_input(evaluation_atlas, tmp_path_factory):
    from tests.evaluate.test_embed import atlas_as_anndata

    path = tmp_path_factory.mktemp("streams") / "cells.h5ad"
    adata: ad.AnnData = atlas_as_anndata(evaluation_atlas)
    adata.write_h5ad(path)
    return path


def test_durations_written_as_text_are_read_as_hours(trained, evaluation_atlas, tmp_path):
    """An .h5ad whose time column holds '0h', '4h' (as real files do) embeds like the numbers;
    text that is no duration is an error naming the column, never NaN (read as unstimulated)."""
    from tests.evaluate.test_embed import atlas_as_anndata

    adata = atlas_as_anndata(evaluation_atlas)
    column = trained.config.model.columns.time
    assert column in trained.config.loader.labels
    numeric = adata.obs[column].to_numpy(np.float32)
    adata.obs[column] = pd.Categorical([f"{value:g}h" for value in numeric])
    adata.write_h5ad(tmp_path / "text.h5ad")
    (_, batch), = list(open_cells(tmp_path / "text.h5ad", trained).batches(len(numeric)))
    np.testing.assert_array_equal(batch[column].numpy(), numeric)

    adata.obs[column] = pd.Categorical(np.where(numeric > 0, "late", "0h"))
    adata.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(VCellError, match=f"'{column}' .* holds 'late', which is not a duration"):
        list(open_cells(tmp_path / "bad.h5ad", trained).batches(256))



def test_genes_the_input_lacks_enter_as_unmeasured_even_with_z_scores(trained, h5ad_input, tmp_path):
    """A missing gene reads as a gene hidden in training does (0 in the model's input space), not as
    the z-score of a measured zero; a measured zero keeps its z-score."""
    import dataclasses

    n_genes = len(trained.model.spec.gene_ids)
    norm = dataclasses.replace(trained.normalization, gene_mean=np.full(n_genes, 1.0, np.float32),
                               gene_scale=np.full(n_genes, 2.0, np.float32), clip=None)
    zscored = dataclasses.replace(trained, normalization=norm)
    table = ad.read_h5ad(h5ad_input)
    kept = np.arange(0, n_genes, 3)
    table[:, kept].copy().write_h5ad(tmp_path / "third.h5ad")
    stream = open_cells(tmp_path / "third.h5ad", zscored)
    (_, batch), = list(stream.batches(table.n_obs))
    missing = np.setdiff1d(np.arange(n_genes), kept)
    assert list(stream.unmeasured) == list(missing)
    assert bool((batch["x"][:, missing] == 0).all())
    zeros = (table[:, kept].X.toarray() == 0)
    assert bool((batch["x"][:, kept][torch.as_tensor(zeros)] == -2.0).all())  # (0 - 1) x 2 for measured zeros
    with pytest.raises(VCellError, match=r"only 34 of the model's 100 genes are in the input \(34%\), below the minimum"):
        open_cells(tmp_path / "third.h5ad", zscored, min_gene_overlap=0.5)


def test_a_saved_z_scored_model_detects_against_its_zero_level(trained_folder, tmp_path):
    """A model folder does not store the zero level: it follows from the saved normalisation, so a
    model trained on z-scores takes a zero count's z-score, not 0, as 'not detected' when reopened."""
    import json
    import shutil

    from vcell.evaluate.representation import hidden_mask

    folder = shutil.copytree(trained_folder / "model", tmp_path / "model")
    saved = json.loads((folder / "normalization.json").read_text())
    n_genes = len(json.loads((folder / "spec.json").read_text())["gene_ids"])
    saved.update(gene_mean=[1.0] * n_genes, gene_scale=[2.0] * n_genes, clip=None)
    (folder / "normalization.json").write_text(json.dumps(saved))
    model = open_trained(folder).model
    assert torch.equal(model.zero_level, torch.full((n_genes,), -2.0)) and model.spec.zero_level is not None
    x = torch.tensor([[-2.0, 0.0, 1.5] + [-2.0] * (n_genes - 3)] * 64)  # a zero count, a value at the mean, one above
    assert model.inputs({"x": x}).detected[0, :3].tolist() == [False, True, True]
    mask = hidden_mask(x, seed=0, zero_level=model.spec.zero_level)
    assert mask[:, 1:3].any() and not mask[:, 0].any() and not mask[:, 3:].any()
    assert open_trained(trained_folder).model.spec.zero_level is None  # no z-score: 0, as before


def test_an_input_lacking_genes_marks_them_and_keeps_each_cells_breadth(trained, h5ad_input, tmp_path):
    """Genes the input lacks are marked `unmeasured`: never detected, and a cell's count of detected
    genes (the detected level's breadth, a depth measure) is scaled up from the genes it has, so a
    cell read from a partial panel is not taken for a shallow one."""
    from vcell.models.slots import detected_genes

    table = ad.read_h5ad(h5ad_input)
    n_genes = len(trained.model.spec.gene_ids)
    kept = np.sort(np.random.default_rng(0).choice(n_genes, n_genes // 2, replace=False))
    table[:, kept].copy().write_h5ad(tmp_path / "half.h5ad")
    (_, whole), = list(open_cells(h5ad_input, trained).batches(table.n_obs))
    (_, half), = list(open_cells(tmp_path / "half.h5ad", trained).batches(table.n_obs))
    assert "unmeasured" not in whole
    missing = np.setdiff1d(np.arange(n_genes), kept)
    assert bool(half["unmeasured"][:, missing].all()) and not bool(half["unmeasured"][:, kept].any())
    cells = trained.model.inputs(half)
    assert not bool(cells.detected[:, missing].any())
    full_count, scaled = detected_genes(trained.model.inputs(whole)).double(), detected_genes(cells).double()
    unscaled = cells.detected.sum(1).double()
    assert abs(float((scaled / full_count).mean()) - 1) < 0.1  # about the whole input's count
    assert float((unscaled / full_count).mean()) < 0.6  # what counting only the measured genes gave
