"""The latent response loss (`model.latent_response_weight`): a perturbed target at rest is asked to
be encoded where the mechanism moved its control cell's state (`vcell.models.model.latent_gap`)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.models.test_zoo import random_batch, tiny, with_one_more_loss
from vcell.models.model import latent_gap


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), dims=st.integers(1, 6), moved_bits=st.integers(0, 2**12 - 1), seed=st.integers(0, 99))
def test_latent_gap_is_the_mean_squared_distance_over_moved_targets_only(rows, dims, moved_bits, seed):
    rng = np.random.default_rng(seed)
    target = torch.tensor(rng.normal(size=(rows, dims)), requires_grad=True)
    state = torch.tensor(rng.normal(size=(rows, dims)), requires_grad=True)
    moved = torch.tensor([(moved_bits >> row) & 1 == 1 for row in range(rows)])
    gap = latent_gap(target, state, moved)
    kept = moved.numpy()
    distances = ((target.detach().numpy() - state.detach().numpy()) ** 2).sum(1)
    expected = distances[kept].mean() if kept.any() else 0.0
    np.testing.assert_allclose(gap.item(), expected, rtol=1e-10, atol=1e-12)
    gap.backward()
    # a basal (unmoved) target is never pulled; a moved one is pulled towards its state and back
    assert (target.grad[~moved] == 0).all() and (state.grad[~moved] == 0).all()
    torch.testing.assert_close(target.grad, -state.grad)


def test_the_latent_loss_trains_the_encoder_and_the_mechanism_and_is_off_at_zero():
    model, plain = tiny("base", latent_response_weight=0.5), tiny("base", latent_response_weight=0.0)
    output = with_one_more_loss(model, plain, random_batch(), "response_latent")  # the other terms exactly as they were
    model.zero_grad()
    output.losses["response_latent"].backward()
    touched = {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"encoder", "latent", "dynamics"} <= touched and "decoder" not in touched, touched


def test_only_perturbed_targets_at_rest_are_pulled(monkeypatch):
    """Basal cells paired with basal cells (response_basal_targets) are not pulled together: that
    pull would cluster cells by their context label alone. Stimulated and primed cells are left to
    their mechanisms (temporal, memory), which read the state the pull would move."""
    import vcell.models.model as model_module

    seen = []
    monkeypatch.setattr(model_module, "latent_gap", lambda target, state, moved: seen.append(moved) or state.sum() * 0)
    batch = random_batch()
    tiny("base", latent_response_weight=1.0)(batch)
    (moved,) = seen
    at_rest = (batch["time"] == 0) & torch.isnan(batch["hours_since_pulse"])
    expected = (batch["perturbation"] != 0) & at_rest
    assert 0 < int(expected.sum()) < int((~at_rest | (batch["perturbation"] != 0)).sum())  # the batch has both kinds
    assert len(moved) == len(batch["x"]) and torch.equal(moved, expected)  # every cell is a target here
