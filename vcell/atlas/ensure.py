"""Make the atlas a job needs when it is missing; reuse it when it was made the same way.

A job (train, tune) simulates an atlas only at the demo path the shipped config names
(`data/demo.zarr`, DataConfig's default): any other missing `data.atlas` is most likely a typo,
and simulating 20,000 cells there would train on the wrong data without a word. A dry run
never writes, so it never simulates.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

from vcell.atlas.store import open_atlas
from vcell.config.schema import BuildConfig, DataConfig
from vcell.errors import VCellError

log = logging.getLogger(__name__)
DEMO_ATLAS = DataConfig.model_fields["atlas"].default  # "data/demo.zarr", named by configs/experiments/quickstart.yaml


def is_demo_atlas(path: str | Path) -> bool:
    return Path(path).resolve() == Path(DEMO_ATLAS).resolve()


def job_atlas(data: DataConfig, build: BuildConfig, *, dry_run: bool = False, progress: bool = True) -> Path:
    """The atlas at `data.atlas` for a job: there already, or (only the demo atlas) simulated now."""
    path = Path(data.atlas)
    if path.exists():
        return path
    if not (is_demo_atlas(path) and data.synthesize_if_missing):
        raise missing_atlas(path)
    if dry_run:
        raise VCellError(f"the demo atlas {path} does not exist yet, and a dry run writes nothing",
                         hint="make it first with `vcell atlas synth` (about a minute), or run without --dry-run")
    log.info("simulating the demo atlas %s (%d cells x %d genes, data.synth): it is missing, and data.atlas is the "
             "demo path", path, data.synth.cells, data.synth.genes)
    return ensure_synthetic_atlas(data, build, progress=progress)


def missing_atlas(path: Path) -> VCellError:
    """'atlas not found', with the closest existing *.zarr beside it and how to make one."""
    siblings = [p.name for p in path.parent.glob("*.zarr")] if path.parent.is_dir() else []
    close = difflib.get_close_matches(path.name, siblings, n=1)
    guess = f" (did you mean {path.parent / close[0]}?)" if close else ""
    return VCellError(
        f"atlas not found: {path}{guess}",
        hint=f"point data.atlas at an existing atlas; make one with `vcell atlas build INPUT.h5ad --out {path}` "
        f"or simulate one with `vcell atlas synth --out {path}` (only the demo path {DEMO_ATLAS} is simulated "
        "automatically)",
    )


def ensure_synthetic_atlas(data: DataConfig, build: BuildConfig, *, progress: bool = True) -> Path:
    """The atlas at `data.atlas`: reused if complete and simulated with `data.synth`, else made.

    A different atlas at that path is never silently replaced: that needs `build.overwrite`.
    """
    from vcell.atlas.synth import synthesize_atlas  # the simulator is only needed to make one

    path = Path(data.atlas)
    if not path.exists() or build.overwrite:
        if not data.synthesize_if_missing and not path.exists():
            raise VCellError(f"atlas not found: {path}", hint="build it with `vcell atlas build`, or set data.synthesize_if_missing=true")
        return synthesize_atlas(path, data.synth, build, progress=progress)
    atlas = open_atlas(path)
    wanted = data.synth.model_dump(mode="json")
    recorded = [s.get("config") for s in atlas.attrs["sources"] if s.get("kind") == "simulator"]
    if recorded != [wanted]:
        raise VCellError(
            f"{path} exists but was not simulated with the requested settings (data.synth)",
            hint="pass --overwrite to replace it, or point data.atlas at another path",
        )
    log.info("reusing the simulated atlas %s", path)
    return path
