# %% [markdown]
# # {{title}}: the `{{model}}` model, from configuration to saved results
#
# *Generated from `notebooks/src/model.py` and `notebooks/src/models.yaml` by `notebooks/build.py`:
# edit those, then `make notebooks`.* The eleven sections are the same in every model notebook;
# sections 1 and 10 are this model's own.
#
# ## 1. Introduction and biological motivation
#
# {{motivation}}
#
# **What it adds:** {{adds}}. **Enhancements:** {{enhancements}}.
#
# **Data.** A simulated atlas from vcell's ground-truth simulator (`vcell atlas synth`): cell
# types driven by a layered gene regulatory network, pathways grouped into compartments, a
# stimulus time course, single-gene knockdowns, a finite transcriptional capacity, extrinsic and
# intrinsic noise, primed cells and batch effects. Because the truth is known, every read-out
# below is scored against it, beside simple baselines that learn nothing.

# %% [markdown]
# ## 2. Set-up and imports
#
# Everything below calls vcell's library (the same functions `vcell train`, `vcell evaluate` and
# `vcell export` call). `SMOKE=1` in the environment runs the notebook on tiny settings (the
# test suite does); the defaults take a few minutes on a laptop CPU.

# %% tags=["parameters"]
MODEL = "{{model}}"  # a name from `vcell models`
CONFIG_FILE = "{{file}}"  # configs/models/<file>.yaml

# %%
import os
from pathlib import Path

import anndata as ad
import pandas as pd
import torch
from IPython.display import Image, display

from vcell.atlas.ensure import ensure_synthetic_atlas
from vcell.atlas.store import open_atlas
from vcell.config import load_config
from vcell.data.loader import AtlasLoader
from vcell.errors import VCellError
from vcell.evaluate.evaluation import baseline_rows, evaluate_run, summary_lines
from vcell.evaluate.export import export_run, load_trained
from vcell.evaluate.figures import existing_plots
from vcell.evaluate.in_process import train_in_process
from vcell.evaluate.plots import training_curves
from vcell.models.catalogue import NEEDS
from vcell.models.inputs import Conditions
from vcell.models.zoo import build_model, count_parameters, slot_table
from vcell.train.module import VCellModule
from vcell.train.training_plan import format_plan, model_spec, training_plan, with_model_inputs

SMOKE = os.environ.get("SMOKE") == "1"
WORK = Path(os.environ.get("VCELL_NOTEBOOK_WORK", "work"))  # atlas, runs and exports (git-ignored)
REPO = Path.cwd().parent  # notebooks/ is the working folder
CELLS, STEPS, EVAL_CELLS = (800, 5, 100) if SMOKE else (3000, 200, 800)
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
pd.set_option("display.width", 120)


def show(*paths):
    display(*(Image(filename=str(path)) for path in paths))


# %% [markdown]
# ## 3. Configuration
#
# One typed, strict config tree: the model's YAML (`configs/models/{{file}}.yaml`, which inherits
# the quickstart experiment) plus dotted overrides, exactly as on the command line
# (`vcell train --config configs/models/{{file}}.yaml key=value ...`). Here the overrides point
# at a smaller simulated atlas (500 genes), hold two perturbations out of training entirely (they
# are scored as unseen), and set the training length. Unknown keys and wrong types are errors.

# %%
OVERRIDES = [
    f"name=tutorial-{CONFIG_FILE}",
    f"data.atlas={WORK / f'tutorial-{CELLS}.zarr'}", f"data.synth.cells={CELLS}", "data.synth.genes=500",
    "loader.split.holdout=[{column: perturbation, test: [TF011, GENE0139]}]",
    f"train.steps={STEPS}", f"scaling.storage_path={WORK / 'runs'}",
    f"evaluate.max_cells={EVAL_CELLS}", f"evaluate.tsne_cells={EVAL_CELLS}", "evaluate.embeddings=held_out",
    f"evaluate.plots={not SMOKE}",  # smoke runs skip drawing (seconds per figure)
]
config = load_config(REPO / "configs" / "models" / f"{CONFIG_FILE}.yaml", OVERRIDES)
assert config.model.name == MODEL
print(f"model {config.model.name}: enhancements {list(config.model.enhancements) or 'none (base)'}, size {config.model.size}")
print("what each enhancement reads from the data:", {name: sorted(NEEDS[name]) for name in config.model.enhancements})
print("atlas:", config.data.atlas, "| simulated with", config.data.synth.model_dump(include={"cells", "genes", "seed"}))
hidden, layers, latent = config.model.dimensions()
print(f"size {config.model.size}: hidden {hidden} x {layers} layer(s), latent {latent}")
print(config.model.model_dump_json(indent=1, include={"dropout", "mask_fraction", *config.model.enhancements}))

# %% [markdown]
# The loader section decides what the model sees: batch size, the split (fractions and the
# held-out perturbations) and the normalisation (section 5):

# %%
print(config.loader.model_dump_json(indent=1, include={"batch_size", "split", "normalize", "labels"}))

# %% [markdown]
# ## 4. Model initialisation
#
# The atlas is simulated once (about ten seconds) and reused by every notebook. The model reads
# its inputs off the atlas (genes, pathways and compartments, the GRN prior, perturbation and
# time columns): `model_spec` checks that the atlas has what the enhancements need and says what
# is missing otherwise. One class, `VirtualCell`, is assembled from slots that enhancements fill.

# %%
atlas = open_atlas(ensure_synthetic_atlas(config.data, config.build, progress=False))
config = with_model_inputs(config, atlas)  # the loader carries the columns and counts the model reads
spec = model_spec(config, atlas)
torch.manual_seed(config.seed)
model = build_model(config.model, spec)
print(f"atlas: {atlas.n_cells:,} cells x {spec.n_genes} genes; {len(spec.pathway_names)} pathways; "
      f"{0 if spec.grn is None else len(spec.grn)} prior GRN edges; {spec.n_perturbations} perturbation categories")
print(f"{count_parameters(model):,} parameters")
pd.DataFrame(slot_table(model))

# %% [markdown]
# The same numbers, with a memory estimate per worker, are what `vcell train --dry-run` prints:

# %%
print(format_plan(training_plan(config, atlas), config))

# %% [markdown]
# ## 5. The data loader and normalisation
#
# `AtlasLoader` streams one split of the atlas in shuffled batches (resumable, every cell exactly
# once per epoch). Values are normalised on the fly: library size -> counts per 10,000 -> log1p
# by default; a per-gene z-score from the atlas's stored statistics (optionally clipped) is one
# override away. Models scored on raw counts (stochastic, resource) also get `counts`.

# %%
loader = AtlasLoader(atlas, config.loader, split="train", seed=config.seed)
batch = next(iter(loader))
pd.DataFrame([(key, tuple(value.shape), str(value.dtype).removeprefix("torch.")) for key, value in batch.items()],
             columns=["field", "shape", "dtype"])

# %%
strategies = {
    "log1p(CP10k) (default)": config.loader,
    "z-score per gene, clipped at 10": load_config(REPO / "configs" / "models" / f"{CONFIG_FILE}.yaml", OVERRIDES + [
        "loader.normalize.zscore=true", "loader.normalize.clip=10"]).loader,
    "CP10k without log": load_config(REPO / "configs" / "models" / f"{CONFIG_FILE}.yaml", OVERRIDES + [
        "loader.normalize.log1p=false"]).loader,
}
rows = []
for label, settings in strategies.items():
    x = next(iter(AtlasLoader(atlas, settings, split="train", seed=config.seed)))["x"]
    rows.append({"normalisation": label, "mean": x.mean().item(), "sd": x.std().item(), "max": x.max().item(),
                 "zeros": (x == 0).float().mean().item()})
pd.DataFrame(rows).round(3)

# %% [markdown]
# The default keeps zeros at zero and compresses the long tail of highly expressed genes; the
# z-score centres every gene (zeros become negative), which suits squared-error models but not
# count likelihoods; without the log a few genes dominate any squared error. The catalogue
# models use the default.
#
# ## 6. Forward-pass check
#
# One batch through the model: the latent state (cells x latent dimensions), the reconstructed
# expression (cells x genes), the named loss terms the training loop sums, and the statistics a
# biologist reads.

# %%
with torch.no_grad():
    output = model(batch)
print("latent", tuple(output.latent.shape), "| expression", tuple(output.expression.shape))
print("loss terms:", {name: round(value.item(), 3) for name, value in output.losses.items()})
pd.DataFrame([(name, tuple(value.shape)) for name, value in output.stats.items()], columns=["statistic", "shape"])

# %% [markdown]
# Mistakes fail early with a message that names the problem and a fix: a misspelt key, and a
# perturbation the model was not built with.

# %%
try:
    load_config(REPO / "configs" / "models" / f"{CONFIG_FILE}.yaml", ["train.stpes=10"])
except VCellError as error:
    print(f"VCellError: {error}")
n = len(batch["x"])
try:
    model.predict(batch, Conditions(perturbation=torch.full((n,), spec.n_perturbations + 5)))
except VCellError as error:
    print(f"VCellError: {error}")

# %% [markdown]
# ## 7. Training configuration
#
# `config.train` holds the optimiser (AdamW), its schedule (linear warm-up, then cosine decay to
# a floor), gradient clipping and the checkpoint and validation cadence. `vcell train` runs this
# config with Lightning (`VCellModule`, below) inside Ray Train workers: DDP or DeepSpeed ZeRO,
# checkpoints every `train.checkpoint_every` steps with a verified manifest, exact resume, W&B
# offline logs (see the *from a notebook to the cluster* notebook). In this notebook the same
# model, optimiser and schedule train in this process (`train_in_process`, no Ray), which is
# quicker for an atlas that fits in memory, and writes the same run folder.

# %%
print(config.train.model_dump_json(indent=1, include={
    "steps", "learning_rate", "weight_decay", "warmup_fraction", "final_lr_fraction", "gradient_clip",
    "checkpoint_every", "validate_every", "strategy", "precision"}))
module = VCellModule(config.model, spec, config.train)  # what each Ray Train worker wraps in a Lightning Trainer
optimisers = module.configure_optimizers()
print(type(optimisers["optimizer"]).__name__, "with", type(optimisers["lr_scheduler"]["scheduler"]).__name__,
      "stepped per", optimisers["lr_scheduler"]["interval"])

# %% [markdown]
# ## 8. Training
#
# A progress line every few steps: the total loss, each term, the learning rate and the speed.

# %%
run = train_in_process(config, progress_every=max(1, STEPS // 8))
RUN = run.directory
show(training_curves(pd.read_csv(RUN / "history.csv").to_dict("records"), RUN / "training_curves.png"))

# %% [markdown]
# The loss should fall steeply, then flatten; a term that rises for long (or turns NaN) is the one
# to look at. More steps (`train.steps`) help most models; the numbers in the README use 300
# steps on 20,000 cells.
#
# ## 9. Evaluation
#
# `evaluate_run` (what `vcell evaluate` and the end of `vcell train` call) scores held-out cells:
# the embedding (kNN accuracy, ARI, NMI, batch mixing) against PCA; hidden genes (detected genes
# whose values the encoder did not see) imputed against gene means, PCA, kNN smoothing (the
# nearest cells' mean, and their mean where the gene is detected), the cell type's means (over
# all its cells, and over those in which the gene is detected) and, where
# the atlas holds counts, the detected level under an NB per cell type at the cell's depth; perturbation
# responses (unseen and seen) against the control, the mean perturbation and a linear model; and
# each enhancement against its own baselines and the simulator's truth. It writes `metrics.json`,
# `plots/`, `biology/` and `embeddings.h5ad`.

# %%
results = evaluate_run(RUN, progress=False)
print("\n".join(summary_lines(results)))

# %% [markdown]
# The same numbers as a table, one row per metric, the model beside each baseline (for errors,
# lower is better). A good model beats the baselines on the metrics of its own enhancements;
# on a few hundred steps it may not yet beat PCA on the embedding.

# %%
table = pd.DataFrame({metric: scores for metric, scores in baseline_rows(results)}).T
table.round(3)

# %% [markdown]
# The embeddings of the held-out cells, with every per-cell and per-gene statistic the model
# reports, are an AnnData file ready for scanpy:

# %%
cells = ad.read_h5ad(RUN / results["embeddings"])
print(cells)
print("latent:", cells.obsm["X_vcell"].shape, "| mean", cells.obsm["X_vcell"].mean().round(3),
      "| sd", cells.obsm["X_vcell"].std().round(3))

# %% [markdown]
# ## 10. Visualisation
#
# The figures `vcell evaluate` drew into `plots/`: first the embedding and the comparison with the
# baselines (every model), then this model's own read-outs.

# %% [markdown]
# {{readouts}}

# %% [markdown]
# ## 11. Saving
#
# The run folder already holds the model (`model/`: safetensors weights, the resolved config, the
# vocabulary and annotations, the category codes), `config.yaml`, `history.csv`, `metrics.json`,
# `plots/`, `biology/` and `embeddings.h5ad`. `export_run` (`vcell export`) copies the model with a
# model card and the inferred biology into a folder you can hand over; `load_trained` reads it back
# anywhere, without the training atlas.

# %%
export = export_run(RUN, WORK / "exports" / config.name, overwrite=True)
print(sorted(path.name for path in export.iterdir()))
print("\n".join((export / "MODEL_CARD.md").read_text().splitlines()[4:12]))
loaded_config, loaded = load_trained(export)
with torch.no_grad():
    same = torch.allclose(loaded.embed(batch).latent, run.model.embed(batch).latent, atol=1e-5)
print("reloaded export embeds like the trained model:", same)
print("config to train it again: vcell train --config", RUN / "config.yaml")
