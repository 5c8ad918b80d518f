"""The worker's callbacks that need no training to check (the rest run in tests/train/test_ray_train.py)."""

from __future__ import annotations

import pytest

from vcell.errors import VCellError
from vcell.train.callbacks import FaultDrill


def test_a_fault_drill_is_read_from_the_environment_and_an_unknown_kind_is_refused(monkeypatch, tmp_path):
    monkeypatch.delenv("VCELL_FAULT_STEP", raising=False)
    assert FaultDrill.from_environment() is None  # no drill unless asked
    monkeypatch.setenv("VCELL_FAULT_STEP", "6")
    monkeypatch.setenv("VCELL_FAULT_MARKER", str(tmp_path / "held"))
    monkeypatch.setenv("VCELL_FAULT_KIND", "hold")
    monkeypatch.setenv("VCELL_FAULT_HOLD_S", "2.5")
    drill = FaultDrill.from_environment()
    assert (drill.step, drill.rank, drill.kind, drill.hold_s) == (6, 1, "hold", 2.5)
    monkeypatch.setenv("VCELL_FAULT_KIND", "explode")
    with pytest.raises(VCellError, match="(?s)VCELL_FAULT_KIND='explode' is not a fault drill.*kill, error, hold"):
        FaultDrill.from_environment()
