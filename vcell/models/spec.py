"""What a model needs to know about its data: the gene vocabulary, annotations aligned to it,
which conditions the batches carry, and which gene each perturbation targets.

A `ModelSpec` is plain arrays, so model code never opens files; `spec_from_atlas` builds one
from an atlas and the config, checking every enhancement's needs first (clear errors, before
any worker starts; the prior files are read by `vcell.models.priors`); `reference_spec` makes a
typical one for parameter counts and tests.

    spec = spec_from_atlas(atlas, config.model, genes=None, counts=True)
    model = VirtualCell(config.model, spec)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from vcell.atlas.sources import strip_ensembl_version
from vcell.atlas.store import Atlas
from vcell.config.model import ModelConfig
from vcell.config.schema import NormalizeConfig
from vcell.data.resolve import SYMBOL_COLUMNS, atlas_var, count_log_shares, delivered_gene_means, resolve_normalization
from vcell.data.transform import zero_count_values
from vcell.errors import VCellError
from vcell.models.catalogue import NEEDS
from vcell.models.priors import Edges, add_grn, add_pathways, unique_edges

log = logging.getLogger(__name__)
CONDITION_ROLES = ("context", "perturbation", "time", "history")


@dataclass
class ModelSpec:
    """The data side of a model: vocabulary, annotations, available inputs (see module doc)."""

    gene_ids: list[str]
    inputs: frozenset[str]  # of "counts" and the CONDITION_ROLES the batches carry
    pathway_names: list[str] = field(default_factory=list)
    gene_pathway: Edges | None = None  # gene -> pathway membership
    compartment_names: list[str] = field(default_factory=list)
    pathway_compartment: Edges | None = None  # pathway -> compartment
    grn: Edges | None = None  # regulator gene -> target gene (the prior)
    perturbation_gene: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (K,) -1 = none
    control_code: int = -1  # the perturbation category meaning 'not perturbed' (-1: none)
    batch_names: list[str] = field(default_factory=list)  # the batches a batch covariate has rows for
    mean_library: float = 1000.0  # mean total counts per cell (kept so exports load; unread since resource uses each cell's library)
    coverage: dict = field(default_factory=dict)  # annotation coverage, for logs and run records
    # (G,) each gene's mean as the loader delivers it, where the atlas's statistics tell (else None):
    # where a new model's decoder starts. Not exported: a saved model's weights replace it
    gene_mean: np.ndarray | None = None
    # (G,) log of each gene's typical share of a cell's counts (count atlases whose statistics tell,
    # else None): where a count model's decoder starts. Not exported, like gene_mean
    gene_log_share: np.ndarray | None = None
    # (G,) the value a zero count takes as the loader delivers it: its z-score under
    # loader.normalize.zscore, else None (0). A gene is detected where its value is not it (what the
    # model hides in training and counts as the cell's genes: `detected_entries`). Not exported: a saved model's
    # normalisation (normalization.json) gives it again (`vcell.evaluate.export.open_trained`)
    zero_level: np.ndarray | None = None

    @property
    def n_genes(self) -> int:
        return len(self.gene_ids)

    @property
    def n_perturbations(self) -> int:
        """Perturbation categories (control included), 0 when the batches carry none."""
        return len(self.perturbation_gene)

    @property
    def n_batches(self) -> int:
        return len(self.batch_names)


def spec_from_atlas(
    atlas: Atlas, config: ModelConfig, genes: np.ndarray | None = None, *, counts: bool,
    normalize: NormalizeConfig | None = None,
) -> ModelSpec:
    """The spec of `atlas` restricted to `genes` (loader order; None = all), or a VCellError;
    `normalize`: the loader's normalisation, which gives the genes' mean values (`gene_mean`)."""
    var = atlas_var(atlas)
    selected = np.arange(len(var)) if genes is None else np.asarray(genes)
    gene_ids = [strip_ensembl_version(str(gene)) for gene in var.index[selected]]
    columns = atlas.attrs["obs_columns"]
    check_hours_are_numbers(atlas, config)
    inputs = {role for role in CONDITION_ROLES if getattr(config.columns, role) in columns}
    if counts and atlas.attrs.get("values") == "counts":
        inputs.add("counts")
    mean_library = float(atlas.attrs.get("library_size", {}).get("mean") or 1000.0)
    gene_mean = None if normalize is None else delivered_gene_means(atlas, normalize, genes)
    gene_log_share = count_log_shares(atlas, genes) if "counts" in inputs else None
    zero_level = None if normalize is None else zero_count_values(resolve_normalization(atlas, normalize, genes))
    spec = ModelSpec(gene_ids=gene_ids, inputs=frozenset(inputs), mean_library=mean_library, gene_mean=gene_mean,
                     gene_log_share=gene_log_share, zero_level=zero_level)
    needs = set().union(*(NEEDS[name] for name in config.enhancements))
    check_inputs(atlas, config, needs, spec.inputs, counts)
    check_count_units(config, needs, normalize)
    if "gene_sets" in needs:
        add_pathways(spec, config, atlas.path)
    if "grn" in needs:
        add_grn(spec, config, atlas.path)
    spec.batch_names = batch_categories(atlas, config)
    if spec.batch_names:
        spec.inputs = spec.inputs | {"batch"}
    if "perturbation" in inputs:
        names = atlas.attrs["obs_categories"][config.columns.perturbation]
        spec.perturbation_gene = perturbation_genes(names, var.iloc[selected], config.columns.control)
        spec.control_code = names.index(config.columns.control) if config.columns.control in names else -1
        unmapped = [n for n, g in zip(names, spec.perturbation_gene) if g < 0 and n != config.columns.control]
        spec.coverage["perturbations"] = {
            "categories": len(names), "genes_in_vocabulary": int((spec.perturbation_gene >= 0).sum()), "unmapped": unmapped[:20],
        }
        if unmapped:
            log.info("%d perturbation(s) name no gene of the model's vocabulary (they act through the latent), e.g. %s",
                     len(unmapped), unmapped[:5])
    return spec


def batch_categories(atlas: Atlas, config: ModelConfig) -> list[str]:
    """The categories of the batch column that model.batch_covariate reads ([] when it reads none), or a
    VCellError when it must read one (true) and cannot."""
    column = config.columns.batch
    categories = atlas.attrs.get("obs_categories", {})
    if config.batch_covariate is False:
        return []
    if config.batch_covariate == "auto":
        names = categories.get(column, []) if column else []
        return [str(name) for name in names] if len(names) > 1 else []
    if column is None or column not in categories:
        found = "is not categorical" if column in atlas.attrs["obs_columns"] else "is not among the obs columns"
        raise VCellError(
            f"model.batch_covariate reads the batch column model.columns.batch={column!r}, which {found} of {atlas.path}",
            hint="set model.columns.batch to the categorical obs column naming each cell's batch "
            "(donor, lane, dataset), or model.batch_covariate=false",
        )
    return [str(name) for name in categories[column]]


COUNT_UNITS = {"target_sum": 10000.0, "log1p": True, "zscore": False}  # what a count model predicts: log1p(cp10k)


def check_count_units(config: ModelConfig, needs: set[str], normalize: NormalizeConfig | None) -> None:
    """A count model predicts log1p(counts per 10,000) (`CountHead`), and evaluation, `impute` and
    `predict` set those beside the loader's values: a VCellError unless the loader delivers the same units."""
    if "counts" not in needs or normalize is None:
        return
    differ = {key: getattr(normalize, key) for key, value in COUNT_UNITS.items() if getattr(normalize, key) != value}
    if differ:
        users = [name for name in config.enhancements if "counts" in NEEDS[name]]
        settings = ", ".join(f"loader.normalize.{key}={value}" for key, value in differ.items())
        raise VCellError(
            f"model: {users} model raw counts and predict log1p(counts per 10,000), but {settings}: the "
            "model's predictions and the loader's values would be in different units (evaluation, impute, predict)",
            hint="keep loader.normalize at target_sum=10000, log1p=true, zscore=false (the defaults), "
            "or drop these enhancements for a squared-error model of the normalised values",
        )


def check_inputs(atlas: Atlas, config: ModelConfig, needs: set[str], inputs: frozenset[str], counts: bool) -> None:
    users = {need: [name for name in config.enhancements if need in NEEDS[name]] for need in needs}
    if "counts" in needs and "counts" not in inputs:
        why = "the atlas holds normalised values" if atlas.attrs.get("values") != "counts" else "loader.keep_counts is off"
        raise VCellError(
            f"model: {users['counts']} model raw counts, but {why} ({atlas.path})",
            hint="use an atlas built from raw counts with loader.keep_counts=true, or drop these enhancements",
        )
    for role in ("time", "history"):
        if role in needs and role not in inputs:
            column = getattr(config.columns, role)
            raise VCellError(
                f"model: {users[role]} need the obs column '{column}' (model.columns.{role}), "
                f"which the atlas {atlas.path} does not have",
                hint=f"set model.columns.{role} to the column holding it; columns: {', '.join(sorted(atlas.attrs['obs_columns']))}",
            )


def check_hours_are_numbers(atlas: Atlas, config: ModelConfig) -> None:
    """The time and history columns reach the model as hours: a categorical one would hand it
    category codes (0, 1, 2 for '0h', '4h', '16h'), so it is refused, never used."""
    for role in ("time", "history"):
        column = getattr(config.columns, role)
        categories = atlas.attrs.get("obs_categories", {}).get(column)
        if column is None or categories is None:
            continue
        raise VCellError(
            f"model: obs column '{column}' (model.columns.{role}) is categorical in the atlas {atlas.path} "
            f"(categories {categories[:6]}); the model reads it as hours and would see category codes",
            hint="rebuild the atlas (vcell atlas build converts durations such as '4h' or '30min' to hours in the "
            f"columns of build.duration_columns), or set model.columns.{role} to a numeric column or null",
        )


def perturbation_genes(names: list[str], var: pd.DataFrame, control: str) -> np.ndarray:
    """(K,) model gene index targeted by each perturbation category (by ID or symbol), -1 if none."""
    position = {strip_ensembl_version(str(gene)): index for index, gene in enumerate(var.index)}
    for column in SYMBOL_COLUMNS:
        if column in var.columns:
            for index, symbol in enumerate(var[column].astype(str)):
                position.setdefault(symbol, index)
    def lookup(name: str) -> int:
        return position.get(name, position.get(strip_ensembl_version(name), -1))

    return np.array([-1 if name == control else lookup(name) for name in names], dtype=np.int64)


def perturbed_genes(n_genes: int, n_tfs: int, n_perturbations: int, seed: int) -> np.ndarray:
    """Distinct genes of `n_perturbations` perturbations (up to half TFs, genes 0..n_tfs-1), in random order."""
    rng = np.random.default_rng([seed, 1])
    n = min(n_genes, n_perturbations)
    n_tf_perturbations = min(n_tfs, max((n + 1) // 2, n - (n_genes - n_tfs)))  # more TFs only where genes run out
    tfs = rng.choice(n_tfs, n_tf_perturbations, replace=False)
    others = rng.choice(np.arange(n_tfs, n_genes), n - len(tfs), replace=False)
    return rng.permutation(np.concatenate([tfs, others]))


def reference_spec(n_genes: int, *, seed: int = 0, n_pathways: int | None = None, n_perturbations: int = 100) -> ModelSpec:
    """A typical spec of `n_genes` genes: ~1 pathway per 50 genes (~40 genes each), 6 compartments,
    ~3 regulators per gene among 5% TFs, `n_perturbations` single-gene perturbations (as in a
    Perturb-seq screen, up to half of them of TFs)."""
    rng = np.random.default_rng(seed)
    n_pathways = n_pathways or max(2, n_genes // 50)
    pathway = np.repeat(np.arange(n_pathways), 40)
    gene = rng.integers(0, n_genes, len(pathway))
    n_tfs = max(2, n_genes // 20)
    target = np.repeat(np.arange(n_genes), 3)
    source = rng.integers(0, n_tfs, len(target))
    keep = source != target
    perturbed = np.concatenate([[-1], perturbed_genes(n_genes, n_tfs, n_perturbations, seed)])
    return ModelSpec(
        gene_ids=[f"G{i:06d}" for i in range(n_genes)],
        inputs=frozenset({"counts", *CONDITION_ROLES}),
        pathway_names=[f"P{p}" for p in range(n_pathways)],
        gene_pathway=Edges(gene, pathway),
        compartment_names=[f"C{c}" for c in range(6)],
        pathway_compartment=Edges(np.arange(n_pathways), np.arange(n_pathways) % 6),
        grn=unique_edges(source[keep], target[keep], np.where(rng.random(keep.sum()) < 0.6, 1, -1))[0],
        perturbation_gene=perturbed.astype(np.int64),
        control_code=0,
    )


EDGE_FIELDS = ("gene_pathway", "pathway_compartment", "grn")


def spec_to_dict(spec: ModelSpec) -> dict:
    """The spec as JSON-ready values: an exported model rebuilds without its training atlas."""
    edges = {
        name: None if (value := getattr(spec, name)) is None else {
            "source": value.source.tolist(), "target": value.target.tolist(),
            "sign": None if value.sign is None else np.asarray(value.sign).tolist(),
        }
        for name in EDGE_FIELDS
    }
    return {
        "gene_ids": list(spec.gene_ids), "inputs": sorted(spec.inputs), "pathway_names": list(spec.pathway_names),
        "compartment_names": list(spec.compartment_names), **edges,
        "perturbation_gene": spec.perturbation_gene.tolist(), "control_code": int(spec.control_code),
        "mean_library": float(spec.mean_library), "coverage": spec.coverage, "batch_names": list(spec.batch_names),
    }


def spec_from_dict(values: dict) -> ModelSpec:
    """The inverse of `spec_to_dict`."""
    def edges(entry: dict | None) -> Edges | None:
        if entry is None:
            return None
        sign = None if entry["sign"] is None else np.asarray(entry["sign"])
        return Edges(np.asarray(entry["source"], dtype=np.int64), np.asarray(entry["target"], dtype=np.int64), sign)

    return ModelSpec(
        gene_ids=list(values["gene_ids"]), inputs=frozenset(values["inputs"]),
        pathway_names=list(values["pathway_names"]), compartment_names=list(values["compartment_names"]),
        **{name: edges(values[name]) for name in EDGE_FIELDS},
        perturbation_gene=np.asarray(values["perturbation_gene"], dtype=np.int64),
        control_code=int(values["control_code"]), mean_library=float(values["mean_library"]),
        coverage=dict(values.get("coverage", {})), batch_names=list(values.get("batch_names", [])),
    )
