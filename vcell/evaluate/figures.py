"""The figures of an evaluation, from its computed arrays: one PNG each under <run>/plots/.

    paths = write_figures(data, results, arrays, Path("runs/quickstart/plots"), config.evaluate)

Training curves; PCA and t-SNE of the held-out embeddings coloured by cell type, batch,
perturbation and time; model vs baselines; predicted vs observed perturbation deltas; and the
model-specific views: pathway activity by cell type, GRN weights vs truth, response kinetics,
variance decomposition, resource allocation, scale contributions and memory (primed - naive).

plots/ afterwards holds this evaluation's figures only: a figure an earlier evaluation drew that
this one did not (another model of the same run name, a read-out the model no longer has) is
removed, so no PNG there describes a different model. Only the names in PLOT_FILES are vcell's;
any other file in plots/ is the user's and stays.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vcell.config.evaluate import EvaluateConfig
from vcell.evaluate import plots, plots_model
from vcell.evaluate.heldout import HeldOut
from vcell.evaluate.evaluation import baseline_rows
from vcell.evaluate.representation import PCA
from vcell.evaluate.truth import true_expression
from vcell.models.inputs import Conditions
from vcell.models.registry import get_enhancement, resolve
from vcell.train.tracking import read_history

log = logging.getLogger(__name__)
KINETIC_GENES = 6
ALLOCATION_PATHWAYS = 8
PLOT_FILES = frozenset({  # every figure an evaluation may write (tests check none is missing)
    "training_curves.png", "embedding_pca.png", "embedding_tsne.png", "metrics_vs_baselines.png",
    "perturbation_deltas.png", "pathway_activity.png", "grn_edges_vs_truth.png", "kinetics.png",
    "variance_decomposition.png", "resource_allocation.png", "scale_contributions.png",
    "memory_primed_minus_naive.png",
})


def colourings(data: HeldOut, rows: np.ndarray) -> dict[str, tuple[np.ndarray, list[str] | None]]:
    """Cell type, batch, perturbation (categorical) and time (continuous) of held-out cells."""
    columns = data.trained.config.model.columns
    out = {}
    for column in (columns.context, "batch", columns.perturbation, columns.time):
        if not column or column not in data.test_obs:
            continue
        values = data.test_obs[column].iloc[rows]
        if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object:
            categorical = pd.Categorical(values)
            out[column] = (categorical.codes.astype(np.int64), [str(c) for c in categorical.categories])
        else:
            out[column] = (values.to_numpy(np.float64), None)
    return out


def embedding_figures(data: HeldOut, arrays: dict, directory: Path, settings: EvaluateConfig) -> list[Path]:
    latent = arrays["latent"]
    everything = np.arange(len(latent))
    pca = PCA(latent, 2, seed=data.seed).transform(latent)
    paths = [plots.embedding_panels(pca, colourings(data, everything), "PCA of the model's embedding, held-out cells",
                                    directory / "embedding_pca.png",
                                    axis_labels=("PC 1", "PC 2"))]
    from sklearn.manifold import TSNE

    rows = everything
    if len(rows) > settings.tsne_cells:
        rows = np.sort(np.random.default_rng(data.seed).choice(rows, settings.tsne_cells, replace=False))
    sampled = f" (a random sample of {len(latent):,})" if len(rows) < len(latent) else ""
    coordinates = TSNE(2, perplexity=min(30.0, (len(rows) - 1) / 3), init="pca", random_state=data.seed).fit_transform(latent[rows])
    paths.append(plots.embedding_panels(coordinates, colourings(data, rows), f"t-SNE of the model's embedding, "
                                        f"held-out cells{sampled}", directory / "embedding_tsne.png",
                                        axis_labels=("t-SNE 1", "t-SNE 2")))
    return paths


def perturbation_figure(arrays: dict, directory: Path) -> list[Path]:
    """Predicted vs true deltas per gene and perturbation: the simulator's truth when there is one
    (observed pseudobulks of a few held-out cells are mostly noise), else the observed ones."""
    groups = [g for g in ("unseen_perturbations", "seen_perturbations") if f"{g}/observed" in arrays]
    if not groups:
        return []
    target = "truth" if all(f"{g}/truth" in arrays for g in groups) else "observed"
    reference = np.concatenate([arrays[f"{g}/{target}"].ravel() for g in groups])
    predicted = np.concatenate([arrays[f"{g}/model"].ravel() for g in groups])
    masks, start = {}, 0
    for group in groups:
        size = arrays[f"{group}/{target}"].size
        mask = np.zeros(len(reference), dtype=bool)
        mask[start: start + size] = True
        masks[group.replace("_", " ")], start = mask, start + size
    label = "true delta (simulator)" if target == "truth" else "observed delta (held-out cells)"
    return [plots_model.scatter_against(reference, predicted, f"{label}, perturbed - control", "predicted delta",
                                        "Perturbation response per gene (normalised expression)",
                                        directory / "perturbation_deltas.png", groups=masks)]


def by_cell_type(data: HeldOut, values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(types, k) mean of per-cell values per cell type, and the type names."""
    column = data.column("context")
    codes = data.test[column].numpy()
    present = sorted(c for c in np.unique(codes) if c >= 0)
    return np.stack([values[codes == c].mean(0) for c in present]), [data.categories[column][c] for c in present]


def model_figures(data: HeldOut, arrays: dict, directory: Path) -> list[Path]:
    """The figure of each enhancement evaluated (`arrays`: its name -> its arrays), drawn by the
    registry's `figure` hook; an enhancement without one draws nothing."""
    paths: list[Path] = []
    for name, values in arrays.items():
        figure = get_enhancement(name).figure
        if figure is not None:
            paths += resolve(figure)(data, values, directory)
    return paths


# -- the built-in enhancements' figures: (data, its arrays, folder) -> paths written -----------------
def hierarchical_figure(data: HeldOut, values: dict, directory: Path) -> list[Path]:
    if "activity" not in values:
        return []
    matrix, types = by_cell_type(data, values["activity"])
    matrix = matrix - matrix.mean(0)  # differences between cell types, not each pathway's overall level
    return [plots_model.heatmap(matrix, types, list(data.model.spec.pathway_names), "Pathway activity by cell type "
                                "(held-out cells)", "mean activity - mean over cell types",
                                directory / "pathway_activity.png")]


def regulatory_figure(data: HeldOut, values: dict, directory: Path) -> list[Path]:
    if "learned" not in values:
        return []
    return [plots_model.scatter_against(values["true"], values["learned"], "true edge weight (log space)",
                                        "learned edge weight", "GRN: learned vs true weights of true edges",
                                        directory / "grn_edges_vs_truth.png", diagonal=False)]


def temporal_figure(data: HeldOut, values: dict, directory: Path) -> list[Path]:
    return [kinetics_figure(data, values["hours"], directory)] if "hours" in values else []


def stochastic_figure(data: HeldOut, values: dict, directory: Path) -> list[Path]:
    return [variance_figure(data, values, directory)] if "extrinsic_fraction" in values else []


def resource_figure(data: HeldOut, values: dict, directory: Path) -> list[Path]:
    if "allocation" not in values:
        return []
    spec = data.model.spec
    matrix, types = by_cell_type(data, values["allocation"])
    top = np.argsort(-matrix.mean(0))[:ALLOCATION_PATHWAYS]
    parts = {spec.pathway_names[p]: matrix[:, p] for p in top}
    parts["other pathways"] = matrix.sum(1) - matrix[:, top].sum(1)
    return [plots_model.stacked_bars(types, parts, "Transcriptional capacity allocated to pathways "
                                     "(the rest: genes outside any pathway)", "share of expected counts",
                                     directory / "resource_allocation.png")]


def multiscale_figure(data: HeldOut, values: dict, directory: Path) -> list[Path]:
    if "scale_weight" not in values:
        return []
    matrix, types = by_cell_type(data, values["scale_weight"])
    names = ["gene", "pathway", "cell"][: matrix.shape[1]]
    return [plots_model.stacked_bars(types, {n: matrix[:, i] for i, n in enumerate(names)},
                                     "Scale contributions (gate weights)", "mean weight",
                                     directory / "scale_contributions.png")]


def memory_figure(data: HeldOut, values: dict, directory: Path) -> list[Path]:
    """Primed - naive per gene (each cell type, at rest and 2 h into a stimulus): model vs truth."""
    if "difference" not in values:
        return []
    return [plots_model.scatter_against(values["true_difference"], values["difference"],
                                        "true primed - naive (simulator)", "predicted primed - naive",
                                        "Memory: what a pulse 24 h earlier leaves behind, per gene",
                                        directory / "memory_primed_minus_naive.png")]


def kinetics_figure(data: HeldOut, hours: np.ndarray, directory: Path) -> Path:
    """Predicted mean expression after a stimulus of the genes the truth moves most (one cell type)."""
    from vcell.evaluate.science_time import basal_cells_by_type

    control = data.code("perturbation", data.trained.config.model.columns.control)
    cell_type, basal = next(basal_cells_by_type(data, control))
    n = len(basal["x"])
    conditions = Conditions(perturbation=torch.full((n,), control))
    path = data.model.trajectory(basal, list(hours), conditions).double().mean(1).numpy()  # (T, G)
    genes = data.model.spec.gene_ids
    if data.truth is not None:
        amplitude = np.abs(data.truth.stimulus_log_amplitude[cell_type][data.truth_order])
    else:
        amplitude = np.abs(path[-1] - path[0])
    chosen = np.argsort(-amplitude)[:KINETIC_GENES]
    lines = {genes[g]: path[:, g] for g in chosen}
    reference = None
    if data.truth is not None:
        truth = np.stack([true_expression(data, cell_type, time=float(h)) for h in hours])
        reference = {genes[g]: truth[:, g] for g in chosen}
    name = data.categories[data.column("context")][cell_type]
    return plots_model.curves(hours, lines, "hours after the stimulus", "mean normalised expression",
                              f"Response kinetics in {name} (solid: model, dashed: truth)", directory / "kinetics.png",
                              reference=reference)


def variance_figure(data: HeldOut, values: dict, directory: Path) -> Path:
    """The share of each gene's variance the model puts in cell state (extrinsic) rather than
    noise: per gene against the simulator's when known, else by expression level."""
    path = directory / "variance_decomposition.png"
    if "true_extrinsic_fraction" in values:
        return plots_model.scatter_against(values["true_extrinsic_fraction"], values["extrinsic_fraction"],
                                           "true extrinsic share of variance", "model's extrinsic share",
                                           "Variance decomposition per gene (cell state vs noise)", path)
    mean = data.test["x"].numpy().mean(0)
    groups = np.array_split(np.argsort(mean), 5)
    extrinsic = np.array([values["extrinsic_fraction"][g].mean() for g in groups])
    return plots_model.stacked_bars(["lowest 20%", "20-40%", "40-60%", "60-80%", "highest 20%"],
                                    {"extrinsic (cell state)": extrinsic, "intrinsic (noise)": 1 - extrinsic},
                                    "Variance decomposition by expression level", "share of variance", path)


def write_figures(data: HeldOut, results: dict, arrays: dict, directory: Path, settings: EvaluateConfig) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    run_folder = data.trained.run_folder
    if run_folder and (run_folder / "history.csv").is_file():
        history = [{k: float(v) if v not in ("", None) else np.nan for k, v in row.items()}
                   for row in read_history(run_folder / "history.csv")]
        paths.append(plots.training_curves(history, directory / "training_curves.png"))
    paths += embedding_figures(data, arrays["embedding"], directory, settings)
    paths.append(plots_model.metric_bars(baseline_rows(results), f"{data.trained.config.name}: model vs baselines "
                                         "(held-out cells)", directory / "metrics_vs_baselines.png"))
    paths += perturbation_figure(arrays.get("perturbation", {}), directory)
    paths += model_figures(data, arrays.get("enhancements", {}), directory)
    remove_stale_plots(directory, {path.name for path in paths})
    return sorted(str(path.relative_to(directory.parent)) for path in paths)


def remove_stale_plots(directory: Path, written: set[str] = frozenset()) -> list[str]:
    """Delete vcell's figures in `directory` that are not in `written` (the folder too once empty);
    the names deleted. Files vcell does not write are never touched."""
    stale = sorted(path.name for path in directory.glob("*.png") if path.name in PLOT_FILES - written)
    for name in stale:
        (directory / name).unlink()
    if stale:
        log.info("removed figures of an earlier evaluation from %s: %s", directory, ", ".join(stale))
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
    return stale


def existing_plots(run_folder: str | Path, *names: str) -> list[Path]:
    """The PNGs of `names` (every one when none is named) that the evaluation wrote into
    <run_folder>/plots/, in the order named; those not written (`evaluate.plots=false`, or a read-out
    the model does not have) are left out and logged."""
    folder = Path(run_folder) / "plots"
    if not names:
        return sorted(path for path in folder.glob("*.png") if path.name in PLOT_FILES)
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        log.info("not in %s: %s (plots off, or not a read-out of this model)", folder, ", ".join(missing))
    return [folder / name for name in names if name not in missing]
