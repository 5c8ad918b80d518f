# %% [markdown]
# # From a notebook to the cluster: the same config with `vcell train` and `vcell tune`
#
# *Source: `notebooks/src/cluster.py` (built by `notebooks/build.py`).*
#
# The model notebooks train in their own process. The same config runs distributed with
# `vcell train`: Ray Train starts one Lightning trainer per worker (DDP or DeepSpeed ZeRO), each
# reading its own share of the atlas, with verified checkpoints, exact resume and W&B logs. On
# a laptop `vcell train` starts a local Ray cluster bound to 127.0.0.1 with the dashboard off;
# on a cluster the same command takes `--address auto` (or `vcell submit --target ray|slurm|kuberay`,
# see the README). Here the commands run as they would in a terminal, each in its own process.

# %%
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from IPython.display import Image, display

from vcell.atlas.ensure import ensure_synthetic_atlas
from vcell.config import load_config
from vcell.evaluate.figures import existing_plots
from vcell.train.tracking import read_history, read_offline_run

SMOKE = os.environ.get("SMOKE") == "1"
WORK = Path(os.environ.get("VCELL_NOTEBOOK_WORK", "work"))
REPO = Path.cwd().parent
CELLS, STEPS, WORKERS, TRIALS = (800, 4, 1, 2) if SMOKE else (3000, 120, 2, 3)
os.environ["WANDB_MODE"] = "offline"  # never online from a tutorial (the config says offline too)


def vcell(*arguments) -> int:
    """Run `vcell ARGUMENTS` in its own process, as in a terminal; print the end of what it printed."""
    done = subprocess.run([sys.executable, "-m", "vcell.cli", *map(str, arguments)], capture_output=True, text=True)
    print(done.stdout[-2500:])
    if done.returncode:
        print(done.stderr[-2500:])
    return done.returncode


# %% [markdown]
# ## 1. The config
#
# The temporal model's YAML with the tutorial overrides, plus where the run lives and how many
# workers train it. `--dry-run` checks everything that can fail before a worker starts (the
# atlas against the model, the resources against the cluster, the run folder) and prints the plan.

# %%
CONFIG = REPO / "configs" / "models" / "temporal.yaml"
OVERRIDES = [
    f"data.atlas={WORK / f'tutorial-{CELLS}.zarr'}", f"data.synth.cells={CELLS}", "data.synth.genes=500",
    "loader.split.holdout=[{column: perturbation, test: [TF011, GENE0139]}]",
    f"train.steps={STEPS}", f"train.checkpoint_every={STEPS // 2}", f"train.validate_every={STEPS // 2}",
    f"scaling.workers={WORKERS}", "scaling.cpus_per_worker=1", f"scaling.storage_path={WORK / 'runs'}",
    "evaluate.max_cells=300", "evaluate.tsne_cells=300", "evaluate.embeddings=held_out", f"evaluate.plots={not SMOKE}",
    "wandb.mode=offline",
]
config = load_config(CONFIG, OVERRIDES)
ensure_synthetic_atlas(config.data, config.build, progress=False)  # vcell train simulates only the demo atlas
vcell("train", "--config", CONFIG, "--name", "cluster-temporal", "--dry-run", *OVERRIDES)

# %% [markdown]
# ## 2. `vcell train` on a local Ray cluster
#
# The same command on a cluster: add `--address auto` and raise `scaling.workers`
# (`scaling.gpus_per_worker=1` on GPUs), with `data.atlas` and `scaling.storage_path` on a
# filesystem every node mounts. Running it again resumes from the last complete checkpoint (or
# says the run is finished); `--restart` starts over.

# %%
assert vcell("train", "--config", CONFIG, "--name", "cluster-temporal", "--restart", *OVERRIDES) == 0

# %% [markdown]
# ## 3. Reading the run folder back
#
# Everything is a plain file: the resolved config, per-step history, metrics (training and the
# evaluation against baselines), checkpoints with their manifests, the exported model, plots,
# inferred biology and the W&B offline logs.

# %%
RUN = WORK / "runs" / "cluster-temporal"
print(sorted(path.name for path in RUN.iterdir()))
metrics = json.loads((RUN / "metrics.json").read_text())
print({key: metrics[key] for key in ("steps", "workers", "strategy", "first_train_loss", "cells_per_s")})
print("validation:", metrics["final_validation"])
history = pd.DataFrame(read_history(RUN / "history.csv")).apply(pd.to_numeric, errors="coerce")
history[["step", "lr", "cells_per_s", "data_wait_fraction", "train/loss"]].tail(4)

# %%
manifests = sorted((RUN / "checkpoints").glob("step-*/manifest.json"))
manifest = json.loads(manifests[-1].read_text())
print("checkpoints:", [path.parent.name for path in manifests])
print("newest:", {key: manifest[key] for key in ("step", "world_size")}, f"{len(manifest['files'])} files with sha256")
show = [*existing_plots(RUN, "training_curves.png", "kinetics.png")]
display(*(Image(filename=str(path)) for path in show))

# %% [markdown]
# ## 4. The W&B offline logs
#
# Each run logs to W&B offline (`wandb.mode=offline`, the default) under `wandb/`, with a run id
# derived from the run's name, so a resumed run logs to the same W&B run. Nothing leaves the
# machine until you run the `wandb sync` command `vcell train` printed at the end (with
# `WANDB_API_KEY` set). What was logged sits in the folder's `.wandb` record file;
# `read_offline_run` reads it back without W&B's servers: the config as logged and one row per
# logged step (the same numbers as `history.csv`, validation included).

# %%
offline = sorted((RUN / "wandb").glob("offline-run-*"))[-1]
print(offline.name, sorted(path.name for path in offline.iterdir()))
logged = read_offline_run(offline)
print("logged config: model", logged["config"]["model"]["name"], "| steps", logged["config"]["train"]["steps"])
pd.DataFrame(logged["history"])[["_step", "lr", "train/loss", "val/loss"]].tail(4)

# %% [markdown]
# ## 5. `vcell tune`: a search campaign
#
# The example campaign (`configs/tune/quickstart.yaml`) samples the learning rate, the weight
# decay and the latent size; each trial is a whole `vcell train` run with its own Ray Train
# workers, and ASHA stops weaker trials early. Here on the tutorial atlas, with the temporal
# model and a few trials.

# %%
TUNE = [
    "model.name=temporal", *OVERRIDES, "scaling.workers=1", f"tune.trials={TRIALS}", "tune.resources.cpus=2",
    f"tune.scheduler.grace_period={max(1, STEPS // 4)}", f"train.validate_every={max(1, STEPS // 4)}",
]
assert vcell("tune", "--config", REPO / "configs" / "tune" / "quickstart.yaml", "--name", "cluster-tune",
             "--restart", *TUNE) == 0

# %% [markdown]
# `results.csv` has one row per trial (status, the sampled values, the objective), `best.yaml`
# is the best trial's complete training config (`vcell train --config .../best.yaml` trains it
# for real), and each `trial-NNN/` is an ordinary run folder.

# %%
CAMPAIGN = WORK / "runs" / "cluster-tune"
results = pd.read_csv(CAMPAIGN / "results.csv")
print(sorted(path.name for path in CAMPAIGN.iterdir()))
best = yaml.safe_load((CAMPAIGN / "best.yaml").read_text())
print("best trial's learning rate:", best["train"]["learning_rate"], "| latent dim:", best["model"]["latent_dim"])
results

# %%
display(*(Image(filename=str(path)) for path in existing_plots(CAMPAIGN, "objective_vs_steps.png",
                                                              "objective_vs_parameters.png")))
