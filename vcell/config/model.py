"""The `model` section: which enhancements, what size, and each enhancement's own settings.

    model:
      name: temporal+memory          # a catalogue entry fills `enhancements` ...
      enhancements: [temporal, memory]  # ... or list them yourself (any valid set)
      size: small                    # tiny | small | medium | large | xlarge
      temporal: {n_steps: 8}

Each enhancement's section is always present and typed (unknown keys are errors); it is used
only when the enhancement is in `enhancements`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vcell.config.section import Section
from vcell.errors import VCellError
from vcell.models.catalogue import CATALOGUE, check_enhancements

Enhancement = Literal["hierarchical", "temporal", "regulatory", "stochastic", "resource", "multiscale", "memory"]

# size -> (hidden width, hidden layers per MLP, latent dimension). The base model with 20,000
# genes: tiny 1.3M parameters, small 10.5M, medium 44M, large 216M, xlarge 538M (the full model
# ~5-45% more; `vcell models --genes 20000 --size large`).
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (32, 1, 8),
    "small": (256, 2, 32),
    "medium": (1024, 2, 128),
    "large": (4096, 2, 256),
    "xlarge": (8192, 2, 512),
}


class ColumnsConfig(Section):
    """Which obs columns carry the conditions the model uses (any may be absent from an atlas)."""

    context: str | None = Field(
        "cell_type", description="groups within which a control cell is paired with perturbed/stimulated cells"
    )
    perturbation: str | None = Field("perturbation", description="categorical: perturbed gene (symbol or ID) or control")
    control: str = Field("control", description="the perturbation category meaning 'not perturbed'")
    time: str | None = Field("time", description="hours since the stimulus; 0 = unstimulated")
    history: str | None = Field("hours_since_pulse", description="hours since an earlier pulse; NaN = naive")


class HierarchicalConfig(Section):
    """gene -> pathway -> compartment from annotation files aligned to the atlas vocabulary."""

    gene_sets: str | None = Field(None, description="GMT file of pathways; null = <atlas>/annotations/pathways.gmt")
    compartments: str | None = Field(
        None, description="TSV pathway -> compartment; null = <atlas>/annotations/pathway_compartments.tsv"
    )
    missing: Literal["error", "learned"] = Field(
        "error", description="no annotation files: 'error', or 'learned' groups trained from scratch"
    )
    learned_pathways: int = Field(64, ge=1, description="groups used by missing=learned (and compartments: /8)")
    min_genes: int = Field(3, ge=1, description="pathways with fewer genes in the vocabulary are dropped")


class TemporalConfig(Section):
    """Latent response kinetics: dz/dt = rate * (z0 + drive(z, stimulus) - z), fixed-step RK4."""

    n_steps: int = Field(8, ge=1, le=256, description="RK4 steps from t=0 to each cell's time")
    time_scale: float = Field(8.0, gt=0, description="hours per unit of model time (keeps rates near 1)")


class RegulatoryConfig(Section):
    """A gene regulatory network prior constrains how perturbation effects spread."""

    edges: str | None = Field(None, description="TSV source, target[, sign, weight]; null = <atlas>/annotations/grn_edges.tsv")
    steps: int = Field(3, ge=1, le=10, description="propagation steps (regulatory layers an effect crosses)")
    outside_prior: Literal["exclude", "penalize"] = Field(
        "exclude", description="'exclude': only prior edges exist; 'penalize': every regulator->gene pair, L1 off the prior"
    )
    penalty: float = Field(1e-3, ge=0, description="L1 weight on edges outside the prior (outside_prior=penalize)")


class StochasticConfig(Section):
    """Variational latent and a count likelihood with per-gene dispersion."""

    likelihood: Literal["nb", "zinb"] = Field("nb", description="negative binomial, or zero-inflated NB")
    kl_weight: float = Field(1.0, ge=0, description="weight of the KL term after warm-up")
    kl_warmup_steps: int = Field(1000, ge=0, description="training steps over which the KL weight ramps from 0")


class ResourceConfig(Section):
    """Expression = capacity x allocation: genes share a finite, cell-state-dependent pool."""

    free_pool: bool = Field(True, description="part of the capacity may stay unused (a freed share is not all re-used)")


class MultiscaleConfig(Section):
    """Gene-, pathway- and cell-level views of a cell fused by learned gates."""

    scale_loss_weight: float = Field(0.1, ge=0, description="weight of the pathway- and cell-level losses")


class MemoryConfig(Section):
    """A recurrent memory of earlier stimuli (GRU over the cell's stimulus history)."""

    memory_dim: int | None = Field(None, ge=1, description="memory state size; null = the latent dimension")


class ModelConfig(Section):
    """The composable VirtualCell: a set of enhancements over the masked-expression base."""

    name: str = Field("base", description="catalogue model, or your label for a custom `enhancements` set")
    enhancements: list[Enhancement] | None = Field(
        None, description="null = the catalogue's set for `name`; any valid set otherwise"
    )
    size: Literal["tiny", "small", "medium", "large", "xlarge"] = Field("small", description="width/depth preset")
    hidden_dim: int | None = Field(None, ge=1, description="override the preset's hidden width")
    n_layers: int | None = Field(None, ge=1, description="override the preset's hidden layers per MLP")
    latent_dim: int | None = Field(None, ge=1, description="override the preset's latent dimension")
    dropout: float = Field(0.0, ge=0, lt=1)
    mask_fraction: float = Field(
        0.25, ge=0, lt=1, description="share of measured genes hidden from the encoder in training"
    )
    response_weight: float = Field(
        1.0, ge=0, description="weight of the response loss (control cell + condition -> perturbed/stimulated cell)"
    )
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    hierarchical: HierarchicalConfig = Field(default_factory=HierarchicalConfig)
    temporal: TemporalConfig = Field(default_factory=TemporalConfig)
    regulatory: RegulatoryConfig = Field(default_factory=RegulatoryConfig)
    stochastic: StochasticConfig = Field(default_factory=StochasticConfig)
    resource: ResourceConfig = Field(default_factory=ResourceConfig)
    multiscale: MultiscaleConfig = Field(default_factory=MultiscaleConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)

    @model_validator(mode="after")
    def _resolve_enhancements(self) -> ModelConfig:
        try:
            if self.enhancements is None:
                if self.name not in CATALOGUE:
                    raise VCellError(
                        f"model.name '{self.name}' is not a catalogue model and model.enhancements is not set",
                        hint=f"choose a name from {', '.join(CATALOGUE)} or list model.enhancements",
                    )
                ordered = CATALOGUE[self.name]
            else:
                ordered = check_enhancements(self.enhancements)
                if self.name in CATALOGUE and set(CATALOGUE[self.name]) != set(ordered):
                    raise VCellError(
                        f"model.name '{self.name}' is the catalogue model {list(CATALOGUE[self.name])}, "
                        f"but model.enhancements is {list(ordered)}",
                        hint="drop model.enhancements to use the catalogue entry, or give a custom set another name",
                    )
        except VCellError as error:
            raise ValueError(str(error)) from None
        object.__setattr__(self, "enhancements", list(ordered))  # canonical order, no re-validation loop
        return self

    def dimensions(self) -> tuple[int, int, int]:
        """(hidden width, layers per MLP, latent dimension) after preset and overrides."""
        hidden, layers, latent = SIZES[self.size]
        return self.hidden_dim or hidden, self.n_layers or layers, self.latent_dim or latent

    def uses(self, enhancement: str) -> bool:
        return enhancement in (self.enhancements or ())
