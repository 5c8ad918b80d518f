"""Align sources to one gene vocabulary (obs and obsm are merged shard by shard: `obs_spill.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vcell.atlas.sources import Source
from vcell.errors import VCellError

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
