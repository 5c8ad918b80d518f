"""The gene-token transformer encoder: composes with every catalogue entry, keeps hidden values
hidden, ignores padding, checkpoints without changing gradients, runs in bf16, and its FLOPs
formula matches a counted forward and backward (for the MLP encoder too)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from tests.models.test_contracts import SLOTS
from tests.models.test_zoo import SPEC, check_statistics, random_batch, without_gradient
from vcell.config.model import ModelConfig
from vcell.models.catalogue import CATALOGUE
from vcell.models.inputs import CellInputs, Conditions
from vcell.models.spec import reference_spec
from vcell.models.transformer import TransformerEncoder, select_tokens
from vcell.models.zoo import build_model, count_parameters

TINY = {"size": "tiny", "context_length": 48}


def tiny_transformer(name: str = "base", seed: int = 0, **transformer) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = ModelConfig(name=name, size="tiny", encoder="transformer", transformer={**TINY, **transformer})
    return build_model(config, SPEC)


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None}


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_every_catalogue_model_runs_with_the_transformer_encoder(name):
    model = tiny_transformer(name).train()
    assert any(isinstance(module, TransformerEncoder) for module in model.encoder.modules())  # maybe wrapped
    for slot, protocol in SLOTS.items():
        assert isinstance(getattr(model, slot), protocol), slot
    output = model(random_batch())
    assert {"reconstruction", "response", "masked_value"} <= set(output.losses)
    assert all(torch.isfinite(value) for value in output.losses.values())
    output.loss.backward()
    missing = without_gradient(model)
    assert not missing, f"no gradient reaches {missing}"
    check_statistics(model, output, len(output.latent))
    assert (output.stats["gene_tokens"] == TINY["context_length"]).all()  # these cells express more genes


def test_tokens_are_the_top_expressed_genes_and_zeros_pad():
    x = torch.tensor([[0.0, 3.0, 1.0, 0.0, 2.0, 5.0], [0.0, 0.0, 4.0, 0.0, 0.0, 0.0]])
    genes, values, is_hidden, is_token = select_tokens(x, None, context_length=3)
    assert genes.shape == (2, 3) and not is_hidden.any()
    assert set(genes[0].tolist()) == {5, 1, 4}  # the top three by value; gene 2 (1.0) is dropped
    assert sorted(values[0].tolist()) == [2.0, 3.0, 5.0]
    assert is_token[1].tolist().count(True) == 1 and genes[1][is_token[1]].tolist() == [2]
    assert (values[1][~is_token[1]] == 0).all()
    _, _, _, short = select_tokens(x, None, context_length=100)
    assert short.shape == (2, 4)  # as long as the most tokens of any cell, not the context


def encoder_input(n_cells: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (B, G) with ~half the genes expressed, a hidden mask over a third of the expressed ones)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n_cells, SPEC.n_genes, generator=generator) * 4
    x = x * (torch.rand(x.shape, generator=generator) < 0.5)
    hidden = (x > 0) & (torch.rand(x.shape, generator=generator) < 0.33)
    return x, hidden


def cells_of(x: torch.Tensor, hidden: torch.Tensor | None) -> CellInputs:
    return CellInputs(x=x, counts=None, library=x.new_ones(len(x)), context=None, conditions=Conditions(), hidden=hidden)


@pytest.mark.parametrize("context_length", [200, 16], ids=["whole-cell", "crowded-context"])
def test_hidden_genes_values_do_not_reach_the_encoder(context_length):
    """Changing the true values of hidden genes changes nothing the encoder computes (token choice
    included, even in a crowded context), only the masked-value loss that scores them."""
    torch.manual_seed(0)
    encoder = TransformerEncoder(SPEC.n_genes, ModelConfig(encoder="transformer", transformer={
        **TINY, "context_length": context_length}).transformer).train()
    x, hidden = encoder_input()
    changed = torch.where(hidden, x * 3 + 1, x)
    x_in = x.masked_fill(hidden, 0.0)
    results = []
    for truth in (x, changed):
        torch.manual_seed(1)  # the same random ranks for hidden genes
        results.append(encoder(x_in, cells_of(truth, hidden)))
    (h, losses, stats), (h_changed, losses_changed, _) = results
    assert torch.equal(h, h_changed)
    assert losses["masked_value"] != losses_changed["masked_value"]
    assert (stats["gene_tokens"] <= context_length).all()


def test_padding_does_not_change_a_cells_state():
    torch.manual_seed(0)
    encoder = TransformerEncoder(SPEC.n_genes, ModelConfig(encoder="transformer", transformer=TINY).transformer).eval()
    x, _ = encoder_input(n_cells=2)
    x[0, 10:] = 0.0  # cell 0 has few genes: padded beside cell 1
    alone, _, _ = encoder(x[:1], cells_of(x[:1], None))
    together, _, stats = encoder(x, cells_of(x, None))
    assert stats["gene_tokens"][0] < stats["gene_tokens"][1]
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-6)


def test_activation_checkpointing_gives_the_same_gradients():
    batch = random_batch()
    results = []
    for checkpointing in (False, True):
        model = tiny_transformer("full", dropout=0.1, activation_checkpointing=checkpointing).train()
        torch.manual_seed(5)  # the same masks and dropout draws (checkpoint replays the RNG state)
        output = model(batch)
        output.loss.backward()
        results.append((output.loss.detach(), gradients(model)))
    (loss, plain), (loss_checkpointed, checkpointed) = results
    assert torch.equal(loss, loss_checkpointed) and plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("encoder", ["transformer", "mlp"])
def test_bf16_autocast_trains_close_to_fp32(encoder):
    batch = random_batch()
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_transformer() if encoder == "transformer" else build_model(ModelConfig(size="tiny"), SPEC)
        model.train()
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            output = model(batch)
        output.loss.backward()
        assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        losses[dtype] = float(output.loss.detach())
    assert losses[torch.bfloat16] == pytest.approx(losses[torch.float32], rel=0.03)


def pretraining_batch(n_cells: int, n_expressed: int) -> dict[str, torch.Tensor]:
    """Cells without conditions (no response pass), each with exactly `n_expressed` genes expressed."""
    generator = torch.Generator().manual_seed(0)
    x = torch.zeros(n_cells, SPEC.n_genes)
    for row in range(n_cells):
        genes = torch.randperm(SPEC.n_genes, generator=generator)[:n_expressed]
        x[row, genes] = torch.rand(n_expressed, generator=generator) * 4 + 0.5
    return {"x": x, "library_size": torch.full((n_cells,), 1000.0)}


@pytest.mark.parametrize("settings", [
    {"encoder": "mlp", "size": "tiny"},
    {"encoder": "transformer", "transformer": {**TINY, "context_length": 32}},
    {"encoder": "transformer", "transformer": {**TINY, "context_length": 64, "activation_checkpointing": True}},
], ids=["mlp", "transformer", "transformer-checkpointed"])
def test_flops_formula_matches_a_counted_forward_and_backward(settings):
    torch.manual_seed(0)
    model = build_model(ModelConfig(response_weight=0.0, **settings), SPEC).train()
    batch = pretraining_batch(n_cells=16, n_expressed=40)
    aten = torch.ops.aten
    # torch counts the GPU attention kernels but not the CPU one: the same formulas for it
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, **__: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda grad, q, k, v, *_, **__: sdpa_backward_flop_count(grad, q, k, v),
    }
    with FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        output = model(batch)
        output.loss.backward()
    formula = model.training_flops(output)
    # not exact for the transformer: torch counts attention's backward as 2.5 x its forward (flash
    # recomputes the scores), the formula as 2 x (the MFU convention): 2% here (vcell.models.flops)
    assert formula == pytest.approx(counter.get_total_flops(), rel=0.03)


def test_presets_have_the_advertised_sizes_at_20000_genes():
    spec = reference_spec(20000)
    expected = {"10m": 10e6, "100m": 100e6, "1b": 1e9}
    for size, target in expected.items():
        config = ModelConfig(encoder="transformer", transformer={"size": size})
        parameters = count_parameters(build_model(config, spec, device="meta"))
        assert 0.9 * target <= parameters <= 1.1 * target, (size, parameters)


@pytest.mark.parametrize("settings, message", [
    ({"encoder": "attention"}, r"encoder\n  Input should be 'mlp' or 'transformer'"),
    ({"transformer": {"width": 30, "heads": 4}}, r"width 30 is not divisible by heads 4"),
    ({"transformer": {"context": 10}}, r"transformer.context\n  Extra inputs are not permitted"),
])
def test_transformer_settings_are_strict(settings, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig(**settings)


def test_mlp_default_is_unchanged():
    config = ModelConfig()
    assert config.encoder == "mlp" and config.dimensions() == (256, 2, 32)
    torch.manual_seed(0)
    assert count_parameters(build_model(ModelConfig(size="tiny"), SPEC)) == count_parameters(
        build_model(ModelConfig(size="tiny", transformer={"size": "1b"}), SPEC))  # its section is read only when chosen
