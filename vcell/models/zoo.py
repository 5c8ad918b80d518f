"""The catalogue as models: build any entry, count its parameters, describe them all.

    model = build_model(ModelConfig(name="full"), spec)
    rows = describe_catalogue(n_genes=20000, size="large")   # `vcell models --json`

Twelve names, one class: every entry is a set of enhancements installed into `VirtualCell`.
"""

from __future__ import annotations

import torch

from vcell.config.model import ModelConfig
from vcell.models.catalogue import catalogue, titles
from vcell.models.model import VirtualCell
from vcell.models.registry import enhancements as registered_enhancements
from vcell.models.spec import ModelSpec, reference_spec
from vcell.models.transformer import TransformerBlock


def build_model(config: ModelConfig, spec: ModelSpec, *, device: str | torch.device = "cpu") -> VirtualCell:
    """The model for `config` on `device` ('meta' allocates nothing: for counts and plans)."""
    with torch.device(device):
        return VirtualCell(config, spec)


def compile_regions(model: VirtualCell) -> None:
    """`torch.compile` the heavy repeated parts in place (the state dict keeps its keys, so
    checkpoints do not change): each transformer block (one graph, compiled once and reused by
    every block), or the MLP encoder and decoder.

    Regions, not the whole model: token selection and the response pairing are data-dependent
    (graph breaks, recompiles as shapes change), and the whole tiny model took 230 s to compile on
    this CPU against 40 s for its blocks; nor does Inductor draw the same random masks as eager."""
    blocks = [module for module in model.modules() if isinstance(module, TransformerBlock)]
    for module in blocks or [model.encoder, model.decoder]:
        module.compile()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def describe_catalogue(n_genes: int = 2000, size: str = "small", encoder: str = "mlp") -> list[dict]:
    """One row per catalogue model: name, title, enhancements, parameters (reference annotations);
    registered enhancements of your own are in it too (see `catalogue.catalogue`). `size` is a
    preset of `encoder`: model.size for the MLP, model.transformer.size for the transformer."""
    spec = reference_spec(n_genes)
    summaries = {name: enhancement.summary for name, enhancement in registered_enhancements().items()}
    names = titles()
    rows = []
    for name, enhancements in catalogue().items():
        config = ModelConfig(name=name, size=size) if encoder == "mlp" else \
            ModelConfig(name=name, encoder="transformer", transformer={"size": size})
        model = build_model(config, spec, device="meta")
        rows.append({
            "name": name,
            "title": names[name],
            "enhancements": list(enhancements),
            "parameters": count_parameters(model),
            "summary": "; ".join(summaries[e].split(";")[0] for e in enhancements) or "masked-expression autoencoder",
        })
    return rows


SLOTS = ("encoder", "latent", "dynamics", "decoder", "head", "gene_terms", "auxiliary", "residuals")


def slot_table(model: VirtualCell) -> list[dict]:
    """The architecture as rows: each slot, the module(s) in it and their parameters
    (encoder -> latent -> dynamics -> decoder -> head, then per-gene terms, auxiliary heads and residual routes)."""
    rows = []
    for slot in SLOTS:
        module = getattr(model, slot)
        members = list(module) if isinstance(module, torch.nn.ModuleList) else [module]
        rows.append({
            "slot": slot,
            "modules": ", ".join(type(member).__name__ for member in members) or "-",
            "parameters": count_parameters(module),
        })
    return rows
