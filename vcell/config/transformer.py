"""The `model.transformer` section: the gene-token transformer encoder (`model.encoder: transformer`).

    model:
      encoder: transformer
      transformer: {size: 10m, context_length: 2048, activation_checkpointing: true}

A preset names width, blocks, heads and the latent dimension; `width`, `layers`, `heads` override
it. Parameter counts of the base model at 20,000 genes (`vcell models --size 100m --genes 20000`):
tiny 1.3M, 3m 2.8M, 10m 10.4M, 100m 102M, 1b 991M. Two parts grow with the genes, not with depth: the
gene identity embedding (genes x width) and the decoder's last layer (width x genes), as in every
model that reads and writes all genes: 74% of 10m, 30% of 100m, 8% of 1b. The rest is the blocks
(12 x width^2 each at ffn_multiplier 4), the value MLP, latent and the decoder's hidden layer;
enhancements add theirs (the full model: 10m 14.7M, 100m 120M, 1b 1.04B).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vcell.config.section import Section

# preset -> (width, transformer blocks, attention heads, latent dimension); head width 64 or 128
# except tiny (tests) and 3m (CPU pretraining demo): flash kernels want a head width that is a
# multiple of 8 (<= 256)
TRANSFORMER_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (32, 2, 2, 8),
    "3m": (64, 4, 4, 16),
    "10m": (192, 6, 3, 64),
    "100m": (768, 10, 12, 256),
    "1b": (2048, 18, 16, 512),
}
TransformerSizeName = Literal[tuple(TRANSFORMER_SIZES)]


class TransformerConfig(Section):
    """Gene-token transformer: each cell is its top expressed genes as tokens (used when model.encoder=transformer)."""

    size: TransformerSizeName = Field("10m", description="preset: width, blocks, heads, latent dimension")
    context_length: int = Field(
        2048, ge=1, description="gene tokens per cell at most: the top expressed genes by value (the rest are dropped)"
    )
    width: int | None = Field(None, ge=1, description="override the preset's token width")
    layers: int | None = Field(None, ge=1, description="override the preset's number of transformer blocks")
    heads: int | None = Field(None, ge=1, description="override the preset's attention heads (must divide the width)")
    ffn_multiplier: int = Field(4, ge=1, description="feed-forward hidden width = this x width")
    value_hidden: int = Field(32, ge=1, description="hidden width of the small MLP embedding each expression value")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout inside the blocks (attention and feed-forward)")
    activation_checkpointing: bool = Field(
        False, description="recompute each block's activations in backward (torch.utils.checkpoint): "
        "memory of one block instead of all, ~1/3 more compute"
    )
    masked_value_weight: float = Field(
        1.0, ge=0, description="weight of the masked-value loss: each hidden gene's value predicted from its token"
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerConfig:
        width, _, heads = self.shape()
        if width % heads:
            raise ValueError(f"model.transformer: width {width} is not divisible by heads {heads}; "
                             "choose heads that divide the width")
        return self

    def shape(self) -> tuple[int, int, int]:
        """(width, blocks, heads) after preset and overrides."""
        width, layers, heads, _ = TRANSFORMER_SIZES[self.size]
        return self.width or width, self.layers or layers, self.heads or heads

    def latent_dim(self) -> int:
        return TRANSFORMER_SIZES[self.size][3]
