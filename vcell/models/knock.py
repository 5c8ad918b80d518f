"""In-silico knock-down: a perturbation of a gene that no training cell carried, predicted from
what the model learned from expression.

A perturbation's row of the latent shift (`slots.ConditionShift`) trains only on cells that
carried it, so a perturbation held out of training has nothing there and moved nothing (tutorial
atlas, `base`, unseen perturbations against the truth: Pearson delta 0, the mean perturbation
0.114). Its name still says which gene it perturbs (`spec.perturbation_gene`), and the model
has learned from every cell how that gene goes with the others. So, as Geneformer and scGPT
perturb in silico, the cell is encoded with its gene knocked down, decoded from that state, and
the gene itself is read at its knocked-down level. The encoder moves the state as far as the gene
says something about the cell's state: a regulator's targets follow it across cells, a gene
regulating nothing moves little besides itself.

How far to knock: what the training cells' knocked genes show. `GeneKnock` keeps, per gene, the
sum of its level above zero over basal training cells and over perturbed cells at rest whose
perturbation targets it (a running statistic, averaged across ranks); a knocked gene keeps
`fraction()` of its level above zero, the median over genes with `MIN_CELLS` knocked cells of
knocked mean / basal mean. Levels above the zero level are unit-free under the loader's affine
normalisations (log1p, z-score), so one fraction serves both. Before any gene was seen knocked
(no perturbation in training, or a model saved without the sums) there is no route: no change.

`regulatory` carries an unseen perturbation along its network instead (it routes every gene
perturbation off the shift), so this applies to models without it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vcell.models.inputs import CellInputs

MIN_CELLS = 3  # knocked training cells behind a gene's measured fraction
MIN_LEVEL = 1e-3  # basal level above zero (loader units) for a gene's fraction to mean anything
MAX_FRACTION = 10.0  # above 1 the screen raised its genes (CRISPRa); a bound on a noisy median


class GeneKnock(nn.Module):
    """The measured knock-down of perturbed genes; see the module doc."""

    # sums (4, G): basal level sum, basal cells, knocked level sum, knocked cells (levels above zero)
    RUNNING_STATISTICS = ("sums",)

    def __init__(self, perturbation_gene: np.ndarray, control_code: int, n_genes: int) -> None:
        super().__init__()
        self.control_code = control_code
        genes = torch.as_tensor(np.asarray(perturbation_gene, dtype=np.int64))
        self.register_buffer("gene", genes, persistent=False)  # (K,) from the spec, -1: none
        self.register_buffer("sums", torch.zeros(4, n_genes))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """A model saved before the sums: none (no in-silico route), as it was."""
        state_dict.setdefault(prefix + "sums", torch.zeros_like(self.sums))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def observe(self, cells: CellInputs, zero_level: torch.Tensor) -> None:
        """Fold a training batch's basal and knocked cells into the sums (no boolean indexing: no GPU sync)."""
        code = cells.conditions.perturbation
        basal = cells.conditions.is_basal(self.control_code)
        knocked = cells.conditions.perturbed_at_rest(self.control_code)
        if code is None or basal is None or knocked is None:
            return
        level = (cells.x - zero_level).to(self.sums.dtype)  # (B, G)
        weight = basal.to(level.dtype)
        self.sums[0] += weight @ level
        self.sums[1] += weight.sum()
        gene = self.gene[code.clamp(min=0, max=len(self.gene) - 1)]  # (B,)
        knocked = (knocked & (gene >= 0)).to(level.dtype)
        own = level.gather(1, gene.clamp(min=0).unsqueeze(1)).squeeze(1) * knocked  # (B,)
        self.sums[2].index_add_(0, gene.clamp(min=0), own)
        self.sums[3].index_add_(0, gene.clamp(min=0), knocked)

    def fraction(self) -> float | None:
        """The share of its level above zero a knocked-down gene keeps (above 1: an activation raised
        it); None: none measured."""
        sums = self.sums.double().cpu()
        basal = sums[0] / sums[1].clamp(min=1.0)
        usable = (sums[3] >= MIN_CELLS) & (basal > MIN_LEVEL)
        if not bool(usable.any()):
            return None
        ratios = sums[2][usable] / sums[3][usable] / basal[usable]
        # the midpoint of an even count (torch's median takes the lower one)
        return float(torch.quantile(ratios, 0.5).clamp(0.0, MAX_FRACTION))

    def knocked_genes(self, code: torch.Tensor | None, untrained: torch.Tensor) -> torch.Tensor | None:
        """(B,) the gene each cell's perturbation knocks in silico (-1: none): a gene perturbation
        no route of the model carries (`untrained` (B,) bool). None when no cell has one or no knock
        was measured."""
        if code is None or self.fraction() is None:
            return None
        gene = torch.where(code >= 0, self.gene[code.clamp(min=0, max=len(self.gene) - 1)], -1)
        gene = torch.where(untrained, gene, -1)
        return gene if bool((gene >= 0).any()) else None


def knock_entries(values: torch.Tensor, genes: torch.Tensor, fraction: float, zero_level: torch.Tensor) -> torch.Tensor:
    """`values` (B, G) with each cell's gene (`genes` (B,), -1: none) moved to `fraction` of its
    level above the zero level."""
    index = genes.clamp(min=0).unsqueeze(1)  # (B, 1)
    zero = zero_level[index]  # (B, 1)
    own = values.gather(1, index)
    knocked = zero + fraction * (own - zero)
    return values.scatter(1, index, torch.where(genes.unsqueeze(1) >= 0, knocked, own))
