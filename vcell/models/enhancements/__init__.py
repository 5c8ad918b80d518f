"""The seven enhancements. Each module has `install(slots, config, spec)`, which puts its
modules into the slots of the model being built (see `vcell.models.slots`).

`install_enhancements` runs them in the catalogue's order after `check_enhancements` (the one
place combinations are checked), so every valid set builds the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from vcell.config.model import ModelConfig
from vcell.models.catalogue import check_enhancements
from vcell.models.enhancements import hierarchical, memory, multiscale, regulatory, resource, stochastic, temporal
from vcell.models.slots import Slots
from vcell.models.spec import ModelSpec

INSTALLERS: dict[str, Callable[[Slots, ModelConfig, ModelSpec], None]] = {
    "hierarchical": hierarchical.install,
    "temporal": temporal.install,
    "regulatory": regulatory.install,
    "stochastic": stochastic.install,
    "resource": resource.install,
    "multiscale": multiscale.install,
    "memory": memory.install,
}


def install_enhancements(slots: Slots, config: ModelConfig, spec: ModelSpec) -> None:
    for name in check_enhancements(config.enhancements or ()):
        INSTALLERS[name](slots, config, spec)

