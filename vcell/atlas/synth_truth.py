"""The simulator's ground truth: every parameter that generates a synthetic atlas.

`draw_truth(config)` draws the hidden biology once per seed (GRN, pathways, cell types,
kinetics, memory, perturbations, noise, batches) and calibrates the few constants that depend
on the network itself (typical TF levels, transcriptional capacity, library scale). The same
object is written to the atlas's `truth/` group and read back by `read_truth`, so metrics can
ask the mechanism (`synth_model.expected_profiles`) what the true answer is.

Gene order: transcription factors first, in topological layers (masters, then two layers of
other TFs), then target genes. Every edge goes from an earlier layer to a later one.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import numpy as np

from vcell.config.schema import SynthConfig, n_master_tfs

COMPARTMENTS = ("nucleus", "cytosol", "mitochondrion", "endoplasmic_reticulum", "plasma_membrane", "extracellular")
MASTER_LOG_AMPLITUDE = 1.5  # on/off masters sit at base +- this (x ~4.5 above/below typical)
N_TF_LAYERS = 3  # masters, then two layers of regulated TFs; targets are layer 3
# Baseline log rates: targets spread widely (heavy-tailed means, most genes rarely detected),
# a few housekeeping genes take a large share of transcripts (as mitochondrial and ribosomal
# genes do), TFs are low and less spread. With bursty genes this gives ~7% detected genes per cell.
BASE_LOG_SD, TF_BASE_LOG_MEAN, TF_BASE_LOG_SD = 2.0, -0.5, 1.0
HOUSEKEEPING_FRACTION, HOUSEKEEPING_LOG_RATE = 0.02, 7.0
BURST_FREQUENCY_RANGE = (0.05, 2.0)  # Gamma shape k_j: small k = rare large bursts = many zeros
EDGE_WEIGHT_RANGE = (0.4, 1.2)  # |w| of one edge in log space
ACTIVATION_PROBABILITY = 0.65
PATHWAY_SIZE_RANGE = (10, 80)
MEMORY_GENE_FRACTION = 0.025  # of genes; picked among strongly stimulus-responsive targets
PULSE_HOURS_RANGE = (6.0, 48.0)  # primed cells saw the pulse this long ago


@dataclass
class Truth:
    """All hidden parameters; G genes, T TFs (genes 0..T-1), P pathways, D cell types, B batches."""

    seed: int
    n_draws: int  # Monte Carlo cells per condition behind the expected profiles
    mean_library_size: float
    # genes
    gene_ids: np.ndarray  # (G,) str, Ensembl-like
    gene_symbols: np.ndarray  # (G,) str
    gene_layer: np.ndarray  # (G,) int8: 0 masters, 1-2 other TFs, 3 targets
    base_log_rate: np.ndarray  # (G,) log rate of a gene with every input at its typical level
    # GRN (E edges), hill n=2 around each TF's typical level
    edge_source: np.ndarray  # (E,) int32 gene index (always a TF)
    edge_target: np.ndarray  # (E,) int32 gene index (later layer than the source)
    edge_sign: np.ndarray  # (E,) int8, +1 activation / -1 repression
    edge_weight: np.ndarray  # (E,) float, |w| in log space
    # cell types
    cell_type_names: np.ndarray  # (D,) str
    cell_type_proportions: np.ndarray  # (D,)
    master_tfs: np.ndarray  # (M,) gene indices of master TFs
    master_state: np.ndarray  # (D, M) bool, on/off pattern defining each type
    cell_type_log_offset: np.ndarray  # (D, G): masters +-amplitude, small offsets elsewhere
    master_noise_sd: float  # per-cell continuous variation of master TFs (log space)
    # pathways and compartments
    pathway_names: np.ndarray  # (P,) str
    pathway_membership: np.ndarray  # (P, G) bool; a gene is in 0-2 pathways
    compartment_names: np.ndarray  # (C,) str
    pathway_compartment: np.ndarray  # (P,) int index into compartment_names
    pathway_level: np.ndarray  # (D, P) cell-type activity (log multiplier of member genes)
    pathway_noise_sd: float  # per-cell activity noise
    # stimulus time course and memory
    time_points: np.ndarray  # (n_t,) hours sampled after the stimulus
    stimulus_tfs: np.ndarray  # (S,) gene indices raised by the stimulus
    stimulus_log_strength: np.ndarray  # (S,) added to their log rate
    response_half_time: np.ndarray  # (G,) hours for half of the move to the stimulated state
    memory_genes: np.ndarray  # (n_mem,) gene indices (targets only)
    memory_retained_fraction: np.ndarray  # (n_mem,) m_j: share of the pulse effect kept at once
    memory_half_time: np.ndarray  # (n_mem,) hours: retained share halves every tau_mem
    # perturbations (K targets); perturbation index 0 means control everywhere
    perturbation_targets: np.ndarray  # (K,) gene indices
    perturbation_knockout: np.ndarray  # (K,) bool; False = knockdown
    perturbation_factor: np.ndarray  # (K,) multiplier on the target's rate (0 for knockout)
    # capacity, noise, batches
    burst_frequency: np.ndarray  # (G,) Gamma shape k_j of transcriptional bursting
    extrinsic_noise_sd: float  # sd of the per-cell log size factor
    batch_names: np.ndarray  # (B,) str
    batch_capture_efficiency: np.ndarray  # (B,) multiplies every count of the batch
    batch_gene_effect: np.ndarray  # (B, G) multiplicative per-gene technical effect
    # calibrated from the network (filled by `calibrate`)
    tf_typical_level: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T,) hill K_i
    capacity_constant: float = 0.0  # K in e_j = C r_j / (K + sum_k r_k)
    library_scale: float = 0.0  # C per unit size factor, so mean library ~ mean_library_size
    stimulus_log_amplitude: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (D, G)
    extrinsic_variance_fraction: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (G,)

    @property
    def n_genes(self) -> int:
        return len(self.gene_ids)

    @property
    def n_tfs(self) -> int:
        return int((self.gene_layer < N_TF_LAYERS).sum())

    @property
    def layer_bounds(self) -> list[tuple[int, int]]:
        """[start, stop) gene range of each layer; genes are stored in layer order."""
        stops = np.searchsorted(self.gene_layer, np.arange(N_TF_LAYERS + 1), side="right")
        starts = np.concatenate([[0], stops[:-1]])
        return list(zip(starts.tolist(), stops.tolist()))

    @functools.cached_property
    def weight_matrix(self) -> np.ndarray:
        """(T, G) signed edge weights, zero where there is no edge (cached: edges never change)."""
        weights = np.zeros((self.n_tfs, self.n_genes))
        weights[self.edge_source, self.edge_target] = self.edge_sign * self.edge_weight
        return weights

    @functools.cached_property
    def membership_weights(self) -> np.ndarray:
        """(P, G) float pathway membership: BLAS needs floats (a bool matmul is ~3x slower)."""
        return self.pathway_membership.astype(float)

    def perturbation_names(self) -> list[str]:
        """'control' then the target symbols, the categories of obs 'perturbation'."""
        return ["control", *self.gene_symbols[self.perturbation_targets].tolist()]

    def replace(self, **changes) -> Truth:
        return dataclasses.replace(self, **changes)


def draw_truth(config: SynthConfig) -> Truth:
    """The hidden biology for one seed, calibrated; cheap (no cells are simulated here)."""
    from vcell.atlas.synth_model import calibrate  # the mechanism needs the drawn parameters

    rng = np.random.default_rng([config.seed, 0])
    n_genes, n_tfs = config.genes, config.transcription_factors
    gene_layer = draw_layers(n_genes, n_tfs)
    grn = draw_grn(gene_layer, rng)
    types = draw_cell_types(config, gene_layer, rng)
    pathways = draw_pathways(config, rng)
    truth = Truth(
        seed=config.seed,
        n_draws=config.truth_draws,
        mean_library_size=config.mean_library_size,
        gene_ids=np.array([f"ENSVCG{i + 1:011d}" for i in range(n_genes)]),
        gene_symbols=gene_symbols(n_genes, n_tfs),
        gene_layer=gene_layer,
        base_log_rate=draw_base_log_rate(gene_layer, rng),
        **grn,
        **types,
        **pathways,
        **draw_kinetics(config, gene_layer, rng),
        **draw_perturbations(config, rng),
        **draw_noise_and_batches(config, rng),
    )
    return calibrate(truth, rng)


def gene_symbols(n_genes: int, n_tfs: int) -> np.ndarray:
    tf_width, gene_width = max(3, len(str(n_tfs))), max(4, len(str(n_genes - n_tfs)))
    tfs = [f"TF{i + 1:0{tf_width}d}" for i in range(n_tfs)]
    return np.array(tfs + [f"GENE{i + 1:0{gene_width}d}" for i in range(n_genes - n_tfs)])


def draw_base_log_rate(gene_layer: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    is_tf = gene_layer < N_TF_LAYERS
    tf_base = rng.normal(TF_BASE_LOG_MEAN, TF_BASE_LOG_SD, len(is_tf))
    base = np.where(is_tf, tf_base, rng.normal(0.0, BASE_LOG_SD, len(is_tf)))
    housekeeping = ~is_tf & (rng.random(len(is_tf)) < HOUSEKEEPING_FRACTION)
    base[housekeeping] = rng.normal(HOUSEKEEPING_LOG_RATE, 0.5, int(housekeeping.sum()))
    return base


def draw_layers(n_genes: int, n_tfs: int) -> np.ndarray:
    """(G,) layer of each gene: ~20% of TFs are masters (no regulators; they set the cell type),
    the rest split over two layers."""
    n_master = n_master_tfs(n_tfs)
    n_first = (n_tfs - n_master + 1) // 2
    layer = np.full(n_genes, N_TF_LAYERS, dtype=np.int8)
    layer[:n_master], layer[n_master : n_master + n_first], layer[n_master + n_first : n_tfs] = 0, 1, 2
    return layer


def draw_grn(gene_layer: np.ndarray, rng: np.random.Generator) -> dict:
    """Regulated TFs get 1-2 regulators from earlier layers; targets get 1-3 TF regulators."""
    sources, targets = [], []
    n_tfs = int((gene_layer < N_TF_LAYERS).sum())
    for gene in np.flatnonzero(gene_layer > 0):
        candidates = np.flatnonzero(gene_layer[:n_tfs] < gene_layer[gene])
        n_regulators = min(len(candidates), rng.integers(1, 3 if gene < n_tfs else 4, endpoint=True))
        chosen = rng.choice(candidates, size=n_regulators, replace=False)
        sources.extend(chosen.tolist())
        targets.extend([gene] * n_regulators)
    n_edges = len(sources)
    sign = np.where(rng.random(n_edges) < ACTIVATION_PROBABILITY, 1, -1).astype(np.int8)
    return {
        "edge_source": np.array(sources, dtype=np.int32),
        "edge_target": np.array(targets, dtype=np.int32),
        "edge_sign": sign,
        "edge_weight": rng.uniform(*EDGE_WEIGHT_RANGE, n_edges),
    }


def draw_cell_types(config: SynthConfig, gene_layer: np.ndarray, rng: np.random.Generator) -> dict:
    """Distinct on/off patterns of the master TFs (re-drawn until all types differ)."""
    n_types, master_tfs = config.cell_types, np.flatnonzero(gene_layer == 0)
    state = rng.random((n_types, len(master_tfs))) < 0.5
    for _ in range(100):  # distinct rows; impossible only when 2**masters < types
        if len({row.tobytes() for row in state}) == n_types:
            break
        state = rng.random((n_types, len(master_tfs))) < 0.5
    offset = rng.normal(0.0, 0.1, (n_types, len(gene_layer)))
    offset[:, master_tfs] = np.where(state, MASTER_LOG_AMPLITUDE, -MASTER_LOG_AMPLITUDE)
    return {
        "cell_type_names": np.array([f"type_{i}" for i in range(n_types)]),
        "cell_type_proportions": rng.dirichlet(np.full(n_types, 5.0)),
        "master_tfs": master_tfs,
        "master_state": state,
        "cell_type_log_offset": offset,
        "master_noise_sd": 0.25,
    }


def draw_pathways(config: SynthConfig, rng: np.random.Generator) -> dict:
    """Gene sets of 10-80 genes (at most a quarter of the genes); a gene joins at most 2.

    A set never takes the places the sets still to draw need (`low` genes each, at least one),
    so every set has genes however few genes there are (config: pathways <= 2 x genes).
    """
    n_genes, n_pathways = config.genes, config.pathways
    membership = np.zeros((n_pathways, n_genes), dtype=bool)
    low, high = max(1, min(PATHWAY_SIZE_RANGE[0], n_genes // 4)), max(1, min(PATHWAY_SIZE_RANGE[1], n_genes // 4))
    for p in range(n_pathways):
        free = np.flatnonzero(membership.sum(0) < 2)
        places_left = 2 * n_genes - int(membership.sum())
        room = max(1, places_left - (n_pathways - p - 1) * low)
        size = min(len(free), room, int(rng.integers(low, high, endpoint=True)))
        membership[p, rng.choice(free, size=size, replace=False)] = True
    # Every compartment gets a pathway first, the rest land at random.
    first = rng.permutation(config.compartments)
    compartment = np.concatenate([first, rng.integers(0, config.compartments, n_pathways)])[:n_pathways]
    names = [*COMPARTMENTS, *(f"compartment_{i + 1}" for i in range(len(COMPARTMENTS), config.compartments))]
    names = names[: config.compartments]
    return {
        "pathway_names": np.array([f"PATHWAY_{p + 1:03d}_{names[compartment[p]].upper()}" for p in range(n_pathways)]),
        "pathway_membership": membership,
        "compartment_names": np.array(names),
        "pathway_compartment": compartment.astype(np.int32),
        "pathway_level": rng.normal(0.0, 0.4, (config.cell_types, n_pathways)),
        "pathway_noise_sd": 0.3,
    }


def draw_kinetics(config: SynthConfig, gene_layer: np.ndarray, rng: np.random.Generator) -> dict:
    """Stimulus-responsive TFs (from layer 1, so the response spreads) and per-gene half-times."""
    first_layer = np.flatnonzero(gene_layer == 1)
    n_stimulus = min(len(first_layer), max(2, config.transcription_factors // 20))
    # TFs respond fast (0.25-2 h), other genes over 0.5-12 h, log-uniform.
    half_time = np.where(
        gene_layer < N_TF_LAYERS,
        np.exp(rng.uniform(np.log(0.25), np.log(2.0), len(gene_layer))),
        np.exp(rng.uniform(np.log(0.5), np.log(12.0), len(gene_layer))),
    )
    return {
        "time_points": np.asarray(config.time_points, dtype=float),
        "stimulus_tfs": np.sort(rng.choice(first_layer, size=n_stimulus, replace=False)),
        "stimulus_log_strength": rng.uniform(1.5, 2.5, n_stimulus),
        "response_half_time": half_time,
        # memory genes need the stimulus response, so `calibrate` picks them
        "memory_genes": np.zeros(0, dtype=np.int64),
        "memory_retained_fraction": np.zeros(0),
        "memory_half_time": np.zeros(0),
    }


def draw_perturbations(config: SynthConfig, rng: np.random.Generator) -> dict:
    """~40% of targets are TFs; 70% knockdowns (x0.1-0.3), 30% knockouts (x0)."""
    n, n_tfs = config.perturbations, config.transcription_factors
    n_tf_targets = min(n_tfs, round(0.4 * n), n)
    n_tf_targets = max(n_tf_targets, n - (config.genes - n_tfs))
    targets = np.concatenate([
        rng.choice(n_tfs, size=n_tf_targets, replace=False),
        n_tfs + rng.choice(config.genes - n_tfs, size=n - n_tf_targets, replace=False),
    ]).astype(np.int64)
    knockout = rng.random(n) < 0.3
    return {
        "perturbation_targets": targets,
        "perturbation_knockout": knockout,
        "perturbation_factor": np.where(knockout, 0.0, rng.uniform(0.1, 0.3, n)),
    }


def draw_noise_and_batches(config: SynthConfig, rng: np.random.Generator) -> dict:
    n_batches, n_genes = config.batches, config.genes
    gene_sd = 0.2
    return {
        "burst_frequency": np.exp(rng.uniform(*np.log(BURST_FREQUENCY_RANGE), n_genes)),
        "extrinsic_noise_sd": config.extrinsic_noise,
        "batch_names": np.array([f"batch_{b}" for b in range(n_batches)]),
        "batch_capture_efficiency": np.exp(rng.normal(0.0, 0.3, n_batches)),
        # lognormal with mean 1, so batches do not shift the library size on average
        "batch_gene_effect": np.exp(rng.normal(-gene_sd**2 / 2, gene_sd, (n_batches, n_genes))),
    }
