"""The `model` section: which enhancements, what size, and each enhancement's own settings.

    model:
      name: temporal+memory          # a catalogue entry fills `enhancements` ...
      enhancements: [temporal, memory]  # ... or list them yourself (any valid set)
      size: small                    # tiny | small | medium | large | xlarge
      encoder: mlp                   # or transformer: gene tokens (model.transformer, its own presets)
      temporal: {initial_half_time: 2.0}

Each enhancement's section is always present and typed (unknown keys are errors); it is used
only when the enhancement is in `enhancements`.

The sections come from the registry of enhancements (`vcell.models.registry`): each registered
enhancement brings its own section class, so a new enhancement needs no edit here. The design,
the simplest that keeps the config strict and its errors precise: the model section allows
extra keys, and a validator that runs first turns every registered name into that section's
instance (validated by its class; absent = defaults) and refuses any other key with pydantic's
own `extra_forbidden` error. Errors keep their full location (`model.temporal.n_stpes`), so the
loader names the key, the file that set it and a did-you-mean, as for any other section.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails

from vcell.config.section import Section
from vcell.config.transformer import TransformerConfig
from vcell.errors import VCellError
from vcell.models.catalogue import CATALOGUE, check_enhancements
from vcell.models.registry import enhancements as registered_enhancements

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
SizeName = Literal[tuple(SIZES)]  # the names above, once


class ColumnsConfig(Section):
    """Which obs columns carry the conditions the model uses (any may be absent from an atlas)."""

    context: str | None = Field(
        "cell_type", description="groups within which a control cell is paired with perturbed/stimulated cells"
    )
    perturbation: str | None = Field("perturbation", description="categorical: perturbed gene (symbol or ID) or control")
    control: str = Field("control", description="the perturbation category meaning 'not perturbed'")
    time: str | None = Field("time", description="hours since the stimulus; 0 = unstimulated")
    history: str | None = Field("hours_since_pulse", description="hours since an earlier pulse; NaN = naive")
    batch: str | None = Field(
        "batch", description="categorical: technical batch (donor, lane, source); evaluation scores batch mixing of "
        "embeddings on it (iLISI, batch kNN accuracy; absent = not scored); the model reads it only with "
        "model.batch_covariate"
    )


class ModelConfig(Section):
    """The composable VirtualCell: a set of enhancements over the masked-expression base
    (plus one section per registered enhancement: see the module doc)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)  # extras: only the registered sections

    name: str = Field("base", description="catalogue model, or your label for a custom `enhancements` set")
    enhancements: list[str] | None = Field(
        None, description="null = the catalogue's set for `name`; any valid set otherwise"
    )
    size: SizeName = Field("small", description="width/depth preset (of the MLP encoder and the decoder)")
    encoder: Literal["mlp", "transformer"] = Field(
        "mlp", description="mlp: an MLP over all genes; transformer: the top expressed genes as tokens (model.transformer)"
    )
    transformer: TransformerConfig = Field(default_factory=TransformerConfig)
    hidden_dim: int | None = Field(None, ge=1, description="override the preset's hidden width")
    n_layers: int | None = Field(None, ge=1, description="override the preset's hidden layers per MLP")
    latent_dim: int | None = Field(None, ge=1, description="override the preset's latent dimension")
    dropout: float = Field(0.0, ge=0, lt=1)
    mask_fraction: float = Field(
        0.25, ge=0, lt=1, description="share of measured genes hidden from the encoder in training"
    )
    detected_level: bool = Field(
        True, description="keep each gene's value where it is detected, offset + slope x its "
        "reconstruction + depth x log library size + breadth x log(genes the cell shows) (per gene), fitted by "
        "least squares on the genes hidden in "
        "training, without gradient (vcell.models.detected_level.DetectedLevel); `impute`, the imputed layer and the "
        "hidden-gene scores use it. The reconstruction is a gene's mean over all cells, dropouts included, so it "
        "understates a gene known to be detected (pbmc68k_reduced, base, 10 seeds: hidden-gene per-cell r / per-gene "
        "r / squared error 0.748 / 0.423 / 0.172 against the cell type's mean over detections 0.711 / 0.223 / 0.206 "
        "and the 50 nearest cells' mean over detections 0.736 / 0.290 / 0.184). "
        "Count models fit the same with their likelihood's expectation over detections in the reconstruction's "
        "place, for the genes hidden in training, and take that expectation as it is for the others (tutorial "
        "atlas, hidden-gene squared error: full 0.811 -> 0.790, resource 0.986 -> 0.866, against the type's "
        "detected mean moved along the cell's depth 0.801). false: impute returns the reconstruction (count "
        "models: the likelihood's expectation)",
    )
    in_silico_knock: bool = Field(
        True, description="read a perturbed gene (a perturbation no network carries) at the share of its level "
        "the training cells showed it kept (its own, else the median gene's; vcell.models.knock), and predict a "
        "perturbation of a gene that no training cell carried by knocking the gene down in silico: the cell "
        "encoded with the gene at that share, then decoded. false: the latent shift alone (an unseen "
        "perturbation predicts no change)",
    )
    response_weight: float = Field(
        1.0, ge=0, description="weight of the response loss (control cell + condition -> perturbed/stimulated cell)"
    )
    latent_response_weight: float = Field(
        0.0, ge=0, description="weight of the latent response loss (0: off): a perturbed target at rest should be "
        "encoded where the mechanism moved its control cell's state (squared latent distance; a latent shift, or no "
        "move where the network carries the perturbation). For knockdown screens: on SERGIO (seeds 0 / 1) at 0.1 "
        "regulatory's cell-type kNN 0.947 / 0.941 -> 0.964 / 0.961 and ARI 0.204 / 0.211 -> 0.445 / 0.310 (PCA "
        "0.262 / 0.245), base's seen perturbations 0.931 / 0.919 -> 0.944 / 0.925. Off by default: it shrinks the "
        "latent (rms 5.2 -> 0.4 in the demo run) and on the science atlas it broke resource (shift error 0.012 -> "
        "0.041) and memory (0.922 -> 0.603); the demo's memory read-out 0.758 -> 0.745",
    )
    response_basal_targets: bool = Field(
        True, description="basal cells are response targets too, each paired with a random basal cell of its "
        "context under its own (basal) conditions: this anchors the decoded whole-expression state every response "
        "starts from to measured cells. The reconstruction sees masked encodings only; without the anchor the "
        "response learns the decoder's gap between masked and whole encodings as an effect (temporal, 1500 steps: "
        "held-out 4 h change Pearson 0.660 without, 0.831 with)",
    )
    batch_covariate: bool | Literal["auto"] = Field(
        "auto", description="decode each cell with a learned per-batch, per-gene offset of its scores (scVI's batch "
        "covariate), and encode it with that offset taken off its measured values: the latent need not carry the "
        "batch, so batches mix better. Reads model.columns.batch; cells of a batch the model never saw are encoded "
        "and decoded without an offset. auto: on when the atlas has model.columns.batch as a categorical column with "
        "at least 2 batches; true: that column is required",
    )
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)

    @classmethod
    def section_keys(cls) -> dict[str, Any]:
        return {**super().section_keys(), **{name: e.config for name, e in registered_enhancements().items()}}

    @model_validator(mode="before")
    @classmethod
    def _enhancement_sections(cls, data: Any) -> Any:
        """Every registered enhancement's section, validated by its class; any other extra key refused."""
        if not isinstance(data, dict):
            return data
        sections = {name: e.config for name, e in registered_enhancements().items()}
        errors = [InitErrorDetails(type="extra_forbidden", loc=(key,), input=value)
                  for key, value in data.items() if key not in cls.model_fields and key not in sections]
        fields = {key: value for key, value in data.items() if key in cls.model_fields}
        for name, section in sections.items():
            if name in cls.model_fields:
                raise VCellError(f"enhancement '{name}' is named like the model setting model.{name}",
                                 hint="register it under another name")
            try:
                value = data.get(name, {})
                fields[name] = value if isinstance(value, section) else section.model_validate(value)
            except ValidationError as error:
                errors += [InitErrorDetails(type=e["type"], loc=(name, *e["loc"]), input=e["input"], ctx=e.get("ctx", {}))
                           for e in error.errors()]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return fields  # fields first, then the sections in install order: the dump's order

    def __setattr__(self, name: str, value: Any) -> None:
        enhancement = registered_enhancements().get(name)
        if enhancement is not None and not isinstance(value, enhancement.config):  # assigned sections are typed too
            value = enhancement.config.model_validate(value)
        super().__setattr__(name, value)

    def section(self, name: str) -> BaseModel:
        """The typed settings of enhancement `name` (also `config.<name>`)."""
        return self.__pydantic_extra__[name]

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
        """(hidden width, layers per MLP, latent dimension) after preset and overrides.

        With the transformer encoder its preset rules: the hidden width is the token width (the
        pooled cell state's), the decoder has one hidden layer (model.n_layers overrides) and the
        latent dimension is the preset's; most of a transformer's parameters are in its blocks."""
        if self.encoder == "transformer":
            width, _, _ = self.transformer.shape()
            return width, self.n_layers or 1, self.latent_dim or self.transformer.latent_dim()
        hidden, layers, latent = SIZES[self.size]
        return self.hidden_dim or hidden, self.n_layers or layers, self.latent_dim or latent

    def describe_size(self) -> str:
        """For people: "size `small`: hidden 256 x 2 layer(s), latent 32" or the transformer's shape."""
        hidden, layers, latent = self.dimensions()
        if self.encoder == "transformer":
            width, blocks, heads = self.transformer.shape()
            return (f"transformer `{self.transformer.size}`: width {width} x {blocks} blocks, {heads} heads, context "
                    f"{self.transformer.context_length:,} genes; decoder {layers} hidden layer(s), latent {latent}")
        return f"size `{self.size}`: hidden {hidden} x {layers} layer(s), latent {latent}"
