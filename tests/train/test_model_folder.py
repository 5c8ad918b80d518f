"""The model folder: weights out of a checkpoint, written with their config and spec, and only
vcell's own weights read back."""

from __future__ import annotations

import pytest
import torch

from tests.train.test_checkpoint import fake_checkpoint
from vcell.errors import VCellError
from vcell.train import checkpoint as ckpt
from vcell.train import model_folder


def test_weights_come_out_of_the_lightning_file_without_the_module_prefix(tmp_path):
    store = ckpt.CheckpointStore(tmp_path)
    fake_checkpoint(store, 7)
    state = ckpt.model_state(store.latest())
    assert list(state) == ["weight"] and torch.equal(state["weight"], torch.full((3,), 7.0))
    model_folder.export_weights(store.latest(), tmp_path / "model", "name: x\n", {"gene_ids": ["g1", "g2"]}, {"cell_type": ["T"]},
                        {"target_sum": 1e4, "log1p": True, "clip": None, "gene_mean": None, "gene_scale": None})
    assert torch.equal(model_folder.load_exported(tmp_path / "model")["weight"], state["weight"])
    assert (tmp_path / "model" / "genes.txt").read_text() == "g1\ng2\n"


def test_weights_vcell_did_not_write_are_refused(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "foreign").mkdir()
    save_file({"weight": torch.zeros(3)}, tmp_path / "foreign" / "model.safetensors")
    with pytest.raises(VCellError, match="not written by vcell"):
        model_folder.load_exported(tmp_path / "foreign")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(VCellError, match="not a readable safetensors"):
        model_folder.load_exported(tmp_path / "broken")
    with pytest.raises(VCellError, match="no exported model"):
        model_folder.load_exported(tmp_path / "missing")
