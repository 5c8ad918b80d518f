"""Ground-truth simulator: a `Source` of synthetic cells whose biology is known exactly.

    from vcell.config.schema import BuildConfig, SynthConfig
    synthesize_atlas("data/demo.zarr", SynthConfig(), BuildConfig())   # ~20k cells, seconds

The hidden biology (`synth_truth.py`) drives a mechanistic model (`synth_model.py`): a signed,
layered GRN, pathways in compartments, cell types as master-TF states, a stimulus time course
with per-gene half-times, memory of an earlier pulse, single-gene knockdowns/knockouts that
travel through the network, finite transcriptional capacity, extrinsic (cell size) and
intrinsic (bursting + capture) noise, and batch effects. Cells are generated in blocks of
`SynthConfig.chunk_cells`, each from its own random stream, so memory stays bounded and the
same seed gives the same cells however the caller slices them. The atlas stores the truth
(`truth/` group, `annotations/` files; see `synth_store.py`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from vcell.atlas.sources import Source, SourceChunk
from vcell.atlas.synth_model import CellStates, capacity_share, cell_rates, draw_biological_noise, expected_profiles
from vcell.atlas.synth_store import open_truth, write_synthetic_extras
from vcell.atlas.synth_truth import N_TF_LAYERS, PULSE_HOURS_RANGE, Truth, draw_truth
from vcell.config.schema import BuildConfig, SynthConfig
from vcell.errors import VCellError

PERTURBATION_TYPES = ["none", "knockdown", "knockout"]
HISTORIES = ["naive", "primed"]


class SimulatorSource(Source):
    """Synthetic cells over the simulator's genes; the truth is drawn once at construction."""

    def __init__(self, config: SynthConfig, name: str = "simulator") -> None:
        self.config = config
        self.name = name
        self.truth = draw_truth(config)

    @property
    def n_cells(self) -> int:
        return self.config.cells

    @property
    def var(self) -> pd.DataFrame:
        truth = self.truth
        return pd.DataFrame(
            {"gene_symbols": truth.gene_symbols, "is_tf": truth.gene_layer < N_TF_LAYERS},
            index=pd.Index(truth.gene_ids, name="gene_id"),
        )

    def chunks(self, chunk_cells: int) -> Iterator[SourceChunk]:
        """Blocks of `chunk_cells` cells, re-sliced from the internal blocks of config.chunk_cells."""
        if chunk_cells < 1:
            raise VCellError(f"chunk_cells must be positive, got {chunk_cells}")
        pending: SourceChunk | None = None
        for block in range(self.n_blocks):
            chunk = simulate_block(self.truth, self.config, block)
            pending = chunk if pending is None else concat_chunks([pending, chunk])
            offset = 0
            while len(pending.obs) - offset >= chunk_cells:
                yield slice_chunk(pending, offset, offset + chunk_cells)
                offset += chunk_cells
            pending = slice_chunk(pending, offset, len(pending.obs))  # carried into the next block
        if pending is not None and len(pending.obs):
            yield pending

    @property
    def n_blocks(self) -> int:
        return -(-self.config.cells // self.config.chunk_cells)

    def describe(self) -> dict:
        return {
            "kind": "simulator",
            "name": self.name,
            "seed": self.config.seed,
            "cells": self.n_cells,
            "genes": len(self.truth.gene_ids),
            "config": self.config.model_dump(mode="json"),
            "truth": "truth/ group and annotations/ files of this atlas",
        }


def simulate_block(truth: Truth, config: SynthConfig, block: int) -> SourceChunk:
    """Cells [block * chunk_cells, ...) from their own random stream: (n, G) CSR counts."""
    start = block * config.chunk_cells
    n = min(config.chunk_cells, config.cells - start)
    rng = np.random.default_rng([config.seed, 1, block])
    states, batch, size_factor = draw_cell_design(truth, config, n, rng)
    counts, usage = sample_counts(truth, states, batch, size_factor, rng)
    obs = cell_obs(truth, states, batch, size_factor, usage, start)
    obsm = {"truth_pathway_activity": states.pathway_activity.astype(np.float32)}
    return SourceChunk(obs=obs, X=sp.csr_matrix(counts), obsm=obsm)


def sample_counts(
    truth: Truth, states: CellStates, batch: np.ndarray, size_factor: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(counts (n, G) float32, capacity usage (n,)) of cells in `states`: the mechanism plus noise."""
    mean, usage = expected_counts(truth, states, batch, size_factor)
    mean *= burst_factor(truth, mean.shape, rng)
    return rng.poisson(mean).astype(np.float32), usage


def expected_counts(
    truth: Truth, states: CellStates, batch: np.ndarray, size_factor: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(expected counts (n, G) before intrinsic noise, capacity usage (n,)): capacity share x cell
    size (extrinsic) x batch capture and gene effects."""
    share, usage = capacity_share(cell_rates(truth, states), truth.capacity_constant)
    cell_scale = truth.library_scale * size_factor * truth.batch_capture_efficiency[batch]
    share *= cell_scale[:, None] * truth.batch_gene_effect[batch]
    return share, usage


def burst_factor(truth: Truth, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(n, G) intrinsic noise: a Gamma burst factor with mean 1 and shape k_j (Poisson capture follows)."""
    return rng.standard_gamma(truth.burst_frequency, size=shape) / truth.burst_frequency


def sample_condition(
    truth: Truth, cell_type: int, n: int, rng: np.random.Generator, *, perturbation: int = 0, time: float = 0.0,
    hours_since_pulse: float = np.nan, basal_cache: dict | None = None,
) -> np.ndarray:
    """(n, G) counts of fresh cells of one type under one condition (batches drawn at random):
    Monte Carlo ground truth for any quantity of observed cells, e.g. mean log expression.

    Calls with equally seeded `rng`s draw the same cells, and each condition's counts are coupled
    to the same cells' basal counts (unperturbed, unstimulated, naive): a gene whose expected count
    falls keeps each molecule with the ratio, one whose count rises gains Poisson(the rise). Each
    condition's counts are exactly Poisson, as in the atlas, while the difference of two conditions
    carries noise only where their expected counts differ. (Drawing every condition's Poisson
    counts afresh from one seed does not couple them: numpy's Poisson sampler takes a number of
    random numbers that depends on the mean, so from the first changed mean on the two streams
    are unrelated and a difference of 512-cell means was mostly sampling noise.)

    `basal_cache` (a dict the caller keeps): the basal cells of an `rng` in the same state are drawn
    once and reused, with `rng` left exactly as drawing them would leave it, so the counts are
    identical with or without it (about half the time of a condition goes into its basal cells)."""
    basal = basal_cells(truth, cell_type, n, rng, basal_cache)
    if perturbation == 0 and time == 0 and np.isnan(hours_since_pulse):
        return basal.counts.astype(np.float32)
    states = dataclasses.replace(
        basal.states, perturbation=np.full(n, perturbation), time=np.full(n, float(time)),
        hours_since_pulse=np.full(n, float(hours_since_pulse)),
    )
    mean, _ = expected_counts(truth, states, basal.batch, basal.size_factor)
    return coupled_poisson(basal.counts, basal.mean * basal.burst, mean * basal.burst, rng)


@dataclasses.dataclass
class BasalCells:
    """Cells of one type with nothing applied, and what their conditions' counts are coupled to."""

    states: CellStates
    batch: np.ndarray  # (n,)
    size_factor: np.ndarray  # (n,)
    mean: np.ndarray  # (n, G) expected counts
    burst: np.ndarray  # (n, G) burst factors: the same cells burst alike in every condition
    counts: np.ndarray  # (n, G) int32 (a cache holds one per cell type)


def basal_cells(truth: Truth, cell_type: int, n: int, rng: np.random.Generator, cache: dict | None) -> BasalCells:
    """The basal cells `rng` draws next (from `cache` when an rng in the same state drew them)."""
    key = (id(truth), cell_type, n, repr(rng.bit_generator.state))
    if cache is not None and key in cache:
        cells, state_after = cache[key]
        rng.bit_generator.state = state_after
        return cells
    master_noise, activity = draw_biological_noise(truth, np.full(n, cell_type), rng)
    states = CellStates(np.full(n, cell_type), master_noise, activity, np.zeros(n, dtype=int), np.zeros(n),
                        np.full(n, np.nan))
    sd = truth.extrinsic_noise_sd
    size_factor = np.exp(rng.normal(-(sd**2) / 2, sd, n))
    batch = rng.integers(0, len(truth.batch_names), size=n)
    mean, _ = expected_counts(truth, states, batch, size_factor)
    burst = burst_factor(truth, mean.shape, rng)
    counts = rng.poisson(mean * burst)
    cells = BasalCells(states, batch, size_factor, mean, burst, counts.astype(np.int32, copy=False))
    if cache is not None:
        cache[key] = (cells, rng.bit_generator.state)
    return cells


def coupled_poisson(counts: np.ndarray, mean: np.ndarray, new_mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson(new_mean) counts from `counts` ~ Poisson(mean) (all (n, G)): binomial thinning where
    the mean falls, plus Poisson(the rise) where it rises."""
    falls = new_mean < mean
    keep = np.where(falls, new_mean / np.where(falls, mean, 1.0), 1.0)
    return (rng.binomial(counts, keep) + rng.poisson(np.where(falls, 0.0, new_mean - mean))).astype(np.float32)


def draw_cell_design(
    truth: Truth, config: SynthConfig, n: int, rng: np.random.Generator
) -> tuple[CellStates, np.ndarray, np.ndarray]:
    """Who each cell is: type, batch, perturbation, time, history; plus its size factor."""
    cell_type = rng.choice(len(truth.cell_type_names), size=n, p=truth.cell_type_proportions)
    batch = rng.integers(0, len(truth.batch_names), size=n)
    n_perturbations = len(truth.perturbation_targets)
    perturbed = (rng.random(n) < config.fraction_perturbed) & (n_perturbations > 0)
    perturbation = np.where(perturbed, rng.integers(1, max(n_perturbations, 1), size=n, endpoint=True), 0)
    stimulated = rng.random(n) < config.fraction_stimulated
    time = np.where(stimulated, rng.choice(truth.time_points, size=n), 0.0)
    primed = rng.random(n) < config.fraction_primed
    pulse = np.where(primed, rng.uniform(*PULSE_HOURS_RANGE, size=n), np.nan)
    sd = truth.extrinsic_noise_sd
    size_factor = np.exp(rng.normal(-(sd**2) / 2, sd, n))  # lognormal with mean 1
    master_noise, activity = draw_biological_noise(truth, cell_type, rng)
    states = CellStates(cell_type, master_noise, activity, perturbation, time, pulse)
    return states, batch, size_factor


def cell_obs(
    truth: Truth, states: CellStates, batch: np.ndarray, size_factor: np.ndarray, usage: np.ndarray, start: int
) -> pd.DataFrame:
    """Labels as categoricals with fixed categories (identical in every chunk) + per-cell truth."""
    knockout = np.concatenate([[False], truth.perturbation_knockout])[states.perturbation]
    kind = np.where(states.perturbation == 0, 0, np.where(knockout, 2, 1))
    names = [f"cell_{i:08d}" for i in range(start, start + len(batch))]
    primed = (~np.isnan(states.hours_since_pulse)).astype(int)
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(states.cell_type, categories=truth.cell_type_names.tolist()),
            "batch": pd.Categorical.from_codes(batch, categories=truth.batch_names.tolist()),
            "perturbation": pd.Categorical.from_codes(states.perturbation, categories=truth.perturbation_names()),
            "perturbation_type": pd.Categorical.from_codes(kind, categories=PERTURBATION_TYPES),
            "stimulated": states.time > 0,
            "time": states.time.astype(np.float32),
            "history": pd.Categorical.from_codes(primed, categories=HISTORIES),
            "hours_since_pulse": states.hours_since_pulse.astype(np.float32),
            "truth_capacity_usage": usage.astype(np.float32),
            "truth_size_factor": size_factor.astype(np.float32),
        },
        index=pd.Index(names, name="cell_id"),
    )


def slice_chunk(chunk: SourceChunk, start: int, stop: int) -> SourceChunk:
    obsm = {key: value[start:stop] for key, value in chunk.obsm.items()}
    return SourceChunk(obs=chunk.obs.iloc[start:stop], X=chunk.X[start:stop], obsm=obsm)


def concat_chunks(chunks: list[SourceChunk]) -> SourceChunk:
    obsm = {key: np.concatenate([c.obsm[key] for c in chunks]) for key in chunks[0].obsm}
    X = sp.vstack([c.X for c in chunks], format="csr")
    return SourceChunk(obs=pd.concat([c.obs for c in chunks]), X=X, obsm=obsm)


def synthesize_atlas(out: str | Path, synth: SynthConfig, build: BuildConfig, *, progress: bool = True) -> Path:
    """Simulate `synth.cells` cells and build an atlas at `out`, truth included (atomically)."""
    from vcell.atlas.build import build_atlas

    source = SimulatorSource(synth)
    extra = functools.partial(write_synthetic_extras, truth=source.truth)  # called as extra(root, atlas_dir)
    return build_atlas([source], out, build, extra=extra, progress=progress)


def expected_profile(
    truth: Truth | str | Path,
    cell_type: int | str,
    perturbation: int | str | None = None,
    time: float = 0.0,
    hours_since_pulse: float | None = None,
    *,
    counts: bool = False,
) -> np.ndarray:
    """(G,) true expected normalised expression (sums to 1) of one condition, in truth gene order.

    `truth` is a `Truth`, an atlas path or its `truth` group path. `perturbation` is None or
    'control', a target's symbol or gene ID, or an index (1..K). With `counts`, the profile is
    scaled to expected counts at the mean library size (batch effects excluded).
    """
    truth = truth if isinstance(truth, Truth) else open_truth(truth)
    type_index = resolve_name(cell_type, truth.cell_type_names, "cell type")
    perturbation_index = resolve_perturbation(truth, perturbation)
    pulse = np.array([np.nan if hours_since_pulse is None else hours_since_pulse])
    profile = expected_profiles(truth, type_index, np.array([perturbation_index]), np.array([time]), pulse)[0]
    return profile * truth.mean_library_size if counts else profile


def resolve_name(value: int | str, names: np.ndarray, what: str) -> int:
    if isinstance(value, (int, np.integer)) and 0 <= value < len(names):
        return int(value)
    matches = np.flatnonzero(names == value)
    if not len(matches):
        raise VCellError(f"unknown {what} '{value}'", hint=f"use one of {names[:10].tolist()} or an index")
    return int(matches[0])


def resolve_perturbation(truth: Truth, perturbation: int | str | None) -> int:
    if perturbation is None or perturbation == "control":
        return 0
    if isinstance(perturbation, (int, np.integer)) and 0 <= perturbation <= len(truth.perturbation_targets):
        return int(perturbation)
    targets = truth.perturbation_targets
    for names in (truth.gene_symbols[targets], truth.gene_ids[targets]):
        matches = np.flatnonzero(names == perturbation)
        if len(matches):
            return int(matches[0]) + 1
    raise VCellError(
        f"'{perturbation}' is not a perturbation of this simulation",
        hint=f"use 'control' or one of {truth.perturbation_names()[1:11]} (symbols or gene IDs)",
    )
