"""The command-line surface: every command has --help, configs print and save, launch.py == vcell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vcell.cli import build_parser, main
from vcell.cli.models import human_count
from vcell.config import load_config
from vcell.models.catalogue import CATALOGUE

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [[], ["atlas"], ["atlas", "synth"], ["atlas", "build"], ["atlas", "info"], ["atlas", "validate"], ["models"], ["train"], ["export"], ["embed"], ["evaluate"], ["predict"], ["tune"], ["submit"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "vcell")
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: vcell" in capsys.readouterr().out


def test_command_surface_is_frozen():
    """Renaming or removing a command breaks users' scripts: change this list deliberately."""
    parser = build_parser()
    top = parser._subparsers._group_actions[0].choices
    atlas = top["atlas"]._subparsers._group_actions[0].choices
    assert sorted(top) == ["atlas", "embed", "evaluate", "export", "models", "predict", "submit", "train", "tune"]
    assert sorted(atlas) == ["build", "info", "synth", "validate"]


def test_print_and_save_config(tmp_path, capsys):
    saved = tmp_path / "resolved.yaml"
    with pytest.raises(SystemExit) as exit_:
        main(["atlas", "synth", "--cells", "1234", "data.synth.genes=300", "--print-config", "--save-config", str(saved)])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["synth"]["cells"] == 1234 and printed["data"]["synth"]["genes"] == 300
    assert load_config(saved).data.synth.cells == 1234


def test_bad_override_is_a_clean_error(capsys):
    assert main(["atlas", "synth", "data.synth.cels=5", "--print-config"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: invalid configuration") and "did you mean 'cells'" in error


def test_unknown_argument_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["atlas", "info", "x.zarr", "--colour"])
    assert exit_.value.code == 2


def test_launch_py_and_console_script_are_the_same_command():
    launch = subprocess.run([sys.executable, "launch.py", "atlas", "--help"], cwd=ROOT, capture_output=True, text=True)
    script = Path(sys.executable).parent / "vcell"
    console = subprocess.run([str(script), "atlas", "--help"], capture_output=True, text=True)
    assert launch.returncode == 0 and console.returncode == 0
    assert launch.stdout == console.stdout


def test_missing_atlas_exits_non_zero():
    result = subprocess.run([sys.executable, "launch.py", "atlas", "info", "/nonexistent.zarr"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "not a vcell atlas" in result.stderr


def test_models_json_lists_the_catalogue(capsys):
    assert main(["models", "--json", "--size", "tiny", "--genes", "500"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 12 and [row["name"] for row in rows] == list(CATALOGUE)
    assert all(row["enhancements"] == list(CATALOGUE[row["name"]]) for row in rows)
    assert all(isinstance(row["parameters"], int) and row["parameters"] > 0 for row in rows)


def test_models_table(capsys):
    assert main(["models", "--size", "tiny", "--genes", "500"]) == 0
    header, columns, *lines = capsys.readouterr().out.splitlines()
    assert "500 genes" in header and "'tiny'" in header and "reference annotations" in header
    assert columns.split() == ["name", "enhancements", "parameters"]
    assert [line.split()[0] for line in lines] == list(CATALOGUE)
    full = lines[-1]
    assert ", ".join(CATALOGUE["full"]) in full and full.split()[-1][-1] in "KM"
    assert len({len(line) for line in [columns, *lines]}) == 1  # aligned: every row as wide as the header


def test_models_refuses_bad_arguments(capsys):
    for arguments in (["--size", "huge"], ["--genes", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(["models", *arguments])
        assert exit_.value.code == 2
    assert "must be a positive whole number" in capsys.readouterr().err


@pytest.mark.parametrize(
    "count, text",
    [(950, "950"), (1_234, "1.2K"), (132_568, "133K"), (10_479_552, "10.5M"), (216_367_904, "216M"), (1_500_000_000, "1.5B")],
)
def test_human_count(count, text):
    assert human_count(count) == text


def test_train_dry_run_prints_the_plan_without_training(tmp_path, capsys):
    from vcell.atlas.synth import synthesize_atlas
    from vcell.config.schema import BuildConfig, SynthConfig

    atlas = synthesize_atlas(tmp_path / "atlas.zarr", SynthConfig(cells=300, genes=60, transcription_factors=6, pathways=4,
                                                                  compartments=2, perturbations=3, truth_draws=8),
                             BuildConfig(), progress=False)
    code = main(["train", "--dry-run", f"data.atlas={atlas}", f"scaling.storage_path={tmp_path / 'runs'}",
                 "train.strategy=deepspeed", "train.deepspeed.stage=3", "loader.batch_size=32", "loader.split.holdout=[]"])
    out = capsys.readouterr().out
    assert code == 0
    assert "parameters" in out and "deepspeed ZeRO-3" in out and "GB per worker" in out
    assert "placement PACK" in out
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_train_refuses_restart_with_resume(capsys):
    assert main(["train", "--restart", "--resume-with-changes", "--dry-run"]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_tune_reads_the_example_campaign_by_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["tune", "--print-config", "tune.trials=3"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["name"] == "tune-quickstart" and printed["tune"]["trials"] == 3
    assert "train.learning_rate" in printed["tune"]["space"]


def test_tune_refuses_a_bad_space_before_anything_starts(tmp_path, capsys):
    storage = tmp_path / "runs"
    code = main(["tune", f"scaling.storage_path={storage}", "data.atlas=/nonexistent.zarr",
                 "tune.space={train.learning_rate: {loguniform: [0, 0.01]}}"])
    assert code == 2
    assert "'train.learning_rate': loguniform needs positive bounds" in capsys.readouterr().err
    assert not storage.exists()  # nothing written, no atlas built, no Ray started

