"""The prior knowledge a model is given, read from files and aligned to its gene vocabulary:
pathway gene sets (GMT) with their compartments, and the regulatory network's edges.

Each `add_*` fills a `ModelSpec` in place and records what matched in `spec.coverage`;
`spec_from_atlas` calls them for the enhancements that need them. A missing or unusable file is
a VCellError naming it; what is dropped or merged is logged (see the README's prior formats).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vcell.atlas.annotations import align_to_vocabulary, read_gmt, read_grn_edges, read_pathway_compartments
from vcell.atlas.sources import strip_ensembl_version
from vcell.config.model import ModelConfig
from vcell.errors import VCellError

if TYPE_CHECKING:  # spec.py imports this module, so ModelSpec is only named in annotations
    from vcell.models.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class Edges:
    """Directed pairs source -> target between two index spaces (genes, pathways, compartments)."""

    source: np.ndarray  # (E,) int64
    target: np.ndarray  # (E,) int64
    sign: np.ndarray | None = None  # (E,) +1/-1 prior sign, GRN only

    def __len__(self) -> int:
        return len(self.source)


def annotation_path(setting: str | None, atlas_path: Path, default_name: str) -> Path:
    return Path(setting) if setting else Path(atlas_path) / "annotations" / default_name


def add_pathways(spec: ModelSpec, config: ModelConfig, atlas_path: Path) -> None:
    """gene -> pathway and pathway -> compartment edges, or none at all for missing=learned."""
    settings = config.hierarchical
    gmt = annotation_path(settings.gene_sets, atlas_path, "pathways.gmt")
    table = annotation_path(settings.compartments, atlas_path, "pathway_compartments.tsv")
    if not gmt.is_file() and settings.missing == "learned":
        log.warning("no gene sets at %s: pathways are learned groups (model.hierarchical.missing=learned)", gmt)
        spec.pathway_names = [f"learned_pathway_{i + 1}" for i in range(settings.learned_pathways)]
        spec.compartment_names = learned_compartments(len(spec.pathway_names))
        spec.coverage["pathways"] = {"source": "learned", "n_pathways": settings.learned_pathways}
        return
    if not gmt.is_file():
        raise VCellError(
            f"model: pathway gene sets not found at {gmt} (needed by hierarchical/multiscale)",
            hint="set model.hierarchical.gene_sets to a GMT file keyed by the atlas's gene IDs, "
            "or model.hierarchical.missing=learned to learn groups instead",
        )
    mask, coverage = align_to_vocabulary(read_gmt(gmt), spec.gene_ids, source=str(gmt))
    kept = mask.sum(1) >= settings.min_genes
    if not kept.any():
        raise VCellError(
            f"{gmt}: no pathway has {settings.min_genes}+ genes in the atlas vocabulary",
            hint="the GMT must use the atlas's gene IDs (Ensembl IDs, versions ignored)",
        )
    names = [name for name, keep in zip(coverage, kept) if keep]
    pathway, gene = np.nonzero(mask[kept])
    spec.pathway_names, spec.gene_pathway = names, Edges(gene.astype(np.int64), pathway.astype(np.int64))
    matched = sum(coverage[name]["matched"] for name in names)
    missing = sum(coverage[name]["missing"] for name in names)
    spec.coverage["pathways"] = {
        "source": str(gmt), "n_pathways": len(names), "dropped_small": int((~kept).sum()),
        "genes_matched": matched, "genes_missing": missing, "genes_covered": int(mask[kept].any(0).sum()),
    }
    add_compartments(spec, table, settings.missing)


def add_compartments(spec: ModelSpec, table: Path, missing: str) -> None:
    if not table.is_file():
        if missing == "error":
            raise VCellError(
                f"model: pathway compartments not found at {table} (needed by hierarchical)",
                hint="set model.hierarchical.compartments to a TSV with columns pathway, compartment, "
                "or model.hierarchical.missing=learned",
            )
        spec.compartment_names = learned_compartments(len(spec.pathway_names))  # over the annotated pathways
        return
    assignment = read_pathway_compartments(table)
    unassigned = [name for name in spec.pathway_names if name not in assignment]
    if unassigned and missing == "error":
        raise VCellError(
            f"{table}: {len(unassigned)} pathway(s) have no compartment, e.g. {unassigned[:3]}",
            hint="add a line per pathway, or set model.hierarchical.missing=learned",
        )
    names = sorted({assignment[name] for name in spec.pathway_names if name in assignment})
    index = {name: position for position, name in enumerate(names)}
    pairs = [(p, index[assignment[name]]) for p, name in enumerate(spec.pathway_names) if name in assignment]
    spec.compartment_names = names
    spec.pathway_compartment = Edges(*(np.array(column, dtype=np.int64) for column in zip(*pairs)))


def learned_compartments(n_pathways: int) -> list[str]:
    """Names of the learned compartment groups used when no compartment table exists (1 per 8 pathways)."""
    return [f"learned_compartment_{i + 1}" for i in range(max(1, n_pathways // 8))]


def add_grn(spec: ModelSpec, config: ModelConfig, atlas_path: Path) -> None:
    path = annotation_path(config.regulatory.edges, atlas_path, "grn_edges.tsv")
    if not path.is_file():
        raise VCellError(
            f"model: GRN prior not found at {path} (needed by regulatory)",
            hint="set model.regulatory.edges to a TSV or CSV of source, target[, sign, weight] (gene IDs)",
        )
    table = read_grn_edges(path)
    position = {gene: index for index, gene in enumerate(spec.gene_ids)}
    source = table["source"].map(lambda g: position.get(strip_ensembl_version(str(g)), -1)).to_numpy()
    target = table["target"].map(lambda g: position.get(strip_ensembl_version(str(g)), -1)).to_numpy()
    inside = (source >= 0) & (target >= 0) & (source != target)
    if not inside.any():
        raise VCellError(f"{path}: no edge connects two genes of the atlas vocabulary", hint="use the atlas's gene IDs")
    spec.grn, merged = unique_edges(source[inside], target[inside], table["sign"].to_numpy()[inside])
    if merged:
        log.warning("%s: %d edge(s) repeat a source -> target pair (after matching IDs to the atlas, versions ignored); "
                    "each pair is kept once, with an unknown sign where its lines disagree", path, merged)
    spec.coverage["grn"] = {"source": str(path), "edges": len(spec.grn), "dropped": int((~inside).sum()),
                            "duplicates_merged": merged}


def unique_edges(source: np.ndarray, target: np.ndarray, sign: np.ndarray) -> tuple[Edges, int]:
    """(each source -> target pair once, in order of first appearance; how many repeats were merged).
    A pair listed twice would get two weights that the network adds and the edge table lists apart,
    each with part of the pair's effect. A merged pair keeps its sign where its lines agree, else 0
    (unknown)."""
    pair = np.stack([source, target], axis=1).astype(np.int64)
    unique, first, inverse = np.unique(pair, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    sign = np.asarray(sign)
    first_sign = sign[first]
    disagrees = np.zeros(len(unique), dtype=bool)
    np.logical_or.at(disagrees, inverse, sign != first_sign[inverse])
    agreed = np.where(disagrees, 0, first_sign).astype(sign.dtype)
    order = np.argsort(first, kind="stable")  # first appearance, as the file lists them
    edges = Edges(unique[order, 0], unique[order, 1], agreed[order])
    return edges, len(pair) - len(unique)
