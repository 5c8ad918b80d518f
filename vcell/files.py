"""Small file helpers shared by every part that writes results: write whole, or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(stream)` on a temp file beside `path`, then rename it over `path`.

    A crash or error leaves the old file (or nothing) and no temp file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes 0600; results are shared like any file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of one file, read in 4 MiB blocks (bounded memory for any size)."""
    digest = hashlib.sha256()
    update_digest(digest, Path(path))
    return digest.hexdigest()


def update_digest(digest, path: Path) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)


def new_output_file(path: str | Path, suffix: str, overwrite: bool) -> Path:
    """`path` checked as a command's output file: the right suffix, and not in the way."""
    from vcell.errors import VCellError

    path = Path(path)
    if path.suffix != suffix:
        raise VCellError(f"--out {path}: name the output *{suffix}")
    if path.exists() and not overwrite:
        raise VCellError(f"{path} exists", hint="choose another --out, or pass --overwrite")
    return path


@contextlib.contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """A temp path beside `path` to write to; renamed onto `path` when the block succeeds, removed if not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
