"""Every slot of every catalogue model meets its protocol (vcell.models.contracts); optional
capabilities are declared, never probed for; enhancements compose through declared hooks."""

from __future__ import annotations

from pathlib import Path

import pytest

import vcell
from vcell.models import contracts
from vcell.models.catalogue import CATALOGUE
from vcell.models.enhancements.memory import PulseMemory
from vcell.models.enhancements.temporal import StimulusResponse

from tests.models.test_zoo import random_batch, tiny

SLOTS = {"encoder": contracts.Encoder, "latent": contracts.Latent, "dynamics": contracts.Dynamics,
         "decoder": contracts.Decoder, "head": contracts.Head}


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_every_slot_meets_its_protocol(name):
    model = tiny(name)
    for slot, protocol in SLOTS.items():
        assert isinstance(getattr(model, slot), protocol), f"{name}: {slot} is not a {protocol.__name__}"
    for term in model.gene_terms:
        assert isinstance(term, contracts.GeneTerm), f"{name}: {type(term).__name__}"
    for auxiliary in model.auxiliary:
        assert isinstance(auxiliary, contracts.Auxiliary), f"{name}: {type(auxiliary).__name__}"
    for readout in model.readouts:
        assert isinstance(readout, contracts.Readout), f"{name}: {type(readout).__name__}"
    if model.head.likelihood is not None:
        assert isinstance(model.head.likelihood, contracts.CountLikelihood)
        assert isinstance(model.head.mean_model, contracts.MeanModel)


def test_memory_attaches_through_the_temporal_hook():
    def response(model):
        (term,) = [term for term in model.gene_terms if isinstance(term, StimulusResponse)]
        return term

    model = tiny("temporal+memory")
    assert isinstance(response(model), contracts.AcceptsMemory)
    assert isinstance(response(model).memory, PulseMemory) and isinstance(response(model).memory, contracts.MemoryHook)
    assert response(tiny("temporal")).memory is None


def test_tick_advances_only_a_scheduled_latent():
    batch = random_batch()
    stochastic, base = tiny("stochastic", stochastic={"variational": True}).train(), tiny("base").train()
    stochastic(batch), base(batch)
    assert int(stochastic.latent.steps) == 1
    stochastic.eval()(batch)
    assert int(stochastic.latent.steps) == 1  # evaluation forwards are not training steps


def test_no_capability_is_probed_with_hasattr():
    package = Path(vcell.__file__).parent
    files = [*(package / "models").rglob("*.py"), package / "evaluate" / "representation.py"]
    probes = [f"{path.relative_to(package)}:{number}" for path in files
              for number, line in enumerate(path.read_text().splitlines(), 1) if "hasattr(" in line]
    assert not probes, f"declare the capability in vcell/models/contracts.py instead: {probes}"
