"""PNG figures for evaluation reports, drawn from plain numpy arrays and dicts.

Every function draws on its own `matplotlib.figure.Figure` with an Agg canvas (no pyplot, so no GUI
backend and no figure left open in pyplot's registry), writes the PNG atomically and returns its Path.

Here, with the shared helpers:
    training_curves   loss terms over optimiser steps, train line and validation markers
    embedding_panels  a 2-D embedding (PCA, t-SNE) coloured by categories or continuous values
In `vcell.evaluate.plots_model`:
    heatmap           a labelled matrix, e.g. mean pathway activity per cell type
    scatter_against   y against x with Pearson r and the y = x line, e.g. predicted vs true deltas
    curves            lines over a shared x, with dashed reference lines, e.g. expression kinetics
    stacked_bars      parts stacked per category, e.g. extrinsic vs intrinsic variance share
    metric_bars       one small panel per metric, a bar per method, the model highlighted
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba_array
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter

from vcell.files import atomic_write

DOTS_PER_INCH = 120
MISSING_COLOUR = "#c8c8c8"
OTHER_COLOUR = "#7f7f7f"
MAX_CATEGORIES = 20  # beyond this, the most frequent MAX_CATEGORIES - 1 keep a colour, the rest are "other"
# logged beside the losses but not losses (gpu_* too): they would only add panels nobody reads as a loss
NOT_LOSSES = {"step", "time", "epoch", "lr", "cells_per_s", "step_time", "data_wait", "mfu"}


# ---------------------------------------------------------------------------------------------- helpers
def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas; constrained layout keeps titles, ticks and outside legends apart."""
    figure = Figure(figsize=(width, height), dpi=DOTS_PER_INCH, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write the PNG whole or not at all, then free the figure's artists."""
    try:
        return atomic_write(path, lambda stream: figure.savefig(stream, format="png", dpi=DOTS_PER_INCH))
    finally:
        figure.clear()


def panel_grid(figure: Figure, n_panels: int, n_columns: int) -> list:
    """`n_panels` axes in rows of at most `n_columns`; unused grid cells are left out."""
    if n_panels == 0:
        raise ValueError("nothing to plot: no panels were asked for")
    n_columns = min(n_columns, n_panels)
    n_rows = math.ceil(n_panels / n_columns)
    return [figure.add_subplot(n_rows, n_columns, index + 1) for index in range(n_panels)]


def category_colours(n_colours: int) -> list:
    """Distinct colours without greys (grey means missing or other): tab10, else tab20 less its greys."""
    if n_colours <= 10:
        return list(colormaps["tab10"].colors[:n_colours])
    tab20 = [colour for index, colour in enumerate(colormaps["tab20"].colors) if index not in (14, 15)]
    return (tab20 + [colormaps["tab20b"].colors[0], colormaps["tab20b"].colors[8]])[:n_colours]


def cycled_colours(n_colours: int) -> list:
    palette = category_colours(min(n_colours, MAX_CATEGORIES))
    return [palette[index % len(palette)] for index in range(n_colours)]


def shorten(label: str, length: int = 32) -> str:
    return label if len(label) <= length else label[: length - 1] + "…"


def outside_legend(axes, handles: list, labels: list[str], **options) -> None:
    """Legend right of the panel, so it never covers data; constrained layout makes room for it."""
    axes.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=8, **options)


# ---------------------------------------------------------------------------------------------- training
class PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers ("0.3", not "3e-01"); matplotlib still picks which ticks to label."""

    def __call__(self, value, position=None):
        return f"{value:.3g}" if super().__call__(value, position) else ""


def loss_terms(history: list[dict[str, float]]) -> list[str]:
    """Loss term names after "train/" or "val/", total "loss" first, then in order of first appearance."""
    terms: list[str] = []
    for row in history:
        for key in row:
            split, _, term = key.partition("/")
            if split in ("train", "val") and term and term not in terms:
                if term not in NOT_LOSSES and not term.startswith("gpu_"):
                    terms.append(term)
    return sorted(terms, key=lambda term: term != "loss")


def draw_loss_panel(axes, history: list[dict[str, float]], steps: np.ndarray, term: str) -> None:
    """Train as a line and validation as markers; log y when every value is positive."""
    finite_values = []
    train_style = dict(linestyle="-", color="tab:blue", label="train")
    validation_style = dict(linestyle="none", marker="o", markersize=4, color="tab:orange", label="validation")
    for split, style in (("train", train_style), ("val", validation_style)):
        values = np.array([row.get(f"{split}/{term}", np.nan) for row in history], dtype=float)
        kept = np.isfinite(values) & np.isfinite(steps)
        if kept.any():
            axes.plot(steps[kept], values[kept], **style)
            finite_values.append(values[kept])
    if finite_values and (np.concatenate(finite_values) > 0).all():
        axes.set_yscale("log")  # losses span decades; a log axis keeps the late steps readable
        axes.yaxis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
        axes.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
    if finite_values:
        axes.legend(fontsize=8)
    axes.set_title("total loss" if term == "loss" else term.replace("_", " "))
    axes.set_xlabel("optimiser step")
    axes.set_ylabel("loss (log scale)" if axes.get_yscale() == "log" else "loss")
    axes.grid(alpha=0.3, which="both")


def training_curves(history: list[dict[str, float]], path: str | Path) -> Path:
    """One panel per loss term (total first), up to 4 per line: train as a line, validation as markers,
    over optimiser steps (the row number when rows have no "step")."""
    terms = loss_terms(history)
    if not terms:
        raise ValueError("training history has no 'train/...' or 'val/...' loss columns to plot")
    steps = np.array([row.get("step", index + 1) for index, row in enumerate(history)], dtype=float)
    n_columns = min(4, len(terms))
    figure = new_figure(3.6 * n_columns, 3.0 * math.ceil(len(terms) / n_columns) + 0.5)
    for axes, term in zip(panel_grid(figure, len(terms), 4), terms):
        draw_loss_panel(axes, history, steps, term)
    figure.suptitle("Training curves")
    return save_figure(figure, path)


# ---------------------------------------------------------------------------------------------- embedding
def point_size(n_points: int) -> float:
    """Marker area (pt^2) shrinking with the number of points: 100 points get dots, a million get specks."""
    return float(np.clip(20_000 / max(n_points, 1), 0.1, 20.0))


def collapse_rare_categories(codes: np.ndarray, categories: list[str]) -> tuple[np.ndarray, list[str]]:
    """Keep the most frequent MAX_CATEGORIES - 1 categories; the rest share one "other" code."""
    if len(categories) <= MAX_CATEGORIES:
        return codes, list(categories)
    counts = np.bincount(codes[codes >= 0], minlength=len(categories))
    kept = np.sort(np.argsort(-counts, kind="stable")[: MAX_CATEGORIES - 1])
    new_codes = np.full(len(categories), len(kept))  # everything not kept -> "other"
    new_codes[kept] = np.arange(len(kept))
    collapsed = np.where(codes >= 0, new_codes[np.maximum(codes, 0)], -1)
    return collapsed, [categories[index] for index in kept] + ["other"]


def draw_categories(axes, xy: np.ndarray, values: np.ndarray, categories: list[str], size: float) -> None:
    """Points coloured by integer category code (-1 or NaN = missing, grey); the legend gives counts."""
    codes = np.where(np.isfinite(values), values, -1).astype(int)
    if codes.max(initial=-1) >= len(categories) or codes.min(initial=0) < -1:
        raise ValueError(f"category codes must lie in -1..{len(categories) - 1}, got {codes.min()}..{codes.max()}")
    collapsed = len(categories) > MAX_CATEGORIES
    codes, names = collapse_rare_categories(codes, categories)
    palette = category_colours(len(names) - collapsed) + [OTHER_COLOUR] * collapsed
    colours = to_rgba_array(palette + [MISSING_COLOUR])  # code -1 picks the last row: missing
    axes.scatter(xy[:, 0], xy[:, 1], c=colours[codes], s=size, linewidths=0, rasterized=True)
    counts = np.append(np.bincount(codes[codes >= 0], minlength=len(names)), (codes < 0).sum())
    labels = [f"{shorten(name)} ({count:,})" for name, count in zip(names + ["missing"], counts)]
    shown = np.flatnonzero(counts)  # categories absent from the data stay out of the legend
    handles = [Line2D([], [], linestyle="none", marker="o", markersize=6, color=colours[index]) for index in shown]
    outside_legend(axes, handles, [labels[index] for index in shown], frameon=False)


def draw_continuous(figure: Figure, axes, xy: np.ndarray, values: np.ndarray, name: str, size: float) -> None:
    """Points coloured by value on viridis (missing grey, drawn underneath); colour limits at the 1st-99th
    percentile so a few outliers do not wash out everything else (the colourbar's arrows say so)."""
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    axes.scatter(xy[~finite, 0], xy[~finite, 1], c=MISSING_COLOUR, s=size, linewidths=0, rasterized=True)
    low, high = np.percentile(values[finite], [1, 99]) if finite.any() else (0.0, 1.0)
    points = axes.scatter(xy[finite, 0], xy[finite, 1], c=values[finite], cmap="viridis", vmin=low, vmax=high,
                          s=size, linewidths=0, rasterized=True)
    colourbar = figure.colorbar(points, ax=axes, extend="both", shrink=0.85)
    colourbar.set_label(name if finite.all() else f"{name} (grey: missing)")


def embedding_panels(coordinates: np.ndarray, colourings: dict[str, tuple[np.ndarray, list[str] | None]],
                     title: str, path: str | Path, *, axis_labels: tuple[str, str] = ("1", "2")) -> Path:
    """One panel per colouring of the same (n, 2) embedding; categorical colourings get a legend with
    counts, continuous ones a colourbar. Points are drawn in a seeded random order so that no
    category is hidden under another."""
    coordinates = np.asarray(coordinates, dtype=float)
    order = np.random.default_rng(0).permutation(len(coordinates))
    order = order[np.isfinite(coordinates[order]).all(axis=1)]
    xy, size = coordinates[order], point_size(len(order))
    n_columns = min(3, max(len(colourings), 1))
    n_rows = math.ceil(len(colourings) / n_columns)
    figure = new_figure(6.2 * n_columns, 4.6 * n_rows + 0.4)
    for axes, (name, (values, categories)) in zip(panel_grid(figure, len(colourings), 3), colourings.items()):
        values = np.asarray(values)[order]
        if categories is None:
            draw_continuous(figure, axes, xy, values, name, size)
        else:
            draw_categories(axes, xy, values, categories, size)
        axes.set_title(name)
        axes.set_xlabel(axis_labels[0])
        axes.set_ylabel(axis_labels[1])
        axes.set_xticks([])  # embedding coordinates have no units worth reading
        axes.set_yticks([])
    figure.suptitle(f"{title} ({len(order):,} cells)")
    return save_figure(figure, path)
