"""`vcell tune`: a search campaign (the campaign itself is `vcell.tune.campaign.tune_campaign`).

    vcell tune [--config configs/tune/quickstart.yaml] [--name N] [--address A] [--restart] [--retry-errored] [--dry-run] [k=v ...]
"""

from __future__ import annotations

import argparse

from vcell.cli.arguments import add_config_arguments, flag, positive_int, resolve_config
from vcell.config.loader import PACKAGE_CONFIGS
from vcell.errors import VCellError

DEFAULT_CAMPAIGN = PACKAGE_CONFIGS / "tune" / "quickstart.yaml"


def run_tune(args: argparse.Namespace) -> None:
    from vcell.tune.campaign import tune_campaign

    if args.config is None:
        if not DEFAULT_CAMPAIGN.is_file():
            raise VCellError("no campaign config given", hint="pass --config FILE (see configs/tune/ in the source tree)")
        args.config = str(DEFAULT_CAMPAIGN)
    config = resolve_config(args, flag("name", args.name) + flag("scaling.address", args.address)
                            + flag("tune.trials", args.trials))
    tune_campaign(config, restart=args.restart, retry_errored=args.retry_errored, progress=not args.quiet,
                  dry_run=args.dry_run)


def add_tune_parser(commands) -> None:
    parser = commands.add_parser(
        "tune", help="a hyperparameter campaign: Ray Tune over whole training runs (default: configs/tune/quickstart.yaml)",
        description="Search a space of config values with Ray Tune; every trial is a full vcell training run with its "
        "own Ray Train workers. Re-running the same command continues an interrupted campaign. Results: "
        "runs/<name>/results.csv, best.yaml (train it with `vcell train --config`), plots/.",
    )
    parser.add_argument("--name", help="campaign name (default: the config's name); it lives in runs/<name>/")
    parser.add_argument("--address", help="Ray cluster to join ('auto' or host:port); default: a local cluster on 127.0.0.1")
    parser.add_argument("--trials", type=positive_int, help="number of trials (tune.trials)")
    parser.add_argument("--restart", action="store_true", help="delete the earlier campaign of this name and start over")
    parser.add_argument("--retry-errored", action="store_true",
                        help="when continuing a campaign, start its errored trials again (from their last checkpoint)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the space, config, atlas and resources; print the base model's plan; exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. tune.trials=4")
    add_config_arguments(parser)
    parser.set_defaults(handler=run_tune)
