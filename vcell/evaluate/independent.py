"""GRN recovery on data vcell's simulator did not make: SERGIO (Dibaeinia & Sinha 2020).

    result = run_sergio_benchmark("runs/independent", steps=300)    # needs `pip install -e ".[science]"`
    print(result.table())

SERGIO (PyPI `sergio-scsim` 1.9.3) simulates single cells from a GRN with its own kinetics:
each gene's production is a sum of Hill functions of its regulators' concentrations, with
chemical-Langevin noise, then splat-like technical noise and UMI sampling. We draw a random
layered network (master regulators -> other regulators -> targets), let SERGIO parameterise
it (75% activating edges, k in [1, 5] or [-5, -1], Hill n = 2, its own half-responses) and
simulate steady-state cells of three cell types (master regulators' production rates differ
by type: `mrProfile.build_rnd`).

Perturbations: SERGIO 1.9.3 has no perturbation API; a master regulator's production rate is
its only input, so a knockdown of master regulator m in cell type c is simulated as an extra
SERGIO "cell type" whose profile is c's with m's production x `KNOCKDOWN_FACTOR`. Everything
downstream of m is then SERGIO's own mechanism.

The cells go through the normal AnnData path: an .h5ad of UMI counts with `cell_type` and
`perturbation` columns, built into an atlas by `build_atlas` (`vcell atlas build`). The prior
given to `regulatory` is every ordered regulator -> gene pair (regulators: the genes that
regulate something in the true network, as a TF list would say; no self-pairs), so the model
must find the ~1 in 10 pairs that are real edges.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from vcell.atlas.annotations import write_grn_edges
from vcell.atlas.anndata_source import AnnDataSource
from vcell.atlas.build import build_atlas
from vcell.atlas.store import open_atlas
from vcell.config.model import ModelConfig
from vcell.config.schema import BuildConfig, LoaderConfig
from vcell.data.memory import load_cells
from vcell.data.resolve import atlas_var
from vcell.evaluate.edges import EdgeScores, score_edges
from vcell.models.enhancements.regulatory import RegulatoryPropagation
from vcell.models.spec import spec_from_atlas
from vcell.models.zoo import build_model
from vcell.train.plain import fit

log = logging.getLogger(__name__)
KNOCKDOWN_FACTOR = 0.1
N_MASTERS, N_MIDDLE = 8, 16  # master regulators; regulated regulators (layer 1); the rest are targets


@dataclass
class SergioNetwork:
    genes: list[str]
    source: np.ndarray  # (E,) gene index of each true edge's regulator
    target: np.ndarray  # (E,)
    sign: np.ndarray  # (E,) +1 activating, -1 repressing (SERGIO's sign of k)
    masters: np.ndarray  # gene indices of master regulators (SERGIO's MRs)


def draw_network(n_genes: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A layered DAG: layer-1 regulators get 1-2 master regulators, targets 1-3 regulators."""
    genes = [f"SG{index:03d}" for index in range(n_genes)]
    sources, targets = [], []
    for gene in range(N_MASTERS, n_genes):
        candidates = np.arange(N_MASTERS if gene < N_MASTERS + N_MIDDLE else N_MASTERS + N_MIDDLE)
        n_regulators = int(rng.integers(1, 3 if gene < N_MASTERS + N_MIDDLE else 4, endpoint=True))
        chosen = rng.choice(candidates, size=min(n_regulators, len(candidates)), replace=False)
        sources.extend(chosen.tolist())
        targets.extend([gene] * len(chosen))
    return genes, np.array(sources), np.array(targets)


def simulate_sergio(
    n_genes: int = 100, n_cell_types: int = 3, cells_per_condition: int = 200, n_knockdowns: int = 6, seed: int = 0,
) -> tuple[sp.csr_matrix, pd.DataFrame, SergioNetwork]:
    """(UMI counts (cells, genes), obs with cell_type and perturbation, the true network)."""
    from SERGIO.GRN import grn_from_file
    from SERGIO.MR import mrProfile
    from SERGIO.Noise import scNoise
    from SERGIO import sergio

    import tempfile

    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # SERGIO draws its parameters and noise from numpy's global generator
    genes, source, target = draw_network(n_genes, rng)
    with tempfile.TemporaryDirectory() as folder:  # SERGIO reads networks from a CSV file
        path = Path(folder) / "network.csv"
        columns = {"reg": np.array(genes)[source], "coop": 0, "tar": np.array(genes)[target]}
        empty = dict.fromkeys(["k", "n", "h", "reg_decay", "tar_decay"], np.nan)  # SERGIO parameterises them
        pd.DataFrame({**columns, **empty}).to_csv(path)  # index + 8 columns: the layout grn_from_file reads
        grn = grn_from_file(str(path), parameterize=True)
    interactions = {(i.reg_[0].name_, i.tar_.name_): np.sign(i.k_) for i in grn.attr_["interactions"].values()}
    sign = np.array([interactions[(genes[s], genes[t])] for s, t in zip(source, target)], dtype=int)
    masters = sorted(grn.get_mrs())
    knocked = rng.choice(masters, size=min(n_knockdowns, len(masters)), replace=False)
    profile = mrProfile(MR_names=masters, n_types=n_cell_types)
    profile.build_rnd()
    conditions = [(cell_type, "control") for cell_type in range(n_cell_types)]
    conditions += [(cell_type, str(m)) for m in knocked for cell_type in range(n_cell_types)]
    expanded = mrProfile(MR_names=masters, n_types=len(conditions))  # one SERGIO "cell type" per condition
    for master in masters:
        expanded.profile[master] = np.array([
            profile.profile[master][cell_type] * (KNOCKDOWN_FACTOR if perturbed == master else 1.0)
            for cell_type, perturbed in conditions
        ])
    expanded.init_ = True
    grn.init(expanded, update_half_resp=True)
    simulator = sergio(grn)
    simulator.simulate(nCells=cells_per_condition, noise_s=1.0, safety_iter=150, scale_iter=10)
    clean = simulator.getSimExpr()  # (genes, cells) DataFrame, cells grouped by condition
    counts = scNoise()._add_noise(  # SERGIO's technical noise: library size, dropout, UMI sampling
        clean.loc[genes].to_numpy(), mean_l=6.0, scale_l=0.3, shape_d=8.0, perc_d=40.0, to_count=True,
    ).T
    obs = pd.DataFrame({
        "cell_type": [f"type{c}" for c, _ in conditions for _ in range(cells_per_condition)],
        "perturbation": [p for _, p in conditions for _ in range(cells_per_condition)],
    }, index=[f"cell{i}" for i in range(counts.shape[0])])
    network = SergioNetwork(genes, source, target, sign, np.array([genes.index(m) for m in masters]))
    return sp.csr_matrix(counts.astype(np.float32)), obs, network


def write_h5ad(path: Path, counts: sp.csr_matrix, obs: pd.DataFrame, genes: list[str]) -> Path:
    import anndata

    data = anndata.AnnData(X=counts, obs=obs.astype("category"), var=pd.DataFrame(index=genes))
    data.write_h5ad(path)
    return path


def write_network(path: Path, network: SergioNetwork) -> None:
    """The true network as a TSV: source, target, sign, master (1 if the source is a master regulator)."""
    names = np.array(network.genes)
    pd.DataFrame({
        "source": names[network.source], "target": names[network.target], "sign": network.sign,
        "master": np.isin(network.source, network.masters).astype(int),
    }).to_csv(path, sep="\t", index=False)
    Path(f"{path}.genes").write_text("\n".join(network.genes) + "\n")


def read_network(path: Path) -> SergioNetwork:
    table = pd.read_csv(path, sep="\t")
    genes = Path(f"{path}.genes").read_text().split()
    index = {gene: i for i, gene in enumerate(genes)}
    source, target = table["source"].map(index).to_numpy(), table["target"].map(index).to_numpy()
    masters = np.unique(source[table["master"].to_numpy() == 1])
    return SergioNetwork(genes, source, target, table["sign"].to_numpy(), masters)


def full_prior(network: SergioNetwork) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered (regulator, gene) pair, regulator != gene: (source, target) gene indices."""
    regulators = np.unique(network.source)
    n_genes = len(network.genes)
    source = np.repeat(regulators, n_genes)
    target = np.tile(np.arange(n_genes), len(regulators))
    keep = source != target
    return source[keep], target[keep]


@dataclass
class IndependentResult:
    scores: dict[str, EdgeScores]
    edges: int
    true_edges: int
    cells: int
    genes: int
    steps: int

    def table(self) -> str:
        lines = [f"SERGIO: {self.cells:,} cells x {self.genes} genes; prior = every regulator -> gene pair "
                 f"({self.edges:,} pairs, {self.true_edges} true: random AUPRC {self.true_edges / self.edges:.3f}); "
                 f"{self.steps} training steps",
                 f"{'method':<22} {'AUPRC':>7} {'AUROC':>7} {'sign':>7}"]
        width = max(22, *map(len, self.scores))
        lines[-1] = f"{'method':<{width}} {'AUPRC':>7} {'AUROC':>7} {'sign':>7}"
        lines += [f"{name:<{width}} {s.auprc:>7.3f} {s.auroc:>7.3f} {s.sign_agreement:>7.3f}" for name, s in self.scores.items()]
        return "\n".join(lines)


def run_sergio_benchmark(
    directory: str | Path, *, steps: int = 300, seed: int = 0, cells_per_condition: int = 200,
    hidden_dim: int = 64, batch_size: int = 256, regulatory: dict | None = None,
) -> IndependentResult:
    """Simulate with SERGIO (once per seed and size: kept in `directory`), build an atlas from the
    .h5ad, train `regulatory` (with `regulatory` overrides of its section) and `base`, score both
    and the co-expression / partial-correlation baselines on the true network."""
    atlas, network, prior = sergio_atlas(Path(directory), seed, cells_per_condition)
    loader = LoaderConfig(
        batch_size=128, block_cells=128, buffer_cells=512, labels=["cell_type", "perturbation"], keep_counts=True,
        threads=0, split={"val_fraction": 0.0, "test_fraction": 0.1, "seed": seed},
    )
    opened = open_atlas(atlas)
    train, test = load_cells(opened, loader, "train"), load_cells(opened, loader, "test")
    models = {}
    for name in ("regulatory", "base"):
        section = {"edges": str(prior), **(regulatory or {})}
        config = ModelConfig(name=name, size="small", hidden_dim=hidden_dim, n_layers=1, regulatory=section)
        torch.manual_seed(seed)
        models[name] = build_model(config, spec_from_atlas(opened, config, counts=True))
        fit(models[name], train, steps=steps, batch_size=batch_size, seed=seed)
    vocabulary = np.array(atlas_var(opened).index)
    scores, labels = score_network(models, train, test, network, vocabulary)
    return IndependentResult(scores, len(labels), int(labels.sum()), len(train["x"]) + len(test["x"]), len(vocabulary), steps)


def evaluate_on_sergio(
    directory: str | Path, configs: dict[str, Path], *, steps: int = 300, seed: int = 0, cells_per_condition: int = 200,
    test_fraction: float = 0.3, overrides: Sequence[str] = (),
) -> dict[str, dict]:
    """The standard evaluation (`vcell evaluate`'s metrics and baselines) of catalogue models trained
    on SERGIO cells: {model name: evaluation section}. `configs`: name -> its config file (the
    catalogue's `configs/models/<name>.yaml`); each trains in process on the SERGIO atlas with
    SERGIO's obs columns, the every-regulator prior and a random `test_fraction` of the cells held
    out (SERGIO's truth is its network only: no 'vs truth' rows); `overrides` (KEY=VALUE, as on the
    command line) apply to every model, after the SERGIO settings."""
    from vcell.config import load_config
    from vcell.evaluate.evaluation import evaluate_run
    from vcell.evaluate.in_process import train_in_process

    directory = Path(directory)
    atlas, _, prior = sergio_atlas(directory, seed, cells_per_condition)
    results = {}
    variant = f"-{hashlib.sha1(' '.join(overrides).encode()).hexdigest()[:8]}" if overrides else ""
    for name, path in configs.items():
        settings = [
            f"name=sergio-{name}-{seed}{variant}", f"data.atlas={atlas}", f"seed={seed}", f"train.steps={steps}",
            "model.columns.context=cell_type", "model.columns.perturbation=perturbation", "model.columns.control=control",
            "loader.split.holdout=[]", f"loader.split.test_fraction={test_fraction}", "loader.split.val_fraction=0.0",
            f"scaling.storage_path={directory / 'runs'}", "evaluate.plots=false", "evaluate.embeddings=none",
            *overrides,
        ]
        if "regulatory" in load_config(path, settings).model.enhancements:
            settings.append(f"model.regulatory.edges={prior}")
        run = train_in_process(load_config(path, settings))
        results[name] = evaluate_run(run.directory, progress=False)
    return results


def sergio_atlas(directory: Path, seed: int, cells_per_condition: int) -> tuple[Path, SergioNetwork, Path]:
    """(atlas, true network, prior TSV): simulated and built on the first call, reused after."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"sergio-{seed}-{cells_per_condition}"
    atlas, truth, prior = stem.with_suffix(".zarr"), Path(f"{stem}-network.tsv"), Path(f"{stem}-prior.tsv")
    if not (atlas.exists() and truth.exists()):
        counts, obs, network = simulate_sergio(cells_per_condition=cells_per_condition, seed=seed)
        h5ad = write_h5ad(stem.with_suffix(".h5ad"), counts, obs, network.genes)
        build_atlas([AnnDataSource(h5ad)], atlas, BuildConfig(overwrite=True), progress=False)
        write_network(truth, network)
    network = read_network(truth)
    source, target = full_prior(network)
    names = np.array(network.genes)
    write_grn_edges(prior, names[source], names[target], np.ones(len(source), dtype=int), np.ones(len(source)))
    return atlas, network, prior


def score_network(models: dict, train: dict, test: dict, network: SergioNetwork, vocabulary: np.ndarray):
    """({method: EdgeScores}, labels) over the model's prior edges, matched to the truth by gene name."""
    from vcell.evaluate.edges import edge_baselines, interventional_baseline, with_background_corrected
    from vcell.evaluate.science_checks import gradient_attribution

    spec = models["regulatory"].spec
    names = np.array(network.genes)
    true_sign = dict(zip(zip(names[network.source], names[network.target]), network.sign))
    pairs = list(zip(vocabulary[spec.grn.source], vocabulary[spec.grn.target]))
    labels = np.array([pair in true_sign for pair in pairs])
    signs = np.array([true_sign.get(pair, 0) for pair in pairs])
    propagation = next(term for term in models["regulatory"].gene_terms if isinstance(term, RegulatoryPropagation))
    learned = propagation.edge_weight().detach().numpy()
    attribution = gradient_attribution(models["base"], test)[spec.grn.target, spec.grn.source]
    baselines = edge_baselines(train["x"].numpy(), spec.grn.source, spec.grn.target, signed=True)
    combined = interventional_baseline({key: value.numpy() for key, value in train.items()}, spec,
                                       partial=baselines["partial correlation"])
    signed = with_background_corrected({**baselines, "knockdown effect + partial correlation": combined},
                                       spec.grn.source, spec.grn.target)
    scores = {
        "regulatory": score_edges(propagation.edge_score().detach().numpy(), learned, labels, signs),
        "base (attribution)": score_edges(attribution, None, labels, signs),
        **{name: score_edges(np.abs(value), value, labels, signs) for name, value in signed.items()},
    }
    return scores, labels
