"""The config tree: every shipped YAML validates; inheritance, overrides and strict errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vcell.config import VCellConfig, dump_config, load_config, save_config
from vcell.config.loader import PACKAGE_CONFIGS
from vcell.errors import VCellError

SHIPPED = sorted(PACKAGE_CONFIGS.rglob("*.yaml"))


def test_configs_folder_is_not_empty():
    assert len(SHIPPED) >= 3


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(PACKAGE_CONFIGS)) for p in SHIPPED])
def test_every_shipped_yaml_validates(path):
    assert isinstance(load_config(path), VCellConfig)


def test_default_is_quickstart():
    config = load_config()
    assert config.name == "quickstart"
    assert config.data.synth.cells == 20000


def test_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("name: parent\ndata:\n  synth:\n    cells: 100\n    genes: 300\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: child\ndata:\n  synth:\n    cells: 200\n")
    config = load_config(tmp_path / "child.yaml", ["data.synth.seed=7", "build.codec.name=zstd"])
    assert (config.name, config.data.synth.cells, config.data.synth.genes) == ("child", 200, 300)
    assert config.data.synth.seed == 7 and config.build.codec.name == "zstd"


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("data:\n  synth:\n    cels: 5\n")
    with pytest.raises(VCellError) as error:
        load_config(path)
    message = str(error.value)
    assert "data.synth.cels" in message and str(path) in message and "did you mean 'cells'" in message


def test_unknown_key_in_base_is_attributed_to_the_base(tmp_path):
    (tmp_path / "base.yaml").write_text("build:\n  colour: red\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: ok\n")
    with pytest.raises(VCellError, match="build.colour.*base.yaml"):
        load_config(tmp_path / "child.yaml")


def test_wrong_type_and_allowed_values_are_named():
    with pytest.raises(VCellError, match=r"data.synth.cells.*command line.*'many'"):
        load_config(None, ["data.synth.cells=many"])
    with pytest.raises(VCellError, match=r"build.codec.name.*'blosc-lz4'.*'zstd'"):
        load_config(None, ["build.codec.name=gzip"])


def test_a_value_no_member_of_a_union_accepts_is_one_problem_naming_its_key():
    """`model.batch_covariate` is true, false or 'auto': a bad value is one line at the key a user
    types, listing what is accepted, not one line per member under pydantic's member names."""
    with pytest.raises(VCellError) as error:
        load_config(None, ["model.batch_covariate=maybe", "train.steps=x"])
    lines = str(error.value).splitlines()
    assert lines[0] == "invalid configuration (2 problem(s)):"
    assert lines[1].strip() == ("'model.batch_covariate' in the command line: Input should be a valid boolean "
                                "or 'auto' (got 'maybe')")
    assert lines[2].strip().startswith("'train.steps' in the command line: Input should be a valid integer")


def test_impossible_combination_is_refused():
    with pytest.raises(VCellError, match="transcription_factors"):
        load_config(None, ["data.synth.genes=100", "data.synth.transcription_factors=200"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(VCellError, match="dotted.key=value"):
        load_config(None, ["not an override"])
    with pytest.raises(VCellError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_inheritance_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(VCellError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_dump_and_save_round_trip(tmp_path):
    config = load_config(None, ["data.synth.cells=1234"])
    saved = save_config(config, tmp_path / "resolved.yaml")
    assert load_config(saved) == config
    assert "cells: 1234" in dump_config(config)
    assert not list(Path(tmp_path).glob(".*tmp"))


def test_an_unknown_key_typed_on_the_command_line_is_blamed_on_it():
    with pytest.raises(VCellError, match=r"unknown key 'data.data' in the command line"):
        load_config(None, ["data.data.synth.cells=10"])


@pytest.mark.parametrize("key", ["seed", "data.synth.seed", "loader.split.seed", "build.shuffle_seed"])
def test_negative_seeds_are_config_errors_not_numpy_tracebacks(key):
    with pytest.raises(VCellError, match=rf"'{key}' in the command line: .*greater than or equal to 0"):
        load_config(None, [f"{key}=-5"])


def test_the_old_loader_workers_key_names_its_new_name():
    with pytest.raises(VCellError, match="loader.workers is now loader.processes"):
        load_config(None, ["loader.workers=2"])
    assert load_config(None, ["loader.processes=2"]).loader.processes == 2


def test_an_elastic_range_is_checked_and_the_worker_count_is_not_the_run():
    from vcell.train.run import config_hash

    config = load_config(None, ["scaling.min_workers=1", "scaling.workers=3"])
    assert config.scaling.fewest_workers == 1 and load_config(None, []).scaling.fewest_workers == 2
    with pytest.raises(VCellError, match=r"min_workers \(4\) must be <= workers \(3\)"):
        load_config(None, ["scaling.min_workers=4", "scaling.workers=3"])
    # DeepSpeed ZeRO too: its checkpoints are re-partitioned (vcell.train.repartition)
    assert load_config(None, ["scaling.min_workers=1", "train.strategy=deepspeed"]).scaling.min_workers == 1
    # nodes come and go: the same run resumes on another number of workers (the epoch is re-planned)
    assert config_hash(config) == config_hash(load_config(None, ["scaling.workers=1"]))
