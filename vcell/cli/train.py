"""`vcell train`: the main job (no arguments: the quickstart model on 2 CPU workers).

    vcell train [--name N] [--address A] [--restart | --resume-with-changes] [--dry-run] [k=v ...]
"""

from __future__ import annotations

import argparse

from vcell.cli.arguments import add_config_arguments, flag, resolve_config
from vcell.errors import VCellError


def run_train(args: argparse.Namespace) -> None:
    from vcell.evaluate.evaluation import evaluate_finished
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
