"""Representation and hidden genes on real cells vcell did not make: scanpy's pbmc68k_reduced (tests/fixtures).

    python benchmarks/real_data.py                    # base, 300 steps, 10 seeds (~1 min on 2 cores)
    python benchmarks/real_data.py --steps 600 --seeds 0

700 10x PBMCs, 765 genes, log-normalised values in raw.X (no counts, so the count models
cannot run: `base` is the catalogue entry that applies). The atlas is built through the normal
path (`vcell atlas build --matrix raw.X`); 20% of cells are held out; the embedding of held-out
cells is scored against the file's `bulk_labels` (10 cell types) exactly as `vcell evaluate`
scores it: kNN accuracy (reference -> held-out), k-means ARI / NMI, label silhouette, beside
PCA of the same input with as many components as the latent. Prints one row per seed, the
mean, and the mean paired difference (model - PCA) with its standard error: 140 held-out cells
make one seed's kNN accuracy move in steps of 0.007, so a single seed decides nothing.

Then the hidden genes, as `vcell evaluate` scores them: a seeded 25% of each held-out cell's
detected genes hidden from the encoder, the model's value of each were it detected
(`VirtualCell.impute`) against the strongest baselines that apply without counts: the mean over
the reference cells of the cell's type in which the gene is detected (also moved, per gene, along
the cell's depth: its detected genes and library size), and the mean of the 50
reference cells nearest in PCA space, over all of them and over those in which the gene is
detected (per-cell r, per-gene r, squared error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vcell.atlas.store import open_atlas  # noqa: E402
from vcell.cli import main as vcell_main  # noqa: E402
from vcell.config.model import ModelConfig  # noqa: E402
from vcell.config.schema import LoaderConfig  # noqa: E402
from vcell.data.memory import load_cells  # noqa: E402
from vcell.data.memory import batches_of  # noqa: E402
from vcell.evaluate.metrics import detected_means, detected_means_with_depth  # noqa: E402
from vcell.evaluate.representation import (  # noqa: E402
    IMPUTE_NEIGHBOURS, PCA, embedding_scores, hidden_entry_correlations, hidden_mask, latent_of,
)
from vcell.evaluate.scores import neighbour_means  # noqa: E402
from vcell.models.spec import spec_from_atlas  # noqa: E402
from vcell.models.zoo import build_model  # noqa: E402
from vcell.train.plain import fit  # noqa: E402

PBMC = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "pbmc68k_reduced.h5ad"
LABEL = "bulk_labels"


def build(workdir: Path) -> Path:
    atlas = workdir / "pbmc68k_reduced.zarr"
    if not atlas.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        if vcell_main(["atlas", "build", str(PBMC), "--out", str(atlas), "--matrix", "raw.X"]) != 0:
            raise SystemExit("building the pbmc68k_reduced atlas failed (see above)")
    return atlas


def cells(atlas: Path, seed: int) -> tuple[dict, dict]:
    config = LoaderConfig(batch_size=128, threads=0, labels=[LABEL], normalize={"target_sum": None, "log1p": False},
                          split={"val_fraction": 0.0, "test_fraction": 0.2, "seed": seed})
    opened = open_atlas(atlas)
    return load_cells(opened, config, "train"), load_cells(opened, config, "test")


def score(atlas: Path, model_name: str, steps: int, seed: int) -> dict[str, dict[str, float]]:
    train, test = cells(atlas, seed)
    config = ModelConfig(name=model_name, size="small")
    torch.manual_seed(seed)
    model = build_model(config, spec_from_atlas(open_atlas(atlas), config, counts=False))
    fit(model, train, steps=steps, batch_size=128, seed=seed)
    labels_train, labels_test = train[LABEL].numpy(), test[LABEL].numpy()
    latent_train, latent_test = latent_of(model, train), latent_of(model, test)
    pca = PCA(train["x"].numpy(), latent_test.shape[1], seed=seed)
    return {
        "model": embedding_scores(latent_train, labels_train, latent_test, labels_test, seed),
        "pca": embedding_scores(pca.transform(train["x"].numpy()), labels_train, pca.transform(test["x"].numpy()),
                                labels_test, seed),
        "hidden": hidden_gene_scores(model, train, test, pca, seed),
    }


def hidden_gene_scores(model, train: dict, test: dict, pca: PCA, seed: int) -> dict[str, dict[str, float]]:
    """Model vs baselines on a seeded 25% of each held-out cell's detected genes (as `vcell evaluate`)."""
    mask = hidden_mask(test["x"], seed)
    masked = dict(test, x=test["x"].masked_fill(mask, 0.0), withheld=mask)
    reference, observed, hidden = train["x"].numpy(), test["x"].numpy(), mask.numpy()
    types = (train[LABEL].numpy(), test[LABEL].numpy())
    predictions = {
        "model": np.concatenate([model.impute(batch).numpy() for batch in batches_of(masked, 1024)]),
        "type_detected_mean": detected_means(reference, *types),
        "type_and_depth": detected_means_with_depth((reference, train["library_size"].numpy()),
                                                    (observed, test["library_size"].numpy()), types),
    }
    for name, detected_only in (("nearest_cells", False), ("nearest_detected", True)):
        predictions[name] = neighbour_means(pca.transform(reference), reference, pca.transform(masked["x"].numpy()),
                                            IMPUTE_NEIGHBOURS, detected_only=detected_only)
    return {name: hidden_entry_correlations(value, observed, hidden) for name, value in predictions.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="base", help="catalogue model (one that needs no counts)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9", help="comma-separated seeds (split, initialisation, batches)")
    parser.add_argument("--workdir", default="benchmarks/.real_data")
    args = parser.parse_args()
    atlas = build(Path(args.workdir))
    metrics = ["knn_accuracy", "ari", "nmi", "silhouette"]
    print(f"pbmc68k_reduced (700 cells x 765 genes, {LABEL}), {args.model}, {args.steps} steps; model / PCA")
    print(f"{'seed':<6}" + "".join(f"{name:>22}" for name in metrics))
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        result = score(atlas, args.model, args.steps, seed)
        rows.append(result)
        print(f"{seed:<6}" + "".join(f"{result['model'][m]:>12.3f} / {result['pca'][m]:<7.3f}" for m in metrics))
    mean = {side: {m: float(np.mean([row[side][m] for row in rows])) for m in metrics} for side in ("model", "pca")}
    print(f"{'mean':<6}" + "".join(f"{mean['model'][m]:>12.3f} / {mean['pca'][m]:<7.3f}" for m in metrics))
    differences = {m: np.array([row["model"][m] - row["pca"][m] for row in rows]) for m in metrics}
    errors = {m: d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan") for m, d in differences.items()}
    print(f"{'diff':<6}" + "".join(f"{differences[m].mean():>+12.3f} +- {errors[m]:<5.3f}" for m in metrics))
    print_hidden_genes([row["hidden"] for row in rows])


def print_hidden_genes(rows: list[dict[str, dict[str, float]]]) -> None:
    """Mean over seeds of each method's hidden-gene scores, and the seeds on which the model is ahead."""
    metrics = {"per_cell_pearson": 1, "per_gene_pearson": 1, "hidden_mse": -1}  # the sign of "better"
    print(f"\nhidden genes (25% of each held-out cell's detected genes), mean of {len(rows)} seed(s)")
    print(f"{'method':<20}" + "".join(f"{name:>18}" for name in metrics))
    for method in rows[0]:
        print(f"{method:<20}" + "".join(f"{np.mean([row[method][m] for row in rows]):>18.3f}" for m in metrics))
    ahead = {m: sum(all(sign * (row["model"][m] - row[other][m]) > 0 for other in row if other != "model")
                    for row in rows) for m, sign in metrics.items()}
    print(f"{'model ahead (seeds)':<20}" + "".join(f"{f'{ahead[m]} / {len(rows)}':>18}" for m in metrics))


if __name__ == "__main__":
    main()
