"""`vcell models`: the catalogue of models and their parameter counts.

    vcell models [--json] [--genes G] [--size S]
"""

from __future__ import annotations

import argparse
import json

from vcell.cli.arguments import positive_int
from vcell.config.model import SIZES  # no torch: keeps --help fast


def human_count(n: int) -> str:
    """132568 -> '133K', 10479552 -> '10.5M'."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}" if n < 100 * scale else f"{n / scale:.0f}{suffix}"
    return str(n)


def format_catalogue(rows: list[dict], n_genes: int, size: str) -> str:
    """The `vcell models` table: name | enhancements | parameters, under a line saying what was counted."""
    table = [("name", "enhancements", "parameters")]
    table += [(row["name"], ", ".join(row["enhancements"]) or "-", human_count(row["parameters"])) for row in rows]
    widths = [max(len(line[column]) for line in table) for column in range(2)]
    header = (
        f"{len(rows)} catalogue models for {n_genes:,} genes at size '{size}' (parameter counts use reference "
        "annotations: ~1 pathway per 50 genes, 3 regulators per gene)"
    )
    lines = [f"{name:<{widths[0]}}  {enhancements:<{widths[1]}}  {count:>10}" for name, enhancements, count in table]
    return "\n".join([header, *lines])


def run_models(args: argparse.Namespace) -> None:
    from vcell.models.zoo import describe_catalogue

    rows = describe_catalogue(n_genes=args.genes, size=args.size)
    print(json.dumps(rows, indent=2) if args.json else format_catalogue(rows, args.genes, args.size))


def add_models_parser(commands) -> None:
    models = commands.add_parser("models", help="the catalogue of models and their parameter counts")
    models.add_argument("--json", action="store_true", help="machine-readable output (a list of models)")
    models.add_argument("--genes", type=positive_int, default=2000, help="genes the models are sized for (default: 2000)")
    models.add_argument("--size", choices=list(SIZES), default="small", help="width/depth preset (default: small)")
    models.set_defaults(handler=run_models)
