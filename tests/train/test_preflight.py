"""What `vcell train --dry-run` (and every real start, before Ray) catches without training, that a
start which failed before its first checkpoint does not block the corrected rerun, and that a
restarted run keeps nothing of the old run's evaluation (but everything vcell did not write)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.train.conftest import run_config
from vcell.errors import VCellError
from vcell.train.ray_train import train
from vcell.train.run import prepare_run, run_directory

QUICKSTART_HOLDOUT = "loader.split.holdout=[{column: perturbation, test: [TF013, TF040, TF073, GENE0936, GENE1440]}]"


def damaged_copy(atlas, tmp_path):
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(atlas, copy)
    metadata = copy / "var" / "zarr.json"
    metadata.write_text(metadata.read_text().replace('"', "'", 2).replace("'", '"', 2) + " ")  # one byte more
    return copy


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("case, message", [
    ("holdout", r"holdout: \['TF013', 'TF040', 'TF073', 'GENE0936', 'GENE1440'\] are not values of obs column 'perturbation'"),
    ("labels", r"loader.labels: donor_age not among the obs columns"),
    ("batch", r"loader.batch_size=1000 is larger than the training split per worker: 1,4\d\d training cells"),
    ("genes", r"1 of 1 genes are not in the atlas.*NOPE1"),
    ("normalize", r"loader.normalize.zscore: the atlas's gene statistics are of"),
    ("damaged", r"is damaged: 0 recorded file\(s\) missing, 1 changed \(var/zarr.json\)"),
    ("storage", r"cannot write the run folder .*: not a folder"),
])
def test_what_needs_no_training_fails_before_anything_is_written(train_atlas, tmp_path, case, message, dry_run):
    atlas, storage, extra = train_atlas, tmp_path / "runs", []
    if case == "damaged":
        atlas = damaged_copy(train_atlas, tmp_path)
    if case == "storage":
        (tmp_path / "a-file").write_text("not a folder")
        storage = tmp_path / "a-file" / "runs"
    extra = {"holdout": [QUICKSTART_HOLDOUT], "labels": ["loader.labels=[cell_type, donor_age]"],
             "batch": ["loader.batch_size=1000", "loader.buffer_cells=2000"],
             "genes": ["loader.genes={select: list, names: [NOPE1]}"],
             "normalize": ["loader.normalize.zscore=true", "loader.normalize.log1p=false"]}.get(case, [])
    config = run_config(atlas, storage, "preflight", *extra)
    with pytest.raises(VCellError, match=message):
        train(config, dry_run=dry_run)  # a real start fails the same way, before Ray starts
    assert not run_directory(config).exists() and not (tmp_path / "runs").exists()  # nothing written


def test_a_start_that_failed_before_its_first_checkpoint_does_not_block_the_corrected_rerun(train_atlas, tmp_path):
    failed = run_config(train_atlas, tmp_path, "retry", "loader.batch_size=32")
    directory = prepare_run(failed).directory  # what a start writes before its workers fail
    (directory / "history.csv").write_text("step\n")
    corrected = run_config(train_atlas, tmp_path, "retry", "loader.batch_size=64")
    run = prepare_run(corrected)  # not "a different config under the same name"
    assert not run.resumed and not (directory / "history.csv").exists()
    assert "batch_size: 64" in (directory / "config.yaml").read_text()
    (directory / "checkpoints" / "step-00000004").mkdir(parents=True)
    (directory / "checkpoints" / "step-00000004" / "manifest.json").write_text(json.dumps({}))
    with pytest.raises(VCellError, match="with a different config"):  # once it has saved progress, it is protected
        prepare_run(failed)


def test_a_restart_removes_the_old_evaluation_but_not_the_users_files(train_atlas, tmp_path):
    import anndata as ad
    import numpy as np
    import pandas as pd

    from vcell.evaluate.biology import write_biology
    from vcell.files import H5AD_WRITER_KEY

    old = run_config(train_atlas, tmp_path, "again", "model.name=regulatory")
    directory = prepare_run(old).directory
    (directory / "plots").mkdir()
    for name in ("grn_edges_vs_truth.png", "my_figure.png"):  # the old model's figure; the user's
        (directory / "plots" / name).write_bytes(b"png")
    write_biology(directory / "biology", {"grn_edges.tsv": pd.DataFrame({"source": ["TF001"], "weight": [0.5]})}, {})
    ad.AnnData(np.zeros((2, 1), np.float32), uns={H5AD_WRITER_KEY: "vcell evaluate"}).write_h5ad(directory / "embeddings.h5ad")
    (directory / "notes.txt").write_text("mine")

    prepare_run(run_config(train_atlas, tmp_path, "again"), restart=True)  # the same name as `full`
    assert sorted(path.name for path in directory.rglob("*")) == ["config.yaml", "my_figure.png", "notes.txt", "plots"]

    ad.AnnData(np.zeros((2, 1), np.float32)).write_h5ad(directory / "embeddings.h5ad")  # not one vcell wrote
    prepare_run(old, restart=True)
    assert (directory / "embeddings.h5ad").is_file()


def test_a_run_folder_whose_config_yaml_is_broken_is_named_not_a_yaml_traceback(train_atlas, tmp_path):
    config = run_config(train_atlas, tmp_path, "broken")
    directory = prepare_run(config).directory
    (directory / "config.yaml").write_text("model: {name: base\n")  # cut off mid-write by hand
    with pytest.raises(VCellError, match=r"broken/config.yaml: not valid YAML"):
        prepare_run(config)
    (directory / "config.yaml").write_text("- a list\n")
    with pytest.raises(VCellError, match=r"broken/config.yaml: a config file must be a mapping"):
        prepare_run(config)
