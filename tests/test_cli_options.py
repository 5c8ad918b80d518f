"""Every numeric option of every command is checked by argparse: a bad value is argparse's usual
error (exit 2, naming the option), never a traceback or a silently empty result."""

from __future__ import annotations

import argparse

import pytest

from vcell.cli import build_parser


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every command that runs something."""
    children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not children:
        yield path, parser
    for action in children:
        for name, child in action.choices.items():
            yield from commands(child, (*path, name))


def required_words(parser: argparse.ArgumentParser) -> list[str]:
    """Placeholders for the positionals and required options, so that only the option under test can fail."""
    words = []
    for action in parser._actions:
        if not action.option_strings and action.nargs not in ("*", "?", argparse.REMAINDER):
            words.append("x.h5ad")
        elif action.option_strings and action.required:
            words += [action.option_strings[0], "x.h5ad"]
    return words


NUMERIC = [(path, action.option_strings[0], action.type, required_words(parser))
           for path, parser in commands(build_parser()) for action in parser._actions
           if action.type is not None and hasattr(action.type, "minimum") or action.type in (int, float)]
IDS = [" ".join([*path, option]) for path, option, _, _ in NUMERIC]


def test_the_walk_finds_the_numeric_options_and_none_is_unchecked():
    found = set(IDS)
    assert {"atlas synth --cells", "atlas synth --seed", "embed --batch-size", "embed --tasks", "evaluate --max-cells",
            "predict --cells", "predict --time", "predict --hours-since-pulse", "models --genes", "tune --trials", "submit --nodes",
            "submit --gpus-per-node"} <= found
    unchecked = [name for name, (_, _, kind, _) in zip(IDS, NUMERIC) if kind in (int, float)]
    assert not unchecked, f"plain int/float options accept 0, negatives or nan: {unchecked}"


@pytest.mark.parametrize("path, option, kind, required", NUMERIC, ids=IDS)
@pytest.mark.parametrize("value", ["-5", "nan", "inf", "0", "1e400"])
def test_bad_numbers_are_argparse_errors(path, option, kind, required, value, capsys):
    argv = [*path, *required, option, value]
    zero_is_fine = getattr(kind, "minimum", 1) <= 0
    if value == "0" and zero_is_fine:
        assert getattr(build_parser().parse_args(argv), option.lstrip("-").replace("-", "_")) == 0
        return
    with pytest.raises(SystemExit) as exit_:  # parsing only: an accepted value must never start the command
        build_parser().parse_args(argv)
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in error
    assert f"argument {option}" in error


def test_embed_workers_is_the_old_name_of_tasks():
    parser = build_parser()
    for option in ("--tasks", "--workers"):
        assert parser.parse_args(["embed", "runs/x", "--out", "x.h5ad", option, "3"]).tasks == 3
