"""Make the atlas a job needs when it is missing; reuse it when it was made the same way."""

from __future__ import annotations

import logging
from pathlib import Path

from vcell.atlas.store import open_atlas
from vcell.config.schema import BuildConfig, DataConfig
from vcell.errors import VCellError

log = logging.getLogger(__name__)


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
