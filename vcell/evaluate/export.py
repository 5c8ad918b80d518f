"""A trained model outside its run: load it anywhere, hand it over as a folder with a model card.

    config, model = load_trained("runs/quickstart")          # a run folder or an export folder
    export_run("runs/quickstart", "exports/quickstart")      # weights, config, spec, MODEL_CARD.md, biology/

A run's `model/` folder (written by the training job) holds everything needed to rebuild the
model without the training atlas: weights (safetensors, fp32), the resolved config, the spec
(vocabulary and annotations) and the category codes of the obs columns the model reads.
An export adds MODEL_CARD.md and `biology/`: what the model inferred, as TSV files
(`vcell.evaluate.biology`; kinetics and memory only while the training atlas is readable).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vcell.config.schema import VCellConfig
from vcell.data.resolve import normalization_from_dict
from vcell.data.transform import Normalization, zero_count_values
from vcell.errors import VCellError
from vcell.files import OutputKind, claim_output, current_umask, foreign_entries, output_errors, swap_into_place
from vcell.models.model import VirtualCell
from vcell.models.spec import spec_from_dict
from vcell.models.zoo import build_model, count_parameters
from vcell.train.checkpoint import verify_model_source
from vcell.train.model_folder import load_exported, model_directory
from vcell.train.run import read_saved_config
from vcell.train.tracking import read_history

EXPORT_CELLS = 2000  # held-out cells read for the read-outs that predict from basal cells
MODEL_FILES = ("model.safetensors", "config.yaml", "spec.json", "categories.json", "normalization.json", "genes.txt")
BIOLOGY_FOLDER = "biology"
CARD_FRONT_MATTER = "---\nlibrary_name: vcell\nvcell_export: 1\n---\n"  # model-card metadata; marks our exports


def not_an_export_of_ours(path: Path) -> str | None:
    """None for a folder `vcell export` wrote (its card's front matter says so) holding nothing else."""
    try:
        card = (path / "MODEL_CARD.md").read_text()[:len(CARD_FRONT_MATTER)]
    except (OSError, UnicodeDecodeError):
        card = ""
    if card != CARD_FRONT_MATTER:
        return "it is not a vcell export (no MODEL_CARD.md written by `vcell export`)"
    return foreign_entries(path, {*MODEL_FILES, "MODEL_CARD.md", BIOLOGY_FOLDER})


EXPORT_OUTPUT = OutputKind("an export folder", is_folder=True, not_ours=not_an_export_of_ours)


@dataclass
class Trained:
    """A trained model with what it needs to read new cells as its training data was read."""

    directory: Path  # the model folder (a run's model/ or an export)
    config: VCellConfig
    model: VirtualCell
    categories: dict[str, list[str]]  # obs column -> the category names behind the model's codes
    normalization: Normalization

    @property
    def run_folder(self) -> Path | None:
        return self.directory.parent if self.directory.name == "model" else None


def load_trained(path: str | Path) -> tuple[VCellConfig, VirtualCell]:
    """The config and the model (evaluation mode, CPU) of a finished run or an export folder."""
    trained = open_trained(path)
    return trained.config, trained.model


def open_trained(path: str | Path) -> Trained:
    """A finished run's (or export's) model, config, category codes and normalisation."""
    directory = model_directory(path)
    weights = load_exported(directory)  # refuses anything vcell did not write
    missing = [name for name in MODEL_FILES if not (directory / name).is_file()]
    if missing:
        raise VCellError(f"{directory}: incomplete model folder, missing {', '.join(missing)}",
                         hint="re-export it with this vcell version (`vcell export RUN --out DIR`), or rerun training")
    config = read_saved_config(directory)
    normalization = normalization_from_dict(json.loads((directory / "normalization.json").read_text()))
    spec = spec_from_dict(json.loads((directory / "spec.json").read_text()))
    spec.zero_level = zero_count_values(normalization)  # what a zero count reads as: detection, as in training
    model = build_model(config.model, spec)
    model.load_state_dict(weights, strict=True)
    categories = json.loads((directory / "categories.json").read_text())
    return Trained(directory, config, model.eval(), categories, normalization)


def save_trained(model: VirtualCell, config: VCellConfig, directory: str | Path, *, step: int = 0) -> Path:
    """A model trained in this process (plain loop, notebook) as a model folder that `open_trained`,
    `vcell embed`, `vcell evaluate` and `vcell predict` read like a finished run's."""
    from vcell.atlas.store import open_atlas
    from vcell.config.loader import dump_config
    from vcell.train.model_folder import model_inputs_description, write_model_folder

    atlas = open_atlas(config.data.atlas)
    spec_values, categories, normalization = model_inputs_description(config, atlas, model.spec)
    directory = Path(directory)
    write_model_folder(directory, model.state_dict(), {"step": str(step), "config_hash": "in-process"},
                       dump_config(config), spec_values, categories, normalization)
    return directory


def export_run(run: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Copy a finished run's model files and write MODEL_CARD.md into `out` (whole or not at all)."""
    source, given = model_directory(run), Path(out)
    out = claim_output(given, EXPORT_OUTPUT, inputs=[run], overwrite=overwrite)
    run_folder = source.parent if source.name == "model" else None
    if run_folder is not None and (run_folder / "checkpoints").is_dir():
        # A training run's folder is trusted input: the checkpoint its model came from must verify
        # (sha256). A model saved from the user's own loop (save_trained) has no checkpoints; its
        # safetensors weights are checked by load_trained (no pickle is read either way).
        verify_model_source(run_folder)
    from vcell.evaluate.biology import write_biology  # it reads cells, whose module reads this one

    trained = open_trained(source)  # refuses anything vcell did not write
    config, model = trained.config, trained.model
    tables, skipped = export_biology(trained)
    with output_errors(given):
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        try:
            for name in MODEL_FILES:
                shutil.copy2(source / name, staging / name)
            (staging / "MODEL_CARD.md").write_text(model_card(config, model, run_folder) + biology_card(tables, skipped))
            write_biology(staging / BIOLOGY_FOLDER, tables, skipped)
            staging.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; an export is shared like any folder
            swap_into_place(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return given


def export_biology(trained: Trained) -> tuple[dict, dict[str, str]]:
    """The biology tables of an export; kinetics and memory predict from held-out cells of the
    training atlas, and are skipped (saying why) when it cannot be read."""
    from vcell.evaluate.biology import biology_tables
    from vcell.evaluate.heldout import held_out_cells

    if not {"temporal", "memory"} & set(trained.config.model.enhancements):
        return biology_tables(trained, None)
    try:
        data = held_out_cells(trained, max_cells=EXPORT_CELLS, seed=trained.config.seed)
    except (VCellError, OSError) as error:  # the atlas moved or is gone: the network still goes out
        return biology_tables(trained, None, no_cells=f"the training atlas {trained.config.data.atlas} "
                              f"could not be read ({error}); run `vcell evaluate` where it is")
    return biology_tables(trained, data)


def biology_card(tables: dict, skipped: dict[str, str]) -> str:
    if not tables and not skipped:
        return ""
    lines = ["", "## Inferred biology (biology/)", "",
             *[f"- `{name}`: {len(table):,} rows" for name, table in tables.items()],
             *[f"- `{name}`: not written: {reason}" for name, reason in skipped.items()],
             "", "Columns and units: biology/README.md."]
    return "\n".join(lines) + "\n"


def evaluation_table(evaluation: dict | None) -> list[str]:
    """Markdown rows of `vcell evaluate`'s metrics with their baselines (none if not evaluated)."""
    if not evaluation:
        return []
    from vcell.evaluate.evaluation import baseline_rows

    def shown(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    rows = [f"| {metric} | {shown(scores.pop('model'))} | "
            + ", ".join(f"{name} {shown(value)}" for name, value in scores.items()) + " |"
            for metric, scores in baseline_rows(evaluation)]
    held_out = evaluation.get("data", {})
    return ["", f"## Evaluation ({held_out.get('held_out_cells', 0):,} held-out cells, `{held_out.get('held_out_split')}` split)",
            "", "| metric | model | baselines |", "|:--|--:|:--|", *rows]


def workers_line(config: VCellConfig, metrics: dict) -> str:
    """How many workers trained the run: the last attempt's count (an elastic run's varies), else the config's."""
    workers = metrics.get("workers", config.scaling.workers)
    elastic = "" if config.scaling.min_workers is None else f" (elastic, {config.scaling.min_workers}-{config.scaling.workers})"
    return f"{workers} worker(s) in the last attempt{elastic}" if "workers" in metrics else f"{workers} worker(s){elastic}"


def model_card(config: VCellConfig, model: VirtualCell, run_folder: Path | None) -> str:
    """Markdown: what the model is, what it was trained on and how, and how well it did."""
    metrics = json.loads((run_folder / "metrics.json").read_text()) if run_folder and (run_folder / "metrics.json").is_file() else {}
    history = read_history(run_folder / "history.csv") if run_folder else []
    spec = model.spec
    lines = [
        CARD_FRONT_MATTER.rstrip("\n"),
        f"# {config.name}: vcell `{config.model.name}` model",
        "",
        "## Model",
        f"- enhancements: {', '.join(config.model.enhancements) or 'none (base masked-expression autoencoder)'}",
        f"- {config.model.describe_size()}; {count_parameters(model):,} parameters",
        f"- {spec.n_genes:,} genes (genes.txt); {len(spec.pathway_names)} pathways, "
        f"{0 if spec.grn is None else len(spec.grn):,} prior GRN edges; {spec.n_perturbations} perturbation categories",
        f"- inputs read: {', '.join(sorted(spec.inputs))}",
        "",
        "## Data",
        f"- atlas: `{config.data.atlas}`",
        f"- loader: batch {config.loader.batch_size} cells per worker, normalisation "
        f"target_sum={config.loader.normalize.target_sum}, log1p={config.loader.normalize.log1p}, "
        f"zscore={config.loader.normalize.zscore}; split seed {config.loader.split.seed} "
        f"(val {config.loader.split.val_fraction}, test {config.loader.split.test_fraction})",
        "",
        "## Training",
        f"- {config.train.steps} steps, {workers_line(config, metrics)}, strategy {config.train.strategy}"
        + (f" (ZeRO-{config.train.deepspeed.stage})" if config.train.strategy == "deepspeed" else ""),
        f"- AdamW lr {config.train.learning_rate}, weight decay {config.train.weight_decay}, warm-up "
        f"{config.train.warmup_fraction:.0%} then cosine to {config.train.final_lr_fraction:.0%}, clip {config.train.gradient_clip}",
    ]
    if metrics.get("init_from"):
        from vcell.train.init_from import coverage_line

        lines.append(f"- started from pretrained weights: {coverage_line(metrics['init_from'])}")
    if metrics:
        train, validation = metrics.get("final_train", {}), metrics.get("final_validation", {})
        lines += [
            f"- train loss {metrics.get('first_train_loss', float('nan')):.4f} -> {train.get('train/loss', float('nan')):.4f} "
            f"over {len(history)} logged steps; {metrics.get('cells_per_s', float('nan')):,.0f} cells/s",
            "",
            "## Metrics (held-out validation cells)",
            "",
            "| term | value |",
            "|:--|--:|",
            *[f"| {name.removeprefix('val/')} | {value:.4f} |" for name, value in sorted(validation.items())],
        ]
    lines += evaluation_table(metrics.get("evaluation"))
    lines += [
        "",
        "## Use",
        "```python",
        "from vcell.evaluate.export import load_trained",
        "config, model = load_trained('<this folder>')",
        "```",
        "Weights are safetensors (fp32); spec.json holds the vocabulary and annotations the model was built on;",
        "categories.json the codes of the obs columns it reads (perturbations, cell types).",
    ]
    return "\n".join(lines) + "\n"
