"""The tutorial notebooks (notebooks/): the committed ones are what their sources make, they were
saved with outputs, and every one runs from top to bottom in smoke mode (SMOKE=1: a tiny atlas, a
handful of steps). The twelve model notebooks share one kernel and one atlas; the cluster
notebook starts its own loopback Ray for `vcell train` and `vcell tune` (RAY_ADDRESS=local: never
the test session's cluster, nor another one on this machine)."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SECTIONS = [f"## {number}. " for number in range(1, 12)]


def load_build():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_build()
SOURCES = build.sources()
MODEL_NOTEBOOKS = [name for name in SOURCES if name not in build.GUIDES]


def test_there_is_a_notebook_per_catalogue_model_and_per_guide():
    from vcell.models.catalogue import CATALOGUE

    assert MODEL_NOTEBOOKS == [name.replace("+", "_") for name in CATALOGUE]
    assert {path.stem for path in NOTEBOOKS.glob("*.ipynb")} == set(SOURCES)


@pytest.mark.parametrize("name", list(SOURCES))
def test_committed_notebook_matches_its_source_and_has_outputs(name):
    saved = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert build.source_view(saved) == build.source_view(SOURCES[name]), (
        f"notebooks/{name}.ipynb is out of date: run `python notebooks/build.py --execute {name}`")
    code = [cell for cell in saved.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), f"{name}: saved without running every cell"
    assert not [output for cell in code for output in cell.outputs if output.output_type == "error"]
    assert any("image/png" in output.get("data", {}) for cell in code for output in cell.outputs), name


@pytest.mark.parametrize("name", MODEL_NOTEBOOKS)
def test_model_notebook_has_the_eleven_sections_in_order(name):
    text = "\n".join(cell.source for cell in SOURCES[name].cells if cell.cell_type == "markdown")
    positions = [text.find(heading) for heading in SECTIONS]
    assert -1 not in positions and positions == sorted(positions), name


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One work folder for every notebook (the tiny atlas is simulated once)."""
    return tmp_path_factory.mktemp("notebooks")


@pytest.fixture
def smoke_environment(smoke, monkeypatch):
    monkeypatch.setenv("SMOKE", "1")
    monkeypatch.setenv("VCELL_NOTEBOOK_WORK", str(smoke))
    monkeypatch.setenv("RAY_ADDRESS", "local")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return smoke


@pytest.mark.slow
def test_model_notebooks_run_in_smoke_mode(smoke_environment):
    kernel = None
    try:
        for name in MODEL_NOTEBOOKS:  # nbclient raises CellExecutionError (cell and traceback) on any error
            _, client = build.execute(copy.deepcopy(SOURCES[name]), name, km=kernel, timeout=600, keep_kernel=True)
            kernel = client.km
        runs = smoke_environment / "runs"
        assert {f"tutorial-{name}" for name in MODEL_NOTEBOOKS} <= {path.name for path in runs.iterdir()}
    finally:
        if kernel is not None:
            build.shutdown(kernel)


@pytest.mark.slow
@pytest.mark.parametrize("name", build.GUIDES)
def test_guide_notebook_runs_in_smoke_mode(smoke_environment, name):
    build.execute(copy.deepcopy(SOURCES[name]), name, timeout=600)
