"""The `evaluate` section: what `vcell evaluate` (and the end of a training job) computes and writes.

Evaluation settings never change what a run trains, so the whole section is operational:
changing it never makes a resumed run count as a different one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

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
    # the names of vcell.evaluate.embed.EXPRESSION_LAYERS (repeated here: the config imports no torch; a test checks)
    expression: list[Literal["denoised", "imputed"]] = Field(
        default_factory=list,
        description="expression layers written into embeddings.h5ad beside the latent (each cells x genes float32): "
                    "denoised (the cell free of counting noise and of its batch), imputed (each gene's value were it "
                    "detected); as `vcell embed --expression`",
    )

    @model_validator(mode="after")
    def layers_need_embeddings(self) -> "EvaluateConfig":
        if self.expression and self.embeddings == "none":
            raise ValueError(f"evaluate.expression={self.expression} is written into embeddings.h5ad, but "
                             "evaluate.embeddings=none writes none: set evaluate.embeddings to all or held_out, "
                             "or drop evaluate.expression")
        return self
