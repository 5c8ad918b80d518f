"""`vcell models`: the catalogue of models and their parameter counts.

    vcell models [--json] [--genes G] [--size S] [--encoder mlp|transformer]

`--size` names a preset of the encoder: tiny | small | medium | large | xlarge for the MLP,
tiny | 10m | 100m | 1b for the transformer (10m, 100m, 1b imply `--encoder transformer`).
"""

from __future__ import annotations

import argparse
import json

from vcell.cli.arguments import positive_int
from vcell.config.model import SIZES  # no torch: keeps --help fast
from vcell.config.transformer import TRANSFORMER_SIZES
from vcell.errors import VCellError


def human_count(n: int) -> str:
    """132568 -> '133K', 10479552 -> '10.5M'."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}" if n < 100 * scale else f"{n / scale:.0f}{suffix}"
    return str(n)


def format_catalogue(rows: list[dict], n_genes: int, size: str, encoder: str = "mlp") -> str:
    """The `vcell models` table: name | enhancements | parameters, under a line saying what was counted."""
    table = [("name", "enhancements", "parameters")]
    table += [(row["name"], ", ".join(row["enhancements"]) or "-", human_count(row["parameters"])) for row in rows]
    widths = [max(len(line[column]) for line in table) for column in range(2)]
    header = (
        f"{len(rows)} catalogue models for {n_genes:,} genes, {encoder} encoder at size '{size}' (parameter counts "
        "use reference annotations: ~1 pathway per 50 genes, 3 regulators per gene"
        + ("; the gene embedding and the decoder's last layer, genes x width each, count too)" if encoder == "transformer" else ")")
    )
    lines = [f"{name:<{widths[0]}}  {enhancements:<{widths[1]}}  {count:>10}" for name, enhancements, count in table]
    return "\n".join([header, *lines])


def run_models(args: argparse.Namespace) -> None:
    from vcell.models.zoo import describe_catalogue

    encoder = args.encoder or ("transformer" if args.size not in SIZES else "mlp")
    presets = SIZES if encoder == "mlp" else TRANSFORMER_SIZES
    if args.size not in presets:
        raise VCellError(f"--size {args.size} is not a preset of the {encoder} encoder", hint=f"choose from {', '.join(presets)}")
    rows = describe_catalogue(n_genes=args.genes, size=args.size, encoder=encoder)
    print(json.dumps(rows, indent=2) if args.json else format_catalogue(rows, args.genes, args.size, encoder))


def add_models_parser(commands) -> None:
    models = commands.add_parser("models", help="the catalogue of models and their parameter counts")
    models.add_argument("--json", action="store_true", help="machine-readable output (a list of models)")
    models.add_argument("--genes", type=positive_int, default=2000, help="genes the models are sized for (default: 2000)")
    models.add_argument("--size", choices=list(dict.fromkeys([*SIZES, *TRANSFORMER_SIZES])), default="small",
                        help="width/depth preset of the encoder (default: small; 10m, 100m, 1b: the transformer's)")
    models.add_argument("--encoder", choices=["mlp", "transformer"], help="default: mlp, or transformer for its presets")
    models.set_defaults(handler=run_models)
