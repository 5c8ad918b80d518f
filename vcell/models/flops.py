"""FLOPs per cell from the architecture: what throughput accounting (MFU) and `--dry-run` report.

    flops = training_flops_per_cell(config.model, n_genes=2000, gene_tokens=500.0)

The formula counts matrix multiplications (2 FLOPs per multiply-add), the only work that
matters at scale; norms, activations, softmax and the loss are elementwise and left out.
Forward, per cell (G genes; MLP: hidden width H, layers n, latent D; transformer: width W,
blocks L, feed-forward multiplier f, value-MLP width k, T gene tokens + 1 CLS token):

    MLP encoder      G*H + n*H^2                        (Linear G->H, then n Linears H->H)
    transformer      T*(k + k*W)                        value embedding MLP (identity: a lookup)
                     + L*((T+1)*(4 + 2f)*W^2            q, k, v, out projections, feed-forward
                          + 2*(T+1)^2*W)                scores QK^T and their weighted sum of V
                     + T*W                              the masked-value head
    latent           H*D   (transformer: W*D)
    decoder          D*H + (n-1)*H^2 + H*G              (transformer: n = 1 hidden layer of width W)

Training = 3 x forward (backward multiplies twice: for the inputs' and the weights' gradients),
except the layers that read the data, whose input needs no gradient (the MLP encoder's first
Linear, the value MLP's first Linear): 2 x. Activation checkpointing adds one more forward of
the transformer blocks, recomputed in backward, less each block's last matmul (torch's
non-reentrant checkpoint stops as soon as every saved tensor is back, and the feed-forward's
output projection saves none): L*(T+1)*(4 + f)*W^2 + 2*(T+1)^2*W per cell.

The 3 x is the model-FLOPs convention of MFU (PaLM, Megatron). Attention kernels that recompute
the scores in backward (flash; torch's FlopCounterMode counts the CPU kernel the same way) do
2.5 x the attention forward there, not 2 x: the counted total is then a few percent higher
(2% for the tiny test model; at most 1/6 of attention's share for long contexts).

What it leaves out: the enhancements' own layers (annotation layers, ODE steps, gates: small
beside the encoder and decoder) and the response pass, which encodes and decodes the paired
cells once more; with `model.response_weight: 0` (pretraining) there is none. Tested against
`torch.utils.flop_counter.FlopCounterMode` on the base model with either encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

from vcell.config.model import ModelConfig


def mlp_macs(n_in: int, hidden: Sequence[int], n_out: int) -> int:
    """Multiply-adds of one row through `blocks.MLP(n_in, hidden, n_out)`."""
    widths = [n_in, *hidden, n_out]
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def encoder_macs(config: ModelConfig, n_genes: int, gene_tokens: float) -> tuple[float, float]:
    """(multiply-adds of the encoder per cell, of which in layers reading the data)."""
    hidden, n_layers, _ = config.dimensions()
    if config.encoder == "mlp":
        total = mlp_macs(n_genes, [hidden] * n_layers, hidden)
        return total, n_genes * hidden
    settings = config.transformer
    width, n_blocks, _ = settings.shape()
    k, f = settings.value_hidden, settings.ffn_multiplier
    length = gene_tokens + 1  # the CLS token
    blocks = n_blocks * (length * (4 + 2 * f) * width**2 + 2 * length**2 * width)
    value_embedding, value_head = gene_tokens * (k + k * width), gene_tokens * width
    return value_embedding + blocks + value_head, gene_tokens * k


def recomputed_macs(config: ModelConfig, gene_tokens: float) -> float:
    """Multiply-adds activation checkpointing recomputes per cell: each block less its last matmul."""
    width, n_blocks, _ = config.transformer.shape()
    length, f = gene_tokens + 1, config.transformer.ffn_multiplier
    return n_blocks * (length * (4 + f) * width**2 + 2 * length**2 * width)


def forward_flops_per_cell(config: ModelConfig, n_genes: int, gene_tokens: float | None = None) -> float:
    """Forward FLOPs of one cell through encoder, latent and decoder (see module doc); `gene_tokens`
    defaults to a full context (transformer: an upper bound; the MLP reads every gene)."""
    tokens = context_tokens(config, n_genes) if gene_tokens is None else gene_tokens
    hidden, n_layers, latent = config.dimensions()
    encoder, _ = encoder_macs(config, n_genes, tokens)
    return 2.0 * (encoder + hidden * latent + mlp_macs(latent, [hidden] * n_layers, n_genes))


def training_flops_per_cell(config: ModelConfig, n_genes: int, gene_tokens: float | None = None) -> float:
    """FLOPs of one cell's forward and backward (and recomputation with activation checkpointing)."""
    tokens = context_tokens(config, n_genes) if gene_tokens is None else gene_tokens
    _, data_reading = encoder_macs(config, n_genes, tokens)
    flops = 3.0 * forward_flops_per_cell(config, n_genes, tokens) - 2.0 * data_reading
    if config.encoder == "transformer" and config.transformer.activation_checkpointing:
        flops += 2.0 * recomputed_macs(config, tokens)
    return flops


def context_tokens(config: ModelConfig, n_genes: int) -> int:
    """Gene tokens of a full context: min(context_length, genes); 0 for the MLP encoder."""
    return min(config.transformer.context_length, n_genes) if config.encoder == "transformer" else 0
