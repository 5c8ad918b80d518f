"""The model folder: what a finished run (`runs/<name>/model/`) or `vcell export` hands on.

    model.safetensors     the `VirtualCell` weights (fp32), tagged with vcell's format: written
                          last, so its presence marks the folder whole
    config.yaml           the run's resolved config
    spec.json             vocabulary and annotations (genes, pathways, GRN edges, perturbations)
    categories.json       the category names behind the codes of the obs columns the model reads
    normalization.json    the loader's normalisation, z-score statistics included
    genes.txt             one gene ID per line

Everything needed to rebuild the model and feed it new cells without its training atlas. Only
weights vcell wrote itself are loaded (`load_exported`); checkpoints stay in `checkpoint.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vcell.errors import VCellError
from vcell.files import atomic_write
from vcell.train.checkpoint import Checkpoint, CheckpointStore, model_state

MODEL_FORMAT = "vcell-model-1"


def export_weights(checkpoint: Checkpoint, directory: Path, config_text: str, spec_values: dict, categories: dict,
                   normalization: dict) -> Path:
    """The model folder (see `write_model_folder`) of a checkpoint's weights."""
    metadata = {"step": str(checkpoint.step), "config_hash": checkpoint.manifest["config_hash"]}
    return write_model_folder(directory, model_state(checkpoint), metadata, config_text, spec_values, categories,
                              normalization)


def write_model_folder(directory: Path, state: dict[str, torch.Tensor], metadata: dict[str, str], config_text: str,
                       spec_values: dict, categories: dict, normalization: dict) -> Path:
    """model.safetensors + config.yaml + spec.json (vocabulary, annotations) + categories.json (the
    codes of the obs columns the model reads) + normalization.json (the loader's normalisation,
    z-score statistics included) + genes.txt in `directory`, each written atomically: everything
    needed to rebuild the model and feed it new cells without its training atlas."""
    from safetensors.torch import save

    # own copies: a live model's buffers may share memory (index tables), which safetensors refuses
    state = {key: (value.detach().float() if value.is_floating_point() else value.detach()).clone().contiguous()
             for key, value in state.items()}
    payload = save(state, metadata={**metadata, "format": MODEL_FORMAT})
    texts = {
        "config.yaml": config_text, "spec.json": json.dumps(spec_values), "categories.json": json.dumps(categories),
        "normalization.json": json.dumps(normalization),
        "genes.txt": "\n".join(spec_values["gene_ids"]) + "\n",
    }
    for name, text in texts.items():
        atomic_write(directory / name, lambda stream, data=text.encode(): stream.write(data))
    atomic_write(directory / "model.safetensors", lambda stream: stream.write(payload))  # last: marks the export whole
    return directory / "model.safetensors"


def model_inputs_description(config, atlas, spec) -> tuple[dict, dict, dict]:
    """(spec values, category codes of the obs columns the model reads, normalisation) for a model folder."""
    from vcell.data.resolve import normalization_to_dict, resolve_normalization, select_genes
    from vcell.models.spec import spec_to_dict

    categories = model_categories(config, atlas)
    normalization = resolve_normalization(atlas, config.loader.normalize, select_genes(atlas, config.loader.genes))
    return spec_to_dict(spec), categories, normalization_to_dict(normalization)


def model_categories(config, atlas) -> dict[str, list[str]]:
    """obs column -> the category names behind the codes the model reads (the loader's labels)."""
    return {column: atlas.attrs["obs_categories"][column]
            for column in config.loader.labels if column in atlas.attrs.get("obs_categories", {})}


def load_exported(directory: str | Path) -> dict[str, torch.Tensor]:
    """The weights of an exported model; a clear error for files vcell did not write."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(directory) / "model.safetensors"
    if not path.is_file():
        raise VCellError(f"no exported model at {path}", hint="point at a finished run or a `vcell export` folder")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own types for damaged headers
        raise VCellError(f"{path} is not a readable safetensors file: {error}") from None
    if metadata.get("format") != MODEL_FORMAT:
        raise VCellError(f"{path} was not written by vcell (format {metadata.get('format')!r}, expected {MODEL_FORMAT!r})",
                         hint="vcell loads only weights it exported itself, with their config and spec")
    return load_file(path)


def model_directory(path: str | Path) -> Path:
    """`path` itself when it holds an exported model, else its `model/` (a run folder)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    if (path / "model" / "model.safetensors").is_file():
        return path / "model"
    if CheckpointStore(path).latest() is not None:
        raise VCellError(f"{path}: the run has checkpoints but no exported model (it did not finish)",
                         hint="run the same `vcell train` command again: it resumes, finishes and exports")
    raise VCellError(f"{path}: neither a run with a complete checkpoint nor an exported model",
                     hint="give a folder under runs/ of a finished run, or a `vcell export` folder")
