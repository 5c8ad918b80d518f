"""The simulator's mechanism: per-cell state -> gene rates -> realised expression.

For a cell (n cells, G genes, T TFs), in log space, layer by layer through the GRN:

    log r_j = base_j + celltype_offset_j + sum_i w_ij (2 hill(x_i / K_i) - 1)
              + sum_p member_pj a_p  [+ stimulus on stimulus TFs]

with hill(x) = x^2 / (1 + x^2), x_i the TF's (perturbed) rate and K_i its typical level, so a
TF at its typical level is neutral and a knocked-down TF acts as if "off" on every target
downstream. A stimulus moves each gene from the unstimulated towards the stimulated steady
state with its own half-time; memory genes keep part of an earlier pulse. Realised expression
shares a finite capacity: e_j = C r_j / (K + sum_k r_k).

The same functions serve the simulated cells (`synth.py`) and the ground truth
(`expected_profiles`), so truth and data can never disagree about the mechanism.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from vcell.atlas.synth_truth import MEMORY_GENE_FRACTION, N_TF_LAYERS, Truth

MAX_ROWS = 8192  # rows per batch of expected-profile draws (bounds memory to ~130 MB per array)


@dataclass
class CellStates:
    """Per-cell inputs of the mechanism (n cells)."""

    cell_type: np.ndarray  # (n,) int
    master_noise: np.ndarray  # (n, n_master) log deviation of master TFs
    pathway_activity: np.ndarray  # (n, P) log multiplier of each pathway's member genes
    perturbation: np.ndarray  # (n,) int; 0 control, k -> truth.perturbation_targets[k - 1]
    time: np.ndarray  # (n,) hours since the stimulus; 0 = unstimulated
    hours_since_pulse: np.ndarray  # (n,) hours since an earlier pulse; NaN = naive

    def take(self, rows: np.ndarray) -> CellStates:
        return CellStates(*(getattr(self, f.name)[rows] for f in dataclasses.fields(self)))


def draw_biological_noise(
    truth: Truth, cell_type: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell continuous variation: (master_noise (n, M), pathway_activity (n, P))."""
    n = len(cell_type)
    master_noise = rng.normal(0.0, truth.master_noise_sd, (n, len(truth.master_tfs)))
    activity = truth.pathway_level[cell_type] + rng.normal(0.0, truth.pathway_noise_sd, (n, len(truth.pathway_names)))
    return master_noise, activity


def hill_input(level: np.ndarray, typical: np.ndarray) -> np.ndarray:
    """2 hill(x/K) - 1 with n=2: -1 (off) .. 0 (typical) .. +1 (high)."""
    squared = (level / typical) ** 2
    return 2.0 * squared / (1.0 + squared) - 1.0


def perturbed_genes(truth: Truth, perturbation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, gene, factor) of the perturbed cells."""
    rows = np.flatnonzero(perturbation > 0)
    index = perturbation[rows] - 1
    return rows, truth.perturbation_targets[index], truth.perturbation_factor[index]


def propagate(truth: Truth, states: CellStates, stimulated: bool, calibrate: bool = False) -> np.ndarray:
    """(n, G) steady-state log rates, layer by layer through the GRN.

    A perturbed gene's own entry stays unperturbed (so log space never sees log 0); its
    perturbed level is what regulates the layers below. `calibrate` sets each TF's typical
    level K_i to the geometric mean of its rows, layer by layer (used once, by `calibrate`).
    """
    log_rate = truth.base_log_rate + truth.cell_type_log_offset[states.cell_type]
    log_rate += states.pathway_activity @ truth.membership_weights
    log_rate[:, truth.master_tfs] += states.master_noise
    if stimulated:
        log_rate[:, truth.stimulus_tfs] += truth.stimulus_log_strength
    weights, n_tfs = truth.weight_matrix, truth.n_tfs
    rows, genes, factors = perturbed_genes(truth, states.perturbation)
    regulation = np.zeros((len(log_rate), n_tfs))  # (n, T); TFs not yet computed have no out-edges here
    for layer, (start, stop) in enumerate(truth.layer_bounds):
        if layer > 0:
            log_rate[:, start:stop] += regulation @ weights[:, start:stop]
        if layer == N_TF_LAYERS:
            break
        level = np.exp(log_rate[:, start:stop])  # (n, layer size)
        inside = (genes >= start) & (genes < stop)
        level[rows[inside], genes[inside] - start] *= factors[inside]
        if calibrate:
            truth.tf_typical_level[start:stop] = np.exp(np.log(level).mean(0))
        regulation[:, start:stop] = hill_input(level, truth.tf_typical_level[start:stop])
    return log_rate


def cell_rates(truth: Truth, states: CellStates) -> np.ndarray:
    """(n, G) transcription rates of each cell's current state (stimulus, memory, perturbation)."""
    log_rate = propagate(truth, states, stimulated=False)
    affected = np.flatnonzero((states.time > 0) | ~np.isnan(states.hours_since_pulse))
    if len(affected):
        sub = states.take(affected)
        effect = propagate(truth, sub, stimulated=True) - log_rate[affected]  # (m, G) full response
        moved = log_rate[affected] + effect * relaxed_fraction(sub.time, truth.response_half_time)
        retained = retained_fraction(truth, sub.hours_since_pulse)  # (m, n_mem)
        moved[:, truth.memory_genes] += effect[:, truth.memory_genes] * retained
        log_rate[affected] = moved
    rates = np.exp(log_rate)
    rows, genes, factors = perturbed_genes(truth, states.perturbation)
    rates[rows, genes] *= factors
    return rates


def relaxed_fraction(time: np.ndarray, half_time: np.ndarray) -> np.ndarray:
    """(n, G) share of the way to the stimulated state after `time` hours: 1 - 2^(-t/tau_j)."""
    return 1.0 - np.exp2(-time[:, None] / half_time[None, :])


def retained_fraction(truth: Truth, hours_since_pulse: np.ndarray) -> np.ndarray:
    """(n, n_mem) m_j 2^(-delta/tau_mem_j); 0 for naive cells (NaN delta)."""
    delta = np.nan_to_num(hours_since_pulse, nan=np.inf)[:, None]
    return truth.memory_retained_fraction * np.exp2(-delta / truth.memory_half_time)


def capacity_share(rates: np.ndarray, capacity_constant: float) -> tuple[np.ndarray, np.ndarray]:
    """Finite capacity: (share r_j / (K + sum r) (n, G), usage sum r / (K + sum r) (n,)).

    Raising any gene lowers every other gene's share: realised expression is C * share.
    """
    total = rates.sum(1, keepdims=True)
    share = rates / (capacity_constant + total)
    return share, (total / (capacity_constant + total))[:, 0]


def condition_states(
    truth: Truth, cell_type: int, perturbation: np.ndarray, time: np.ndarray, hours_since_pulse: np.ndarray
) -> CellStates:
    """n_draws cells of one type per condition, the same draws for every condition (k * n_draws rows)."""
    rng = np.random.default_rng([truth.seed, 2, cell_type])
    master_noise, activity = draw_biological_noise(truth, np.full(truth.n_draws, cell_type), rng)
    k = len(perturbation)
    return CellStates(
        cell_type=np.full(k * truth.n_draws, cell_type),
        master_noise=np.tile(master_noise, (k, 1)),
        pathway_activity=np.tile(activity, (k, 1)),
        perturbation=np.repeat(perturbation, truth.n_draws),
        time=np.repeat(time.astype(float), truth.n_draws),
        hours_since_pulse=np.repeat(hours_since_pulse.astype(float), truth.n_draws),
    )


def expected_profiles(
    truth: Truth,
    cell_type: int,
    perturbation: np.ndarray,
    time: np.ndarray,
    hours_since_pulse: np.ndarray | None = None,
) -> np.ndarray:
    """(k, G) expected normalised expression E[r_j / sum_k r_k] for k conditions of one type.

    The expectation is over the per-cell biological variation (master TFs, pathway activity),
    estimated with `truth.n_draws` common draws; technical effects (size factor, bursting,
    capture, batch) are left out: they do not change the expected normalised profile except
    through batch gene effects, which are stored separately. Rows sum to 1; multiply by the
    library size for expected counts.
    """
    perturbation, time = np.asarray(perturbation), np.asarray(time, dtype=float)
    pulse = np.full(len(perturbation), np.nan) if hours_since_pulse is None else hours_since_pulse
    pulse = np.asarray(pulse, dtype=float)
    per_batch = max(1, MAX_ROWS // truth.n_draws)
    profiles = []
    for start in range(0, len(perturbation), per_batch):
        part = slice(start, start + per_batch)
        states = condition_states(truth, cell_type, perturbation[part], time[part], pulse[part])
        rates = cell_rates(truth, states)
        fractions = rates / rates.sum(1, keepdims=True)
        profiles.append(fractions.reshape(-1, truth.n_draws, truth.n_genes).mean(1))
    return np.concatenate(profiles) if profiles else np.zeros((0, truth.n_genes))


def calibrate(truth: Truth, rng: np.random.Generator) -> Truth:
    """Fill the constants that depend on the network: K_i, capacity, library scale, memory."""
    n_types = len(truth.cell_type_names)
    typical = CellStates(  # one noiseless control cell per type
        cell_type=np.arange(n_types),
        master_noise=np.zeros((n_types, len(truth.master_tfs))),
        pathway_activity=truth.pathway_level.copy(),
        perturbation=np.zeros(n_types, dtype=int),
        time=np.zeros(n_types),
        hours_since_pulse=np.full(n_types, np.nan),
    )
    truth.tf_typical_level = np.ones(truth.n_tfs)
    control = propagate(truth, typical, stimulated=False, calibrate=True)
    truth.stimulus_log_amplitude = propagate(truth, typical, stimulated=True) - control  # (D, G)
    pick_memory_genes(truth, rng)

    # Capacity K = mean total rate of control cells, so a typical cell uses half its capacity.
    n_draws = max(64, truth.n_draws)
    cell_type = rng.choice(n_types, size=n_draws * n_types, p=truth.cell_type_proportions)
    master_noise, activity = draw_biological_noise(truth, cell_type, rng)
    zeros = np.zeros(len(cell_type))
    rates = cell_rates(truth, CellStates(cell_type, master_noise, activity, zeros.astype(int), zeros, zeros + np.nan))
    truth.capacity_constant = float(rates.sum(1).mean())
    _, usage = capacity_share(rates, truth.capacity_constant)
    truth.library_scale = truth.mean_library_size / float(usage.mean() * truth.batch_capture_efficiency.mean())
    fraction = (rates / rates.sum(1, keepdims=True)).mean(0)
    truth.extrinsic_variance_fraction = extrinsic_variance_fraction(truth, truth.mean_library_size * fraction)
    return truth


def pick_memory_genes(truth: Truth, rng: np.random.Generator) -> None:
    """Memory genes: random targets among the 2x as many most stimulus-responsive ones."""
    targets = np.flatnonzero(truth.gene_layer == N_TF_LAYERS)
    n_memory = max(1, round(MEMORY_GENE_FRACTION * truth.n_genes))
    response = np.abs(truth.stimulus_log_amplitude[:, targets]).mean(0)
    candidates = targets[np.argsort(-response, kind="stable")[: 2 * n_memory]]
    truth.memory_genes = np.sort(rng.choice(candidates, size=min(n_memory, len(candidates)), replace=False))
    truth.memory_retained_fraction = rng.uniform(0.5, 0.9, len(truth.memory_genes))
    truth.memory_half_time = rng.uniform(48.0, 144.0, len(truth.memory_genes))


def extrinsic_variance_fraction(truth: Truth, mean_counts: np.ndarray) -> np.ndarray:
    """(G,) share of a gene's count variance due to the cell size factor, at fixed cell state.

    counts ~ Poisson(m S B) with size factor S (lognormal, mean 1, variance v) and burst
    factor B (Gamma, mean 1, variance 1/k_j). By total variance, extrinsic = m^2 v and
    intrinsic = m + m^2 (1 + v) / k_j (bursting + capture sampling).
    """
    v = np.expm1(truth.extrinsic_noise_sd**2)
    extrinsic = mean_counts**2 * v
    intrinsic = mean_counts + mean_counts**2 * (1.0 + v) / truth.burst_frequency
    return extrinsic / (extrinsic + intrinsic)
