"""In-silico knock-down: a perturbed gene read at its knocked-down level, and a perturbation
no training cell carried predicted from what the model learned from expression.

A perturbation's row of the latent shift (`slots.ConditionShift`) trains only on cells that
carried it, so a perturbation held out of training has nothing there and moved nothing (tutorial
atlas, `base`, unseen perturbations against the truth: Pearson delta 0, the mean perturbation
0.114). Its name still says which gene it perturbs (`spec.perturbation_gene`), and the model
has learned from every cell how that gene goes with the others. So, as Geneformer and scGPT
perturb in silico, the cell is encoded with its gene knocked down and decoded from that state.
The encoder moves the state as far as the gene says something about the cell's state: a
regulator's targets follow it across cells, a gene regulating nothing moves little besides
itself (tutorial atlas: a knocked-down regulator's targets move by ~0.002 where the truth moves
them by up to 1.9; only a network carries that).

Seen or not, the perturbed gene itself is then read at its knocked-down share of its level in the
cell before the perturbation. A latent shift cannot say it: the decoder reads a gene from the few
dimensions of the cell's state, and one gene's own drop is not among them (demo atlas, `base`,
seen perturbations against the truth: Pearson delta 0.042 -> 0.182, top-20 0.164 -> 0.390).

How far: what the training cells show. `GeneKnock` keeps, per gene, the sum of its level above
zero over basal training cells and over perturbed cells at rest whose perturbation targets it (a
running statistic, averaged across ranks). A gene measured in `MIN_CELLS` such cells keeps its own
share (knocked mean / basal mean); any other, the typical share, the median over measured genes.
Levels above the zero level are unit-free under the loader's affine normalisations (log1p,
z-score), so one share serves both. Before any gene was seen perturbed (no perturbation in
training, or a model saved without the sums) there is no knock: an unseen perturbation predicts
no change, a seen one its shift alone.

`regulatory` carries a gene perturbation along its network instead (it routes every gene
perturbation off the shift, and learns each knock), so this applies to models without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vcell.models.blocks import Float32Statistics
from vcell.models.inputs import CellInputs

MIN_CELLS = 3  # knocked training cells behind a gene's measured fraction
MIN_LEVEL = 1e-3  # basal level above zero (loader units) for a gene's fraction to mean anything
MAX_FRACTION = 10.0  # above 1 the screen raised its genes (CRISPRa); a bound on a noisy median
# the rows of GeneKnock.sums, each (G,): levels above zero and shares of the cell's counts
SUM_ROWS = ("basal level", "basal cells", "knocked level", "knocked cells", "basal share", "knocked share")


class GeneKnock(Float32Statistics):
    """The measured knock-down of perturbed genes; see the module doc."""

    # sums (6, G): SUM_ROWS
    RUNNING_STATISTICS = ("sums",)
    FLOAT32_BUFFERS = ("sums",)  # float32 under bf16: ratios of long sums

    def __init__(self, perturbation_gene: np.ndarray, control_code: int, n_genes: int) -> None:
        super().__init__()
        self.control_code = control_code
        genes = torch.as_tensor(np.asarray(perturbation_gene, dtype=np.int64))
        self.register_buffer("gene", genes, persistent=False)  # (K,) from the spec, -1: none
        self.register_buffer("sums", torch.zeros(len(SUM_ROWS), n_genes))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """A model saved before the sums: none (no knock), as it was."""
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
        share = None if cells.counts is None else cells.counts.to(level.dtype) / cells.library.to(level.dtype).clamp(min=1.0).unsqueeze(1)
        gene = self.gene[code.clamp(min=0, max=len(self.gene) - 1)]  # (B,)
        knocked = (knocked & (gene >= 0)).to(level.dtype)
        weight, index = basal.to(level.dtype), gene.clamp(min=0)
        self.sums[1] += weight.sum()
        self.sums[3].index_add_(0, index, knocked)
        for values, basal_row, knocked_row in ((level, 0, 2), (share, 4, 5)):
            if values is not None:
                # a sum, not a matrix product: autocast would run that in bf16 (and count it as model FLOPs)
                self.sums[basal_row] += (values * weight.unsqueeze(1)).sum(0)
                self.sums[knocked_row].index_add_(0, index, values.gather(1, index.unsqueeze(1)).squeeze(1) * knocked)

    def ratios(self, basal_row: int, knocked_row: int, floor: float) -> tuple[torch.Tensor, float] | None:
        """(each gene's knocked mean / basal mean (G,) where MIN_CELLS knocked cells show it and its
        basal mean is above `floor`, else NaN; their median); None: no gene measured."""
        sums = self.sums.double()
        basal = sums[basal_row] / sums[1].clamp(min=1.0)
        usable = (sums[3] >= MIN_CELLS) & (basal > floor)
        if not bool(usable.any()):
            return None
        ratios = (sums[knocked_row] / sums[3].clamp(min=1.0) / basal.clamp(min=floor)).clamp(0.0, MAX_FRACTION)
        ratios = torch.where(usable, ratios, torch.nan)
        # the midpoint of an even count (torch's median takes the lower one)
        return ratios.float(), float(torch.quantile(ratios[usable], 0.5))

    def per_gene(self, genes: np.ndarray) -> dict[str, np.ndarray]:
        """For `genes` (n,): their mean level above zero in basal and in knocked training cells (NaN:
        none knocked), the share of their level and of their counts kept (NaN where not measured),
        and the share of their level a prediction takes (their own, else the typical one)."""
        sums = self.sums.double().cpu().numpy()[:, genes]
        with np.errstate(divide="ignore", invalid="ignore"):
            knocked = np.where(sums[3] > 0, sums[2] / sums[3], np.nan)
        levels, shares = self.ratios(0, 2, MIN_LEVEL), self.ratios(4, 5, 0.0)
        nan = np.full(len(genes), np.nan)
        return {"basal_level": sums[0] / max(float(sums[1].max(initial=0.0)), 1.0), "knocked_level": knocked,
                "share_of_level": nan if levels is None else levels[0].cpu().numpy()[genes],
                "share_of_counts": nan if shares is None else shares[0].cpu().numpy()[genes],
                "share_used": nan if levels is None else own_or_typical(levels, torch.as_tensor(genes)).cpu().numpy()}

    def plan(self, code: torch.Tensor | None, routed: torch.Tensor, untrained: torch.Tensor) -> Knock | None:
        """The knock of each cell's gene: perturbations on the latent shift's route (`routed` (B,)
        bool) whose code names a gene; `untrained` (B,) bool: those the shift never trained. None
        when no cell has one or no knock was measured."""
        levels = self.ratios(0, 2, MIN_LEVEL)
        if code is None or levels is None:
            return None
        gene = torch.where(routed & (code >= 0), self.gene[code.clamp(min=0, max=len(self.gene) - 1)], -1)
        if not bool((gene >= 0).any()):
            return None
        shares = self.ratios(4, 5, 0.0)  # None: trained without counts (no count head to read them)
        return Knock(gene, own_or_typical(levels, gene), None if shares is None else own_or_typical(shares, gene),
                     untrained & (gene >= 0))


def own_or_typical(measured: tuple[torch.Tensor, float], gene: torch.Tensor) -> torch.Tensor:
    """(B,) each cell's gene's own measured ratio, the typical one where it has none."""
    ratios, typical = measured
    own = ratios[gene.clamp(min=0)]
    return torch.where(torch.isnan(own), torch.full_like(own, typical), own)


@dataclass
class Knock:
    """Which gene each cell's perturbation knocks in silico and how far (see the module doc).

    genes (B,) -1: none; fractions (B,) the share of its level above zero the gene keeps; folds (B,)
    the share of its counts it keeps (of each cell's counts: what a count model's rate takes; None
    when training had no counts); each the gene's own where training showed it, else the typical
    one; unseen (B,) bool: cells whose perturbation the shift never trained, read with the gene
    knocked in their input."""

    genes: torch.Tensor
    fractions: torch.Tensor
    folds: torch.Tensor | None
    unseen: torch.Tensor

    def inputs(self, x: torch.Tensor, zero_level: torch.Tensor) -> torch.Tensor:
        """(B, G) the cells as the encoder reads them: the unseen cells' genes knocked."""
        return knock_entries(x, torch.where(self.unseen, self.genes, -1), self.fractions, zero_level)


def knock_entries(values: torch.Tensor, genes: torch.Tensor, fraction: float | torch.Tensor,
                  zero_level: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """`values` (B, G) with each cell's gene (`genes` (B,), -1: none) at `fraction` (a number or
    (B,)) of its level above the zero level in `reference` (B, G) (default: `values`)."""
    index = genes.clamp(min=0).unsqueeze(1)  # (B, 1)
    zero = zero_level[index]  # (B, 1)
    own = values.gather(1, index)
    level = own if reference is None else reference.gather(1, index)
    fraction = torch.as_tensor(fraction, dtype=values.dtype, device=values.device).reshape(-1, 1)
    knocked = zero + fraction * (level - zero)
    return values.scatter(1, index, torch.where(genes.unsqueeze(1) >= 0, knocked, own))
