"""Pretrain, then fine-tune: a run that starts from another run's (or an export's) weights.

    vcell train data.atlas=data/small_panel.zarr train.init_from=runs/atlas-pretrain train.freeze=[encoder]

The pretrained model folder brings its weights (safetensors), config, spec and category names;
`vcell.models.transfer` moves every parameter row whose gene ID or category name the new atlas
also has, and the rest keep their fresh initialisation. What matched is printed, written to
`<run>/init_from.json` and copied into `metrics.json`:

    init_from runs/atlas-pretrain/model: genes 70/100 matched (70%), perturbations 7/9 matched; 252,454 of 267,908 weights copied

The model must be the same one (enhancements and sizes): gene- and category-indexed rows move
between vocabularies, hidden widths do not. Everything here runs before any worker starts too
(`preflight`), so a bad source, another model or too little gene overlap fails in seconds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vcell.config.schema import VCellConfig
from vcell.errors import VCellError
from vcell.files import atomic_write
from vcell.models.spec import ModelSpec, spec_from_dict
from vcell.models.transfer import Frozen, Vocabulary, coverage, freeze, transfer_weights, vocabulary_of
from vcell.train.model_folder import load_exported, model_directory
from vcell.train.run import read_saved_config

log = logging.getLogger(__name__)
RECORD = "init_from.json"
PLURAL = {"gene": "genes", "pathway": "pathways", "compartment": "compartments", "perturbation": "perturbations",
          "context": "cell types (model.columns.context)", "batch": "batches (model.columns.batch)"}


@dataclass
class Pretrained:
    """A finished model folder as a starting point: its weights and the names behind their rows."""

    directory: Path
    config: VCellConfig
    vocabulary: Vocabulary
    state: dict[str, torch.Tensor]


def open_pretrained(path: str | Path) -> Pretrained:
    """The model folder of a finished run or an export (only weights vcell wrote are read)."""
    try:
        directory = model_directory(path)
        state = load_exported(directory)
    except VCellError as error:
        raise VCellError(f"train.init_from: {error.message}", hint=error.hint) from None
    try:
        config = read_saved_config(directory)
        spec = spec_from_dict(json.loads((directory / "spec.json").read_text()))
        categories = json.loads((directory / "categories.json").read_text())
    except (OSError, ValueError, KeyError) as error:
        raise VCellError(f"train.init_from: {directory} is not a complete vcell model folder ({error})",
                         hint="give a finished run folder or a `vcell export` folder") from None
    return Pretrained(directory, config, vocabulary_of(spec, categories, config.model.columns), state)


def check_same_model(pretrained: Pretrained, config: VCellConfig) -> None:
    """The run must build the model the weights came from (up to its vocabularies)."""
    old, new = pretrained.config.model, config.model
    differences = []
    if list(old.enhancements) != list(new.enhancements):
        differences.append(f"model.enhancements {old.enhancements} (this run {new.enhancements})")
    names = ("hidden_dim", "n_layers", "latent_dim")
    for name, before, after in zip(names, old.dimensions(), new.dimensions()):
        if before != after:
            differences.append(f"model.{name}={before} (this run {after})")
    # the weights read expression on the scale they were trained on
    for name in ("target_sum", "log1p", "zscore"):
        before, after = getattr(pretrained.config.loader.normalize, name), getattr(config.loader.normalize, name)
        if before != after:
            differences.append(f"loader.normalize.{name}={before} (this run {after})")
    if differences:
        raise VCellError(
            f"train.init_from: the model in {pretrained.directory} differs from this run's: pretrained with "
            + ", ".join(differences),
            hint=f"fine-tune the same model on the same scale: model.name={old.name} model.size={old.size} (or the "
            "same hidden_dim, n_layers, latent_dim and enhancements) and the pretrained run's loader.normalize",
        )


def check_gene_overlap(counts: dict, config: VCellConfig, source: Path) -> None:
    """`counts`: `transfer.coverage`'s; refuses a vocabulary that shares too few genes."""
    genes = counts["gene"]
    share = genes["matched"] / max(genes["total"], 1)
    if share < config.train.init_min_gene_overlap:
        raise VCellError(
            f"train.init_from: only {genes['matched']:,} of this atlas's {genes['total']:,} model genes ({share:.0%}) are "
            f"in the vocabulary of {source} ({genes['pretrained']:,} genes); train.init_min_gene_overlap is "
            f"{config.train.init_min_gene_overlap:.0%}",
            hint="check that both atlases use the same kind of gene IDs (Ensembl or symbols), "
            "or lower train.init_min_gene_overlap",
        )


def prepare(config: VCellConfig, spec: ModelSpec, categories: dict[str, list[str]]) -> tuple[Pretrained, Vocabulary]:
    """The checked source and this run's vocabulary: the source opens, holds the same model and
    shares enough genes (`preflight` runs this before any worker starts)."""
    pretrained = open_pretrained(config.train.init_from)
    check_same_model(pretrained, config)
    vocabulary = vocabulary_of(spec, categories, config.model.columns)
    check_gene_overlap(coverage(pretrained.vocabulary, vocabulary), config, pretrained.directory)
    return pretrained, vocabulary


def start_from_pretrained(model: nn.Module, config: VCellConfig, spec: ModelSpec,
                          categories: dict[str, list[str]]) -> tuple[dict, Frozen]:
    """Load `config.train.init_from` into `model` and freeze `config.train.freeze`: (the record, what froze)."""
    pretrained, vocabulary = prepare(config, spec, categories)
    report = transfer_weights(model, pretrained.state, pretrained.vocabulary, vocabulary)
    frozen = freeze(model, config.train.freeze, report.fresh)
    record = {"source": str(pretrained.directory), **report.summary(), "freeze": list(config.train.freeze),
              **frozen.summary()}
    return record, frozen


def matched_line(counts_by_kind: dict) -> str:
    """'genes 700/1000 matched (70%), perturbations 12/15 matched' (`transfer.coverage`'s counts)."""
    parts = []
    for kind, counts in counts_by_kind.items():
        if counts["total"] or counts["pretrained"]:
            share = f" ({counts['matched'] / counts['total']:.0%})" if kind == "gene" and counts["total"] else ""
            parts.append(f"{PLURAL.get(kind, kind)} {counts['matched']}/{counts['total']} matched{share}")
    return ", ".join(parts)


def coverage_line(record: dict) -> str:
    """One line for people: what the pretrained model brought."""
    copied = f"{record['entries_copied']:,} of {record['entries']:,} weights copied"
    frozen = f"; frozen: {', '.join(record['freeze'])}" if record["freeze"] else ""
    return f"init_from {record['source']}: {matched_line(record['coverage'])}; {copied}{frozen}"


def preview_line(config: VCellConfig, spec: ModelSpec, categories: dict[str, list[str]]) -> str:
    """What `--dry-run` shows of train.init_from (after `prepare`'s checks): source, coverage, freeze."""
    pretrained, vocabulary = prepare(config, spec, categories)
    frozen = f"; freeze: {', '.join(config.train.freeze)}" if config.train.freeze else ""
    return f"{pretrained.directory}: {matched_line(coverage(pretrained.vocabulary, vocabulary))}{frozen}"


def write_record(run_directory: Path, record: dict) -> None:
    text = json.dumps(record, indent=2).encode()
    atomic_write(Path(run_directory) / RECORD, lambda stream: stream.write(text))


def read_record(run_directory: Path) -> dict | None:
    path = Path(run_directory) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None
