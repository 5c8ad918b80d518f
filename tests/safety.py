"""Helpers for tests that prove a command left the user's files alone."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def snapshot(path: Path) -> dict[str, str]:
    """sha256 of a file, or of every file under a folder, keyed by relative path (byte-for-byte identity)."""
    path = Path(path)
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def refused_cleanly(code: int, capsys, *names: object) -> str:
    """The command failed with a message (no traceback) that names each of `names`; returns it."""
    error = capsys.readouterr().err
    assert code != 0, error
    assert "Traceback" not in error
    for name in names:
        assert str(name) in error, (name, error)
    return error


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """`folder` made unwritable, also for root (immutable attribute); skips where neither works."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    immutable = False
    if writable(folder) and shutil.which("chattr"):  # root ignores the mode bits
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        if writable(folder):
            pytest.skip("cannot make a folder read-only here (root without chattr)")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=False)
        folder.chmod(0o755)


def writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.touch()
    except OSError:
        return False
    probe.unlink()
    return True
