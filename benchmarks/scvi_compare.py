"""vcell beside scvi-tools' SCVI on the demo atlas: one representation table, scored identically.

    pip install -e ".[compare]"                     # scvi-tools 1.4.2 (optional; not in CI)
    python benchmarks/scvi_compare.py               # base + full 300 steps, SCVI 40 epochs (~10 min on 2 cores)
    python benchmarks/scvi_compare.py --models base --scvi-epochs 20

The demo atlas (`make demo` makes it; 20,000 simulated cells x 2,000 genes, three batches) is
split as the quickstart splits it (seeded; 10% of cells held out). Every contender trains on
the same training cells and embeds the same held-out cells:
  vcell       catalogue models, trained in-process (`vcell.train.plain.fit`, default settings)
  SCVI        scvi-tools defaults (10 latent dims, NB likelihood, batch as a covariate), raw counts
  PCA         of the normalised log1p input, as many components as vcell's latent
Scores are `vcell evaluate`'s own (`embedding_scores`, `mixing_scores`): kNN accuracy of cell type
(reference = training cells -> held-out cells), k-means ARI / NMI, and batch mixing (iLISI,
higher = mixed; batch kNN accuracy, lower = mixed, 1/3 = perfect with three batches).
SCVI sees the batch labels (that is its design); vcell and PCA do not.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vcell.atlas.store import open_atlas  # noqa: E402
from vcell.config.model import ModelConfig  # noqa: E402
from vcell.config.schema import LoaderConfig  # noqa: E402
from vcell.data.memory import load_cells  # noqa: E402
from vcell.evaluate.representation import PCA, embedding_scores, latent_of, mixing_scores  # noqa: E402
from vcell.models.spec import CONDITION_ROLES, spec_from_atlas  # noqa: E402
from vcell.models.zoo import build_model  # noqa: E402
from vcell.train.plain import fit  # noqa: E402

METRICS = ["knn_accuracy", "ari", "nmi", "ilisi", "batch_knn_accuracy"]


def demo_cells(atlas: Path, seed: int) -> tuple[dict, dict]:
    """Train and held-out cells with every obs column a vcell model reads (its conditions: perturbation,
    time, hours since a pulse), as `vcell train` loads them; SCVI reads the batch, PCA nothing."""
    columns = ModelConfig().columns
    conditions = [getattr(columns, role) for role in CONDITION_ROLES if getattr(columns, role)]
    labels = list(dict.fromkeys(["cell_type", "batch", *conditions]))
    config = LoaderConfig(batch_size=512, threads=0, keep_counts=True, labels=labels,
                          split={"val_fraction": 0.05, "test_fraction": 0.05, "seed": seed})
    opened = open_atlas(atlas)
    return load_cells(opened, config, "train"), load_cells(opened, config, "test")


def scores(train_latent, test_latent, train: dict, test: dict, seed: int) -> dict[str, float]:
    values = embedding_scores(train_latent, train["cell_type"].numpy(), test_latent, test["cell_type"].numpy(), seed)
    values.update(mixing_scores(train_latent, train["batch"].numpy(), test_latent, test["batch"].numpy()))
    return values


def vcell_latents(atlas: Path, name: str, train: dict, test: dict, steps: int, seed: int):
    config = ModelConfig(name=name)
    torch.manual_seed(seed)
    model = build_model(config, spec_from_atlas(open_atlas(atlas), config, counts=True))
    fit(model, train, steps=steps, batch_size=512, seed=seed)
    return latent_of(model, train), latent_of(model, test)


def scvi_latents(train: dict, test: dict, epochs: int, seed: int):
    import anndata as ad
    import pandas as pd
    import scvi

    scvi.settings.seed = seed
    batches = [f"batch{code}" for code in sorted(set(train["batch"].tolist()) | set(test["batch"].tolist()))]

    def as_anndata(cells: dict) -> ad.AnnData:
        obs = pd.DataFrame({"batch": pd.Categorical([f"batch{code}" for code in cells["batch"].tolist()], categories=batches)})
        return ad.AnnData(cells["counts"].numpy().astype(np.float32), obs=obs)

    reference, query = as_anndata(train), as_anndata(test)
    scvi.model.SCVI.setup_anndata(reference, batch_key="batch")
    model = scvi.model.SCVI(reference)
    model.train(max_epochs=epochs, enable_progress_bar=False)
    return model.get_latent_representation(reference), model.get_latent_representation(query)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atlas", default="data/demo.zarr")
    parser.add_argument("--models", default="base,full", help="comma-separated catalogue models")
    parser.add_argument("--steps", type=int, default=300, help="vcell optimiser steps (the quickstart's)")
    parser.add_argument("--scvi-epochs", type=int, default=40, help="SCVI epochs (0: leave SCVI out)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    atlas = Path(args.atlas)
    if not atlas.exists():
        raise SystemExit(f"{atlas} does not exist: run `make demo` (or `vcell atlas synth --out {atlas}`) first")
    train, test = demo_cells(atlas, args.seed)
    rows: dict[str, tuple[dict, float]] = {}
    dimensions = 10  # SCVI's default latent, when no vcell model runs
    for name in (n for n in args.models.split(",") if n):
        start = time.perf_counter()
        train_latent, test_latent = vcell_latents(atlas, name, train, test, args.steps, args.seed)
        rows[f"vcell {name}"] = (scores(train_latent, test_latent, train, test, args.seed), time.perf_counter() - start)
        dimensions = test_latent.shape[1]
    if args.scvi_epochs:
        start = time.perf_counter()
        rows["SCVI"] = (scores(*scvi_latents(train, test, args.scvi_epochs, args.seed), train, test, args.seed),
                        time.perf_counter() - start)
    start = time.perf_counter()
    pca = PCA(train["x"].numpy(), dimensions, seed=args.seed)
    rows["PCA"] = (scores(pca.transform(train["x"].numpy()), pca.transform(test["x"].numpy()), train, test, args.seed),
                   time.perf_counter() - start)
    print(f"demo atlas: {len(train['x'])} training cells, {len(test['x'])} held-out cells scored; seed {args.seed}")
    print(f"{'contender':<16}" + "".join(f"{m:>20}" for m in METRICS) + f"{'seconds':>10}")
    for name, (values, seconds) in rows.items():
        print(f"{name:<16}" + "".join(f"{values[m]:>20.3f}" for m in METRICS) + f"{seconds:>10.0f}")


if __name__ == "__main__":
    main()
