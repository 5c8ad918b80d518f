"""PNG figures of what a model learned and how it compares: heatmaps, scatter against truth, curves,
stacked shares and metric bars. Same conventions as `vcell.evaluate.plots` (which lists every plot):
own Agg figure, no pyplot, written atomically, returns the Path.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_rgba_array
from matplotlib.lines import Line2D

from vcell.evaluate.metrics import pearson
from vcell.evaluate.plots import (
    MISSING_COLOUR, cycled_colours, new_figure, outside_legend, panel_grid, save_figure, shorten,
)

MAX_TICK_LABELS = 60
MAX_SCATTER_POINTS = 200_000  # more only slows drawing; the density looks the same
HIGHLIGHT_COLOUR = "tab:blue"
BASELINE_COLOUR = "#a6a6a6"


# ---------------------------------------------------------------------------------------------- heatmap
def label_ticks(set_ticks, labels: list[str], **options) -> None:
    """Every label when at most MAX_TICK_LABELS, else every k-th so they stay readable."""
    every = math.ceil(len(labels) / MAX_TICK_LABELS)
    positions = np.arange(0, len(labels), every)
    set_ticks(positions, [shorten(str(labels[index]), 28) for index in positions], **options)


def colour_limits(matrix: np.ndarray, centre_zero: bool) -> tuple[str, float, float]:
    """Diverging map symmetric about 0 (so white means zero), else viridis over the finite range."""
    finite = matrix[np.isfinite(matrix)]
    if centre_zero:
        limit = float(np.abs(finite).max()) if finite.size else 0.0
        return "RdBu_r", -(limit or 1.0), limit or 1.0
    return ("viridis", float(finite.min()), float(finite.max())) if finite.size else ("viridis", 0.0, 1.0)


def annotate_cells(axes, matrix: np.ndarray, image) -> None:
    """Write each value in its cell (small matrices only), in white on dark colours."""
    for (row, column), value in np.ndenumerate(matrix):
        if not np.isfinite(value):
            axes.text(column, row, "n/a", ha="center", va="center", fontsize=7, color="dimgray")
            continue
        red, green, blue, _ = image.cmap(image.norm(value))
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
        axes.text(column, row, f"{value:.2g}", ha="center", va="center", fontsize=7, color="white" if dark else "black")


def heatmap(matrix: np.ndarray, row_labels: list[str], column_labels: list[str], title: str, colour_label: str,
            path: str | Path, *, centre_zero: bool = True) -> Path:
    """A labelled (rows, columns) matrix, e.g. mean pathway activity per cell type; NaN cells grey."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(row_labels), len(column_labels)):
        raise ValueError(f"matrix {matrix.shape} does not match {len(row_labels)} row labels "
                         f"and {len(column_labels)} column labels")
    n_rows, n_columns = matrix.shape
    figure = new_figure(float(np.clip(3.5 + 0.32 * min(n_columns, MAX_TICK_LABELS), 6, 20)),
                        float(np.clip(2.5 + 0.28 * min(n_rows, MAX_TICK_LABELS), 4, 18)))
    axes = figure.add_subplot()
    colour_map, low, high = colour_limits(matrix, centre_zero)
    image = axes.imshow(matrix, cmap=colormaps[colour_map].with_extremes(bad=MISSING_COLOUR), vmin=low, vmax=high,
                        aspect="auto", interpolation="nearest")
    vertical = n_columns > 20 or max((len(str(label)) for label in column_labels), default=0) > 12
    label_ticks(axes.set_xticks, column_labels, rotation=90 if vertical else 45, ha="center" if vertical else "right",
                rotation_mode="default" if vertical else "anchor", fontsize=8)
    label_ticks(axes.set_yticks, row_labels, fontsize=8)
    axes.tick_params(length=0)
    if n_rows * n_columns <= 150:
        annotate_cells(axes, matrix, image)
    figure.colorbar(image, ax=axes, shrink=0.8, pad=0.02).set_label(colour_label)
    axes.set_title(title)
    return save_figure(figure, path)


# ---------------------------------------------------------------------------------------------- scatter
def format_correlation(x: np.ndarray, y: np.ndarray) -> str:
    return f"{pearson(x, y):.3f}" if len(x) >= 2 else "n/a"


def group_masks(groups: dict[str, np.ndarray] | None, n_points: int) -> tuple[list[str], list[np.ndarray]]:
    """Group names and boolean masks, plus "other" for the points in no group (when there are any)."""
    groups = groups or {"all points": np.ones(n_points, dtype=bool)}
    names, masks = list(groups), [np.ravel(np.asarray(mask, dtype=bool)) for mask in groups.values()]
    if any(mask.shape != (n_points,) for mask in masks):
        raise ValueError(f"every group mask needs {n_points} values, one per point")
    other = ~np.logical_or.reduce(masks)
    return (names + ["other"], masks + [other]) if other.any() else (names, masks)


def point_colours(masks: list[np.ndarray], n_groups: int) -> tuple[np.ndarray, list]:
    """(n, 4) colour per point (later groups win where masks overlap; "other" grey) and each group's colour."""
    palette = to_rgba_array(cycled_colours(n_groups) + [MISSING_COLOUR])[: len(masks)]
    colours = np.zeros((len(masks[0]), 4))
    for mask, colour in zip(masks, palette):
        colours[mask] = colour
    return colours, list(palette)


def scatter_against(x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str, title: str, path: str | Path, *,
                    groups: dict[str, np.ndarray] | None = None, diagonal: bool = True) -> Path:
    """y against x with the Pearson r (finite points) in the corner, optional groups (name -> mask) and the
    y = x line. Non-finite pairs are dropped; beyond MAX_SCATTER_POINTS a seeded random subset is drawn."""
    x, y = np.ravel(np.asarray(x, dtype=float)), np.ravel(np.asarray(y, dtype=float))
    if x.shape != y.shape:
        raise ValueError(f"x has {x.size} values but y has {y.size}")
    finite = np.isfinite(x) & np.isfinite(y)
    names, masks = group_masks(groups, len(x))
    colours, palette = point_colours(masks, len(groups) if groups else 1)
    # random draw order so that no group hides under another ("other" goes underneath), and the subsample
    shown = np.random.default_rng(0).permutation(np.flatnonzero(finite))[:MAX_SCATTER_POINTS]
    if names[-1] == "other":
        shown = shown[np.argsort(~masks[-1][shown], kind="stable")]
    if finite.sum() > MAX_SCATTER_POINTS:
        title = f"{title}\n(random {MAX_SCATTER_POINTS:,} of {finite.sum():,} points shown)"
    figure = new_figure(6.0, 6.8 if groups else 5.8)
    axes = figure.add_subplot()
    axes.scatter(x[shown], y[shown], c=colours[shown], s=float(np.clip(20_000 / max(len(shown), 1), 2, 20)),
                 alpha=float(np.clip(5_000 / max(len(shown), 1), 0.15, 0.8)),  # overlap shows density
                 linewidths=0, rasterized=True)
    if groups:  # legend below the axes: long group names must not squeeze a square plot
        labels = [f"{shorten(name, 40)} (r = {format_correlation(x[finite & mask], y[finite & mask])}, "
                  f"n = {(finite & mask).sum():,})" for name, mask in zip(names, masks)]
        handles = [Line2D([], [], linestyle="none", marker="o", markersize=6, color=colour) for colour in palette]
        axes.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False)
    if diagonal and finite.any():
        low, high = min(x[finite].min(), y[finite].min()), max(x[finite].max(), y[finite].max())
        pad = 0.03 * (high - low or 1.0)
        axes.plot([low - pad, high + pad], [low - pad, high + pad], linestyle="--", color="black", linewidth=1)
        axes.set_xlim(low - pad, high + pad)
        axes.set_ylim(low - pad, high + pad)
        axes.set_aspect("equal")  # same units on both axes: the y = x line at 45 degrees
    summary = f"Pearson r = {format_correlation(x[finite], y[finite])}\nn = {finite.sum():,}"
    if not finite.all():
        summary += f" ({(~finite).sum():,} missing dropped)"
    axes.text(0.03, 0.97, summary + ("\ndashed: y = x" if diagonal else ""), transform=axes.transAxes, va="top",
              fontsize=9, bbox=dict(boxstyle="round", facecolor="white", alpha=0.85, edgecolor="#cccccc"))
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    return save_figure(figure, path)



# ---------------------------------------------------------------------------------------------- curves and bars
def curves(x: np.ndarray, lines: dict[str, np.ndarray], xlabel: str, ylabel: str, title: str, path: str | Path, *,
           reference: dict[str, np.ndarray] | None = None) -> Path:
    """Solid lines over a shared x, e.g. predicted expression of a few genes over hours after a stimulus,
    and dashed reference lines (the truth) in the colour of the line with the same name."""
    reference = reference or {}
    names = list(lines) + [name for name in reference if name not in lines]
    colours = dict(zip(names, cycled_colours(len(names))))
    figure = new_figure(8.0, 4.8)
    axes = figure.add_subplot()
    for name, values in lines.items():
        axes.plot(x, values, color=colours[name], linewidth=2)
    for name, values in reference.items():
        axes.plot(x, values, color=colours[name], linewidth=1.5, linestyle="--")
    handles = [Line2D([], [], color=colours[name], linewidth=2) for name in names]
    labels = [shorten(name) for name in names]
    if reference:  # a key for the line styles, after the colour key
        handles += [Line2D([], [], color="white"), Line2D([], [], color="black", linewidth=2),
                    Line2D([], [], color="black", linewidth=1.5, linestyle="--")]
        labels += ["", "predicted (solid)", "reference (dashed)"]
    outside_legend(axes, handles, labels, frameon=False)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    return save_figure(figure, path)


def category_ticks(axes, categories: list[str]) -> None:
    """Category names under the bars, slanted when there are many or they are long."""
    slanted = len(categories) > 6 or max((len(str(name)) for name in categories), default=0) > 10
    axes.set_xticks(np.arange(len(categories)), [shorten(str(name), 28) for name in categories],
                    rotation=40 if slanted else 0, ha="right" if slanted else "center", rotation_mode="anchor")


def stacked_bars(categories: list[str], parts: dict[str, np.ndarray], title: str, ylabel: str,
                 path: str | Path) -> Path:
    """Parts stacked per category, e.g. extrinsic vs intrinsic variance share per gene group. Negative parts
    stack downwards from 0; a category with every part missing is marked "n/a"."""
    values = np.array([np.ravel(np.asarray(part, dtype=float)) for part in parts.values()])  # (parts, categories)
    if values.shape[1:] != (len(categories),):
        raise ValueError(f"every part needs {len(categories)} values, one per category")
    missing = np.isnan(values).all(axis=0)
    values = np.nan_to_num(values, nan=0.0)
    figure = new_figure(float(np.clip(3.5 + 0.5 * len(categories), 6, 18)), 4.8)
    axes = figure.add_subplot()
    above, below = np.zeros(len(categories)), np.zeros(len(categories))
    for name, row, colour in zip(parts, values, cycled_colours(len(parts))):
        axes.bar(np.arange(len(categories)), row, bottom=np.where(row >= 0, above, below), width=0.75, color=colour,
                 label=shorten(name), edgecolor="white", linewidth=0.5)
        above, below = above + np.clip(row, 0, None), below + np.clip(row, None, 0)
    for position in np.flatnonzero(missing):
        axes.text(position, 0, "n/a", ha="center", va="bottom", color="dimgray", fontsize=8)
    if (values < 0).any():
        axes.axhline(0, color="black", linewidth=0.8)
    category_ticks(axes, categories)
    handles, labels = axes.get_legend_handles_labels()
    outside_legend(axes, handles[::-1], labels[::-1], frameon=False)  # legend top to bottom, as stacked
    axes.set(ylabel=ylabel, title=title)
    axes.grid(axis="y", alpha=0.3)
    return save_figure(figure, path)


def format_value(value: float) -> str:
    """Three significant digits, but thousands written out ("-1,040", not "-1.04e+03")."""
    if not np.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if 1_000 <= abs(value) < 1e7 else f"{value:.3g}"


def draw_metric_panel(axes, metric: str, scores: dict[str, float], methods: list[str], highlighted: str) -> None:
    """A bar per method, the highlighted one in colour, each value written on its bar ("n/a" if missing)."""
    values = np.array([scores.get(method, np.nan) for method in methods], dtype=float)
    present = np.isfinite(values)
    colours = [HIGHLIGHT_COLOUR if method == highlighted else BASELINE_COLOUR for method in methods]
    axes.bar(np.arange(len(methods)), np.where(present, values, 0.0), color=colours, width=0.7)
    for position, value in enumerate(values):
        downwards = np.isfinite(value) and value < 0
        axes.annotate(format_value(value), (position, value if np.isfinite(value) else 0),
                      xytext=(0, -3 if downwards else 3), textcoords="offset points", ha="center",
                      va="top" if downwards else "bottom", fontsize=8,
                      color="black" if np.isfinite(value) else "dimgray",
                      fontweight="bold" if methods[position] == highlighted else "normal")
    category_ticks(axes, methods)
    for label in axes.get_xticklabels():
        label.set_fontweight("bold" if label.get_text() == shorten(highlighted, 28) else "normal")
    axes.axhline(0, color="black", linewidth=0.8)
    axes.margins(y=0.18)  # head room for the value labels
    axes.set_title(metric)
    axes.grid(axis="y", alpha=0.3)


def metric_bars(rows: list[tuple[str, dict[str, float]]], title: str, path: str | Path) -> Path:
    """Model against baselines: one small panel per (metric, {method: value}) row, up to 4 per line.
    The method called "model" (else the first) is highlighted."""
    widest = max((len(scores) for _, scores in rows), default=1)  # each panel shows only its own methods
    n_columns = min(4, max(len(rows), 1))
    panel_width = max(2.8, 0.55 * widest + 1.2)
    figure = new_figure(panel_width * n_columns, 3.6 * math.ceil(len(rows) / n_columns) + 0.4)
    for axes, (metric, scores) in zip(panel_grid(figure, len(rows), 4), rows):
        methods = list(scores)
        highlighted = next((method for method in methods if method.lower() == "model"), methods[0] if methods else "")
        draw_metric_panel(axes, metric, scores, methods, highlighted)
    figure.suptitle(title)
    return save_figure(figure, path)
