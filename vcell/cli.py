"""The `vcell` command line: parse arguments, resolve the config, call the library. No logic.

    vcell atlas synth [--out PATH] [--cells N] [--genes G] [--seed S] [k=v ...]
    vcell atlas build IN [IN ...] --out PATH [--layer L] [--gene-key K] [k=v ...]
    vcell atlas info PATH [--json]
    vcell atlas validate PATH [--skip-stats]
    vcell models [--json] [--genes G] [--size S]
    vcell train [--name N] [--address A] [--restart | --resume-with-changes] [--dry-run] [k=v ...]
    vcell tune [--config configs/tune/quickstart.yaml] [--name N] [--restart] [--retry-errored] [k=v ...]
    vcell export RUN --out DIR [--overwrite]
    vcell embed RUN [--input ATLAS_OR_H5AD] --out FILE.h5ad
    vcell evaluate RUN [--atlas PATH]
    vcell predict RUN --cell-type T [--perturbation GENE] [--time H] --out FILE.h5ad

Every command takes `--config FILE` (default: configs/experiments/quickstart.yaml),
dotted overrides `section.key=value`, `--print-config` and `--save-config FILE`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Callable

from vcell.errors import VCellError
from vcell.files import FILE_SYSTEM_ERRORS

OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")
log = logging.getLogger("vcell")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (default: configs/experiments/quickstart.yaml)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--save-config", metavar="FILE", help="also write the resolved config to FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def split_overrides(values: list[str]) -> tuple[list[str], list[str]]:
    """Positional words -> (plain arguments, `dotted.key=value` overrides)."""
    overrides = [v for v in values if OVERRIDE.match(v)]
    return [v for v in values if not OVERRIDE.match(v)], overrides


def resolve_config(args: argparse.Namespace, flag_overrides: list[str]):
    """Config file + flags + positional overrides (positional win), printed/saved on request."""
    from vcell.config import dump_config, load_config, save_config

    config = load_config(args.config, [*flag_overrides, *args.overrides])
    if args.save_config:
        save_config(config, args.save_config)
    if args.print_config:
        print(dump_config(config), end="")
        raise SystemExit(0)
    return config


def flag(key: str, value) -> list[str]:
    """A CLI flag becomes an override only when given (None = not given)."""
    if value is None:
        return []
    return [f"{key}={json.dumps(value) if isinstance(value, str) else value}"]


def run_synth(args: argparse.Namespace) -> None:
    from vcell.atlas.ensure import ensure_synthetic_atlas
    from vcell.atlas.synth import synthesize_atlas

    config = resolve_config(
        args,
        flag("data.atlas", args.out) + flag("data.synth.cells", args.cells) + flag("data.synth.genes", args.genes)
        + flag("data.synth.seed", args.seed) + flag("build.overwrite", args.overwrite or None),
    )
    if args.reuse:
        path = ensure_synthetic_atlas(config.data, config.build, progress=not args.quiet)
    else:
        path = synthesize_atlas(config.data.atlas, config.data.synth, config.build, progress=not args.quiet)
    print_info(path)


def run_build(args: argparse.Namespace) -> None:
    from vcell.atlas.anndata_source import AnnDataSource
    from vcell.atlas.build import build_atlas

    matrix = f"layers/{args.layer}" if args.layer else args.matrix
    config = resolve_config(
        args,
        flag("build.matrix", matrix) + flag("build.gene_key", args.gene_key) + flag("build.values", args.values)
        + flag("build.overwrite", args.overwrite or None),
    )
    sources = [AnnDataSource(path, config.build.matrix, config.build.gene_key) for path in args.inputs]
    path = build_atlas(sources, args.out, config.build, progress=not args.quiet)
    print_info(path)


def print_info(path, as_json: bool = False) -> None:
    from vcell.atlas.report import format_info
    from vcell.atlas.store import atlas_info

    info = atlas_info(path)
    print(json.dumps(info, indent=2) if as_json else format_info(info))


def run_info(args: argparse.Namespace) -> None:
    print_info(args.path, args.json)


def run_validate(args: argparse.Namespace) -> None:
    from vcell.atlas.validate import validate_atlas

    summary = validate_atlas(args.path, check_statistics=not args.skip_stats, progress=not args.quiet)
    print(json.dumps(summary) if args.json else f"valid: {summary['path']} ({summary['n_cells']:,} cells x "
          f"{summary['n_genes']:,} genes in {summary['n_shards']} shard(s))")


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum` (a failure is argparse's error: exit 2, naming the option)."""

    wanted = "a positive whole number" if minimum == 1 else f"a whole number >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    parse.minimum = minimum  # read by the test that walks every option
    return parse


def finite_number(minimum: float) -> Callable[[str], float]:
    """An argparse type: a finite float >= `minimum` (no nan, no inf)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number >= {minimum:g}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {minimum:g}, got {text}")
        return value

    parse.minimum = minimum
    return parse


positive_int = whole_number(1)
non_negative_int = whole_number(0)
non_negative_hours = finite_number(0.0)


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


def run_train(args: argparse.Namespace) -> None:
    from vcell.evaluate.report import evaluate_finished
    from vcell.train.ray_train import RunHooks, train

    if args.restart and args.resume_with_changes:
        raise VCellError("--restart and --resume-with-changes exclude each other", hint="pick one")
    config = resolve_config(
        args, flag("name", args.name) + flag("scaling.address", args.address) + flag("train.progress_bar", False if args.quiet else None)
    )
    train(config, restart=args.restart, resume_with_changes=args.resume_with_changes, dry_run=args.dry_run,
          progress=not args.quiet, hooks=RunHooks(evaluate=evaluate_finished))


def add_train_parser(commands) -> None:
    parser = commands.add_parser(
        "train", help="train a model with Ray Train (the main job: no arguments trains quickstart on 2 CPU workers)",
        description="Train a model with Ray Train + Lightning (DDP or DeepSpeed). Re-running the same command "
        "resumes the run from its last complete checkpoint.",
    )
    parser.add_argument("--name", help="run name (default: the config's name); the run lives in runs/<name>/")
    parser.add_argument("--address", help="Ray cluster to join ('auto' or host:port); default: a local cluster on 127.0.0.1")
    parser.add_argument("--restart", action="store_true", help="delete the earlier run of this name and start over")
    parser.add_argument("--resume-with-changes", action="store_true",
                        help="continue the earlier run of this name although the config changed (e.g. more steps)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check config, atlas and resources; print parameters, memory per worker and the plan; exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    add_config_arguments(parser)
    parser.set_defaults(handler=run_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vcell", description="Virtual-cell models on Zarr-sharded single-cell atlases.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    atlas = commands.add_parser("atlas", help="build, simulate, inspect and validate atlases")
    atlas_commands = atlas.add_subparsers(dest="atlas_command", required=True, metavar="ATLAS_COMMAND")

    synth = atlas_commands.add_parser("synth", help="simulate an atlas with known ground truth")
    synth.add_argument("--out", help="output atlas path (default: data.atlas of the config)")
    synth.add_argument("--cells", type=positive_int, help="number of cells (data.synth.cells)")
    synth.add_argument("--genes", type=positive_int, help="number of genes (data.synth.genes)")
    synth.add_argument("--seed", type=non_negative_int, help="simulator seed (data.synth.seed)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing atlas")
    synth.add_argument("--reuse", action="store_true", help="keep an existing atlas made with the same settings")
    synth.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    add_config_arguments(synth)
    synth.set_defaults(handler=run_synth)

    build = atlas_commands.add_parser("build", help="turn .h5ad / AnnData .zarr files into an atlas")
    build.add_argument("inputs", nargs="+", metavar="INPUT", help="input files (and key=value overrides)")
    build.add_argument("--out", required=True, help="output atlas path")
    build.add_argument("--layer", help="use layers/LAYER instead of X")
    build.add_argument("--matrix", help="'X', 'raw.X' or 'layers/<name>' (build.matrix)")
    build.add_argument("--gene-key", help="var column with gene IDs, or 'index' (build.gene_key)")
    build.add_argument("--values", choices=["auto", "counts", "normalized"], help="what X holds (build.values)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing atlas")
    add_config_arguments(build)
    build.set_defaults(handler=run_build)

    info = atlas_commands.add_parser("info", help="cells, genes, shards, sources, size on disk")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(handler=run_info)

    validate = atlas_commands.add_parser("validate", help="check shapes, indices, checksums, vocabulary, stats")
    validate.add_argument("path")
    validate.add_argument("--skip-stats", action="store_true", help="skip recomputing the statistics")
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    validate.add_argument("--quiet", action="store_true", help="no progress bars")
    validate.set_defaults(handler=run_validate)

    from vcell.config.model import SIZES  # no torch: keeps --help fast

    models = commands.add_parser("models", help="the catalogue of models and their parameter counts")
    models.add_argument("--json", action="store_true", help="machine-readable output (a list of models)")
    models.add_argument("--genes", type=positive_int, default=2000, help="genes the models are sized for (default: 2000)")
    models.add_argument("--size", choices=list(SIZES), default="small", help="width/depth preset (default: small)")
    models.set_defaults(handler=run_models)
    add_train_parser(commands)
    from vcell.evaluate.commands import add_run_commands

    add_run_commands(commands)
    from vcell.tune.commands import add_tune_parser

    add_tune_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may stand anywhere (also after options), so collect them from the leftovers.
    args, leftovers = parser.parse_known_args(argv)
    unknown, late_overrides = split_overrides(leftovers)
    if hasattr(args, "inputs"):  # `atlas build`: positional words are inputs or overrides
        args.inputs, args.overrides = split_overrides(args.inputs)
    if unknown or (late_overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or late_overrides)}")
    if late_overrides:
        args.overrides = [*args.overrides, *late_overrides]
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    handler: Callable[[argparse.Namespace], None] = args.handler
    try:
        handler(args)
    except VCellError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except FILE_SYSTEM_ERRORS as error:  # the last resort: library code names its paths itself
        print(f"error: {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
