"""Learning checks on the simulator's ground truth: does each enhancement learn what it is for?

    setup = prepare_science("runs/science", steps=1500)       # atlas + splits + noisy GRN prior
    rows = [check(setup) for check in CHECKS.values()]        # one ScienceRow per enhancement

Each check trains the enhancement's catalogue model and `base` with the plain loop on the same
cells and scores both (and a random or naive reference) on the quantity the enhancement exists
for, on held-out cells. The 4 h time point is held out of training for everyone.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vcell.atlas.annotations import write_grn_edges
from vcell.atlas.store import open_atlas
from vcell.atlas.synth import synthesize_atlas
from vcell.atlas.synth_store import open_truth
from vcell.atlas.synth_truth import Truth
from vcell.config.model import ModelConfig
from vcell.config.schema import BuildConfig, LoaderConfig, SynthConfig
from vcell.data.memory import batches_of, load_cells
from vcell.data.resolve import atlas_var
from vcell.models.inputs import Conditions
from vcell.models.model import VirtualCell
from vcell.models.spec import spec_from_atlas
from vcell.models.zoo import build_model
from vcell.train.plain import fit

log = logging.getLogger(__name__)
HELD_OUT_HOURS = 4.0
# the batch too: every model reads it as `vcell train` does (model.batch_covariate: auto)
LABELS = ["cell_type", "batch", "perturbation", "time", "hours_since_pulse"]
SCIENCE_SYNTH = {  # seed 0 perturbs a gene holding ~7% of a cell's transcripts (the resource check)
    "genes": 500, "transcription_factors": 40, "pathways": 20, "compartments": 6, "perturbations": 30,
    "seed": 0, "truth_draws": 64,
}


@dataclass
class ScienceRow:
    """One metric of one catalogue model: the model, `base` and the strongest simple baseline
    (no learning: gene-set means, interpolation, co-expression, per-gene NB, no shift ...)."""

    enhancement: str  # the catalogue model scored (e.g. "regulatory", "temporal+memory")
    metric: str
    higher_is_better: bool
    enhanced: float  # the catalogue model
    base: float  # the base model, scored the same way
    baseline: float  # the strongest simple baseline reported for this metric
    baseline_name: str
    reference: dict = field(default_factory=dict)  # further baselines or context, by name

    def better(self, a: float, b: float) -> bool:
        return bool(a > b) if self.higher_is_better else bool(a < b)

    @property
    def winner(self) -> str:
        """'model', 'base' or the baseline's name: whichever scores best (NaN never wins)."""
        scores = {"model": self.enhanced, "base": self.base, self.baseline_name: self.baseline}
        finite = {name: value for name, value in scores.items() if np.isfinite(value)}
        if not finite:
            return "none"
        pick = max if self.higher_is_better else min
        return pick(finite, key=finite.get)

    @property
    def wins(self) -> bool:
        """The model beats both base and the baseline."""
        return self.better(self.enhanced, self.base) and self.better(self.enhanced, self.baseline)

    def as_dict(self) -> dict:
        return {**asdict(self), "wins": self.wins, "winner": self.winner}


@dataclass
class ScienceSetup:
    directory: Path
    atlas: Path
    prior: Path  # noisy GRN prior: every true edge plus `decoys` x as many false ones
    true_edges: set[tuple[str, str]]
    truth: Truth
    loader: LoaderConfig
    train: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]
    steps: int
    size: str
    seed: int = 0
    batch_size: int = 512
    model_overrides: dict = field(default_factory=dict)  # e.g. {"hidden_dim": 128}
    models: dict[str, VirtualCell] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)  # obs column -> its categories
    truth_order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # truth index per gene


def science_loader() -> LoaderConfig:
    return LoaderConfig(
        batch_size=512, buffer_cells=4096, block_cells=512, threads=0, keep_counts=True, labels=LABELS,
        split={"val_fraction": 0.0, "test_fraction": 0.1, "holdout": [{"column": "time", "test": [HELD_OUT_HOURS]}]},
    )


def prepare_science(
    directory: str | Path, *, cells: int = 30000, steps: int = 1500, size: str = "small", decoys: int = 2, seed: int = 0,
    model_overrides: dict | None = None, batch_size: int = 512,
) -> ScienceSetup:
    """The science atlas (made once), its noisy GRN prior, and the train/test cells in memory."""
    directory = Path(directory)
    atlas = directory / f"science-{cells}.zarr"
    if not atlas.exists():
        synthesize_atlas(atlas, SynthConfig(cells=cells, **SCIENCE_SYNTH), BuildConfig(), progress=False)
    truth = open_truth(atlas)
    prior, true_edges = write_noisy_prior(truth, directory / f"grn_prior-{cells}.tsv", decoys, seed)
    loader = science_loader()
    opened = open_atlas(atlas)
    # the atlas's vocabulary may order genes differently from the truth
    position = {gene: index for index, gene in enumerate(truth.gene_ids)}
    truth_order = np.array([position[str(gene)] for gene in atlas_var(opened).index])
    return ScienceSetup(
        directory, atlas, prior, true_edges, truth, loader, train=load_cells(opened, loader, "train"),
        test=load_cells(opened, loader, "test"), steps=steps, size=size, seed=seed, batch_size=batch_size,
        model_overrides=dict(model_overrides or {}), categories=opened.attrs["obs_categories"], truth_order=truth_order,
    )


def write_noisy_prior(truth: Truth, path: Path, decoys: int, seed: int) -> tuple[Path, set[tuple[str, str]]]:
    """Every true edge plus `decoys` false TF -> gene edges per true one (a motif-scan-like prior)."""
    rng = np.random.default_rng(seed)
    ids = truth.gene_ids
    true_pairs = set(zip(truth.edge_source.tolist(), truth.edge_target.tolist()))
    false_pairs: set[tuple[int, int]] = set()
    while len(false_pairs) < decoys * len(true_pairs):
        source, target = int(rng.integers(0, truth.n_tfs)), int(rng.integers(0, truth.n_genes))
        if source != target and (source, target) not in true_pairs:
            false_pairs.add((source, target))
    pairs = sorted(true_pairs | false_pairs)
    sources, targets = ids[[p[0] for p in pairs]], ids[[p[1] for p in pairs]]
    write_grn_edges(path, sources, targets, np.ones(len(pairs), dtype=int), np.ones(len(pairs)))
    return path, {(ids[s], ids[t]) for s, t in true_pairs}


def trained(setup: ScienceSetup, name: str) -> VirtualCell:
    """The catalogue model `name` trained on the setup's cells (cached)."""
    if name not in setup.models:
        config = ModelConfig(
            name=name, size=setup.size, regulatory={"edges": str(setup.prior)}, **setup.model_overrides
        )
        spec = spec_from_atlas(open_atlas(setup.atlas), config, counts=True, normalize=setup.loader.normalize)
        torch.manual_seed(setup.seed)
        model = build_model(config, spec)
        history = fit(model, setup.train, steps=setup.steps, batch_size=setup.batch_size, seed=setup.seed)
        log.info("trained %s: final loss %.4f", name, sum(history[-1].values()))
        setup.models[name] = model
    return setup.models[name]


# -- helpers over held-out cells ----------------------------------------------------------------
def codes(setup: ScienceSetup, column: str) -> list[str]:
    return setup.categories[column]


def basal_rows(cells: dict[str, torch.Tensor], control: int) -> torch.Tensor:
    basal = (cells["perturbation"] == control) & (cells["time"] == 0) & torch.isnan(cells["hours_since_pulse"])
    return torch.nonzero(basal)[:, 0]


def predict_mean(model: VirtualCell, cells: dict[str, torch.Tensor], **conditions) -> np.ndarray:
    """(G,) mean over `cells` of the prediction under fixed conditions (scalars per field), as
    measured cells would average (`VirtualCell.predict_measured`): the truths are such means."""
    total, n = None, 0
    for batch in batches_of(cells, 1024):
        size = len(batch["x"])
        values = {k: torch.full((size,), float(v)) if k != "perturbation" else torch.full((size,), int(v)) for k, v in conditions.items()}
        part = model.predict_measured(batch, Conditions(**values)).sum(0)
        total, n = (part if total is None else total + part), n + size
    return (total / n).numpy()


def mean_of(cells: dict[str, torch.Tensor], rows: torch.Tensor, key: str = "x") -> np.ndarray:
    return cells[key][rows].mean(0).numpy()
