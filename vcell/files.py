"""Small file helpers shared by every part that writes results: write whole, or not at all.

Every command output (an atlas, an export folder, an .h5ad) is claimed with `claim_output`
first: the one place that decides what `--overwrite` may replace. It replaces only what vcell
itself wrote (each kind recognises its own marker), never an input of the same command nor
anything above or inside one, with paths compared after resolving symlinks and `..`. The new
output is written beside it and swapped in by rename (`swap_into_place`, `staged_file`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vcell.errors import VCellError

SHIPPED_FOLDERS = {"configs": "configs", "cluster": "cluster_templates"}  # source tree -> installed name
H5AD_WRITER_KEY = "vcell_writer"  # uns key naming the vcell command that wrote an .h5ad
FILE_SYSTEM_ERRORS = (PermissionError, NotADirectoryError, FileExistsError, IsADirectoryError)


def shipped_folder(name: str) -> Path:
    """`configs` or `cluster`: the installed copy inside the package (a wheel, the Docker image), else
    the folder at the top of the source tree (a checkout or an editable install; see setup.py)."""
    package = Path(__file__).resolve().parent
    installed = package / SHIPPED_FOLDERS[name]
    return installed if installed.is_dir() else package.parent / name


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


@dataclass(frozen=True)
class OutputKind:
    """A kind of command output, and how to recognise one vcell wrote (all `--overwrite` replaces)."""

    noun: str  # with its article: "an atlas", "an export folder", "an .h5ad file"
    is_folder: bool
    not_ours: Callable[[Path], str | None]  # why vcell may not replace what is at a path; None: vcell wrote it


def foreign_entries(path: Path, ours: set[str]) -> str | None:
    """The complaint about a folder vcell wrote that now also holds other files (which are not ours to delete)."""
    foreign = sorted(entry.name for entry in path.iterdir() if entry.name not in ours)
    return f"it holds files vcell did not write: {', '.join(foreign[:5])}" if foreign else None


def claim_output(path: str | Path, kind: OutputKind, *, inputs: Iterable[str | Path | None] = (),
                 overwrite: bool = False) -> Path:
    """`path` resolved, once it is safe to write a `kind` there (see the module docstring)."""
    given = Path(path)
    out = given.resolve()
    for source in inputs:
        if source is not None:
            check_apart(out, given, Path(source))
    check_parent_folder(out, given)
    if out.exists():
        check_replaceable(out, given, kind, overwrite)
    return out


def check_apart(out: Path, given: Path, source: Path) -> None:
    """Refuse an output that is an input, a folder above one, or a path inside one."""
    resolved = source.resolve()
    if out == resolved:
        relation = "is"
    elif out in resolved.parents:
        relation = "is a folder holding"
    elif resolved in out.parents:
        relation = "lies inside"
    else:
        return
    raise VCellError(f"output {given} {relation} the input {source} of this command; vcell never writes over, "
                     "above or into its own inputs", hint="choose an --out outside the inputs (and outside run folders)")


def check_parent_folder(out: Path, given: Path) -> None:
    """The nearest existing folder above `out` is a folder, and one we may write in."""
    folder = out.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise VCellError(f"cannot write {given}: {folder} is a file, not a folder",
                         hint="choose an --out whose parent is a folder (missing folders are created)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VCellError(f"cannot write {given}: the folder {folder} is not writable",
                         hint="choose an --out in a folder you may write to")


def check_replaceable(out: Path, given: Path, kind: OutputKind, overwrite: bool) -> None:
    if kind.is_folder and out.is_dir() and not any(out.iterdir()):
        return  # an empty folder: nothing to lose
    if not kind.is_folder and out.is_dir():
        raise VCellError(f"--out {given} is a folder; the output is a file", hint="name a file, e.g. FOLDER/cells.h5ad")
    if not overwrite:
        raise VCellError(f"{given} already exists" + (" and is not empty" if out.is_dir() else ""),
                         hint=f"choose another --out, or pass --overwrite (it replaces only {kind.noun} vcell wrote)")
    reason = kind.not_ours(out)
    if reason is not None:
        raise VCellError(f"--overwrite refused for {given}: {reason}; it replaces only {kind.noun} vcell wrote",
                         hint="choose another --out, or move it away yourself if it may go")


def swap_into_place(staged: Path, out: Path) -> None:
    """Rename the finished `staged` onto `out`; an old `out` is removed only after the swap."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(staged, out)  # also onto an empty folder
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    try:
        os.rename(staged, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old) if old.is_dir() else old.unlink()


@contextlib.contextmanager
def output_errors(path: Path) -> Iterator[None]:
    """File-system refusals while writing `path` become one clear error naming it."""
    try:
        yield
    except FILE_SYSTEM_ERRORS as error:
        raise VCellError(f"cannot write {path}: {error.strerror} ({error.filename})",
                         hint="choose an --out in a folder you may write to") from None


def h5ad_not_ours(path: Path) -> str | None:
    """None for an .h5ad a vcell command wrote (`uns["vcell_writer"]` names it), else why not."""
    import h5py

    if not h5py.is_hdf5(path):
        return "it is not an .h5ad (HDF5) file"
    with h5py.File(path, "r") as handle:
        writer = handle.get(f"uns/{H5AD_WRITER_KEY}")
        value = writer[()] if isinstance(writer, h5py.Dataset) else b""
    value = value.decode() if isinstance(value, bytes) else str(value)
    return None if value.startswith("vcell ") else f"it is not an output of a vcell command (no uns['{H5AD_WRITER_KEY}'])"


H5AD_OUTPUT = OutputKind("an .h5ad file", is_folder=False, not_ours=h5ad_not_ours)


def new_output_file(path: str | Path, suffix: str, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """`path` claimed as a command's output .h5ad: the right suffix, and safe to write (`claim_output`)."""
    path = Path(path)
    if path.suffix != suffix:
        raise VCellError(f"--out {path}: name the output *{suffix}")
    return claim_output(path, H5AD_OUTPUT, inputs=inputs, overwrite=overwrite)


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
