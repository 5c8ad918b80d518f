"""The learned gene regulatory network's pieces that are not the propagation itself.

    reliability = measurement_reliability(counts, library)  # (G,) share of variance that is not counting noise
    weight = scale_gradient(weight, share)                  # same values, gradient x share
    table = edge_table(propagation, spec)                   # the learned network, strongest edge first
    score = background_corrected(values, source, target)    # (E,) each edge against its regulator's and target's

`vcell.models.enhancements.regulatory` uses the first two to balance the network's two kinds of
evidence (see its module doc); `edge_table` is what `biology/grn_edges.tsv` and `vcell export`
are written from.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from vcell.models.spec import ModelSpec


def scale_gradient(value: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """`value` unchanged, with its gradient multiplied by `share` (broadcast against it)."""
    return share * value + (1 - share) * value.detach()


def background_corrected(values: torch.Tensor, source: torch.Tensor, target: torch.Tensor,
                         n_nodes: int | None = None) -> torch.Tensor:
    """(E,) non-negative edge values (E,) of a network divided by the geometric mean of the root mean
    square of their regulator's edges and of their target's: sqrt(v / rms_source x v / rms_target),
    the geometric mean of how far the edge stands out among its regulator's edges and among its
    target's. On a log scale each regulator's and each target's overall scale (nuisances for a
    ranking across regulators) counts half; dividing it out whole ranked worse (see
    `vcell.models.enhancements.regulatory`). Scale-free (values x c: the same result); an edge that is
    its regulator's and its target's only edge is 1; the edges of an all-zero regulator or target are 0.
    `n_nodes`: more than the largest gene index (the model passes its gene count: reading the largest
    index off a GPU tensor would stall every training step)."""
    squares = values.pow(2)
    if n_nodes is None:
        n_nodes = int(max(source.max(), target.max())) + 1 if len(values) else 0

    def mean_square(node: torch.Tensor) -> torch.Tensor:  # (E,) the mean square of the edges sharing each edge's node
        total = squares.new_zeros(n_nodes).index_add_(0, node, squares)
        count = squares.new_zeros(n_nodes).index_add_(0, node, torch.ones_like(squares))
        return (total / count.clamp(min=1))[node]

    background = (mean_square(source) * mean_square(target)).pow(0.25)
    return torch.where(background > 0, values / background.clamp(min=torch.finfo(values.dtype).tiny), 0.0)


def measurement_reliability(counts: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
    """(G,) the share of each gene's variance across cells (counts B x G, library sizes B) that is not
    counting noise, 1 - E[c / L^2] / var(c / L), in [0, 1]: Poisson capture alone gives a cell's
    fraction c / L a variance of about c / L^2. A gene seen as 0 or 1 count in a few cells scores
    near 0; a well-measured one near 1; a gene that never varies, 0."""
    library = library.clamp(min=1.0)[:, None]
    fraction = counts / library
    noise = (counts / library.pow(2)).mean(0)
    variance = fraction.var(0)
    return (1 - noise / variance.clamp(min=1e-12)).clamp(0.0, 1.0).masked_fill(variance <= 0, 0.0)


def edge_table(propagation, spec: ModelSpec) -> pd.DataFrame:
    """The learned network of a `RegulatoryPropagation` as a table: source, target (gene IDs),
    prior_sign, weight (signed, per unit of the source's measured level: what regressing measured
    levels fits), score (the edge's ranking: `edge_score`), true_level_weight (what the propagation
    applies to a change of the source's true level: weight x the source's dilution boost,
    weight / max(r, floor)), source_reliability (r, the share of the source's variance that is not
    counting noise), standardised_weight (weight x sd_source / sd_target: target sds per source sd),
    highest score first; `to_csv(path, sep="\t")` gives a file `model.regulatory.edges` can read back."""
    ids = np.asarray(spec.gene_ids)
    weight = propagation.edge_weight().detach().cpu().numpy()
    sign = spec.grn.sign if spec.grn.sign is not None else np.ones(len(weight), dtype=int)
    source = np.asarray(spec.grn.source)
    table = pd.DataFrame({
        "source": ids[source], "target": ids[spec.grn.target], "prior_sign": sign, "weight": weight,
        "score": propagation.edge_score().detach().cpu().numpy(),
        "true_level_weight": weight * propagation.dilution_boost().detach().cpu().numpy()[source],
        "source_reliability": propagation.level_reliability.detach().cpu().numpy()[source],
        "standardised_weight": propagation.standardised_weight().detach().cpu().numpy(),
    })
    return table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
