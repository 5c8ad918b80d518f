"""Each gene's value where it is detected, for imputing a measured but missing value: the
detected level the heads keep (`DetectedLevel`), fitted in closed form from running sums over the
genes hidden in training.

    level = DetectedLevel(n_genes, zero_level)   # in a head; the model folds each training step in
    level.update(reconstruction, x, library, hidden, detected_genes)
    imputed = level(reconstruction, library, detected_genes)   # (B, G)
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vcell.models.blocks import Float32Statistics

DETECTED_DECAY = 0.98  # per training step: a ~50-step memory, so the fit follows the model as it learns
# a gene's coefficients are shrunk as if this many hidden entries had slope 1 and no depth effect
DETECTED_PRIOR_ENTRIES = 10.0
# the breadth's coefficient is shrunk harder: where the library size is a count depth the two say
# much the same, and a free second depth term cost the demo's per-gene r (0.793 -> 0.789 at 10
# entries; 0.792 at 30); on pbmc68k_reduced, whose library size is no depth, it kept most of its
# gain at 30 (per-gene r 0.277 -> 0.429 at 10, 0.423 at 30, 0.403 at 100)
DETECTED_BREADTH_PRIOR_ENTRIES = 30.0
POOLING_BINS = 10  # the depth and breadth priors: genes pooled by deciles of their hidden entries
# ... each bin by its genes with at least this many (where the prior holds under a quarter of the fit;
# all genes: demo z-score squared error 0.446, from 10 / 30 / 60 entries 0.424 / 0.422 / 0.423), and
# a bin with fewer than POOLING_MIN_GENES of them takes the nearest bin's, the richer first
POOLING_MIN_ENTRIES = 30.0
POOLING_MIN_GENES = 5


def nearest_pooled_bin(pooled: torch.Tensor, usable: torch.Tensor) -> torch.Tensor | None:
    """(bins, V) each bin's row of `pooled`, or where not `usable` (bins,) the nearest usable bin's,
    a richer one before a poorer one at the same distance; None when no bin is usable."""
    bins = torch.arange(len(usable), device=pooled.device)
    if not bool(usable.any()):
        return None
    distance = (bins[None, :] - bins[:, None]).abs().float() - 0.5 * (bins[None, :] > bins[:, None])  # richer first
    distance = torch.where(usable[None, :], distance, torch.full_like(distance, float("inf")))
    return pooled[distance.argmin(1)]


def letters(*names: str) -> str:
    """The running sum of a product of variables (x and the regressors), named by its letters in
    order ("" = the count, "px" = reconstruction x measured value)."""
    return "".join(sorted("".join(names)))


class DetectedLevel(Float32Statistics):
    """Each gene's value where it is detected: offset_g + slope_g x its reconstruction + depth_g x
    log(the cell's library size) + breadth_g x log(the number of genes detected in the cell), by
    least squares over the genes hidden in training (all detected: `hide_genes` hides only detected
    genes).

    Why the depth: a detected gene has at least one count, and one count is more per 10,000 in a
    shallow cell, so among cells like this one a gene that is detected reads higher the shallower the
    cell (the per-cell-type NB baseline at the cell's depth knows this). Why the breadth as well: in
    a file of normalised values the loader's library size is the sum of those values, not a count
    depth, and how many genes a cell shows is then the measure of depth the data still hold
    (pbmc68k_reduced, 10 seeds: per-gene r 0.277 with the library size alone). Why a line in the
    reconstruction: it is the gene's mean over cells like this one, dropouts included, so a gene
    known to be detected sits above it, by more where it is often missed.

    Closed form from running sums over the hidden entries (exponential, per training step), not
    parameters: a parameter's gradient would join the model's in the global gradient-norm clip, and
    one large enough to learn the levels in a few hundred steps clipped the rest of the model
    (science atlas: every squared-error row moved). The coefficients are ridge estimates shrunk
    towards slope 1 and the depth and breadth effects of genes detected about as often
    (`coefficients`; DETECTED_PRIOR_ENTRIES, DETECTED_BREADTH_PRIOR_ENTRIES); the slope is never
    below 0 (it would turn the model's ranking of cells for that gene upside down); a gene never
    hidden keeps its reconstruction."""

    STATS: dict = {}
    # each rank sums its own cells: averaged across ranks after every step (their ratios are unchanged)
    RUNNING_STATISTICS = ("sums",)
    FLOAT32_BUFFERS = ("sums", "zero_level")  # variances are differences of sums: float32 under a bf16 cast
    # x measured; the regressors: p reconstructed (per gene), l log library size and n log detected
    # genes (per cell); each shrunk towards PRIOR_SLOPE's value by its prior entries
    VARIABLES = ("p", "l", "n")
    PRIOR_ENTRIES = (DETECTED_PRIOR_ENTRIES, DETECTED_PRIOR_ENTRIES, DETECTED_BREADTH_PRIOR_ENTRIES)
    PRIOR_SLOPE = (1.0, 0.0, 0.0)
    # the sums a least-squares fit needs (the count, x, each variable, x times each, each product of
    # two), named by their letters; in the order saved since the breadth term, whose first 9 are the
    # layout saved before it (read with the breadth's sums at 0: breadth 0)
    TERMS = ("", "x", "p", "l", "pp", "ll", "lp", "px", "lx", "n", "nn", "np", "ln", "nx")
    SAVED_BEFORE_BREADTH = 9

    def __init__(self, n_genes: int, zero_level: np.ndarray | None = None) -> None:
        super().__init__()
        self.register_buffer("sums", torch.zeros(len(self.TERMS), n_genes))  # over hidden entries
        # what a zero count reads as (`ModelSpec.zero_level`): a gene's detected level is measured from it
        zero = torch.zeros(n_genes) if zero_level is None else torch.as_tensor(zero_level, dtype=torch.float32)
        self.register_buffer("zero_level", zero, persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Sums saved before the breadth term: the same fit, without it (its sums 0: breadth 0). None
        (a count model saved before count models kept a level): zeros, nothing fitted."""
        saved = state_dict.get(prefix + "sums")
        if saved is None:
            state_dict[prefix + "sums"] = torch.zeros_like(self.sums)
        elif saved.shape[0] == self.SAVED_BEFORE_BREADTH:
            state_dict[prefix + "sums"] = torch.cat([saved, saved.new_zeros(len(self.TERMS) - len(saved), saved.shape[1])])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def regressors(reconstruction: torch.Tensor, library: torch.Tensor, detected_genes: torch.Tensor) -> dict:
        """{"p": (B, G) the reconstruction, "l": (B, 1) log library size, "n": (B, 1) log detected genes}."""
        def per_cell(values: torch.Tensor) -> torch.Tensor:
            return torch.log(values.float().clamp(min=1.0))[:, None]
        return {"p": reconstruction.float(), "l": per_cell(library), "n": per_cell(detected_genes)}

    @torch.no_grad()
    def update(self, reconstruction: torch.Tensor, x: torch.Tensor, library: torch.Tensor, hidden: torch.Tensor,
               detected_genes: torch.Tensor) -> None:
        """Fold in a training batch's hidden entries: reconstruction and measured x (B, G), library
        sizes (B,), hidden mask (B, G), and how many genes each cell shows (B,), hidden ones included."""
        values, weight = {"x": x.float(), **self.regressors(reconstruction, library, detected_genes)}, hidden.float()
        terms = [(weight * math.prod((values[letter] for letter in name), start=1.0)).sum(0) for name in self.TERMS]
        self.sums.mul_(DETECTED_DECAY).add_(torch.stack(terms))

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """offset (G,), each gene's coefficients (G, V) on VARIABLES and their means over its hidden
        entries (G, V): the level is offset + coefficients . (variables - means).

        Two ridge fits: the first shrinks the depth and breadth coefficients towards 0, the second
        towards those of the genes detected about as often (`pooled_slopes`). A detected rare gene
        is mostly a single count, whose value the cell's depth sets, and its few hidden entries
        leave its own depth slope noisy, so shrinking it towards no depth effect cost the rarest
        genes (demo `base`, genes detected in < 5% of cells: squared error 0.085 against the type
        NB's 0.079; pooled 0.078, every other bin unchanged; all genes 0.719 -> 0.718; under a
        z-score, where those genes' errors weigh ~50x, 0.508 -> 0.417 against the type NB's 0.421)."""
        first = self.ridge(torch.tensor(self.PRIOR_SLOPE, device=self.sums.device))
        return self.ridge(self.pooled_slopes(first[1]))

    def ridge(self, slope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`coefficients` with each gene's shrunk towards `slope` (V,) or (G, V)."""
        moments = dict(zip(self.TERMS, self.sums))
        count = moments[""]
        n = count.clamp(min=1e-12)

        def centred(a: str, b: str) -> torch.Tensor:
            return moments[letters(a, b)] / n - (moments[a] / n) * (moments[b] / n)

        names, device = self.VARIABLES, count.device
        variances = torch.stack([centred(v, v).clamp(min=1e-8) for v in names], -1)  # (G, V)
        prior = torch.tensor(self.PRIOR_ENTRIES, device=device) * variances  # each prior term in its variable's units
        slope = slope.expand_as(variances)
        # ridge normal equations: each coefficient shrunk towards its slope
        matrix = count[:, None, None] * torch.stack([torch.stack([centred(a, b) for b in names], -1) for a in names], -2)
        matrix = matrix + torch.diag_embed(prior + 1e-12)  # (G, V, V)
        target = count[:, None] * torch.stack([centred("x", v) for v in names], -1) + prior * slope  # (G, V)
        weights = torch.linalg.solve(matrix, target)
        # slope below 0: refit the others with the slope held at 0 (its row and column made the identity's)
        held = matrix.clone()
        held[:, 0, :], held[:, :, 0], held[:, 0, 0] = 0.0, 0.0, 1.0
        refit = torch.linalg.solve(held, torch.cat([torch.zeros_like(target[:, :1]), target[:, 1:]], -1))
        weights = torch.where((weights[:, :1] < 0), refit, weights)
        seen = (count > 0)[:, None]
        weights = torch.where(seen, weights, slope)
        means = torch.stack([moments[v] / n for v in names], -1)
        offset = torch.where(seen[:, 0], moments["x"] / n, torch.zeros_like(count))
        return offset, weights, torch.where(seen, means, torch.zeros_like(means))

    def pooled_slopes(self, weights: torch.Tensor) -> torch.Tensor:
        """(G, V) each gene's prior: PRIOR_SLOPE for the reconstruction; for the depth and breadth,
        the mean of `weights` (G, V) over the genes in its POOLING_BINS-quantile of hidden entries,
        weighted by their entries (the well-measured genes of the bin set it), each in units of
        the gene's mean detected level above its zero level. That makes them comparable across
        genes whatever the loader's units: under a per-gene z-score a rare gene's values are
        stretched by 1 / its sd (~7 on the demo atlas), and the slopes pooled as they are left its
        squared error 0.956 against the type NB's 0.636 (level units: 0.734; all genes 0.508 ->
        0.455, level units 0.422, type NB 0.421). Every bin scored alike at 5, 10 and 20 bins;
        stronger priors towards the pooled slopes did worse (demo per-gene r 0.793 -> 0.789 at 30
        entries)."""
        count = self.sums[0]
        seen = count > 0
        slope = torch.tensor(self.PRIOR_SLOPE, device=count.device).expand_as(weights).clone()
        if int(seen.sum()) < POOLING_BINS:
            return slope
        log_count = torch.log(count.clamp(min=1e-12))
        edges = torch.quantile(log_count[seen], torch.linspace(0, 1, POOLING_BINS + 1, device=count.device)[1:-1])
        member = torch.nn.functional.one_hot(torch.bucketize(log_count, edges), POOLING_BINS).float()  # (G, bins)
        level = (self.sums[1] / count.clamp(min=1e-12) - self.zero_level).clamp(min=1e-3)[:, None]  # (G, 1)
        # a gene with few entries has its first slopes held near 0 by the prior: only the others pool
        entries = member * (count * (count >= POOLING_MIN_ENTRIES))[:, None]
        # sums, not matrix products: autocast would run those in bf16 (and count them as model FLOPs)
        pooled = (entries[:, :, None] * (weights / level)[:, None, :]).sum(0) / entries.sum(0).clamp(min=1e-12)[:, None]
        pooled = nearest_pooled_bin(pooled, (entries > 0).sum(0) >= POOLING_MIN_GENES)  # (bins, V)
        if pooled is None:
            return slope
        of_gene = (member[:, :, None] * pooled[None]).sum(1) * level  # (G, V) its bin's, in its units
        depth = slice(1, None)  # the reconstruction's slope keeps its prior of 1
        slope[:, depth] = torch.where(seen[:, None], of_gene[:, depth], slope[:, depth])
        return slope
        log_count = torch.log(count.clamp(min=1e-12))
        edges = torch.quantile(log_count[seen], torch.linspace(0, 1, POOLING_BINS + 1, device=count.device)[1:-1])
        member = torch.nn.functional.one_hot(torch.bucketize(log_count, edges), POOLING_BINS).float()
        member = member * seen[:, None]  # (G, bins)
        entries = member * count[:, None]
        level = (self.sums[1] / count.clamp(min=1e-12) - self.zero_level).clamp(min=1e-3)[:, None]  # (G, 1)
        weights = weights / level
        # sums, not matrix products: autocast would run those in bf16 (and count them as model FLOPs)
        pooled = (entries[:, :, None] * weights[:, None, :]).sum(0) / entries.sum(0).clamp(min=1e-12)[:, None]  # (bins, V)
        of_gene = (member[:, :, None] * pooled[None]).sum(1)  # (G, V) its bin's
        depth = slice(1, None)  # the reconstruction's slope keeps its prior of 1
        slope[:, depth] = torch.where(seen[:, None], (of_gene * level)[:, depth], slope[:, depth])
        return slope

    def forward(self, reconstruction: torch.Tensor, library: torch.Tensor, detected_genes: torch.Tensor) -> torch.Tensor:
        """(B, G) the detected level of each gene of reconstructed cells (B, G) with library sizes and
        detected genes (B,) (a gene withheld from the model but measured counts as detected)."""
        offset, weights, means = self.coefficients()
        values = self.regressors(reconstruction, library, detected_genes)
        level = offset + sum(weights[:, i] * (values[v] - means[:, i]) for i, v in enumerate(self.VARIABLES))
        return level.to(reconstruction.dtype)
