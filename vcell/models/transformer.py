"""The gene-token transformer encoder (`model.encoder: transformer`).

    encoder = TransformerEncoder(n_genes=2000, config=ModelConfig(encoder="transformer").transformer)
    h, losses, stats = encoder(x_in, cells)     # h (B, W): the pooled cell state

A cell is a set of gene tokens, no order and no positions: token = identity embedding of the gene
+ embedding of its value (log1p-normalised expression through a small MLP: continuous, so no bin
edges to choose per atlas and nearby values embed nearby). A learned CLS token is prepended; its
output after pre-norm blocks is the cell state the latent/dynamics/decoder slots read. Attention
is `scaled_dot_product_attention` with a padding mask: on GPU the memory-efficient kernel (the
flash kernel takes no mask; a batch without padding passes none and may take it), on CPU torch's
fused flash-style kernel; none keeps T x T attention maps for backward.

Which genes become tokens (`select_tokens`): the expressed ones (`CellInputs.detected`), at most
`context_length` per cell, the top by value; zeros are never tokens (a cell with fewer expressed
genes is padded, and padding is masked out of attention). A cell with more expressed genes than
the context loses its lowest-expressed ones: the encoder never sees them, though the decoder
still predicts and is scored on every gene.

Masked-value objective: in training the model hides a share of the measured genes
(`model.mask_fraction`; their value in x_in is 0). Here a hidden gene is still a token, with its
identity and a learned MASK embedding in place of its value, and its output predicts the value
(the `masked_value` loss), as in BERT-style single-cell pretraining. Its value never enters the
encoder: not as a token value, and not through token selection, where a hidden gene competes for
a context slot at a random rank within the cell's range of visible values (its own is unknown),
so a crowded context keeps about the cell's share of hidden genes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional
from torch.utils.checkpoint import checkpoint

from vcell.config.transformer import TransformerConfig
from vcell.models.inputs import CellInputs


def select_tokens(
    x: torch.Tensor, hidden: torch.Tensor | None, context_length: int, detected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(genes (B, T) int64, values (B, T), is_hidden (B, T), is_token (B, T)) of each cell's tokens.

    x (B, G) is what the encoder may see (hidden genes already 0); `hidden` (B, G) marks the
    hidden genes or is None; `detected` (B, G) the genes the cells show (`CellInputs.detected`;
    None: x != 0). T = min(context_length, most tokens of any cell in the batch); rows
    with fewer tokens are padded (is_token False, gene 0, value 0)."""
    hidden = torch.zeros_like(x, dtype=torch.bool) if hidden is None else hidden
    visible = (x != 0 if detected is None else detected) & ~hidden
    top = torch.where(visible, x, x.new_zeros(())).amax(dim=1, keepdim=True).clamp(min=1e-6)
    # hidden genes: a random rank within the visible range (their own value must not decide)
    key = torch.where(hidden, torch.rand_like(x) * top, x)
    key = key.masked_fill(~(visible | hidden), float("-inf"))
    n_tokens = int((visible | hidden).sum(dim=1).max()) if len(x) else 0
    width = max(1, min(context_length, n_tokens))
    chosen, genes = torch.topk(key, width, dim=1, sorted=False)  # (B, T)
    is_token = chosen > float("-inf")
    genes = genes.masked_fill(~is_token, 0)
    values = torch.gather(x, 1, genes).masked_fill(~is_token, 0.0)
    is_hidden = torch.gather(hidden, 1, genes) & is_token
    return genes, values, is_hidden, is_token


class TransformerBlock(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, width: int, heads: int, ffn_multiplier: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.attention_norm, self.ffn_norm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.ffn = nn.Sequential(
            nn.Linear(width, ffn_multiplier * width), nn.GELU(), nn.Linear(ffn_multiplier * width, width), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        """x (B, T, W); attend (B, 1, 1, T) bool: which keys are real tokens (None: all)."""
        batch, length, width = x.shape
        # (B, T, 3W) -> 3 x (B, heads, T, W / heads)
        q, k, v = self.qkv(self.attention_norm(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        mixed = functional.scaled_dot_product_attention(
            q, k, v, attn_mask=attend, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + functional.dropout(self.out(mixed.transpose(1, 2).reshape(batch, length, width)), self.dropout, self.training)
        return x + self.ffn(self.ffn_norm(x))


class TransformerEncoder(nn.Module):
    """Gene tokens -> pooled cell state (see module doc); `n_out` is the token width."""

    STATS = {"gene_tokens": ("B",)}  # tokens each cell had in its context (hidden genes included)

    def __init__(self, n_genes: int, config: TransformerConfig) -> None:
        super().__init__()
        width, n_blocks, heads = config.shape()
        self.config, self.n_out = config, width
        self.gene_embedding = nn.Embedding(n_genes, width)
        self.value_embedding = nn.Sequential(nn.Linear(1, config.value_hidden), nn.GELU(), nn.Linear(config.value_hidden, width))
        self.mask_value = nn.Parameter(torch.zeros(width))  # the value embedding of a hidden gene
        self.cls = nn.Parameter(torch.zeros(width))
        nn.init.normal_(self.gene_embedding.weight, std=0.02)
        nn.init.normal_(self.mask_value, std=0.02)
        nn.init.normal_(self.cls, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(width, heads, config.ffn_multiplier, config.dropout) for _ in range(n_blocks)
        )
        self.norm = nn.LayerNorm(width)
        self.value_head = nn.Linear(width, 1)  # a hidden gene's token -> its value

    def forward(self, x: torch.Tensor, cells: CellInputs) -> tuple[torch.Tensor, dict, dict]:
        genes, values, is_hidden, is_token = select_tokens(x, cells.hidden, self.config.context_length, cells.detected)
        value = self.value_embedding(values.unsqueeze(-1))  # (B, T, 1) -> (B, T, W)
        value = torch.where(is_hidden.unsqueeze(-1), self.mask_value.to(value.dtype), value)
        tokens = self.gene_embedding(genes) + value
        cls = self.cls.to(tokens.dtype).expand(len(tokens), 1, -1)
        states = torch.cat([cls, tokens], dim=1)  # (B, 1 + T, W)
        attend = torch.cat([is_token.new_ones(len(tokens), 1), is_token], dim=1)[:, None, None, :]  # (B, 1, 1, 1 + T)
        if bool(is_token.all()):  # no padding: no mask, so GPUs may take the flash kernel (it takes none)
            attend = None
        for block in self.blocks:
            if self.config.activation_checkpointing and self.training and torch.is_grad_enabled():
                states = checkpoint(block, states, attend, use_reentrant=False)
            else:
                states = block(states, attend)
        states = self.norm(states)
        stats = {"gene_tokens": is_token.sum(dim=1).float()}
        return states[:, 0], self.masked_value_loss(states[:, 1:], genes, is_hidden, cells), stats

    def masked_value_loss(self, states: torch.Tensor, genes: torch.Tensor, is_hidden: torch.Tensor,
                          cells: CellInputs) -> dict:
        """Squared error of the hidden genes' predicted values (none hidden: no term)."""
        if cells.hidden is None or self.config.masked_value_weight == 0:
            return {}
        predicted = self.value_head(states).squeeze(-1).float()  # (B, T)
        target = torch.gather(cells.x, 1, genes)  # the true values: only the loss reads them
        error = (predicted - target).pow(2) * is_hidden
        return {"masked_value": self.config.masked_value_weight * error.sum() / is_hidden.sum().clamp(min=1)}
