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
    vcell submit --target ray|slurm|kuberay [...] -- train|tune [--config F] [k=v ...]
    vcell submit status|logs|stop RUN [--address A]

One module per command group (`atlas`, `models`, `train`, `tune`, `trained_model`, `submit`), each with
`add_<group>_parser(s)(commands)` and a `run_<command>(args)` per command; this module only wires
them. Only this package parses arguments; nothing in it imports back from the library's callers.

Every command takes `--config FILE` (default: configs/experiments/quickstart.yaml),
dotted overrides `section.key=value`, `--print-config` and `--save-config FILE`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from vcell.cli.arguments import split_overrides
from vcell.cli.atlas import add_atlas_parser
from vcell.cli.models import add_models_parser
from vcell.cli.submit import add_submit_parser
from vcell.cli.train import add_train_parser
from vcell.cli.trained_model import add_trained_model_parsers
from vcell.cli.tune import add_tune_parser
from vcell.errors import VCellError
from vcell.files import FILE_SYSTEM_ERRORS

log = logging.getLogger("vcell")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vcell", description="Virtual-cell models on Zarr-sharded single-cell atlases.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_atlas_parser(commands)
    add_models_parser(commands)
    add_train_parser(commands)
    add_trained_model_parsers(commands)
    add_tune_parser(commands)
    add_submit_parser(commands)
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

