"""The catalogue as models: every entry builds as the one VirtualCell, trains, and keeps its
contracts (named finite losses, declared statistics, gradients everywhere); enhancement sets are
validated with clear messages; each enhancement's head behaves as its biology says."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

import vcell.models
from vcell.config import load_config
from vcell.config.loader import PACKAGE_CONFIGS
from vcell.config.model import ModelConfig
from vcell.errors import VCellError
from vcell.models.catalogue import CATALOGUE, enhancement_order
from vcell.models.enhancements.hierarchical import HierarchicalEncoder
from vcell.models.enhancements.resource import CapacityAllocation
from vcell.models.enhancements.stochastic import DISPERSION_STEP_SCALE, NegativeBinomialLikelihood, VariationalLatent
from vcell.models.inputs import CellInputs, Conditions, ModelOutput, Prediction
from vcell.models.model import VirtualCell
from vcell.models.spec import reference_spec
from vcell.models.zoo import build_model, count_parameters, describe_catalogue, slot_table

SPEC = reference_spec(n_genes=120, n_perturbations=8)
N_CELLS = 48
N_CELL_TYPES = 3


def random_batch(seed: int = 0, n_cells: int = N_CELLS) -> dict[str, torch.Tensor]:
    """A loader-like batch: the first 3 cells of each type are basal (control, t=0, naive), so every
    context has partners for the response loss; the rest are perturbed / stimulated / primed at random."""
    rng = np.random.default_rng(seed)
    counts = rng.negative_binomial(2, 2 / (2 + rng.gamma(1.0, 3.0, SPEC.n_genes)), (n_cells, SPEC.n_genes))
    counts[:, 0] += 1  # no empty cell
    library = counts.sum(1)
    x = np.log1p(counts / library[:, None] * 1e4)
    cell_type = rng.integers(0, N_CELL_TYPES, n_cells)
    cell_type[: 3 * N_CELL_TYPES] = np.repeat(np.arange(N_CELL_TYPES), 3)
    perturbation = np.where(rng.random(n_cells) < 0.4, 0, rng.integers(1, SPEC.n_perturbations, n_cells))  # codes 1..8
    time = rng.choice([0.0, 1.0, 4.0], n_cells)
    hours_since_pulse = np.where(rng.random(n_cells) < 0.3, rng.uniform(2.0, 30.0, n_cells), np.nan)
    basal = slice(0, 3 * N_CELL_TYPES)
    perturbation[basal], time[basal], hours_since_pulse[basal] = 0, 0.0, np.nan
    return {
        "x": torch.as_tensor(x, dtype=torch.float32),
        "counts": torch.as_tensor(counts, dtype=torch.float32),
        "library_size": torch.as_tensor(library, dtype=torch.float32),
        "cell_type": torch.as_tensor(cell_type, dtype=torch.int64),
        "perturbation": torch.as_tensor(perturbation, dtype=torch.int64),
        "time": torch.as_tensor(time, dtype=torch.float32),
        "hours_since_pulse": torch.as_tensor(hours_since_pulse, dtype=torch.float32),
    }


def with_one_more_loss(model: VirtualCell, plain: VirtualCell, batch: dict[str, torch.Tensor], added: str):
    """`model`'s output on `batch`, checked against `plain`'s (the same masks and pairs for both):
    it has the one loss `added` more, and every other term is exactly the plain model's."""
    torch.manual_seed(1)
    output = model(batch)
    torch.manual_seed(1)
    reference = plain(batch)
    assert set(output.losses) == set(reference.losses) | {added}
    for name, loss in reference.losses.items():
        torch.testing.assert_close(output.losses[name], loss)
    return output


def without_gradient(model: VirtualCell) -> list[str]:
    """The trainable parameters the last backward pass gave no gradient. A residual route's basis is
    exempt while every loading is 0, its start (`vcell.models.residual`): it learns from the step after."""
    idle_bases = {f"residuals.{i}.basis" for i, route in enumerate(model.residuals) if not route.loading.any()}
    return [name for name, parameter in model.named_parameters()
            if parameter.requires_grad and name not in idle_bases
            and (parameter.grad is None or not (parameter.grad != 0).any())]


def tiny(name: str, enhancements: list[str] | None = None, **settings) -> VirtualCell:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, enhancements=enhancements, size="tiny", **settings), SPEC)


def symbol_sizes(model: VirtualCell, n_cells: int) -> dict[str, int]:
    latent = model.config.dimensions()[2]
    return {
        "B": n_cells, "G": SPEC.n_genes, "P": len(SPEC.pathway_names), "C": len(SPEC.compartment_names),
        "D": latent, "E": len(SPEC.grn), "S": 2,
    }


def check_statistics(model: VirtualCell, output: ModelOutput, n_cells: int) -> None:
    declared, sizes = model.stat_shapes(), symbol_sizes(model, n_cells)
    assert set(output.stats) <= set(declared), f"undeclared statistics {set(output.stats) - set(declared)}"
    for name, value in output.stats.items():
        shape = declared[name]
        assert value.dim() == len(shape), f"{name}: {tuple(value.shape)} vs {shape}"
        for symbol, size in zip(shape, value.shape):
            if symbol == "R":  # cells moved by the dynamics: some of the batch
                assert 1 <= size <= n_cells, name
            else:
                assert size == sizes[symbol], f"{name}: {symbol} is {size}, expected {sizes[symbol]}"
        assert torch.isfinite(value).all(), name


# -- every catalogue entry ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CATALOGUE))
def test_catalogue_model_runs_forward_and_backward(name):
    model = tiny(name)
    assert type(model) is VirtualCell
    assert tuple(model.config.enhancements) == CATALOGUE[name]
    model.train()
    output = model(random_batch())
    assert isinstance(output, ModelOutput)
    assert output.latent.shape == (N_CELLS, model.config.dimensions()[2])
    assert output.expression.shape == (N_CELLS, SPEC.n_genes)
    assert {"reconstruction", "response"} <= set(output.losses)
    for term, value in output.losses.items():
        assert value.dim() == 0 and torch.isfinite(value), term
    output.loss.backward()
    missing = without_gradient(model)
    assert not missing, f"no gradient reaches {missing}"
    check_statistics(model, output, N_CELLS)
    # this batch has response pairs, so every statistic the model declares is emitted
    assert set(output.stats) == set(model.stat_shapes())


def test_full_model_emits_every_enhancements_statistics():
    union: set[str] = set()
    for name in CATALOGUE:
        if name != "full":
            union |= set(tiny(name).stat_shapes())
    assert set(tiny("full").stat_shapes()) == union


@pytest.mark.parametrize(
    "enhancements", [["regulatory", "stochastic"], ["multiscale", "resource"], ["hierarchical", "memory", "temporal"]],
    ids=lambda e: "+".join(e),
)
def test_combinations_outside_the_catalogue_build_and_learn(enhancements):
    model = tiny("custom", enhancements)
    assert type(model) is VirtualCell
    assert model.config.enhancements == [name for name in enhancement_order() if name in enhancements]  # install order
    batch = random_batch(seed=1)
    before = model.embed(batch).losses["reconstruction"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(25):
        optimizer.zero_grad()
        output = model(batch)
        assert torch.isfinite(output.loss), step
        output.loss.backward()
        optimizer.step()
    after = model.embed(batch).losses["reconstruction"]
    assert after < 0.9 * before


@pytest.mark.parametrize("name", ["hierarchical", "full"])
def test_hierarchical_encoder_starts_as_the_encoder_it_wraps(name):
    """The annotation features enter the encoding only as far as training finds them useful: a new
    model's hierarchical encoder gives its inner encoder's features (up to the annotation
    features' 1% start), and the annotation layers learn from the first step."""
    model = tiny(name)
    encoder = model.encoder
    while not isinstance(encoder, HierarchicalEncoder):
        encoder = encoder.inner  # multiscale wraps it in `full`
    batch = random_batch(seed=3)
    cells = model.inputs(batch)
    features, _, _ = encoder(cells.x, cells)
    inner, _, _ = encoder.inner(cells.x, cells)
    assert (features - inner).norm() < 0.1 * inner.norm()
    model(batch).loss.backward()
    n_inner = encoder.inner.n_out
    assert encoder.combine.weight.grad[:, n_inner:].abs().sum() > 0  # the pathway / compartment part learns
    assert encoder.pathways.raw_weight.grad.abs().sum() > 0


def test_evaluation_response_loss_is_repeatable():
    batch = random_batch(seed=2)
    batch["perturbation"][:24], batch["time"][:24] = 0, 0.0  # several basal cells per context
    batch["hours_since_pulse"][:24] = float("nan")
    model = tiny("temporal")
    assert model.embed(batch).losses["response"] == model.embed(batch).losses["response"]


# -- the enhancement set is validated in one place, with the fix in the message ---------------------
@pytest.mark.parametrize(
    "settings, message",
    [
        ({"name": "custom", "enhancements": ["memory"]}, r"'memory' needs \['temporal'\].*add \['temporal'\]"),
        ({"name": "custom", "enhancements": ["temporal", "telepathy"]}, r"unknown enhancement\(s\) \['telepathy'\].*choose from hierarchical, temporal"),
        ({"name": "custom", "enhancements": ["temporal", "temporal"]}, r"\['temporal'\] listed more than once.*list each"),
        ({"name": "mystery"}, r"'mystery' is not a catalogue model.*choose a name from base, hierarchical"),
        ({"name": "temporal", "enhancements": ["hierarchical"]}, r"catalogue model \['temporal'\].*another name"),
    ],
    ids=["memory-without-temporal", "unknown", "duplicate", "unknown-name", "catalogue-name-other-set"],
)
def test_invalid_enhancement_sets_are_refused(settings, message):
    with pytest.raises(ValidationError, match=f"(?s){message}"):
        ModelConfig(**settings)


def test_catalogue_name_with_its_own_set_in_any_order_is_accepted():
    config = ModelConfig(name="temporal+memory", enhancements=["memory", "temporal"])
    assert config.enhancements == ["temporal", "memory"]


def test_model_builder_checks_the_set_again():
    unchecked = ModelConfig(name="temporal+memory").model_copy(update={"enhancements": ["memory"]})  # skips validation
    with pytest.raises(VCellError, match="'memory' needs"):
        build_model(unchecked, SPEC)


def test_config_file_with_an_invalid_set_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  name: primed\n  enhancements: [memory]\n")
    with pytest.raises(VCellError, match=rf"(?s)'model' in {path}.*'memory' needs"):
        load_config(path)


def test_no_module_per_variant():
    """12 catalogue entries, one class: no nn.Module anywhere in vcell.models is named after a variant."""
    words = {"Full", "Variant", "Catalogue"}
    words |= {"".join(part.title() for part in name.split("+")) for name in CATALOGUE if "+" in name}
    words |= {f"{name.title()}Model" for name in enhancement_order()}  # e.g. a TemporalModel beside VirtualCell
    modules = [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(vcell.models.__path__, prefix="vcell.models.")
    ]
    classes = {
        cls for module in modules for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, nn.Module) and cls.__module__.startswith("vcell.models")
    }
    assert len(modules) >= 15 and VirtualCell in classes
    offenders = sorted(cls.__name__ for cls in classes if any(word in cls.__name__ for word in words))
    assert not offenders, f"per-variant modules: {offenders}"
    assert [cls for cls in classes if "VirtualCell" in cls.__name__] == [VirtualCell]
    assert not VirtualCell.__subclasses__()


# -- resource: a finite pool shared by the genes ---------------------------------------------------
@pytest.mark.parametrize("name", ["resource", "stochastic+resource"])
def test_resource_head_conserves_capacity(name):
    model = tiny(name)
    batch = random_batch()
    for conditions in (Conditions(), Conditions(perturbation=batch["perturbation"], time=batch["time"])):
        prediction = model.predict(batch, conditions)
        capacity, free_share = prediction.extra["capacity"], prediction.extra["free_share"]
        assert (prediction.mean >= 0).all() and ((free_share > 0) & (free_share < 1)).all()
        torch.testing.assert_close(prediction.mean.sum(-1) + capacity * free_share, capacity, rtol=1e-5, atol=0)


def test_knocking_down_a_gene_frees_capacity_for_the_others():
    model = tiny("resource")
    allocation = model.head.mean_model
    assert isinstance(allocation, CapacityAllocation)
    cells = CellInputs.from_batch(random_batch(), model.config.columns)
    with torch.no_grad():
        z, _, _ = model.encode(cells.x, cells)
        scores = model.decoder(z)
        gene = int(scores.mean(0).argmax())  # a highly expressed gene
        knocked = scores.clone()
        knocked[:, gene] -= 2.0
        before, stats_before = allocation(scores, z, cells.library)
        after, stats_after = allocation(knocked, z, cells.library)
    others = np.delete(np.arange(SPEC.n_genes), gene)
    assert (after[:, gene] < before[:, gene]).all()
    assert (after[:, others] > before[:, others]).all()  # compensation ...
    assert (after.sum(-1) < before.sum(-1)).all()  # ... but the total falls: the freed share is not all re-used
    torch.testing.assert_close(stats_after["capacity"], stats_before["capacity"])


def test_library_size_model_keeps_the_total_fixed():
    """The contrast: without 'resource', expected counts always add up to the observed library."""
    model = tiny("stochastic")
    batch = random_batch()
    prediction = model.predict(batch, Conditions())
    torch.testing.assert_close(prediction.mean.sum(-1), batch["library_size"])


# -- stochastic: counts, sampling, KL warm-up ------------------------------------------------------
def test_stochastic_model_samples_counts():
    torch.manual_seed(0)
    model = tiny("stochastic")
    counts = model.sample(random_batch())
    assert counts.shape == (N_CELLS, SPEC.n_genes)
    assert torch.isfinite(counts).all() and (counts >= 0).all()
    assert torch.equal(counts, counts.round()) and counts.sum() > 0


@pytest.mark.parametrize("name", ["base", "stochastic", "resource", "full"])
def test_imputed_values_are_detected_levels_of_count_models_and_the_reconstruction_of_gaussian_ones(name):
    """`impute`: a hidden gene's value were it detected. A count model's is at least its mean
    measured value and at least one count per 10,000 of the cell; a Gaussian model's is its reconstruction."""
    model, batch = tiny(name), random_batch(3)
    imputed, reconstruction = model.impute(batch), model.reconstruct(batch)
    assert imputed.shape == (N_CELLS, SPEC.n_genes) and torch.isfinite(imputed).all()
    if model.head.likelihood is None:
        assert torch.equal(imputed, reconstruction.expression)
        return
    one_count = torch.log1p(1e4 / reconstruction.mean.sum(-1, keepdim=True))  # (B, 1)
    assert (imputed >= model.head.measured(reconstruction) - 1e-5).all()
    assert (imputed >= one_count - 1e-4).all()


def test_base_model_cannot_sample():
    with pytest.raises(ValueError, match="count model"):
        tiny("base").sample(random_batch())


def test_negative_binomial_samples_have_the_modelled_mean_and_variance():
    torch.manual_seed(0)
    likelihood = NegativeBinomialLikelihood(n_genes=3, latent=4, zero_inflated=False)
    with torch.no_grad():
        likelihood.scaled_log_dispersion.copy_(torch.log(torch.tensor([0.5, 2.0, 20.0])) / DISPERSION_STEP_SCALE)
    theta = likelihood().detach()
    mean = torch.tensor([3.0, 10.0, 40.0]).expand(40000, 3)
    counts = likelihood.sample(Prediction(expression=torch.log1p(mean), mean=mean))
    torch.testing.assert_close(counts.mean(0), mean[0], rtol=0.03, atol=0)
    torch.testing.assert_close(counts.var(0), mean[0] + mean[0] ** 2 / theta, rtol=0.08, atol=0)


def test_kl_weight_warms_up_in_training_only():
    model = tiny("stochastic", stochastic={"variational": True, "kl_warmup_steps": 2})
    latent = model.latent
    assert isinstance(latent, VariationalLatent) and int(latent.steps) == 0
    batch = random_batch()
    model.train()
    assert model(batch).losses["kl"] == 0  # step 0: no KL yet
    assert int(latent.steps) == 1 and latent.kl_weight() == pytest.approx(0.5)
    half = model(batch).losses["kl"]
    assert half > 0 and int(latent.steps) == 2 and latent.kl_weight() == pytest.approx(1.0)
    model.eval()
    model(batch)
    model.predict(batch, Conditions())
    assert int(latent.steps) == 2  # evaluation does not advance the warm-up
    assert int(model.state_dict()["latent.steps"]) == 2  # checkpointed with the weights


# -- temporal: any time can be asked for -----------------------------------------------------------
def stimulus_response_of(model: VirtualCell):
    from vcell.models.enhancements.temporal import StimulusResponse

    (response,) = [term for term in model.gene_terms if isinstance(term, StimulusResponse)]
    return response


def test_temporal_prediction_moves_with_time_from_the_basal_state():
    model = tiny("temporal")
    response = stimulus_response_of(model)
    with torch.no_grad():  # the response starts near zero; give it one, as training would
        torch.nn.init.normal_(response.network[-1].weight, std=0.5)
    batch = random_batch()
    basal = model.predict(batch, Conditions()).expression

    def at(hours: float) -> torch.Tensor:
        return model.predict(batch, Conditions(time=torch.full((N_CELLS,), hours))).expression

    torch.testing.assert_close(at(0.0), basal, rtol=0, atol=0)
    early, late = at(1.0), at(4.0)
    assert (early - basal).abs().max() > 1e-3 and (late - early).abs().max() > 1e-3
    assert (at(1e-4) - basal).abs().max() < (early - basal).abs().max() / 100  # continuous in time


# -- regulatory: effects travel only along the prior -----------------------------------------------
def downstream(spec, gene: int, steps: int) -> list[set[int]]:
    """Genes reached from `gene` along the prior in 0, 1, ..., steps steps (cumulative)."""
    targets: dict[int, set[int]] = {}
    for source, target in zip(spec.grn.source, spec.grn.target):
        targets.setdefault(int(source), set()).add(int(target))
    reached = [{gene}]
    for _ in range(steps):
        reached.append(reached[-1] | set().union(*(targets.get(g, set()) for g in reached[-1])))
    return reached


def test_perturbation_moves_only_genes_downstream_in_the_prior():
    # perturb regulators (genes 0..5 are the reference spec's TFs) as well as plain targets
    spec = dataclasses.replace(SPEC, perturbation_gene=np.array([-1, 0, 1, 2, 3, 31, 104, 119, 15]))
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="regulatory", size="tiny"), spec)
    batch = random_batch()
    control = model.predict(batch, Conditions(perturbation=torch.zeros(N_CELLS, dtype=torch.long))).expression
    for code in range(1, spec.n_perturbations):
        gene = int(spec.perturbation_gene[code])
        perturbed = model.predict(batch, Conditions(perturbation=torch.full((N_CELLS,), code))).expression
        moved = set(torch.nonzero((perturbed - control).abs().amax(0) > 0)[:, 0].tolist())
        reached = downstream(spec, gene, model.config.regulatory.steps)
        assert reached[1] <= moved <= reached[-1], code  # its direct targets move; nothing off the prior does
        if gene < 4:
            assert len(reached[1]) > 1  # a regulator: the effect spread beyond the gene itself


@pytest.mark.parametrize("outside_prior", ["exclude", "penalize"])
def test_regulatory_edge_weights_and_penalty(outside_prior):
    model = tiny("regulatory", regulatory={"outside_prior": outside_prior})
    model.train()
    output = model(random_batch())
    assert output.stats["edge_weight"].shape == output.stats["edge_score"].shape == (len(SPEC.grn),)
    assert (output.stats["edge_score"] >= 0).all()
    assert torch.isfinite(output.losses["grn_regression"]) and torch.isfinite(output.losses["grn_shrinkage"])
    if outside_prior == "penalize":
        assert torch.isfinite(output.losses["grn_penalty"]) and output.losses["grn_penalty"] > 0
    else:
        assert "grn_penalty" not in output.losses


# -- sizes -----------------------------------------------------------------------------------------
def test_describe_catalogue():
    rows = describe_catalogue(n_genes=2000, size="tiny")
    assert [row["name"] for row in rows] == list(CATALOGUE)
    assert all(row["enhancements"] == list(CATALOGUE[row["name"]]) and row["parameters"] > 0 for row in rows)
    counts = {row["name"]: row["parameters"] for row in rows}
    # adding an enhancement adds its modules
    assert counts["hierarchical+temporal"] > counts["temporal"] > counts["base"]
    assert counts["temporal+memory"] > counts["temporal"]
    assert counts["base"] < min(c for name, c in counts.items() if name != "base")
    # counting on the meta device gives the same number as a real model
    real = build_model(ModelConfig(name="hierarchical+regulatory", size="tiny"), reference_spec(2000))
    assert count_parameters(real) == counts["hierarchical+regulatory"]


def test_slot_table_accounts_for_every_parameter_once():
    model = build_model(ModelConfig(name="full", size="tiny", regulatory={"residual_rank": 2}), SPEC)
    rows = {row["slot"]: row for row in slot_table(model)}
    assert list(rows) == ["encoder", "latent", "dynamics", "decoder", "head", "gene_terms", "auxiliary", "residuals"]
    assert sum(row["parameters"] for row in rows.values()) == count_parameters(model)
    assert rows["encoder"]["modules"] == "MultiscaleEncoder"  # multiscale fills the encoder slot
    assert "RegulatoryPropagation" in rows["gene_terms"]["modules"]  # regulatory adds a per-gene term
    assert rows["residuals"]["modules"] == "ConditionResidual"  # and, with a rank, a residual route
    base = {row["slot"]: row for row in slot_table(build_model(ModelConfig(name="base", size="tiny"), SPEC))}
    assert base["gene_terms"] == {"slot": "gene_terms", "modules": "-", "parameters": 0}


def test_large_model_is_built_on_the_meta_device():
    model = build_model(ModelConfig(name="base", size="large"), reference_spec(20000), device="meta")
    assert count_parameters(model) > 100_000_000
    assert all(parameter.is_meta for parameter in model.parameters())


# -- shipped model configs -------------------------------------------------------------------------
MODEL_CONFIGS = sorted((PACKAGE_CONFIGS / "models").glob("*.yaml"))


def test_every_catalogue_model_has_a_config_file():
    assert sorted(path.stem for path in MODEL_CONFIGS) == sorted(name.replace("+", "_") for name in CATALOGUE)


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.name)
def test_model_config_matches_the_catalogue(path: Path):
    config = load_config(path)
    assert config.model.name.replace("+", "_") == path.stem
    assert tuple(config.model.enhancements) == CATALOGUE[config.model.name]
    assert config.model.size == "small" and config.name == f"quickstart-{path.stem}"
    assert config.data == load_config(PACKAGE_CONFIGS / "experiments" / "quickstart.yaml").data  # `base:` resolved
    written = path.read_text()
    assert written.startswith("#") and "enhancements:" in written  # described, and the set is explicit


@pytest.mark.parametrize("name", ["base", "regulatory"])
def test_perturbation_codes_outside_the_model_are_refused(name):
    batch = random_batch(seed=3)
    batch["perturbation"][0] = 99
    with pytest.raises(VCellError, match="perturbation code 99"):
        tiny(name)(batch)


def test_trajectory_and_half_times_follow_the_response():
    from vcell.models.enhancements.temporal import response_half_times

    model = tiny("temporal")
    response = stimulus_response_of(model)
    with torch.no_grad():
        torch.nn.init.normal_(response.network[-1].weight, std=0.5)
        response.scaled_log_half_time.copy_(torch.linspace(np.log(0.5), np.log(8.0), SPEC.n_genes) / response.scale)
    batch = random_batch()
    hours = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0]
    path = model.trajectory(batch, hours)
    assert path.shape == (len(hours), N_CELLS, model.spec.n_genes)
    torch.testing.assert_close(path[0], model.predict(batch, Conditions()).expression)
    half = response_half_times(path.mean(1).numpy(), np.array(hours))
    moved = ~np.isnan(half)
    assert moved.any() and ((half[moved] >= 0) & (half[moved] <= 64)).all()
    # each gene's own half-time, read back off the trajectory (linear interpolation on the grid)
    true = response.half_time().detach().numpy()
    assert np.corrcoef(half[moved], true[moved])[0, 1] > 0.95
    # a known curve: 1 - 2^(-t/3) has its half-time at 3 h
    curve = 1 - np.exp2(-np.array(hours) / 3.0)
    assert response_half_times(curve[:, None], np.array(hours))[0] == pytest.approx(3.0, rel=0.1)
