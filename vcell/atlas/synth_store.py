"""Truth of a synthetic atlas on disk: the `truth/` Zarr group and the `annotations/` files.

`truth/` holds every `Truth` field (numbers as arrays, names and scalars as attrs) plus the
precomputed expected profiles, each array described in `attrs["arrays"]`; `read_truth` gives
the same `Truth` back, so `synth.expected_profile` answers any condition from an atlas alone.
Arrays are in truth gene order: `attrs["gene_ids"]` lists it (the atlas vocabulary may differ).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import zarr

from vcell.atlas.annotations import write_gmt, write_grn_edges, write_pathway_compartments
from vcell.atlas.synth_model import expected_profiles
from vcell.atlas.synth_truth import Truth
from vcell.errors import VCellError

TRUTH_FORMAT, TRUTH_VERSION = "vcell-synth-truth", 1
DESCRIPTIONS = {
    "gene_layer": "(G,) GRN layer: 0 master TFs, 1-2 other TFs, 3 target genes",
    "base_log_rate": "(G,) log transcription rate with every input at its typical level",
    "edge_source": "(E,) regulator gene index (a TF)",
    "edge_target": "(E,) regulated gene index (a later layer)",
    "edge_sign": "(E,) +1 activation, -1 repression",
    "edge_weight": "(E,) |w|: log-rate change from typical to fully on (hill n=2 around K)",
    "cell_type_proportions": "(D,) share of cells of each type",
    "master_tfs": "(M,) gene indices of master TFs",
    "master_state": "(D, M) master TF on/off state defining each cell type",
    "cell_type_log_offset": "(D, G) per-type log-rate offset (masters +-1.5)",
    "pathway_membership": "(P, G) gene set membership",
    "pathway_compartment": "(P,) compartment index (attrs compartment_names)",
    "pathway_level": "(D, P) mean pathway activity per type (log multiplier of members)",
    "time_points": "(n_t,) hours after the stimulus sampled in the time course",
    "stimulus_tfs": "(S,) gene indices the stimulus raises",
    "stimulus_log_strength": "(S,) log-rate increase of each stimulus TF",
    "response_half_time": "(G,) hours: log x(t) = log x0 + (log x_stim - log x0)(1 - 2^(-t/tau))",
    "stimulus_log_amplitude": "(D, G) log x_stim - log x0 of a noiseless control cell per type",
    "memory_genes": "(n_mem,) gene indices keeping part of an earlier pulse",
    "memory_retained_fraction": "(n_mem,) m_j: retained share m_j 2^(-delta/tau_mem)",
    "memory_half_time": "(n_mem,) tau_mem in hours",
    "perturbation_targets": "(K,) gene index of perturbation k+1 (0 is control)",
    "perturbation_knockout": "(K,) True knockout, False knockdown",
    "perturbation_factor": "(K,) multiplier on the target's rate",
    "burst_frequency": "(G,) Gamma shape of transcriptional bursting (intrinsic noise)",
    "batch_capture_efficiency": "(B,) multiplier of all counts of a batch",
    "batch_gene_effect": "(B, G) per-gene multiplicative batch effect",
    "tf_typical_level": "(T,) hill constant K_i: geometric mean TF rate over cell types",
    "extrinsic_variance_fraction": "(G,) size-factor share of count variance at the mean cell",
    "expected_perturbation_profile": "(D, K+1, G) expected normalised expression, control first",
    "expected_time_profile": "(D, n_t+1, G) expected normalised expression at 0 h then time_points",
}


def expected_tables(truth: Truth) -> dict[str, np.ndarray]:
    """Expected profiles for every type x perturbation and every type x time point."""
    n_types, n_perturbations = len(truth.cell_type_names), len(truth.perturbation_targets)
    perturbation = np.arange(n_perturbations + 1)
    times = np.concatenate([[0.0], truth.time_points])
    by_perturbation = [expected_profiles(truth, t, perturbation, np.zeros(len(perturbation))) for t in range(n_types)]
    by_time = [expected_profiles(truth, t, np.zeros(len(times), dtype=int), times) for t in range(n_types)]
    return {"expected_perturbation_profile": np.stack(by_perturbation), "expected_time_profile": np.stack(by_time)}


def write_truth(group: zarr.Group, truth: Truth, tables: dict[str, np.ndarray] | None = None) -> None:
    """Every Truth field into `group` (+ expected tables); names and scalars go to attrs."""
    attrs: dict = {"format": TRUTH_FORMAT, "version": TRUTH_VERSION, "string_arrays": [], "arrays": {}}
    arrays = {f.name: getattr(truth, f.name) for f in dataclasses.fields(truth)} | (tables or {})
    for name, value in arrays.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "USO":
            attrs[name] = value.tolist()
            attrs["string_arrays"].append(name)
        elif isinstance(value, np.ndarray):
            # one chunk per array (they are small), one per cell type for the (D, ., G) tables
            chunks = tuple(max(1, size) for size in ((1, *value.shape[1:]) if value.ndim == 3 else value.shape))
            array = group.create_array(name, shape=value.shape, dtype=value.dtype, chunks=chunks)
            if value.size:
                array[...] = value
            attrs["arrays"][name] = DESCRIPTIONS.get(name, "")
        else:
            attrs[name] = value.item() if isinstance(value, np.generic) else value
    group.attrs.update(attrs)


def read_truth(group: zarr.Group) -> Truth:
    """The `Truth` written by `write_truth`."""
    attrs = group.attrs.asdict()
    if attrs.get("format") != TRUTH_FORMAT:
        raise VCellError(f"{group.store}: group '{group.path}' is not simulator truth", hint="pass a synthetic atlas")
    values = {}
    for f in dataclasses.fields(Truth):
        if f.name in attrs["arrays"]:
            values[f.name] = np.asarray(group[f.name][...])
        elif f.name in attrs["string_arrays"]:
            values[f.name] = np.array(attrs[f.name], dtype=str)
        else:
            values[f.name] = attrs[f.name]
    return Truth(**values)


def open_truth(path: str | Path) -> Truth:
    """Truth of an atlas directory (its `truth` group) or of a truth group path."""
    path = Path(path)
    try:
        root = zarr.open_group(path, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as error:
        raise VCellError(f"no Zarr group at {path}: {error}", hint="pass a synthetic atlas path") from None
    if "truth" in root and root.attrs.get("format") != TRUTH_FORMAT:
        root = root["truth"]
    return read_truth(root)


def write_annotations(directory: Path, truth: Truth) -> None:
    """pathways.gmt, pathway_compartments.tsv and grn_edges.tsv, keyed by gene IDs."""
    directory.mkdir(parents=True, exist_ok=True)
    compartments = truth.compartment_names[truth.pathway_compartment]
    names = truth.pathway_names
    sets = {name: truth.gene_ids[members].tolist() for name, members in zip(names, truth.pathway_membership)}
    descriptions = {name: f"synthetic pathway in {c}" for name, c in zip(truth.pathway_names, compartments)}
    write_gmt(directory / "pathways.gmt", sets, descriptions)
    write_pathway_compartments(directory / "pathway_compartments.tsv", dict(zip(truth.pathway_names, compartments)))
    ids = truth.gene_ids
    sources, targets = ids[truth.edge_source], ids[truth.edge_target]
    write_grn_edges(directory / "grn_edges.tsv", sources, targets, truth.edge_sign, truth.edge_weight)


def write_synthetic_extras(root: zarr.Group, atlas_dir: Path, truth: Truth) -> None:
    """The builder's `extra` hook: truth group + annotation files, inside the temporary atlas."""
    write_truth(root.create_group("truth"), truth, expected_tables(truth))
    write_annotations(Path(atlas_dir) / "annotations", truth)
