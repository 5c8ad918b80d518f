"""Everything a run can get wrong that needs no training, checked before anything is written.

    preflight(config, atlas)      # `vcell train --dry-run` and every real start, before Ray

A mistake found here costs seconds and leaves no run folder behind; found in a worker it costs a
cluster start and a retry. The checks: the atlas's metadata against the checksums its build
recorded (every recorded file present, the small ones hashed; `vcell atlas validate` hashes the
rest), the loader's label columns, the split (held-out groups that exist; a training split with
at least one batch per worker), that the run folder can be created, and a `train.init_from`
source (a model folder of the same model sharing enough genes).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from vcell.atlas.store import Atlas
from vcell.config.schema import VCellConfig
from vcell.data.loader import fills_a_batch
from vcell.data.resolve import resolve_normalization, select_genes
from vcell.data.split import SPLITS, assign_splits
from vcell.errors import VCellError
from vcell.files import sha256_file
from vcell.train.run import run_directory


def preflight(config: VCellConfig, atlas: Atlas) -> dict[str, str]:
    """Raises on the first problem; else what the dry run shows of the checks ({'init_from': line} or {})."""
    check_atlas_metadata(atlas)
    check_labels(config, atlas)
    check_loader_values(config, atlas)
    check_split(config, atlas)
    check_storage(run_directory(config))
    return {"init_from": check_init_from(config, atlas)} if config.train.init_from else {}


def check_init_from(config: VCellConfig, atlas: Atlas) -> str:
    """train.init_from: a model folder of the same model sharing enough genes (`init_from.prepare`);
    the source and its coverage of this atlas, for people."""
    from vcell.train.model_folder import model_categories
    from vcell.train.init_from import preview_line
    from vcell.train.training_plan import model_spec

    return preview_line(config, model_spec(config, atlas), model_categories(config, atlas))


def check_atlas_metadata(atlas: Atlas) -> None:
    """Every file the build recorded exists; metadata (zarr.json files, everything outside the
    shards: vocabulary, statistics, annotations, truth) still has its recorded sha256."""
    recorded: dict[str, str] = atlas.attrs.get("checksums", {})
    missing = [name for name in recorded if not (atlas.path / name).is_file()]
    changed = [name for name, digest in recorded.items() if name not in missing
               and (name.endswith("zarr.json") or not name.startswith("shards/"))
               and sha256_file(atlas.path / name) != digest]
    if missing or changed:
        shown = ", ".join((missing + changed)[:5]) + (" ..." if len(missing) + len(changed) > 5 else "")
        raise VCellError(
            f"atlas {atlas.path} is damaged: {len(missing)} recorded file(s) missing, {len(changed)} changed ({shown})",
            hint=f"run `vcell atlas validate {atlas.path}` for the whole report, then rebuild the atlas",
        )


def check_labels(config: VCellConfig, atlas: Atlas) -> None:
    columns = list(atlas.attrs["obs_columns"])
    unknown = [label for label in config.loader.labels if label not in columns]
    if unknown:
        raise VCellError(f"loader.labels: {', '.join(unknown)} not among the obs columns of {atlas.path}",
                         hint=f"the atlas has: {', '.join(columns)}")


def check_loader_values(config: VCellConfig, atlas: Atlas) -> None:
    """The gene selection and normalisation the loader would refuse in every worker (genes not in
    the atlas; library-size scaling of already normalised values; z-scores without statistics)."""
    resolve_normalization(atlas, config.loader.normalize, select_genes(atlas, config.loader.genes))


def check_split(config: VCellConfig, atlas: Atlas) -> None:
    """Held-out groups must exist (`assign_splits` names the missing ones); each worker needs at
    least one whole batch of training cells."""
    codes = assign_splits(atlas, config.loader.split)
    n_train = atlas.n_cells if codes is None else int(np.count_nonzero(codes == SPLITS.index("train")))
    workers, batch = config.scaling.workers, config.loader.batch_size
    if not fills_a_batch(n_train, workers, batch):  # the loader's own rule, applied before any worker
        raise VCellError(
            f"loader.batch_size={batch} is larger than the training split per worker: {n_train:,} training "
            f"cells over scaling.workers={workers} is {n_train // workers:,} each",
            hint="lower loader.batch_size or scaling.workers, or hold out fewer cells (loader.split)",
        )


def check_storage(directory: Path) -> None:
    """The run folder could be created: its nearest existing ancestor is a folder we can write in
    (probed with a temporary file that is gone at once: a dry run writes nothing)."""
    ancestor = directory
    while not ancestor.exists():
        ancestor = ancestor.parent
    try:
        if not ancestor.is_dir():
            raise NotADirectoryError(20, "not a folder", str(ancestor))
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise VCellError(
            f"the driver cannot write the run folder {directory}: {ancestor}: {error.strerror or error}",
            hint="set scaling.storage_path to a folder every worker can write (a shared filesystem on clusters)",
        ) from None
