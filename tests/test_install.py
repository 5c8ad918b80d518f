"""A non-editable install finds what it ships: `pip install` of the wheel into a fresh venv, then
`vcell train --dry-run` and `vcell tune --dry-run` from an empty folder read their default configs,
the DeepSpeed JSON files and the cluster templates from inside the installed package.

The venv gets the dependencies of this checkout's .venv through a `.pth` line (a path, not a site
dir: the editable install's own `.pth` there is not processed), so only vcell itself is installed
from the wheel, with `--no-deps --no-index`: ~25 s, no network.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding vcell from a freshly built wheel; its `bin/` folder."""
    folder = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    str(ROOT), "-w", str(folder / "wheel")], check=True, capture_output=True)
    wheel = next((folder / "wheel").glob("vcell-*.whl"))
    venv.create(folder / "venv", with_pip=False)
    packages = next((folder / "venv" / "lib").glob("python3*/site-packages"))
    (packages / "vcell-test-dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(folder / "venv" / "bin" / "python"), "install",
                    "--quiet", "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    return folder / "venv" / "bin"


def run_installed(bin_folder: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PATH": f"{bin_folder}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": ""}
    return subprocess.run([str(bin_folder / "vcell"), *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=300)


def test_wheel_holds_configs_and_templates(installed):
    code = "import vcell.files as f; print(f.shipped_folder('configs')); print(f.shipped_folder('cluster'))"
    result = subprocess.run([str(installed / "python"), "-c", code], cwd=installed, capture_output=True, text=True,
                            check=True)
    configs, cluster = (Path(line) for line in result.stdout.split())
    assert ROOT not in configs.parents and "site-packages" in configs.parts  # the installed copy, not the checkout
    shipped = {p.relative_to(configs).as_posix() for p in configs.rglob("*") if p.is_file()}
    source = {p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*") if p.is_file()}
    assert shipped == source
    templates = {p.relative_to(cluster).as_posix() for p in cluster.rglob("*") if p.is_file()}
    assert templates == {p.relative_to(ROOT / "cluster").as_posix() for p in (ROOT / "cluster").rglob("*") if p.is_file()}


def test_dry_runs_from_an_empty_folder(installed, train_atlas, tmp_path):
    overrides = [f"data.atlas={train_atlas}", "loader.split.holdout=[]", "train.strategy=deepspeed"]
    train = run_installed(installed, tmp_path, "train", "--dry-run", *overrides)
    assert train.returncode == 0, train.stderr
    assert "run         quickstart" in train.stdout  # the default config: configs/experiments/quickstart.yaml
    deepspeed = next(line for line in train.stdout.splitlines() if line.startswith("deepspeed"))
    assert "site-packages/vcell/configs/deepspeed/zero2.json" in deepspeed
    tune = run_installed(installed, tmp_path, "tune", "--dry-run", *overrides)
    assert tune.returncode == 0, tune.stderr
    assert "run         tune-quickstart" in tune.stdout and "campaign    8 trial(s)" in tune.stdout
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing
