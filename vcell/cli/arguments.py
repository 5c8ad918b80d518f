"""What every command shares: `--config` and friends, dotted overrides, checked number types.

    add_config_arguments(parser)                      # --config, --print-config, --save-config, --quiet
    config = resolve_config(args, flag("name", args.name))
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable

OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


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


def finite_number(minimum: float, maximum: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite float >= `minimum` (and <= `maximum`; no nan, no inf)."""

    wanted = f">= {minimum:g}" if maximum == math.inf else f"from {minimum:g} to {maximum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {wanted}, got {text!r}") from None
        if not math.isfinite(value) or not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be a finite number {wanted}, got {text}")
        return value

    parse.minimum = minimum
    return parse


positive_int = whole_number(1)
non_negative_int = whole_number(0)
non_negative_hours = finite_number(0.0)
fraction = finite_number(0.0, 1.0)
