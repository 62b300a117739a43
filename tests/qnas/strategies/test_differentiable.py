"""The differentiable (ProxylessNAS/FBNet-style) architecture + precision search."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qnas.arch import Arch
from qnas.errors import ConfigError, QnasError
from qnas.latency.base import LatencyModel
from qnas.latency.vectorized import VectorizedTablePredictor
from qnas.space import SearchSpace, SpaceConfig
from qnas.strategies import Budget, StrategyContext, create_strategy, strategy_names
from qnas.strategies.differentiable import (ArchLogits, DifferentiableOptions, DifferentiableSearch,
                                            DifferentiableStrategy)

# tiny runs: a few steps at the smallest resolution/width
TINY = dict(epochs=2, warmup_epochs=1, steps_per_epoch=3, batch_size=16, resolution=12, width=0.5)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class BitsLatency(LatencyModel):
    """A synthetic target where every gene, bit widths included, changes the latency."""

    kind = "synthetic"

    @property
    def device(self) -> str:
        return "synthetic"

    def layer_ms(self, layer) -> float:
        return 1e-6 * layer.macs * layer.w_bits * layer.a_bits / 64 + 1e-6 * layer.out_elems * layer.a_bits + 1e-3


@pytest.fixture(scope="module")
def space():
    return SearchSpace()


@pytest.fixture(scope="module")
def cpu_ort(space):
    from qnas.searching import make_latency_model

    return make_latency_model("cpu-ort", "analytic", space=space)


@pytest.fixture(scope="module")
def tight_budget(space, cpu_ort):
    lat = [cpu_ort.predict(space.plan(space.sample(i))) for i in range(200)]
    return float(np.percentile(lat, 30))


def _latency(model, space):
    return lambda a: float(model.predict(space.plan(a)))


def test_registered(space):
    assert "differentiable" in strategy_names()
    s = create_strategy("differentiable", space, seed=0, epochs=2, warmup_epochs=0, **{"lambda": 0.3})
    assert isinstance(s, DifferentiableStrategy) and s.options.latency_weight == 0.3


def test_expected_latency_gradient_reaches_every_logit_group(space):
    predictor = VectorizedTablePredictor(space, BitsLatency().layer_ms)
    logits = ArchLogits(space, res_idx=1, width_idx=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in logits.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    predictor.expected_latency(logits.distribution()).backward()
    for name, tensors in logits.groups().items():
        for i, t in enumerate(tensors):
            if t.shape[-1] < 2:  # one choice: nothing to learn
                continue
            assert t.grad is not None, f"{name}[{i}] got no gradient"
            rows = t.grad.reshape(-1, t.shape[-1]).abs().sum(-1)
            assert bool((rows > 0).all()), f"{name}[{i}] has choices the latency gradient does not reach: {t.grad}"


def test_expected_latency_matches_derived_arch_when_one_hot(space, cpu_ort):
    predictor = VectorizedTablePredictor(space, cpu_ort.layer_ms)
    logits = ArchLogits(space, res_idx=2, width_idx=2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in logits.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 100)  # (nearly) one-hot softmax
    vec = space.encode(space.decode(logits.genes()))
    assert predictor.expected_latency(logits.distribution()).item() == pytest.approx(
        float(predictor.predict_encoded(np.asarray([vec]))[0]), rel=1e-4)


def test_loss_decreases_on_tiny_digits_subset(space, cpu_ort, digits_splits):
    predictor = VectorizedTablePredictor(space, cpu_ort.layer_ms)
    search = DifferentiableSearch(space, predictor, _latency(cpu_ort, space), None,
                                  DifferentiableOptions(**{**TINY, "lr": 1e-2}), seed=0)
    tiny = digits_splits.train.subset(np.arange(48)).at_resolution(12)
    x, y = tiny.images, tiny.labels
    archs = [space.sample(i) for i in range(3)]
    paths = [search.arch.path_from_genes(space.encode(Arch(12, 0.5, a.stages, a.stem_bits, a.head_bits)))
             for a in archs]

    def loss() -> float:  # batch statistics: the running ones lag behind after a dozen steps
        with torch.no_grad():
            return float(np.mean([torch.nn.functional.cross_entropy(search.forward(x, p), y).item() for p in paths]))

    search.weight_step(x, y, 1.0, uniform=True)  # initialises the activation quantizers
    before = loss()
    for _ in range(25):
        search.weight_step(x, y, 1.0, uniform=True)
    after = loss()
    assert after < before - 0.2, (before, after)
    # an arch step moves the logits and returns finite numbers
    old = [p.detach().clone() for p in search.arch.parameters()]
    ce, acc, e_ms = search.arch_step(x, y, 0.5)
    assert np.isfinite(ce) and 0 <= acc <= 1 and e_ms > 0
    assert any(not torch.equal(a, b.detach()) for a, b in zip(old, search.arch.parameters()))


def test_tight_budget_derived_meets_it_and_ask_gives_distinct_valid_archs(space, cpu_ort, tight_budget, digits_splits):
    ctx = StrategyContext(splits=digits_splits, latency=cpu_ort)
    strat = create_strategy("differentiable", space, seed=0, budget=Budget(latency_ms=tight_budget), context=ctx,
                            **{**TINY, "resolution": None, "width": None})
    archs = strat.ask(4)
    assert archs and archs[0] == strat.derived
    assert len(set(archs)) == len(archs) == 4
    for a in archs:
        space.validate(a)
        assert cpu_ort.predict(space.plan(a)) <= tight_budget
    s = strat.summary
    assert s["derived_ms"] <= tight_budget == s["budget_ms"]
    assert s["derived_val_acc"] is None or 0 <= s["derived_val_acc"] <= 1
    more = strat.ask(3)
    assert more and not set(more) & set(archs)
    assert all(cpu_ort.predict(space.plan(a)) <= tight_budget for a in more)
    strat.tell(archs, [{} for _ in archs])  # a no-op


def test_repair_brings_the_largest_arch_under_a_tight_budget(space, cpu_ort, tight_budget):
    predictor = VectorizedTablePredictor(space, cpu_ort.layer_ms)
    search = DifferentiableSearch(space, predictor, _latency(cpu_ort, space), Budget(latency_ms=tight_budget),
                                  DifferentiableOptions(resolution=20, width=1.0), seed=0)
    big = space.encode(space.uniform(8, 8))
    assert cpu_ort.predict(space.plan(space.uniform(8, 8))) > tight_budget
    fixed = search.repair(big, search.arch.gene_log_probs())
    assert fixed is not None
    arch = space.decode(fixed)
    assert (arch.resolution, arch.width) == (20, 1.0)
    assert cpu_ort.predict(space.plan(arch)) <= tight_budget


def test_same_seed_same_derived_arch(space, cpu_ort, digits_splits):
    ctx = StrategyContext(splits=digits_splits, latency=cpu_ort)
    runs = [create_strategy("differentiable", space, seed=3, context=ctx, **TINY).ask(3) for _ in range(2)]
    assert runs[0] == runs[1]


def test_infeasible_budget_fails_before_training(space, cpu_ort, digits_splits):
    strat = create_strategy("differentiable", space, seed=0, budget=Budget(latency_ms=1e-4),
                            context=StrategyContext(splits=digits_splits, latency=cpu_ort), **TINY)
    with pytest.raises(ConfigError, match="no arch of the search space meets the budget"):
        strat.ask(2)


def test_skip_space_and_hard_bits_train(digits_splits):
    space = SearchSpace(SpaceConfig(allow_skip=True, resolutions=(12,), widths=(0.5,)))
    predictor = VectorizedTablePredictor(space, BitsLatency().layer_ms)
    search = DifferentiableSearch(space, predictor, _latency(BitsLatency(), space), None,
                                  DifferentiableOptions(**TINY, hard_bits=True), seed=0)
    tiny = digits_splits.train.subset(np.arange(32)).at_resolution(12)
    search.weight_step(tiny.images, tiny.labels, 1.0, uniform=True)
    search.arch_step(tiny.images, tiny.labels, 1.0)
    space.validate(space.decode(search.derived_genes()))
    probs = search.arch.distribution().op[1]
    assert probs[0, -1].item() < 1e-6  # no skip at a stage's first block


def test_constructor_without_context_and_ask_without_context(space):
    strat = DifferentiableStrategy(space, seed=0)  # a fail-fast check of the options needs no context
    with pytest.raises(QnasError) as e:
        strat.ask(2)
    assert isinstance(e.value, ConfigError)
    msg = str(e.value)
    assert "\n" not in msg and "splits" in msg


@pytest.mark.parametrize("opts, match", [
    ({"epochs": 0}, "epochs"),
    ({"epochs": 2, "warmup_epochs": 2}, "warmup_epochs"),
    ({"arch_lr": -1}, "arch_lr"),
    ({"resolution": 13}, "resolution"),
    ({"penalty": "l2"}, "penalty"),
    ({"bogus": 1}, "bogus"),
    ({"lambda": 1, "latency_weight": 1}, "not both"),
])
def test_bad_options(space, opts, match):
    with pytest.raises(ConfigError, match=match):
        create_strategy("differentiable", space, **opts)
