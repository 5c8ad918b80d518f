"""Where a run's numbers go: `history.csv` always, W&B on rank 0 when enabled (a null object else).

    tracker = open_tracker(config, run_directory, rank)    # WandbTracker or NullTracker
    tracker.log({"train/loss": 1.2}, step=10)
    history = History(run_directory / "history.csv")       # rows kept in memory, rewritten whole
    logged = read_offline_run(run_directory / "wandb" / "offline-run-...")   # an offline W&B run, read back

W&B runs offline by default, with a run id derived from the run name (a resumed run continues
the same W&B run; two runs never share one), and keeps everything it writes (cache, settings)
inside `runs/<name>/wandb/`. We never write an API key: online mode reads WANDB_API_KEY from
the environment, which W&B itself consumes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import struct
import time
import zlib
from pathlib import Path

from vcell.config.schema import VCellConfig
from vcell.errors import VCellError
from vcell.files import atomic_write

FIRST_COLUMNS = ["step", "epoch", "time", "lr", "cells_per_s", "step_s", "data_wait_fraction"]

log = logging.getLogger(__name__)
EXIT_WAIT_SECONDS = 30.0  # how long `finish` waits for W&B's writer to close an offline run's log


def wandb_run_id(name: str, salt: str = "") -> str:
    """A stable W&B id for a run (and, with a salt, for a trial of a campaign)."""
    return "vcell-" + hashlib.sha256(f"{name}\0{salt}".encode()).hexdigest()[:16]


class NullTracker:
    """Takes every call and does nothing: non-zero ranks and `wandb.mode=disabled`."""

    def log(self, values: dict, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    def __init__(self, config: VCellConfig, run_directory: Path, run_id: str) -> None:
        directory = run_directory / "wandb"
        directory.mkdir(parents=True, exist_ok=True)
        for variable, sub in (("WANDB_CACHE_DIR", ".cache"), ("WANDB_CONFIG_DIR", ".config"), ("WANDB_DATA_DIR", ".data")):
            os.environ.setdefault(variable, str(directory / sub))
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.run = wandb.init(
            project=config.wandb.project, entity=config.wandb.entity, group=config.wandb.group,
            tags=config.wandb.tags, name=config.name, id=run_id, resume="allow", mode=config.wandb.mode,
            dir=str(run_directory), config=config.model_dump(mode="json"),
        )
        self.offline = config.wandb.mode == "offline"

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def finish(self) -> None:
        folder = Path(self.run.dir).parent  # <run>/wandb/offline-run-*/ (run.dir is its files/)
        self.run.finish()
        if self.offline:
            wait_for_exit_record(folder)


def open_tracker(config: VCellConfig, run_directory: Path, rank: int, run_id: str | None = None):
    if rank != 0 or config.wandb.mode == "disabled":
        return NullTracker()
    return WandbTracker(config, run_directory, run_id or wandb_run_id(config.name))


def wandb_sync_command(run_directory: Path, run_id: str) -> str | None:
    """The exact `wandb sync` command for an offline run's folder (None when there is none)."""
    folders = sorted((run_directory / "wandb").glob(f"offline-run-*-{run_id}"))
    return f"wandb sync {folders[-1]}" if folders else None


class History:
    """Per-step rows of a run, rewritten whole (atomically) on `flush`: never a torn line."""

    def __init__(self, path: Path, resume_step: int = 0) -> None:
        self.path = path
        self.rows: list[dict] = [row for row in read_history(path) if int(row["step"]) <= resume_step]

    def append(self, row: dict) -> None:
        self.rows.append(row)

    def annotate(self, step: int, values: dict) -> None:
        """Add `values` (validation losses) to the row of `step`, or a row of their own."""
        row = next((row for row in reversed(self.rows) if int(row["step"]) == step), None)
        if row is None:
            self.rows.append({"step": step, **values})
        else:
            row.update(values)

    def flush(self) -> None:
        columns = list(FIRST_COLUMNS)
        for row in self.rows:
            columns += [key for key in row if key not in columns]
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.path, lambda stream: stream.write(text.getvalue().encode()))


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


# -- reading an offline W&B run back (no network, no W&B API: its `.wandb` file as written) ---------------
# The file is W&B's record log (the LevelDB log format): a 7-byte header (":W&B", magic 0xBEE1,
# version 0), then 32 KiB blocks of chunks, each a 7-byte header (crc32, length, kind) and a part of
# one protobuf `Record`; a record too long for the rest of a block continues in the next ones.
WANDB_HEADER = struct.Struct("<4sHB")
WANDB_CHUNK = struct.Struct("<IHB")
WANDB_BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list[bytes]:
    """The serialised records of a `.wandb` file, in order; a torn last record is left out."""
    data = path.read_bytes()
    if len(data) < WANDB_HEADER.size or WANDB_HEADER.unpack_from(data)[:2] != (b":W&B", 0xBEE1):
        raise VCellError(f"{path}: not a W&B run file", hint="give the run-*.wandb file of an offline run folder")
    records, parts, position = [], [], WANDB_HEADER.size
    while position + WANDB_CHUNK.size <= len(data):
        if WANDB_BLOCK - position % WANDB_BLOCK < WANDB_CHUNK.size:  # block trailer: zero padding
            position += WANDB_BLOCK - position % WANDB_BLOCK
            continue
        checksum, length, kind = WANDB_CHUNK.unpack_from(data, position)
        payload = data[position + WANDB_CHUNK.size: position + WANDB_CHUNK.size + length]
        position += WANDB_CHUNK.size + length
        if kind == 0 or len(payload) < length or zlib.crc32(payload, zlib.crc32(bytes([kind]))) != checksum:
            break  # padding or a record still being written
        parts = [payload] if kind in (FULL, FIRST) else [*parts, payload]
        if kind in (FULL, LAST):
            records.append(b"".join(parts))
    return records


def run_records(folder: str | Path) -> list | None:
    """The parsed records (W&B `Record` messages) of an offline run folder's newest `.wandb` file,
    in order; None when the folder has none."""
    from wandb.proto import wandb_internal_pb2

    files = sorted(Path(folder).glob("run-*.wandb"))
    if not files:
        return None
    records = []
    for raw in wandb_records(files[-1]):
        records.append(wandb_internal_pb2.Record())
        records[-1].ParseFromString(raw)
    return records


def last_record_kind(folder: Path) -> str | None:
    """The type of the last whole record of an offline run folder's `.wandb` file (None: none yet)."""
    records = run_records(folder)
    return records[-1].WhichOneof("record_type") if records else None


def wait_for_exit_record(folder: Path, timeout: float = EXIT_WAIT_SECONDS) -> bool:
    """Wait until the offline run's log ends in its exit record: W&B's writer process can still be
    flushing the last history row after `run.finish()` returns (a read-back right after a run once
    missed its last step), and "finished" should mean the file `wandb sync` uploads is whole."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if last_record_kind(folder) == "exit":
            return True
        time.sleep(0.05)
    log.warning("W&B offline run %s: no exit record %.0f s after finish; its last steps may be missing", folder, timeout)
    return False


def read_offline_run(folder: str | Path) -> dict:
    """What an offline W&B run folder (`<run>/wandb/offline-run-*`) logged: {"config": the run's
    config as logged, "history": one dict per logged step (W&B's `_step` and the values)}."""
    records = run_records(folder)
    if records is None:
        raise VCellError(f"{folder}: no run-*.wandb file", hint="give an offline-run-* folder under <run>/wandb/")
    config, history = {}, []
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind in ("run", "config"):  # the config comes with the run record, updates after it
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in updates})
    return {"config": config, "history": history}
