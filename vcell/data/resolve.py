"""Turn the loader's config into concrete arrays for one atlas, or explain why it cannot.

Everything that can be wrong with a loader config given an atlas (unknown genes, a z-score
the stored statistics cannot give, library-size scaling of already normalised values) is
found here, in the driver, before any worker starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vcell.atlas.store import Atlas
from vcell.config.schema import GenesConfig, NormalizeConfig
from vcell.data.transform import Normalization
from vcell.errors import VCellError

SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "feature_name", "symbol", "gene_name")


def atlas_var(atlas: Atlas) -> pd.DataFrame:
    from anndata.io import read_elem

    return read_elem(atlas.root["var"])


def requested_gene_names(config: GenesConfig) -> list[str]:
    names = list(config.names)
    if config.file:
        path = Path(config.file)
        if not path.is_file():
            raise VCellError(f"loader.genes.file: {path} does not exist", hint="one gene ID or symbol per line")
        names += [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return names


def genes_from_list(atlas: Atlas, names: list[str]) -> np.ndarray:
    """Atlas indices of the named genes (IDs or symbols), in the given order."""
    var = atlas_var(atlas)
    position = {gene_id: index for index, gene_id in enumerate(var.index.astype(str))}
    for column in SYMBOL_COLUMNS:
        if column in var.columns:
            for index, symbol in enumerate(var[column].astype(str)):
                position.setdefault(symbol, index)
    unknown = [name for name in names if name not in position]
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise VCellError(
            f"loader.genes: {len(unknown)} of {len(names)} genes are not in the atlas {atlas.path}: {shown}",
            hint=f"use gene IDs (e.g. {var.index[0]}) or symbols present in the atlas's var; "
            "`vcell atlas info` shows the vocabulary size",
        )
    indices = np.array([position[name] for name in names], dtype=np.int64)
    duplicated = pd.Index(indices).duplicated()
    if duplicated.any():
        raise VCellError(f"loader.genes: '{names[int(np.flatnonzero(duplicated)[0])]}' is listed twice (directly or as ID and symbol)")
    return indices


def select_genes(atlas: Atlas, config: GenesConfig) -> np.ndarray | None:
    """Atlas gene indices the batches carry, in output order; None = all genes in atlas order."""
    if config.select == "all":
        return None
    if config.select == "list":
        return genes_from_list(atlas, requested_gene_names(config))
    if config.n_top >= atlas.n_genes:
        return None
    variance = np.asarray(atlas.root["stats/gene_var"][:], dtype=np.float64)
    top = np.argsort(-variance, kind="stable")[: config.n_top]  # highest variance, ties by index
    return np.sort(top)


def resolve_normalization(atlas: Atlas, config: NormalizeConfig, genes: np.ndarray | None) -> Normalization:
    """Check the normalisation against what the atlas holds and what its stats describe."""
    if config.target_sum is not None and atlas.attrs["values"] != "counts":
        raise VCellError(
            f"loader.normalize.target_sum={config.target_sum}: the atlas {atlas.path} holds already "
            "normalised values, not counts, so library-size scaling would distort them",
            hint="set loader.normalize.target_sum=null (and usually loader.normalize.log1p=false)",
        )
    mean = scale = None
    if config.zscore:
        mean, scale = zscore_parameters(atlas, config, genes)
    return Normalization(config.target_sum, config.log1p, mean, scale, config.clip)


def stats_match(stats: dict, config: NormalizeConfig) -> tuple[bool, str]:
    """(whether the atlas's gene statistics describe the values this normalisation delivers before
    any z-score, the settings that would make them)."""
    if stats["transform"] == "log1p_cp10k":
        matches = config.log1p and config.target_sum == stats["target_sum"]
        return matches, f"loader.normalize.target_sum={stats['target_sum']:g} and loader.normalize.log1p=true"
    matches = not config.log1p and config.target_sum is None
    return matches, "loader.normalize.target_sum=null and loader.normalize.log1p=false"


COUNT_SHARE_FLOOR = 0.01  # counts per target_sum: the start of a gene never detected in the statistics


def delivered_gene_means(atlas: Atlas, config: NormalizeConfig, genes: np.ndarray | None) -> np.ndarray | None:
    """(genes out,) each gene's mean value as the loader delivers it, from the atlas's stored
    statistics (0 after a z-score); None when the statistics describe other values."""
    n_genes = atlas.n_genes if genes is None else len(genes)
    if config.zscore:
        return np.zeros(n_genes, dtype=np.float32)
    if not stats_match(atlas.attrs["stats"], config)[0]:
        return None
    mean = np.asarray(atlas.root["stats/gene_mean"][:], dtype=np.float32)
    return mean if genes is None else mean[genes]


def count_log_shares(atlas: Atlas, genes: np.ndarray | None) -> np.ndarray | None:
    """(genes out,) log of each gene's mean share of a cell's counts, estimated from the atlas's
    stored statistics of y = log1p(counts per target_sum): None when they are of other values.
    Where a count model's decoder starts (its scores are log composition).

    expm1 of the mean of y would understate every sparse gene (log1p is concave and most of its
    cells are zeros), so the mean is taken over the cells that detect the gene, with a
    second-order correction for its spread there: E[cp10k] ~ d (expm1(m) + v exp(m) / 2), d the
    detection rate, m and v the mean and variance of y where detected. On the science atlas the
    log shares correlate 0.99 with those counted from the cells (expm1 of the plain mean: 0.82).
    A floor of 0.01 counts per target_sum keeps genes never detected in the statistics reachable."""
    stats = atlas.attrs["stats"]
    if stats["transform"] != "log1p_cp10k":
        return None
    arrays = {key: np.asarray(atlas.root[f"stats/gene_{key}"][:], dtype=np.float64) for key in ("mean", "var", "detection_rate")}
    if genes is not None:
        arrays = {key: value[genes] for key, value in arrays.items()}
    detected = np.maximum(arrays["detection_rate"], 1e-12)
    mean = arrays["mean"] / detected  # y's moments over the cells that detect the gene (y = 0 elsewhere)
    variance = np.maximum((arrays["var"] + arrays["mean"] ** 2) / detected - mean ** 2, 0.0)
    per_target_sum = detected * (np.expm1(mean) + variance * np.exp(mean) / 2)
    return np.log(np.maximum(per_target_sum, COUNT_SHARE_FLOOR) / float(stats["target_sum"])).astype(np.float32)


def zscore_parameters(atlas: Atlas, config: NormalizeConfig, genes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    stats = atlas.attrs["stats"]
    matches, needed = stats_match(stats, config)
    if not matches:
        raise VCellError(
            f"loader.normalize.zscore: the atlas's gene statistics are of {stats['transform']} values, "
            f"but the loader produces target_sum={config.target_sum}, log1p={config.log1p}",
            hint=f"set {needed}, or zscore=false",
        )
    mean = np.asarray(atlas.root["stats/gene_mean"][:], dtype=np.float64)
    variance = np.asarray(atlas.root["stats/gene_var"][:], dtype=np.float64)
    if genes is not None:
        mean, variance = mean[genes], variance[genes]
    sd = np.sqrt(variance)
    scale = np.where(sd > 0, 1.0 / np.where(sd > 0, sd, 1.0), 1.0)  # constant genes: centre only
    return mean.astype(np.float32), scale.astype(np.float32)


def normalization_to_dict(normalization: Normalization) -> dict:
    """JSON-ready normalisation (exported with a model, so new cells are scaled as in training)."""
    def listed(values: np.ndarray | None) -> list[float] | None:
        return None if values is None else np.asarray(values, dtype=np.float32).tolist()

    return {"target_sum": normalization.target_sum, "log1p": normalization.log1p, "clip": normalization.clip,
            "gene_mean": listed(normalization.gene_mean), "gene_scale": listed(normalization.gene_scale)}


def normalization_from_dict(values: dict) -> Normalization:
    def array(key: str) -> np.ndarray | None:
        return None if values.get(key) is None else np.asarray(values[key], dtype=np.float32)

    return Normalization(values["target_sum"], bool(values["log1p"]), array("gene_mean"), array("gene_scale"), values["clip"])
