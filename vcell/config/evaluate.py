"""The `evaluate` section: what `vcell evaluate` (and the end of a training job) computes and writes.

Evaluation settings never change what a run trains, so the whole section is operational:
changing it never makes a resumed run count as a different one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vcell.config.section import Section


class EvaluateConfig(Section):
    """Metrics against baselines, plots and embeddings of a finished run."""

    at_end: bool = Field(True, description="evaluate when training finishes (metrics.json, plots/, embeddings.h5ad)")
    max_cells: int = Field(
        10000, ge=100, description="held-out cells scored (a seeded random sample beyond this), and as many reference cells"
    )
    embeddings: Literal["all", "held_out", "none"] = Field(
        "all", description="cells written to <run>/embeddings.h5ad: every atlas cell, the scored held-out cells, or none"
    )
    plots: bool = Field(True, description="write PNG figures into <run>/plots/")
    tsne_cells: int = Field(50000, ge=100, description="t-SNE draws a seeded sample of at most this many cells")
    enhancements: bool = Field(True, description="score each enhancement on what it is for (truth needed for most)")
