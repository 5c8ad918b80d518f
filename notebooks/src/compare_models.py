# %% [markdown]
# # Compare models: several catalogue entries on one atlas, against the baselines
#
# *Source: `notebooks/src/compare_models.py` (built by `notebooks/build.py`).*
#
# Which model should you train? Train the candidates on the same atlas, with the same split,
# steps and seed, score them on the same held-out cells, and put them in one table beside the
# baselines that learn nothing (PCA, gene means, the mean perturbation, a linear model,
# co-expression, ...). A model earns its complexity only where it beats both `base` and the
# baselines on the question it was built for.

# %%
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from IPython.display import Image, display

from vcell.atlas.ensure import ensure_synthetic_atlas
from vcell.config import load_config
from vcell.evaluate.evaluation import comparison_rows, evaluate_run
from vcell.evaluate.in_process import train_in_process
from vcell.evaluate.plots_model import metric_bars

SMOKE = os.environ.get("SMOKE") == "1"
WORK = Path(os.environ.get("VCELL_NOTEBOOK_WORK", "work"))
REPO = Path.cwd().parent
CELLS, STEPS, EVAL_CELLS = (800, 5, 100) if SMOKE else (3000, 200, 800)
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

# %% [markdown]
# ## The candidates and the shared settings
#
# Four single enhancements and `base` (two in smoke mode). Everything but the model is the same for all of them
# (the overrides below); the tutorial atlas is the one the model notebooks use.

# %%
CANDIDATES = ["base", "regulatory"] if SMOKE else ["base", "temporal", "regulatory", "stochastic", "hierarchical"]
SHARED = [
    f"data.atlas={WORK / f'tutorial-{CELLS}.zarr'}", f"data.synth.cells={CELLS}", "data.synth.genes=500",
    "loader.split.holdout=[{column: perturbation, test: [TF011, GENE0139]}]",
    f"train.steps={STEPS}", f"scaling.storage_path={WORK / 'runs'}",
    f"evaluate.max_cells={EVAL_CELLS}", f"evaluate.tsne_cells={EVAL_CELLS}", "evaluate.embeddings=none",
    "evaluate.plots=false",  # one comparison figure below instead of each run's own
]
configs = {name: load_config(REPO / "configs" / "models" / f"{name}.yaml", [f"name=compare-{name}", *SHARED])
           for name in CANDIDATES}
ensure_synthetic_atlas(configs["base"].data, configs["base"].build, progress=False)

# %% [markdown]
# ## Train and evaluate each
#
# Each run is an ordinary run folder (`work/runs/compare-<model>/`), so `vcell evaluate`,
# `vcell export` and `vcell embed` work on any of them afterwards.

# %%
evaluations = {}
for name, config in configs.items():
    run = train_in_process(config)
    evaluations[name] = evaluate_run(run.directory, progress=False)
    print(f"{name}: {len(run.history)} steps, final loss {sum(run.history[-1].values()):.3f}")

# %% [markdown]
# ## One table
#
# Rows: metrics (for errors, lower is better); columns: each model, then each baseline. Empty
# cells are metrics a model does not have (only the regulatory model has a GRN to score).

# %%
METRICS = [
    "embedding: knn_accuracy", "embedding: ari", "embedding: ilisi",
    "reconstruction: per_cell_pearson", "reconstruction: hidden_mse",
    "unseen perturbations: pearson_delta", "unseen perturbations: mae",
    "temporal: pearson", "temporal: half_time_spearman",
    "regulatory: sign_agreement", "stochastic: coverage_90", "hierarchical: pathway_pearson",
]
rows = comparison_rows(evaluations, METRICS)
table = pd.DataFrame({metric: scores for metric, scores in rows}).T
table.round(3)

# %% [markdown]
# Which wins each row (NaN never wins; for `hidden_mse` and `mae` the lowest):

# %%
LOWER_IS_BETTER = ("hidden_mse", "mae")
winners = {metric: (table.loc[metric].astype(float).idxmin() if metric.endswith(LOWER_IS_BETTER)
                    else table.loc[metric].astype(float).idxmax()) for metric in table.index}
pd.Series(winners, name="best")

# %% [markdown]
# ## One figure
#
# Each panel is a metric; the bars are the models and the baselines. Read each enhancement's own
# row: the temporal model on held-out time courses, the regulatory model on the GRN's signs, the
# stochastic model on count calibration, the hierarchical one on pathway activity. On the
# embedding, a structured model should not be much worse than `base`.

# %%
figure = metric_bars(rows, f"{len(CANDIDATES)} catalogue models on the same held-out cells", WORK / "compare_models.png")
display(Image(filename=str(figure)))

# %% [markdown]
# These runs are short (a few hundred steps on a few thousand cells): the README's learning
# checks (`python benchmarks/science.py`) make the same comparison at a scale where the
# differences are stable. To compare on your own data, change `data.atlas` (and the model
# columns) in `SHARED`; metrics without ground truth then say so instead of being scored.
