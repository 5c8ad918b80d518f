"""A model's view of an atlas: annotations aligned to the vocabulary, perturbation targets,
clear errors for every missing need, and a model built from it running on a real batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vcell.atlas.annotations import read_gmt, read_grn_edges, read_pathway_compartments
from vcell.atlas.store import open_atlas
from vcell.atlas.synth import synthesize_atlas
from vcell.config.model import ModelConfig
from vcell.config.schema import BuildConfig, LoaderConfig, NormalizeConfig, SynthConfig
from vcell.data.loader import AtlasLoader
from vcell.data.memory import load_cells
from vcell.data.resolve import atlas_var
from vcell.errors import VCellError
from vcell.models.model import VirtualCell
from vcell.models.spec import perturbed_genes, spec_from_atlas
from vcell.models.zoo import build_model

LABELS = ["cell_type", "perturbation", "time", "hours_since_pulse"]


@pytest.fixture(scope="module")
def atlas_path(tmp_path_factory):
    synth = SynthConfig(
        cells=600, genes=120, transcription_factors=12, pathways=8, compartments=3, perturbations=6,
        chunk_cells=600, truth_draws=16,
    )
    out = tmp_path_factory.mktemp("models") / "atlas.zarr"
    return synthesize_atlas(out, synth, BuildConfig(shard_cells=300), progress=False)


@pytest.fixture(scope="module")
def atlas(atlas_path):
    return open_atlas(atlas_path)


@pytest.fixture(scope="module")
def full_spec(atlas):
    return spec_from_atlas(atlas, ModelConfig(name="full"), counts=True)


@pytest.fixture(scope="module")
def batch(atlas_path):
    config = LoaderConfig(
        batch_size=64, buffer_cells=128, block_cells=64, threads=0, keep_counts=True, labels=LABELS,
        split={"val_fraction": 0.0, "test_fraction": 0.0},
    )
    return next(iter(AtlasLoader(atlas_path, config, split="train")))


def annotations(atlas_path):
    return atlas_path / "annotations"


def test_spec_records_inputs_and_vocabulary(atlas, full_spec):
    var = atlas_var(atlas)
    assert full_spec.gene_ids == list(var.index) and full_spec.n_genes == 120
    assert full_spec.inputs == {"counts", "context", "perturbation", "time", "history", "batch"}
    assert full_spec.mean_library == pytest.approx(atlas.attrs["library_size"]["mean"])


def test_pathways_match_the_gene_sets(atlas_path, full_spec):
    spec, sets = full_spec, read_gmt(annotations(atlas_path) / "pathways.gmt")
    n_pathways = len(spec.pathway_names)
    assert n_pathways == len(sets) == 8  # every synthetic pathway has >= min_genes members
    source, target = spec.gene_pathway.source, spec.gene_pathway.target
    assert source.min() >= 0 and source.max() < spec.n_genes and target.min() >= 0 and target.max() < n_pathways
    for index, name in enumerate(spec.pathway_names):
        members = {spec.gene_ids[g] for g in source[target == index]}
        assert members == set(sets[name]) & set(spec.gene_ids), name
    coverage = spec.coverage["pathways"]
    assert coverage["n_pathways"] == n_pathways and coverage["genes_missing"] == 0
    assert coverage["genes_matched"] == len(spec.gene_pathway)
    assert coverage["genes_covered"] == len(np.unique(source))


def test_compartments_match_the_table(atlas_path, full_spec):
    spec, table = full_spec, read_pathway_compartments(annotations(atlas_path) / "pathway_compartments.tsv")
    assert spec.compartment_names == sorted(set(table.values())) and len(spec.compartment_names) == 3
    edges = spec.pathway_compartment
    assert sorted(edges.source.tolist()) == list(range(len(spec.pathway_names)))  # one compartment per pathway
    for pathway, compartment in zip(edges.source, edges.target):
        assert spec.compartment_names[compartment] == table[spec.pathway_names[pathway]]


def test_grn_edges_match_the_file(atlas_path, full_spec):
    spec, table = full_spec, read_grn_edges(annotations(atlas_path) / "grn_edges.tsv")
    grn = spec.grn
    assert 0 < len(grn) == len(table) == spec.coverage["grn"]["edges"]
    assert grn.source.max() < spec.n_genes and grn.target.max() < spec.n_genes and (grn.source != grn.target).all()
    assert [spec.gene_ids[g] for g in grn.source] == table["source"].tolist()
    assert [spec.gene_ids[g] for g in grn.target] == table["target"].tolist()
    assert set(np.unique(grn.sign)) <= {-1, 1} and np.array_equal(grn.sign, table["sign"].to_numpy())


def test_a_prior_that_repeats_an_edge_gets_each_pair_once(atlas, tmp_path, caplog):
    """Real priors repeat pairs (several sources in one table, IDs that differ only by version):
    each pair becomes one weight, with an unknown sign where the lines disagree, and a warning."""
    ids = list(atlas_var(atlas).index)
    a, b, c, d = ids[0], ids[1], ids[2], ids[3]
    prior = tmp_path / "prior.tsv"
    prior.write_text(
        "source\ttarget\tsign\n"
        f"{a}\t{b}\t+\n{a}\t{c}\t+\n{a}.7\t{b}\t+\n"  # a -> b again, by a versioned ID, same sign
        f"{d}\t{c}\t-\n{d}\t{c}\t+\n"  # d -> c twice, signs disagree
        f"{c}\t{b}\t-\n"
    )
    with caplog.at_level("WARNING"):
        spec = spec_from_atlas(atlas, ModelConfig(name="regulatory", regulatory={"edges": str(prior)}), counts=True)
    pairs = [(spec.gene_ids[s], spec.gene_ids[t], int(sign)) for s, t, sign in zip(spec.grn.source, spec.grn.target, spec.grn.sign)]
    assert pairs == [(a, b, 1), (a, c, 1), (d, c, 0), (c, b, -1)]  # first appearance order
    assert spec.coverage["grn"]["edges"] == 4 and spec.coverage["grn"]["duplicates_merged"] == 2
    assert str(prior) in caplog.text and "2 edge(s) repeat" in caplog.text
    model = build_model(ModelConfig(name="regulatory", regulatory={"edges": str(prior)}), spec)
    assert len(model.gene_terms[0].edge_weight()) == 4  # one learned weight per pair


def test_perturbations_map_to_their_target_genes(atlas, full_spec):
    categories = atlas.attrs["obs_categories"]["perturbation"]
    symbols = atlas_var(atlas)["gene_symbols"].tolist()
    assert full_spec.n_perturbations == len(categories) == 7  # 6 targets + control
    assert categories[full_spec.control_code] == "control"
    for name, gene in zip(categories, full_spec.perturbation_gene):
        if name == "control":
            assert gene == -1
        else:
            assert symbols[gene] == name


def test_gene_subset_reindexes_perturbation_targets(atlas, full_spec):
    categories = atlas.attrs["obs_categories"]["perturbation"]
    targets = [int(g) for g in full_spec.perturbation_gene if g >= 0]
    dropped = targets[0]
    genes = np.array([g for g in range(full_spec.n_genes) if g != dropped][::-1])  # reversed, one target left out
    spec = spec_from_atlas(atlas, ModelConfig(name="regulatory"), genes, counts=True)
    assert spec.gene_ids == [full_spec.gene_ids[g] for g in genes]
    for name, gene, original in zip(categories, spec.perturbation_gene, full_spec.perturbation_gene):
        if original == dropped or name == "control":
            assert gene == -1, name
        else:
            assert spec.gene_ids[gene] == full_spec.gene_ids[original], name


# -- every missing need is a clear error, before any worker starts ----------------------------------
def test_count_models_need_counts(atlas):
    with pytest.raises(VCellError, match=rf"(?s)\['stochastic'\] model raw counts.*keep_counts.*{atlas.path}"):
        spec_from_atlas(atlas, ModelConfig(name="stochastic"), counts=False)


def test_missing_gene_sets_are_named(atlas, tmp_path):
    missing = tmp_path / "missing.gmt"
    config = ModelConfig(name="hierarchical", hierarchical={"gene_sets": str(missing)})
    with pytest.raises(VCellError, match=rf"(?s){missing}.*model.hierarchical.gene_sets.*missing=learned"):
        spec_from_atlas(atlas, config, counts=True)


def test_missing_grn_is_named(atlas, tmp_path):
    missing = tmp_path / "missing_grn.tsv"
    config = ModelConfig(name="regulatory", regulatory={"edges": str(missing)})
    with pytest.raises(VCellError, match=rf"(?s){missing}.*model.regulatory.edges"):
        spec_from_atlas(atlas, config, counts=True)


def test_missing_time_column_is_named(atlas):
    config = ModelConfig(name="temporal", columns={"time": "stimulus_hours"})
    with pytest.raises(VCellError, match=rf"(?s)'stimulus_hours' \(model.columns.time\).*{atlas.path}.*columns: .*time"):
        spec_from_atlas(atlas, config, counts=True)


def test_categorical_time_is_refused_never_read_as_codes(tmp_path):
    """An atlas whose time column is a category ('0h', '4h', '16h') would give the model codes 0, 1, 2."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from vcell.atlas.anndata_source import AnnDataSource
    from vcell.atlas.build import build_atlas

    X = sp.csr_matrix(np.random.default_rng(0).poisson(2.0, (30, 10)).astype(np.float32))
    obs = pd.DataFrame({"time": pd.Categorical(["0h", "4h", "16h"] * 10)}, index=[f"c{i}" for i in range(30)])
    ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(10)])).write_h5ad(tmp_path / "in.h5ad")
    kept = build_atlas([AnnDataSource(tmp_path / "in.h5ad")], tmp_path / "kept.zarr", BuildConfig(duration_columns=[]),
                       progress=False)  # an atlas built before durations were converted, or on request
    for name in ("base", "temporal"):
        with pytest.raises(VCellError, match=r"(?s)'time' \(model.columns.time\) is categorical.*category codes.*rebuild"):
            spec_from_atlas(open_atlas(kept), ModelConfig(name=name), counts=True)
    spec_from_atlas(open_atlas(kept), ModelConfig(name="base", columns={"time": None}), counts=True)  # the way out
    converted = build_atlas([AnnDataSource(tmp_path / "in.h5ad")], tmp_path / "hours.zarr", BuildConfig(), progress=False)
    assert "time" in spec_from_atlas(open_atlas(converted), ModelConfig(name="temporal"), counts=True).inputs


# -- models built from the spec run on real batches ------------------------------------------------
def run(model: VirtualCell, batch: dict) -> dict:
    model.train()
    output = model(batch)
    assert output.expression.shape == (len(batch["x"]), model.spec.n_genes)
    assert "response" in output.losses  # the real batch has basal cells to pair with
    assert all(torch.isfinite(value) for value in output.losses.values())
    output.loss.backward()
    return output.stats


def test_full_model_runs_on_a_real_batch(full_spec, batch):
    torch.manual_seed(0)
    stats = run(build_model(ModelConfig(name="full", size="tiny"), full_spec), batch)
    assert stats["pathway_activity"].shape == (64, len(full_spec.pathway_names))
    assert stats["compartment_activity"].shape == (64, len(full_spec.compartment_names))
    assert stats["edge_weight"].shape == (len(full_spec.grn),)


@pytest.mark.parametrize("name", ["hierarchical", "full"])
def test_learned_pathways_when_gene_sets_are_missing(atlas, batch, tmp_path, name):
    config = ModelConfig(
        name=name, size="tiny",
        hierarchical={"gene_sets": str(tmp_path / "missing.gmt"), "missing": "learned", "learned_pathways": 16},
    )
    spec = spec_from_atlas(atlas, config, counts=True)
    assert spec.gene_pathway is None and spec.pathway_compartment is None
    assert spec.pathway_names == [f"learned_pathway_{i + 1}" for i in range(16)]
    assert spec.compartment_names == ["learned_compartment_1", "learned_compartment_2"]
    assert spec.coverage["pathways"] == {"source": "learned", "n_pathways": 16}
    torch.manual_seed(0)
    stats = run(build_model(config, spec), batch)
    assert stats["pathway_activity"].shape == (64, 16)


def test_a_batch_covariate_reads_the_batch_categories_or_names_the_missing_column(atlas):
    spec = spec_from_atlas(atlas, ModelConfig(name="base", batch_covariate=True), counts=True)
    assert spec.batch_names == list(atlas.attrs["obs_categories"]["batch"]) and "batch" in spec.inputs
    # auto (the default) reads the column where the atlas has one, and nothing where it has none
    assert spec_from_atlas(atlas, ModelConfig(name="base"), counts=True).batch_names == spec.batch_names
    assert spec_from_atlas(atlas, ModelConfig(name="base", batch_covariate=False), counts=True).batch_names == []
    missing = spec_from_atlas(atlas, ModelConfig(name="base", columns={"batch": "lane"}), counts=True)
    assert missing.batch_names == [] and "batch" not in missing.inputs
    for column, why in (("lane", "is not among the obs columns"), ("time", "is not categorical")):
        config = ModelConfig(name="base", batch_covariate=True, columns={"batch": column})
        with pytest.raises(VCellError, match=rf"model.columns.batch='{column}', which {why} of {atlas.path}"):
            spec_from_atlas(atlas, config, counts=True)


# -- a new model's decoder starts at the genes' means, as the loader delivers them ----------------
def test_gene_means_are_those_the_loader_delivers(atlas_path, atlas):
    loader = LoaderConfig(
        batch_size=64, buffer_cells=128, block_cells=64, threads=0, split={"val_fraction": 0.0, "test_fraction": 0.0},
    )
    spec = spec_from_atlas(atlas, ModelConfig(name="temporal"), counts=True, normalize=loader.normalize)
    delivered = load_cells(atlas, loader, "train")["x"].double().mean(0).numpy()
    np.testing.assert_allclose(spec.gene_mean, delivered, atol=1e-4)
    genes = np.array([5, 2, 40])
    subset = spec_from_atlas(atlas, ModelConfig(name="temporal"), genes, counts=True, normalize=loader.normalize)
    np.testing.assert_array_equal(subset.gene_mean, spec.gene_mean[genes])


@pytest.mark.parametrize(("normalize", "expected"), [
    ({"zscore": True}, "zeros"), ({"target_sum": 1000.0}, None), (None, None),
])
def test_gene_means_only_where_the_atlas_statistics_describe_the_values(atlas, normalize, expected):
    settings = None if normalize is None else NormalizeConfig(**normalize)
    gene_mean = spec_from_atlas(atlas, ModelConfig(name="temporal"), counts=True, normalize=settings).gene_mean
    if expected is None:  # cp1k values: the stored log1p(cp10k) means would be a wrong start
        assert gene_mean is None
    else:
        np.testing.assert_array_equal(gene_mean, np.zeros(atlas.n_genes))


# -- detection: a gene is detected where its value is not a zero count's ---------------------------
@pytest.mark.parametrize("normalize", [{}, {"zscore": True}, {"zscore": True, "target_sum": 1000.0, "log1p": False}],
                         ids=["log1p", "zscore", "zscore-of-a-cp1k-atlas-refused"])
@pytest.mark.parametrize("selected", [None, "highly_variable"])
def test_the_model_detects_exactly_the_genes_with_counts_under_any_normalisation(atlas, normalize, selected):
    """Under a z-score a zero count reads as the gene's -mean/sd, not 0 (so `x > 0` counted only the
    values above the gene's mean): the spec's zero level makes the model's detection (the genes it hides
    in training, counts among a cell's genes, makes tokens of) the genes with counts > 0, as without one,
    and keeps it exact under a bf16 cast."""
    genes = {"select": "highly_variable", "n_top": 50} if selected else {}
    loader = LoaderConfig(batch_size=64, buffer_cells=128, block_cells=64, threads=0, keep_counts=True,
                          normalize=normalize, genes=genes, split={"val_fraction": 0.0, "test_fraction": 0.0})
    if normalize.get("log1p") is False:  # the atlas's statistics are of log1p(cp10k): no z-score of cp1k
        with pytest.raises(VCellError, match="loader.normalize.zscore"):
            spec_from_atlas(atlas, ModelConfig(name="base"), counts=True, normalize=loader.normalize)
        return
    cells = load_cells(atlas, loader, "train")
    from vcell.data.resolve import select_genes
    spec = spec_from_atlas(atlas, ModelConfig(name="base"), select_genes(atlas, loader.genes), counts=True,
                           normalize=loader.normalize)
    assert spec.n_genes == cells["x"].shape[1]
    model = build_model(ModelConfig(name="base", size="tiny"), spec)
    counted = cells["counts"] > 0
    assert torch.equal(model.inputs(cells).detected, counted)
    if normalize.get("zscore"):
        assert (spec.zero_level < 0).all() and not torch.equal(cells["x"] > 0, counted)  # what x > 0 got wrong
    else:
        assert spec.zero_level is None
    model.train()
    from vcell.models.slots import detected_genes, hide_genes
    x_in, hidden = hide_genes(model.inputs(cells), 0.5, training=True)
    assert hidden.any() and not (hidden & ~counted).any() and torch.equal(x_in[hidden], torch.zeros(int(hidden.sum())))
    torch.testing.assert_close(detected_genes(model.inputs(cells)), counted.sum(1))
    model.to(torch.bfloat16)
    assert model.zero_level.dtype == torch.float32 and torch.equal(model.inputs(cells).detected, counted)


def test_count_models_refuse_a_loader_that_delivers_other_units(atlas):
    """A count model predicts log1p(counts per 10,000): beside z-scores or cp1k its predictions would be
    compared with values in other units, silently."""
    for normalize, named in (({"zscore": True}, "loader.normalize.zscore=True"),
                             ({"target_sum": 1000.0}, "loader.normalize.target_sum=1000.0")):
        with pytest.raises(VCellError, match=rf"\['stochastic'\] model raw counts .*{named}"):
            spec_from_atlas(atlas, ModelConfig(name="stochastic"), counts=True, normalize=NormalizeConfig(**normalize))
    spec_from_atlas(atlas, ModelConfig(name="stochastic"), counts=True, normalize=NormalizeConfig())  # the defaults
    spec_from_atlas(atlas, ModelConfig(name="base"), counts=True, normalize=NormalizeConfig(zscore=True))  # squared error


def test_a_decoder_starts_at_the_gene_means_or_at_the_genes_count_shares(atlas, atlas_path):
    normalize = NormalizeConfig()
    spec = spec_from_atlas(atlas, ModelConfig(name="full"), counts=True, normalize=normalize)
    torch.manual_seed(0)
    temporal = build_model(ModelConfig(name="temporal", size="tiny"), spec)
    np.testing.assert_allclose(temporal.decoder[-1].bias.detach().numpy(), spec.gene_mean, rtol=1e-6)
    # a count head's scores are log composition: it starts at the genes' typical shares of the counts
    stochastic = build_model(ModelConfig(name="stochastic", size="tiny"), spec)
    np.testing.assert_allclose(stochastic.decoder[-1].bias.detach().numpy(), spec.gene_log_share, rtol=1e-6)
    counts = load_cells(atlas, LoaderConfig(batch_size=64, buffer_cells=128, block_cells=64, threads=0, keep_counts=True,
                                            split={"val_fraction": 0.0, "test_fraction": 0.0}), "train")["counts"]
    observed_share = (counts / counts.sum(1, keepdim=True)).mean(0).double()
    started_share = torch.softmax(torch.as_tensor(spec.gene_log_share, dtype=torch.float64), 0)
    expressed = observed_share > 1e-4
    assert torch.corrcoef(torch.stack([started_share[expressed].log(), observed_share[expressed].log()]))[0, 1] > 0.98
    np.testing.assert_allclose(started_share[expressed], observed_share[expressed], rtol=0.4)  # a start, estimated from moments
    assert build_model(ModelConfig(name="temporal", size="tiny"), spec, device="meta").decoder[-1].bias.is_meta
    # no counts, no count start
    assert spec_from_atlas(atlas, ModelConfig(name="temporal"), counts=False, normalize=normalize).gene_log_share is None


@settings(max_examples=25, deadline=None)
@given(genes=st.lists(st.integers(0, 119), min_size=1, max_size=40, unique=True))
def test_count_shares_of_a_gene_selection_are_those_genes_rows(atlas, genes):
    """Any selection, in any order, starts its genes where the whole vocabulary starts them."""
    whole = spec_from_atlas(atlas, ModelConfig(name="stochastic"), counts=True).gene_log_share
    chosen = np.array(genes)
    subset = spec_from_atlas(atlas, ModelConfig(name="stochastic"), chosen, counts=True).gene_log_share
    np.testing.assert_array_equal(subset, whole[chosen])
    assert np.isfinite(whole).all() and (whole <= 0).all()  # log shares: finite, at most log(1)


@settings(max_examples=200, deadline=None)
@given(n_genes=st.integers(2, 400), n_perturbations=st.integers(1, 500), seed=st.integers(0, 3))
def test_reference_perturbations_are_distinct_genes_and_up_to_half_tfs_while_genes_last(n_genes, n_perturbations, seed):
    n_tfs = max(2, n_genes // 20)
    genes = perturbed_genes(n_genes, n_tfs, n_perturbations, seed)
    n = min(n_genes, n_perturbations)
    assert len(genes) == len(set(genes.tolist())) == n
    assert genes.min() >= 0 and genes.max() < n_genes
    tfs = int((genes < n_tfs).sum())
    assert tfs >= 1
    assert tfs <= max((n + 1) // 2, n - (n_genes - n_tfs))  # more than half only when the other genes run out
