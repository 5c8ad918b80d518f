"""Inferred biology as files a biologist opens: the learned network, response half-times, pathway
activity per cell type, memory.

    tables, skipped = biology_tables(trained, data)      # file name -> DataFrame; file name -> why not
    write_biology(run / "biology", tables, skipped)      # TSVs and a README.md, swapped in whole

`vcell evaluate` (so also the end of `vcell train`) writes `biology/` into the run folder and
`vcell export` into the export folder; each file only for a model with its enhancement (the
list, with columns and units, is `BIOLOGY_FILES`, shown in README.md and in the folder's own
README.md). Per-cell read-outs (pathway and compartment activity, capacity, free share,
pathway allocation) are not here: they are rows of cells, in `embeddings.h5ad` (`vcell.evaluate.embed`);
pathway activity is here too, averaged per cell type.

Kinetics, pathway activity and memory are read off the model's predictions for basal cells (control, unstimulated,
naive; at most BASAL_CELLS per cell type) of the held-out set, so they need the atlas: an
export whose training atlas is gone gets the network only, and its README.md says why.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vcell.data.memory import select
from vcell.errors import VCellError
from vcell.evaluate.heldout import HeldOut
from vcell.evaluate.perturbation import by_type, pure_rows
from vcell.files import current_umask, foreign_entries, swap_into_place
from vcell.models.inputs import Conditions
from vcell.models.slots import condition_shift

log = logging.getLogger(__name__)
BASAL_CELLS = 256
HALF_TIME_HOURS = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]  # the learning check's grid
MEMORY_PULSE_HOURS = 24.0  # as the memory evaluation: a pulse one day before
MEMORY_STIMULUS_HOURS = (0.0, 2.0)
README_TITLE = "# vcell: inferred biology"
EXPRESSION_UNITS = "the run's normalised expression (loader.normalize; log1p of counts per 10k by default)"


@dataclass(frozen=True)
class BiologyFile:
    name: str
    enhancement: str  # written only for models with it
    holds: str  # a row, its columns and their units, how to read it


BIOLOGY_FILES = (
    BiologyFile("grn_edges.tsv", "regulatory",
                "one prior edge a row, strongest first: source, target (gene IDs), signed_weight (learned effect of "
                "the source's level on the target's, expression per expression), score (how far the edge stands out: "
                "|standardised_weight| / the geometric mean of the root mean squares of the source's and the target's "
                "prior edges, / the largest: 1 = strongest), sign (+1/-1/0 of the learned weight), prior_sign, rank, "
                "true_level_weight (the effect of the source's true level: signed_weight / max(source_reliability, "
                "1 - model.regulatory.dilution_correction); counting noise dilutes a slope fitted on measured levels, "
                "and a perturbation moves the true level), source_reliability (the share of the source's variance "
                "across basal cells that is not counting noise, 0-1; 1 for a model that reads no raw counts), "
                "standardised_weight (signed_weight x the source's sd / the target's sd across cells, the target's at "
                "least a tenth of the median gene's: target sds per source sd). "
                "`pd.read_csv(f, sep='\\t')`; "
                "as a prior for a new run: model.regulatory.edges=<file> (score is read as the edge weight)"),
    BiologyFile("response_half_times.tsv", "temporal",
                "one gene a row per cell type: gene_id, cell_type, half_time_hours (hours after a stimulus until the "
                "gene has made half of its predicted move between 0 and 64 h; NA: it does not move), change_64h (the "
                f"predicted change at 64 h, in {EXPRESSION_UNITS})"),
    BiologyFile("pathway_activity_by_cell_type.tsv", "hierarchical",
                "one pathway a row per cell type: pathway, compartment (NA: none), cell_type, cells (held-out basal "
                "cells averaged), mean_activity (their mean per-cell pathway activity, as in `embeddings.h5ad` "
                "obsm `vcell_pathway_activity`; unitless), relative_activity (mean_activity minus the pathway's mean "
                "over cell types: which programs set a type apart), sd_across_cells. Compare cell types, not single "
                "cells: on vcell's simulator a cell's own deviation from its type is mostly noise (README, "
                "hierarchical)"),
    BiologyFile("perturbed_gene_knockdown.tsv", "base",
                "one perturbed gene a row (genes that perturbations on the latent shift target: models without "
                "regulatory): gene_id, basal_level and knocked_level (its mean level in control and in perturbed "
                f"training cells at rest, above a zero count's value, in {EXPRESSION_UNITS}), share_of_level "
                "(knocked / basal: the knock-down's efficiency; NA: fewer than 3 perturbed cells or no basal level), "
                "share_of_counts (the same on its share of each cell's counts, count models; NA: none), share_used "
                "(the share a prediction reads the gene at: its own, else the median gene's: "
                "`vcell.models.knock`)"),
    BiologyFile("memory_primed_minus_naive.tsv", "memory",
                "one gene a row per cell type and stimulus time: gene_id, cell_type, hours_after_stimulus (0 = at rest, "
                f"2), primed_minus_naive (predicted mean of cells pulsed {MEMORY_PULSE_HOURS:g} h earlier minus naive "
                f"cells, in {EXPRESSION_UNITS}, as measured cells average: `VirtualCell.predict_measured`)"),
)


def biology_tables(trained, data: HeldOut | None, no_cells: str = "") -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """(file name -> table, file name -> why it is not written) for the model's enhancements;
    `data` None: no cells to predict from (`no_cells` says why)."""
    enhancements = set(trained.config.model.enhancements)
    if getattr(trained.model, "gene_knock", None) is not None:
        enhancements.add("base")  # perturbations on the latent shift: their genes' measured knock-down
    makers = {"grn_edges.tsv": lambda: grn_edges(trained.model), "perturbed_gene_knockdown.tsv": lambda: knockdown(trained.model),
              "response_half_times.tsv": lambda: half_times(data), "memory_primed_minus_naive.tsv": lambda: memory(data),
              "pathway_activity_by_cell_type.tsv": lambda: pathway_activity(data)}
    tables, skipped = {}, {}
    for entry in BIOLOGY_FILES:
        if entry.enhancement not in enhancements:
            continue
        if entry.enhancement not in ("regulatory", "base") and data is None:  # those two read the model alone
            skipped[entry.name] = no_cells or "no cells to predict from"
            continue
        table = makers[entry.name]()
        if isinstance(table, str):
            skipped[entry.name] = table
        else:
            tables[entry.name] = table
    return tables, skipped


def grn_edges(model) -> pd.DataFrame:
    """The learned network (`vcell.models.grn.edge_table`) with a score, a learned sign and a rank."""
    from vcell.models.enhancements.regulatory import RegulatoryPropagation
    from vcell.models.grn import edge_table

    propagation = next(module for module in model.modules() if isinstance(module, RegulatoryPropagation))
    # edge_table ranks by the edge score (the standardised |weight|, sd(source) / sd(target) x |w|, against
    # its regulator's and target's other edges): raw weights of regulators with different spreads are
    # not comparable; the score is that, scaled to [0, 1]
    table = edge_table(propagation, model.spec).rename(columns={"weight": "signed_weight"})
    strongest = float(table["score"].max()) if len(table) else 0.0
    table["score"] = table["score"] / strongest if strongest > 0 else 0.0
    table["sign"] = np.sign(table["signed_weight"]).astype(int)
    table["rank"] = np.arange(1, len(table) + 1)
    # the columns added after rank keep the older columns' positions for readers that index them
    return table[["source", "target", "signed_weight", "score", "sign", "prior_sign", "rank", "true_level_weight",
                  "source_reliability", "standardised_weight"]]


def knockdown(model) -> pd.DataFrame | str:
    """The measured knock-down of each gene a perturbation on the latent shift targets (`GeneKnock.per_gene`)."""
    routed = condition_shift(model.dynamics).routed & (model.spec.perturbation_gene >= 0)
    genes = np.unique(model.spec.perturbation_gene[routed])
    table = pd.DataFrame({"gene_id": [model.spec.gene_ids[g] for g in genes], **model.gene_knock.per_gene(genes)})
    if table["share_used"].isna().all():
        return "no perturbed gene was measured: no training cell at rest carried a gene perturbation"
    return table


def basal_cells(data: HeldOut) -> list[tuple[str, dict[str, torch.Tensor]]] | str:
    """(cell type name, up to BASAL_CELLS held-out control, unstimulated, naive cells of it) per type."""
    control = data.code("perturbation", data.trained.config.model.columns.control)
    column = data.column("perturbation")
    if control is None or column not in data.test:
        return "the model reads no perturbation column with a control category: no basal cells to start from"
    rows = torch.nonzero(pure_rows(data, data.test) & (data.test[column] == control))[:, 0]
    names = data.categories.get(data.column("context") or "", [])
    groups = [(names[t] if 0 <= t < len(names) else "all", select(data.test, mine[:BASAL_CELLS]))
              for t, mine in sorted(by_type(data, data.test, rows).items())]
    return groups or "no held-out basal (control, unstimulated, naive) cells"


def control_conditions(data: HeldOut, n: int, hours_since_pulse: float = float("nan"), hours: float = 0.0) -> Conditions:
    control = data.code("perturbation", data.trained.config.model.columns.control)
    return Conditions(torch.full((n,), control, dtype=torch.long), torch.full((n,), hours),
                      torch.full((n,), hours_since_pulse))


def half_times(data: HeldOut) -> pd.DataFrame | str:
    from vcell.models.enhancements.temporal import response_half_times

    groups = basal_cells(data)
    if isinstance(groups, str):
        return groups
    genes, parts = data.model.spec.gene_ids, []
    for cell_type, cells in groups:
        path = data.model.trajectory(cells, HALF_TIME_HOURS, control_conditions(data, len(cells["x"])))
        path = path.double().mean(1).numpy()  # (T, G): the mean cell's trajectory
        parts.append(pd.DataFrame({"gene_id": genes, "cell_type": cell_type,
                                   "half_time_hours": response_half_times(path, np.array(HALF_TIME_HOURS)),
                                   "change_64h": path[-1] - path[0]}))
    return pd.concat(parts, ignore_index=True)


def pathway_activity(data: HeldOut) -> pd.DataFrame | str:
    groups = basal_cells(data)
    if isinstance(groups, str):
        return groups
    spec = data.model.spec
    compartment = pathway_compartments(spec)
    parts = []
    for cell_type, cells in groups:
        with torch.no_grad():
            activity = data.model.describe(cells).stats["pathway_activity"].double().numpy()  # (n, P)
        parts.append(pd.DataFrame({
            "pathway": spec.pathway_names, "compartment": compartment, "cell_type": cell_type, "cells": len(activity),
            "mean_activity": activity.mean(0), "sd_across_cells": activity.std(0, ddof=1) if len(activity) > 1 else np.nan,
        }))
    table = pd.concat(parts, ignore_index=True)
    table.insert(5, "relative_activity", table["mean_activity"] - table.groupby("pathway")["mean_activity"].transform("mean"))
    return table


def pathway_compartments(spec) -> list[str | None]:
    """(P,) each pathway's compartment name (None: the table gave it none, or they are learned)."""
    names: list[str | None] = [None] * len(spec.pathway_names)
    if spec.pathway_compartment is not None:
        for pathway, compartment in zip(spec.pathway_compartment.source, spec.pathway_compartment.target):
            names[int(pathway)] = spec.compartment_names[int(compartment)]
    return names


def memory(data: HeldOut) -> pd.DataFrame | str:
    groups = basal_cells(data)
    if isinstance(groups, str):
        return groups
    genes, parts = data.model.spec.gene_ids, []
    with torch.no_grad():
        for cell_type, cells in groups:
            n = len(cells["x"])
            for hours in MEMORY_STIMULUS_HOURS:
                primed = data.model.predict_measured(cells, control_conditions(data, n, MEMORY_PULSE_HOURS, hours))
                naive = data.model.predict_measured(cells, control_conditions(data, n, float("nan"), hours))
                parts.append(pd.DataFrame({"gene_id": genes, "cell_type": cell_type, "hours_after_stimulus": hours,
                                           "primed_minus_naive": (primed.double() - naive.double()).mean(0).numpy()}))
    return pd.concat(parts, ignore_index=True)


def readme(tables: dict[str, pd.DataFrame], skipped: dict[str, str]) -> str:
    lines = [README_TITLE, "", "Tab-separated, with a header; NA = undefined. Written by vcell; see vcell's README.md.", ""]
    for entry in BIOLOGY_FILES:
        if entry.name in tables:
            lines.append(f"- `{entry.name}` ({entry.enhancement}; {len(tables[entry.name]):,} rows): {entry.holds}")
        elif entry.name in skipped:
            lines.append(f"- `{entry.name}` ({entry.enhancement}): not written: {skipped[entry.name]}")
    return "\n".join(lines) + "\n"


def biology_not_ours(folder: Path) -> str | None:
    """None for a biology folder vcell wrote holding nothing else (what may be replaced)."""
    try:
        ours = (folder / "README.md").read_text().startswith(README_TITLE)
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours:
        return "it has no README.md written by vcell"
    return foreign_entries(folder, {"README.md", *(entry.name for entry in BIOLOGY_FILES)})


def write_biology(folder: Path, tables: dict[str, pd.DataFrame], skipped: dict[str, str]) -> list[Path]:
    """The tables and a README.md as `folder`, written beside it and renamed into place; a `folder`
    that holds anything vcell did not write is refused. Nothing is written without a table, and a
    `folder` vcell wrote for another model is then removed (it would be taken for this model's)."""
    if not tables and not skipped:
        remove_biology(folder)
        return []
    if folder.exists() and (reason := biology_not_ours(folder)) is not None:
        raise VCellError(f"{folder} exists and vcell may not replace it: {reason}",
                         hint=f"move {folder} away (or its extra files), then evaluate or export again")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        for name, table in tables.items():
            table.to_csv(staging / name, sep="\t", index=False, float_format="%.6g", na_rep="NA")
        (staging / "README.md").write_text(readme(tables, skipped))
        staging.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; results are shared like any folder
        swap_into_place(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [folder / name for name in tables]


def remove_biology(folder: Path) -> bool:
    """Delete `folder` if vcell wrote it and it holds nothing else; whether it did."""
    if not folder.is_dir() or biology_not_ours(folder) is not None:
        return False
    shutil.rmtree(folder)
    log.info("removed %s: it described another model (this one has no biology tables)", folder)
    return True
