"""The training step: every parameter in the graph (so DDP runs without unused-parameter
detection, its per-step graph walk and its warning), and padding handled so that a batch that is
all padding (a rank whose share of the epoch ended a batch early) never turns into NaN."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from tests.models.test_zoo import SPEC, random_batch
from vcell.config import load_config
from vcell.config.model import ModelConfig
from vcell.config.train import TrainConfig
from vcell.train.module import VCellModule, average_across_ranks, running_statistics, valid_rows

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def test_every_parameter_gets_a_gradient_in_a_batch_without_perturbed_cells():
    config = load_config(None, ["model.size=tiny"])
    batch = random_batch()
    batch["perturbation"].zero_(), batch["time"].zero_(), batch["hours_since_pulse"].fill_(float("nan"))  # all basal
    idle, losses = {}, {}
    for strategy in ("deepspeed", "ddp"):
        torch.manual_seed(0)
        module = VCellModule(config.model, SPEC, config.train.model_copy(update={"strategy": strategy}))
        torch.manual_seed(1)
        loss = module.training_step(batch, 0)
        loss.backward()
        idle[strategy] = [name for name, parameter in module.named_parameters() if parameter.grad is None]
        losses[strategy] = loss.detach()
    assert idle["deepspeed"], "the batch should leave the response path idle (else this test proves nothing)"
    assert idle["ddp"] == []  # DDP's strategy has find_unused_parameters=False: every parameter must take part
    assert torch.equal(losses["ddp"], losses["deepspeed"])  # the term adds exactly nothing


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
@pytest.mark.parametrize("name", ["base", "full"])
def test_an_all_padding_batch_gives_a_zero_loss_and_zero_gradients(name, strategy):
    torch.manual_seed(0)
    module = VCellModule(ModelConfig(name=name, size="tiny"), SPEC, TrainConfig(strategy=strategy))
    batch = random_batch()
    batch["valid"] = torch.zeros(len(batch["x"]), dtype=torch.bool)
    loss = module.training_step(batch, 0)
    loss.backward()
    assert loss.item() == 0.0
    gradients = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
    assert gradients and all(torch.equal(g, torch.zeros_like(g)) for g in gradients.values())
    if strategy == "ddp":  # the step takes part in DDP's gradient reduction like any other
        assert len(gradients) == len(list(module.parameters()))
    assert module.cells_in_step == 0


@pytest.mark.parametrize("name", ["base", "hierarchical", "regulatory"])
def test_an_all_padding_batch_leaves_the_running_statistics_as_they_were(name):
    """Its rows are cells wrapped around from the start of the rank's slice: counted once already."""
    after = {}
    for padding in (False, True):
        torch.manual_seed(0)
        module = VCellModule(ModelConfig(name=name, size="tiny"), SPEC, TrainConfig())
        before = [buffer.clone() for buffer in running_statistics(module.model)]
        batch = random_batch()
        batch["valid"] = torch.full((len(batch["x"]),), not padding)
        module.training_step(batch, 0)  # the first step: every statistic is due
        after[padding] = running_statistics(module.model)
        deviation = getattr(module.model.readouts[0], "deviation", None) if name == "hierarchical" else None
        if deviation is not None:
            assert int(deviation.training_steps) == 1  # the step still counts (resume parity)
            assert int(deviation.updates) == (0 if padding else 1)
    assert not all(torch.equal(a, b) for a, b in zip(before, after[False]))  # real cells move them
    assert all(torch.equal(a, b) for a, b in zip(before, after[True]))


def test_padding_rows_are_left_out_of_a_partly_padded_batch():
    torch.manual_seed(0)
    module = VCellModule(ModelConfig(name="base", size="tiny"), SPEC, TrainConfig())
    batch = random_batch()
    batch["valid"] = torch.arange(len(batch["x"])) < 20
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and module.cells_in_step == 20


def transformer_config(**overrides):
    """A tiny transformer's config; keys without a section are train.<key>."""
    return load_config(None, ["model.encoder=transformer", "model.transformer.size=tiny", "model.transformer.context_length=32",
                              *[f"{k if '.' in k else 'train.' + k}={v}" for k, v in overrides.items()]])


def test_a_training_step_counts_cells_gene_tokens_and_flops():
    config = transformer_config()
    torch.manual_seed(0)
    module = VCellModule(config.model, SPEC, config.train)
    batch = random_batch()
    batch["valid"] = torch.arange(len(batch["x"])) < 20
    module.training_step(batch, 0)
    assert module.cells_in_step == 20 and module.tokens_in_step == 20 * 32  # every cell fills the context
    response_free = module.model.training_flops(module.model(valid_rows(batch)))  # the same formula, per cell
    assert module.flops_in_step == pytest.approx(response_free) and module.flops_in_step > 0


@pytest.mark.skipif(not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++")),
                    reason="torch.compile (Inductor) needs a C++ compiler on CPU")
def test_compiled_blocks_train_a_step_like_eager():
    """train.compile: Inductor builds the transformer block once (40-120 s on this shared CPU) and
    the step computes what eager does (the same masks: only the blocks are compiled)."""
    batch = random_batch()
    results = []
    for compile_ in (False, True):
        config = transformer_config(compile=compile_, **{"model.transformer.layers": 1})
        torch.manual_seed(0)
        module = VCellModule(config.model, SPEC, config.train)
        torch.manual_seed(1)
        loss = module.training_step(batch, 0)
        loss.backward()
        results.append((loss.detach(), {name: p.grad for name, p in module.named_parameters()}))
    (loss, gradients), (compiled_loss, compiled_gradients) = results
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-6)
    for name, gradient in gradients.items():
        torch.testing.assert_close(compiled_gradients[name], gradient, rtol=1e-3, atol=1e-6, msg=name)


def average_on_two_ranks(rank: int, rendezvous: str, folder: str) -> None:
    """Rank `rank` of a 2-process gloo group: its own running statistics in, the averaged ones saved."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        level = torch.tensor([1.0, 3.0, -2.0]) * (rank + 1)  # rank 0: [1, 3, -2], rank 1: [2, 6, -4]
        seen = torch.tensor([rank == 0, False, True])  # a gene only rank 0 saw perturbed, one neither, one both
        average_across_ranks([level, seen])
        torch.save({"level": level, "seen": seen}, os.path.join(folder, f"rank-{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_running_statistics_are_averaged_across_ranks_so_every_rank_uses_the_whole_batch(tmp_path):
    """Each rank updates the regulatory network's running statistics from its own cells; after a step
    every rank holds their mean (a bool: true if any rank's is), whatever the strategy."""
    torch.multiprocessing.spawn(average_on_two_ranks, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank-{rank}.pt", weights_only=True) for rank in range(2)]
    for state in ranks:
        assert torch.allclose(state["level"], torch.tensor([1.5, 4.5, -3.0]))
        assert state["level"].dtype == torch.float32
        assert state["seen"].tolist() == [True, False, True]


def test_running_statistics_are_the_regulatory_buffers_and_stay_as_they_are_on_one_process():
    config = load_config(None, ["model.size=tiny", "model.name=regulatory", "model.enhancements=[regulatory]"])
    module = VCellModule(config.model, SPEC, config.train)
    buffers = running_statistics(module.model)
    propagation = next(m for m in module.model.modules() if hasattr(m, "level_reliability"))
    detected = module.model.head.detected_level.sums  # a squared-error model's detected level (its running sums)
    trained_rows = module.model.dynamics.trained_cells  # the perturbation shift's rows that training cells carried
    assert [id(b) for b in buffers] == [id(trained_rows), id(detected), id(propagation.level_sd),
                                        id(propagation.level_reliability), id(propagation.intervened)]
    before = [b.clone() for b in buffers]
    average_across_ranks(buffers)  # no process group: a plain single-process run is untouched
    assert all(torch.equal(a, b) for a, b in zip(before, buffers))
    base = load_config(None, ["model.size=tiny", "model.name=base", "model.enhancements=[]"])
    base_model = VCellModule(base.model, SPEC, base.train).model
    assert [id(b) for b in running_statistics(base_model)] == [id(base_model.dynamics.trained_cells),
                                                                id(base_model.head.detected_level.sums),
                                                                id(base_model.gene_knock.sums)]  # the measured knock-down
    counting = load_config(None, ["model.size=tiny", "model.name=stochastic"])
    counting_model = VCellModule(counting.model, SPEC, counting.train).model  # count models keep a detected level too
    assert [id(b) for b in running_statistics(counting_model)] == [id(counting_model.dynamics.trained_cells),
                                                                    id(counting_model.head.detected_level.sums),
                                                                    id(counting_model.gene_knock.sums)]
    poisson = load_config(None, ["model.size=tiny", "model.name=resource"])
    poisson_model = VCellModule(poisson.model, SPEC, poisson.train).model  # the Poisson's dispersion moments too
    assert [id(b) for b in running_statistics(poisson_model)] == [
        id(poisson_model.dynamics.trained_cells), id(poisson_model.head.likelihood.moments),
        id(poisson_model.head.detected_level.sums), id(poisson_model.gene_knock.sums)]
    # the hierarchical read-out's deviation moments are averaged too (the step counts agree on every rank)
    hierarchical = load_config(None, ["model.size=tiny", "model.name=hierarchical"])
    model = VCellModule(hierarchical.model, SPEC, hierarchical.train).model
    moments = next(m for m in model.modules() if hasattr(m, "sum_square"))
    assert [id(b) for b in running_statistics(model)] == [id(model.dynamics.trained_cells), id(model.head.detected_level.sums),
                                                          id(moments.residual_mean), id(moments.sum_square), id(moments.square_sum),
                                                          id(model.gene_knock.sums)]
