"""The seven built-in enhancements, one module each; each module ends with its `ENHANCEMENT`
(a `vcell.models.registry.Enhancement`), whose `install(slots, config, spec)` puts its modules
into the slots of the model being built (see `vcell.models.slots`).

`BUILTIN` lists them in install order, the one order every model is built in: encoders before
the encoder wrapper that fuses them (multiscale), dynamics before the memory that conditions
them, heads (stochastic likelihood, resource mean) any time. The registry registers them the
first time it is read; enhancements of your own are registered after them
(`register_enhancement`, see CONTRIBUTING.md).
"""

from __future__ import annotations

from vcell.config.model import ModelConfig
from vcell.models.catalogue import check_enhancements
from vcell.models.enhancements import hierarchical, memory, multiscale, regulatory, resource, stochastic, temporal
from vcell.models.registry import get_enhancement
from vcell.models.slots import Slots
from vcell.models.spec import ModelSpec

BUILTIN = tuple(module.ENHANCEMENT for module in (hierarchical, temporal, regulatory, stochastic, resource, multiscale, memory))


def install_enhancements(slots: Slots, config: ModelConfig, spec: ModelSpec) -> None:
    for name in check_enhancements(config.enhancements or ()):
        get_enhancement(name).install(slots, config, spec)
