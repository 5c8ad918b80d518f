"""`vcell predict`: expression of real cells moved to conditions they were never seen in.

    predict_run("runs/quickstart", perturbation="TF051", cell_type="type_3", out="tf051.h5ad")

Starts from basal cells (control, unstimulated, naive) of the chosen cell type in an atlas
(default: the run's training atlas), a seeded sample of them, and decodes each one under the
requested conditions and under control. The `.h5ad` holds `X` (predicted normalised
expression under the conditions: for count models the mean of what measuring such a cell
gives, `VirtualCell.predict_measured`, comparable with real cells' log1p counts per 10,000),
`layers["control"]` (the same cells predicted under control), `layers["expected_counts"]` for
count models, the source cells' obs plus the conditions, `var["mean_delta"]` (mean predicted -
control per gene), `uns["vcell_predict"]` (conditions, run, the 20 genes moved most) and
`uns["vcell_writer"]` ("vcell predict").
"""

from __future__ import annotations

import math
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from vcell.atlas.store import open_atlas
from vcell.data.reader import AtlasReader
from vcell.errors import VCellError
from vcell.evaluate.export import Trained, open_trained
from vcell.evaluate.heldout import read_cells, sample_rows
from vcell.files import H5AD_WRITER_KEY, new_output_file, output_errors, staged_file
from vcell.models.inputs import Conditions
from vcell.models.slots import condition_shift


def category_code(trained: Trained, column: str | None, name: str, what: str) -> int:
    names = trained.categories.get(column or "", [])
    if name not in names:
        close = [n for n in names if name.lower() in n.lower()][:10] or names[:10]
        raise VCellError(f"{what} {name!r} is not one the model knows (obs column '{column}')",
                         hint=f"choose one of: {', '.join(close)}" + (" ..." if len(names) > 10 else ""))
    return names.index(name)


def basal_rows(trained: Trained, atlas_path: Path, cell_type: int) -> np.ndarray:
    """Atlas rows of control, unstimulated, naive cells of one type."""
    columns = trained.config.model.columns
    atlas = open_atlas(atlas_path)
    present = [c for c in (columns.context, columns.perturbation, columns.time, columns.history)
               if c and c in atlas.attrs["obs_columns"]]
    reader = AtlasReader(atlas, present)
    keep = np.ones(atlas.n_cells, dtype=bool)
    for column in present:
        values = reader.read_labels(column)
        if column == columns.context:
            names = atlas.attrs["obs_categories"][column]
            keep &= values == (names.index(trained.categories[column][cell_type]) if trained.categories[column][cell_type] in names else -2)
        elif column == columns.perturbation:
            names = atlas.attrs["obs_categories"][column]
            keep &= values == (names.index(columns.control) if columns.control in names else -2)
        elif column == columns.time:
            keep &= ~(values > 0)
        else:
            keep &= np.isnan(values)
    return np.flatnonzero(keep)


def check_request(cells: int, time: float, hours_since_pulse: float | None) -> None:
    """Library callers get the checks the command line does in argparse."""
    if cells < 1:
        raise VCellError(f"cells={cells}: predict needs at least one basal cell")
    for name, hours in (("time", time), ("hours_since_pulse", hours_since_pulse)):
        if hours is not None and not (math.isfinite(hours) and hours >= 0):
            raise VCellError(f"{name}={hours}: hours must be a finite number >= 0")


def predict_run(run: str | Path, *, perturbation: str | None, cell_type: str, out: str | Path, time: float = 0.0,
                hours_since_pulse: float | None = None, cells: int = 500, atlas: str | Path | None = None,
                overwrite: bool = False) -> Path:
    check_request(cells, time, hours_since_pulse)
    given = Path(out)
    out = new_output_file(given, ".h5ad", overwrite, inputs=[run, atlas])
    if perturbation and "," in perturbation:
        raise VCellError(f"--perturbation {perturbation}: combinations are not supported yet; this model encodes "
                         "one perturbation per cell", hint="predict each perturbation on its own")
    trained = open_trained(run)
    columns = trained.config.model.columns
    type_code = category_code(trained, columns.context, cell_type, "cell type")
    control = category_code(trained, columns.perturbation, columns.control, "control")
    code = control if perturbation is None else category_code(trained, columns.perturbation, perturbation, "perturbation")
    note = untrained_note(trained, code, perturbation)
    atlas_path = Path(atlas or trained.config.data.atlas)
    new_output_file(given, ".h5ad", overwrite, inputs=[atlas_path])  # the default atlas, now known
    rows = sample_rows(basal_rows(trained, atlas_path, type_code), cells, trained.config.seed, 3)
    if len(rows) == 0:
        raise VCellError(f"{atlas_path} has no control, unstimulated, naive cells of type {cell_type!r} to start from",
                         hint="pass --atlas with an atlas that has such cells")
    basal, stream = read_cells(atlas_path, trained, rows)
    n = len(rows)
    pulse = float("nan") if hours_since_pulse is None else float(hours_since_pulse)

    def under(perturbation_code: int):
        return trained.model.predict(basal, Conditions(torch.full((n,), perturbation_code, dtype=torch.long),
                                                       torch.full((n,), float(time)), torch.full((n,), pulse)))

    moved, reference = under(code), under(control)
    table = predicted_anndata(trained, stream.obs, moved, reference)
    table.obs["predicted_perturbation"] = perturbation or columns.control
    table.obs["predicted_time"], table.obs["predicted_hours_since_pulse"] = float(time), pulse
    delta = table.var["mean_delta"].to_numpy()
    table.uns["vcell_predict"] = {
        "run": trained.config.name, "perturbation": perturbation or columns.control, "cell_type": cell_type,
        "time": float(time), "hours_since_pulse": "naive" if hours_since_pulse is None else pulse, "cells": n,
        "top_genes": [trained.model.spec.gene_ids[g] for g in np.argsort(-np.abs(delta))[:20]],
        **({"note": note} if note else {}),
    }
    table.uns[H5AD_WRITER_KEY] = "vcell predict"
    with output_errors(given), staged_file(out) as temporary:
        table.write_h5ad(temporary)
    return given


def untrained_note(trained: Trained, code: int, perturbation: str | None) -> str | None:
    """A warning (printed, and kept in uns) when no training cell carried the perturbation and no
    other route of the model (the GRN of `regulatory`) does: it is knocked down in silico (its
    gene known, `vcell.models.knock`), or it moves nothing."""
    model = trained.model
    if perturbation is None or condition_shift(model.dynamics).moves(code):
        return None
    knock = model.in_silico(Conditions(perturbation=torch.tensor([code], device=model.zero_level.device)))
    if knock is not None and bool(knock.unseen[0]):
        gene = model.spec.gene_ids[int(knock.genes[0])]
        note = (f"perturbation {perturbation!r} was in no training cell and no network of this model carries it, so "
                f"the prediction moves its gene {gene} in silico to {float(knock.fractions[0]):.2f} x its level above zero "
                "(what the training cells' perturbed genes typically kept) and reads the cell's state with it there; a model with "
                "`regulatory` moves a perturbed gene along its network")
    else:
        note = (f"perturbation {perturbation!r} was in no training cell and no other route of this model carries it, "
                "so the prediction is no change (a model with `regulatory` moves a perturbed gene along its network)")
    print(f"warning: {note}")
    return note


def predicted_anndata(trained: Trained, obs: pd.DataFrame, moved, reference) -> ad.AnnData:
    obs = obs.copy()
    obs.index = obs.index.astype(str)
    var = pd.DataFrame(index=pd.Index(trained.model.spec.gene_ids, name="gene_id"))
    head = trained.model.head  # the mean of measured log1p cp10k, comparable with real cells' values
    expression, control = head.measured(moved).numpy(), head.measured(reference).numpy()
    var["mean_delta"] = (expression - control).mean(0)
    layers = {"control": control.astype(np.float32)}
    if moved.mean is not None:
        layers["expected_counts"] = moved.mean.numpy().astype(np.float32)
    return ad.AnnData(X=expression.astype(np.float32), obs=obs, var=var, layers=layers)
