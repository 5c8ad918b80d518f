"""How well a model represents held-out cells: its embedding and its reconstruction.

    section, arrays = embedding_metrics(data)        # kNN / ARI / NMI / silhouette (+ batch mixing), model vs PCA
    section = reconstruction_metrics(data)           # masked-gene Pearson, log-likelihood, vs baselines

Embedding baseline: PCA of the same normalised input with as many components as the model's
latent, fitted on the reference (training) cells: what a standard pipeline gets for free.
Reconstruction hides a seeded 25% of each held-out cell's measured genes and scores the
prediction at the hidden entries (per cell and per gene), against the reference's gene
means, a PCA reconstruction from the same masked input, the mean of the reference cells nearest
to it (kNN smoothing) and, with cell-type labels, the reference mean of its type. A hidden entry
is a detected gene (its value is not a zero count's), which every method may use: the model predicts the value
of a gene were it detected (`VirtualCell.impute`), and the strongest baselines are the mean over
the reference cells of the type in which the gene is detected, that mean moved along the cell's
depth (library size and how many genes it detects, fitted per gene: what the model's detected
level knows, without counts) and, with counts, the same under an NB per cell type that knows the
cell's depth (one count is more per 10,000 in a shallow cell).

Batch mixing (when the atlas has the `model.columns.batch` column with at least two batches):
scib's graph iLISI of the held-out embedding (`vcell.evaluate.mixing`; 1 = mixed, 0 = separated)
and the kNN accuracy of predicting a held-out cell's batch from the reference cells (lower =
better mixed; `batch_knn_accuracy_if_mixed` is its value with the reference batches shuffled).
Read mixing beside the cell-type scores: an embedding that mixes everything mixes batches too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from vcell.data.memory import batches_of
from vcell.evaluate.heldout import HeldOut
from vcell.evaluate.metrics import (
    cell_type_means, detected_means, detected_means_with_depth, detected_nb_levels, library_size_nb,
)
from vcell.evaluate.mixing import ILISI_NEIGHBOURS, ILISI_PERPLEXITY, ilisi
from vcell.evaluate.scores import (
    adjusted_rand_index, kmeans, knn_accuracy, neighbour_means, normalized_mutual_info, silhouette_labels,
)
from vcell.evaluate.truth import standardised
from vcell.models.inputs import detected_entries

MASK_FRACTION = 0.25
MASK_STREAM = 17
KNN_NEIGHBOURS = 15
IMPUTE_NEIGHBOURS = 50  # the kNN-smoothing baseline: 50 neighbours beat 15 on the demo (per-cell r 0.620 vs 0.591)


@torch.no_grad()
def latent_of(model, cells: dict[str, torch.Tensor], batch_size: int = 2048) -> np.ndarray:
    """(n, D) embeddings (the encoder alone: no decoding needed)."""
    with model.evaluating():
        return np.concatenate([model.encode(batch["x"], model.inputs(batch))[0].numpy()
                               for batch in batches_of(cells, batch_size)])


class PCA:
    """Principal components of the reference cells (randomised SVD, seeded)."""

    def __init__(self, x: np.ndarray, n_components: int, seed: int = 0) -> None:
        from sklearn.decomposition import PCA as RandomizedPCA

        fitted = RandomizedPCA(n_components, svd_solver="randomized", random_state=seed).fit(x)
        self.mean, self.components = fitted.mean_, fitted.components_  # (G,), (k, G)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.components.T

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        return self.transform(x) @ self.components + self.mean


def embedding_scores(reference: np.ndarray, reference_labels: np.ndarray, query: np.ndarray,
                     query_labels: np.ndarray, seed: int) -> dict[str, float]:
    known = query_labels >= 0
    query, query_labels = query[known], query_labels[known]
    n_clusters = len(np.unique(query_labels))
    clusters = kmeans(query, n_clusters, seed=seed)
    return {
        "knn_accuracy": knn_accuracy(reference, reference_labels, query, query_labels, k=KNN_NEIGHBOURS),
        "ari": adjusted_rand_index(query_labels, clusters),
        "nmi": normalized_mutual_info(query_labels, clusters),
        "silhouette": silhouette_labels(query, query_labels, seed=seed),
    }


def embedding_metrics(data: HeldOut, label: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Section for metrics.json and the arrays plots need (held-out latent and PCA coordinates)."""
    label = label or data.column("context") or "cell_type"
    model_test, model_train = latent_of(data.model, data.test), latent_of(data.model, data.train)
    arrays = {"latent": model_test}
    if label not in data.test:
        return {"skipped": f"held-out cells have no '{label}' labels to score embeddings against"}, arrays
    pca = PCA(data.train["x"].numpy(), model_test.shape[1])
    pca_test, pca_train = pca.transform(data.test["x"].numpy()), pca.transform(data.train["x"].numpy())
    arrays["pca"] = pca_test
    labels_test, labels_train = data.test[label].numpy(), data.train[label].numpy()
    section = {
        "label": label, "cells": int((labels_test >= 0).sum()), "dimensions": int(model_test.shape[1]),
        "definitions": "kNN accuracy (k=15, reference -> held-out); ARI and NMI of k-means (k = number of labels) "
                       "vs labels; silhouette on labels rescaled to [0, 1] (scib-metrics silhouette_label)",
        "model": embedding_scores(model_train, labels_train, model_test, labels_test, data.seed),
        "baselines": {"pca": embedding_scores(pca_train, labels_train, pca_test, labels_test, data.seed)},
    }
    batches = batch_codes(data)
    if isinstance(batches, str):
        section["batch_mixing"] = batches
        return section, arrays
    reference_batches, query_batches = batches
    for scores, (reference, query) in ((section["model"], (model_train, model_test)),
                                       (section["baselines"]["pca"], (pca_train, pca_test))):
        scores.update(mixing_scores(reference, reference_batches, query, query_batches))
    shuffled = np.random.default_rng([data.seed, MASK_STREAM]).permutation(reference_batches)
    section["batch_mixing"] = {
        "column": data.column("batch"), "batches": int(len(np.unique(query_batches[query_batches >= 0]))),
        "definitions": f"ilisi: scib graph iLISI (k={ILISI_NEIGHBOURS}, perplexity {ILISI_PERPLEXITY:g}) of the held-out "
                       "cells, (median - 1) / (batches - 1), 1 = mixed, 0 = separated; batch_knn_accuracy: kNN (k=15) "
                       "prediction of a held-out cell's batch from the reference cells, lower = better mixed",
        "batch_knn_accuracy_if_mixed": knn_accuracy(model_train, shuffled, model_test, query_batches, k=KNN_NEIGHBOURS),
    }
    return section, arrays


def mixing_scores(reference: np.ndarray, reference_batches: np.ndarray, query: np.ndarray,
                  query_batches: np.ndarray) -> dict[str, float]:
    return {"ilisi": ilisi(query, query_batches),
            "batch_knn_accuracy": knn_accuracy(reference, reference_batches, query, query_batches, k=KNN_NEIGHBOURS)}


def batch_codes(data: HeldOut) -> tuple[np.ndarray, np.ndarray] | str:
    """(reference, held-out) batch codes (-1 = missing) from the atlas's obs, or why batch mixing is not scored."""
    from vcell.atlas.store import open_atlas
    from vcell.evaluate.cells import atlas_has_column, atlas_obs

    column = data.column("batch")
    atlas = open_atlas(data.atlas)
    if not column or not atlas_has_column(atlas, column):
        return f"skipped: the atlas has no batch column (model.columns.batch = {column!r})"
    values = pd.Categorical(atlas_obs(atlas)[column].to_numpy())
    codes = np.asarray(values.codes, dtype=np.int64)  # NaN -> -1
    if len(values.categories) < 2:
        return f"skipped: the batch column '{column}' has a single batch"
    return codes[data.train["cell_index"].numpy()], codes[data.test["cell_index"].numpy()]


def hidden_mask(x: torch.Tensor, seed: int, zero_level: np.ndarray | None = None) -> torch.Tensor:
    """(n, G) bool: a seeded MASK_FRACTION of each cell's detected entries (`detected_entries` at
    `zero_level`, the model's `spec.zero_level`)."""
    generator = torch.Generator().manual_seed(seed * 1000 + MASK_STREAM)
    level = None if zero_level is None else torch.as_tensor(zero_level)
    return detected_entries(x, level) & (torch.rand(x.shape, generator=generator) < MASK_FRACTION)


def masked_predictions(data: HeldOut, mask: torch.Tensor) -> np.ndarray:
    """(n, G) the model's values of held-out cells' genes were they detected, from their masked input."""
    masked = dict(data.test, x=data.test["x"].masked_fill(mask, 0.0), withheld=mask)  # still counted as detected
    return np.concatenate([data.model.impute(batch).numpy() for batch in batches_of(masked, 1024)])


def hidden_entry_correlations(predicted: np.ndarray, observed: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Mean Pearson r over cells (hidden genes of each cell) and over genes (cells where hidden),
    each over rows/columns with at least 3 hidden entries and some variance."""
    def mean_correlation(p: np.ndarray, o: np.ndarray, m: np.ndarray, axis: int) -> float:
        count = m.sum(axis)
        p_mean = (p * m).sum(axis) / np.maximum(count, 1)
        o_mean = (o * m).sum(axis) / np.maximum(count, 1)
        p_centred = (p - np.expand_dims(p_mean, axis)) * m
        o_centred = (o - np.expand_dims(o_mean, axis)) * m
        numerator = (p_centred * o_centred).sum(axis)
        denominator = np.sqrt((p_centred**2).sum(axis) * (o_centred**2).sum(axis))
        usable = (count >= 3) & (denominator > 0)
        return float((numerator[usable] / denominator[usable]).mean()) if usable.any() else float("nan")

    return {"per_cell_pearson": mean_correlation(predicted, observed, mask, 1),
            "per_gene_pearson": mean_correlation(predicted, observed, mask, 0),
            "hidden_mse": float((((predicted - observed) * mask) ** 2).sum() / max(mask.sum(), 1))}


def reconstruction_metrics(data: HeldOut) -> dict:
    x, zero_level = data.test["x"], data.model.spec.zero_level
    mask = hidden_mask(x, data.seed, zero_level)
    if "unmeasured" in data.test:  # genes the evaluation atlas lacks read as 0: never hidden, whatever the zero level
        mask &= ~data.test["unmeasured"]
    observed, hidden = x.numpy(), mask.numpy()
    reference, masked = data.train["x"].numpy(), np.where(hidden, 0.0, observed)
    pca = PCA(reference, data.trained.config.model.dimensions()[2])
    # each baseline is made when scored (a lambda), so one (n, G) prediction is held at a time
    predictions = {
        "gene_mean": lambda: np.broadcast_to(reference.mean(0), observed.shape),
        "pca": lambda: pca.reconstruct(masked),
        "nearest_cells": lambda: neighbour_means(pca.transform(reference), reference, pca.transform(masked), IMPUTE_NEIGHBOURS),
        "nearest_cells_detected": lambda: neighbour_means(pca.transform(reference), reference, pca.transform(masked),
                                                          IMPUTE_NEIGHBOURS, detected_only=True, zero_level=zero_level),
    }
    label = data.column("context") or "cell_type"
    if label in data.test and label in data.train:  # what the cell type alone says about a hidden gene
        types = (data.train[label].numpy(), data.test[label].numpy())
        predictions["cell_type_mean"] = lambda: cell_type_means(reference, *types)
        predictions["cell_type_detected_mean"] = lambda: detected_means(reference, *types, zero_level)
        sizes = ((reference, data.train["library_size"].numpy()), (observed, data.test["library_size"].numpy()))
        predictions["cell_type_detected_depth"] = lambda: detected_means_with_depth(*sizes, types, zero_level)
        normalization = data.trained.normalization
        if "counts" in data.train and "library_size" in data.test and normalization.log1p and normalization.target_sum:
            depths = (data.train["counts"].numpy(), data.train["library_size"].numpy())
            predictions["cell_type_nb_detected"] = lambda: standardised(detected_nb_levels(
                depths, data.test["library_size"].numpy(), types, normalization.target_sum), normalization)
    section = {
        "definitions": f"a seeded {MASK_FRACTION:.0%} of each held-out cell's measured genes hidden (set to 0); "
                       "Pearson r between prediction and truth at the hidden entries, per cell and per gene; "
                       f"nearest_cells: the mean of the {IMPUTE_NEIGHBOURS} reference cells nearest to the masked cell in "
                       "PCA space (kNN smoothing); nearest_cells_detected: their mean where the gene is detected; cell_type_mean: the reference mean of the cell's type; "
                       "cell_type_detected_mean: its mean over the type's reference cells in which the gene is detected "
                       "(a hidden entry is detected); cell_type_detected_depth: that mean moved per gene by least squares "
                       "on [1, it, log genes the cell detects, log library size] over the reference cells that detect "
                       "the gene; cell_type_nb_detected: E[log1p(counts per target_sum) | counts > 0] under "
                       "per-gene NBs of the cell's type at its library size; the model: its value of each gene were it "
                       "detected (VirtualCell.impute)",
        "hidden_entries": int(hidden.sum()),
        "model": hidden_entry_correlations(masked_predictions(data, mask), observed, hidden),
        "baselines": {name: hidden_entry_correlations(predict(), observed, hidden) for name, predict in predictions.items()},
    }
    section["baselines"]["gene_mean"]["per_gene_pearson"] = float("nan")  # a constant per gene: undefined
    if "counts" in data.test and data.model.head.likelihood is not None:
        section["log_likelihood"] = count_log_likelihood(data)
    return section


def count_log_likelihood(data: HeldOut) -> dict:
    """Held-out cells' counts under the model (decoded from the whole cell) vs per-gene NBs that
    know only each cell's library size, and that and its cell type (method-of-moments fits on the
    reference cells)."""
    model = data.model
    with torch.no_grad():
        ours = np.concatenate([model.head.likelihood.log_prob(batch["counts"], model.reconstruct(batch)).sum(1).numpy()
                               for batch in batches_of(data.test, 1024)])
    reference = (data.train["counts"].numpy(), data.train["library_size"].numpy())
    cells = (data.test["counts"].numpy(), data.test["library_size"].numpy())
    baselines = {"library_size_nb": float(library_size_nb(reference, cells).mean())}
    label = data.column("context") or "cell_type"
    if label in data.test and label in data.train:  # what the cell type alone says about its counts
        groups = (data.train[label].numpy(), data.test[label].numpy())
        baselines["cell_type_nb"] = float(library_size_nb(reference, cells, groups).mean())
    return {"definition": "log-likelihood of held-out raw counts, nats per cell (higher is better); baselines: per-gene "
                          "negative binomials knowing each cell's library size (cell_type_nb: and its cell type)",
            "model": float(ours.mean()), "baselines": baselines}
