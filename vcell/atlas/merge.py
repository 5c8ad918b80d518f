"""Align sources to one gene vocabulary and one obs table (categories unified across sources)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from vcell.atlas.sources import Source
from vcell.errors import VCellError

log = logging.getLogger(__name__)
SOURCE_COLUMN = "vcell_source"
# String columns become categoricals (global codes for the loader) unless nearly unique.
MAX_CATEGORIES = 100_000


@dataclass
class Vocabulary:
    """The global gene list and, per source, where each of its genes lands in it."""

    var: pd.DataFrame  # index = gene ID, in order of first appearance across sources
    source_maps: list[np.ndarray]  # per source: (n_source_genes,) -> global gene index
    measured: np.ndarray  # bool (n_sources, n_genes)
    coverage: list[dict]

    @property
    def n_genes(self) -> int:
        return len(self.var)


def build_vocabulary(sources: list[Source], labels: list[str]) -> Vocabulary:
    """Union of the sources' gene IDs; refuses sources that share no gene with the others."""
    ids = pd.Index([], dtype=object)
    for source in sources:
        ids = ids.append(pd.Index(source.gene_ids)).unique()
    var = pd.DataFrame(index=pd.Index(ids, name="gene_id"))
    for source in sources:  # symbols etc.: first source that has a value wins
        var = var.combine_first(source.var).reindex(ids)
    var.index.name = "gene_id"
    maps = [ids.get_indexer(source.gene_ids) for source in sources]
    measured = np.zeros((len(sources), len(ids)), dtype=bool)
    for row, gene_map in enumerate(maps):
        measured[row, gene_map] = True
    coverage = []
    for row, (source, label) in enumerate(zip(sources, labels)):
        others = measured[np.arange(len(sources)) != row].any(axis=0) if len(sources) > 1 else measured[row]
        shared = int((measured[row] & others).sum())
        if len(sources) > 1 and shared == 0:
            other_labels = ", ".join(l for i, l in enumerate(labels) if i != row)
            raise VCellError(
                f"{label} shares no gene ID with the other inputs ({other_labels}): its IDs look like "
                f"{[str(g) for g in source.gene_ids[:3]]}, theirs like {[str(g) for g in ids[others][:3]]}",
                hint="use the same ID type everywhere, e.g. --gene-key with an Ensembl ID column",
            )
        coverage.append({
            "genes_in_source": int(measured[row].sum()),
            "genes_shared_with_other_sources": shared,
            "vocabulary_genes_missing": int((~measured[row]).sum()),
        })
    return Vocabulary(var=var, source_maps=maps, measured=measured, coverage=coverage)


def combine_column(parts: list[pd.Series | None], lengths: list[int]) -> pd.Series | pd.Categorical:
    """One obs column across sources; `None` where a source lacks the column."""
    present = [p for p in parts if p is not None]
    textual = any(
        isinstance(p.dtype, pd.CategoricalDtype) or p.dtype == object or isinstance(p.dtype, pd.StringDtype)
        for p in present
    )
    if not textual:
        if len(present) == len(parts):
            return pd.concat(present, ignore_index=True)
        filled = [p if p is not None else pd.Series(np.nan, index=range(n)) for p, n in zip(parts, lengths)]
        return pd.concat([f.astype("float64") if f.dtype == bool else f for f in filled], ignore_index=True)
    as_categorical = [
        pd.Categorical(p.astype("object").where(p.notna(), None)) if p is not None else pd.Categorical([None] * n)
        for p, n in zip(parts, lengths)
    ]
    merged = union_categoricals(as_categorical, ignore_order=True, sort_categories=False)
    if len(merged.categories) > min(MAX_CATEGORIES, max(len(merged) // 2, 1)):
        return pd.Series(np.asarray(merged, dtype=object)).astype(str)  # nearly unique: keep strings
    return merged


def merge_obs(frames: list[pd.DataFrame], labels: list[str]) -> pd.DataFrame:
    """Concatenate per-source obs (input order), unify categories, add the source label."""
    columns: list[str] = []
    for frame in frames:
        columns += [str(c) for c in frame.columns if str(c) not in columns and c != SOURCE_COLUMN]
    lengths = [len(frame) for frame in frames]
    merged = {
        column: combine_column([f[column].reset_index(drop=True) if column in f else None for f in frames], lengths)
        for column in columns
    }
    merged[SOURCE_COLUMN] = pd.Categorical(np.repeat(labels, lengths), categories=list(dict.fromkeys(labels)))
    index = pd.Index(np.concatenate([f.index.astype(str).to_numpy() for f in frames]), name=None)
    # .array: positional values (a Series would be aligned on its own index)
    return pd.DataFrame({k: v.array if isinstance(v, pd.Series) else v for k, v in merged.items()}, index=index)


def merge_obsm(per_source: list[dict[str, list[np.ndarray]]]) -> dict[str, np.ndarray]:
    """Dense per-cell arrays kept when every source has them with the same width."""
    if not per_source:
        return {}
    keys = set(per_source[0])
    for blocks in per_source[1:]:
        keys &= set(blocks)
    kept = {}
    for key in sorted(keys):
        arrays = [np.concatenate(blocks[key]) for blocks in per_source]
        if len({a.shape[1:] for a in arrays}) == 1:
            kept[key] = np.concatenate(arrays)
        else:
            log.warning("obsm '%s' dropped: its width differs between sources", key)
    dropped = set().union(*per_source) - keys
    if dropped:
        log.warning("obsm keys not in every source dropped: %s", ", ".join(sorted(dropped)))
    return kept
