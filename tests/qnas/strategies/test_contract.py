"""The strategy contract, run by every registered strategy (a new one is tested without a new test).

A strategy proposes archs of its space (``ask``), never the same arch twice,
takes their records (``tell``), is deterministic for a seed, and refuses an
option it does not know with a one-line ConfigError. What a strategy needs
beyond ``(space, seed, budget, context)`` to run quickly here is in
``FAST_OPTIONS``; a strategy not listed there runs with no options.
"""
from __future__ import annotations

import pytest

from qnas.costs import count_costs
from qnas.errors import ConfigError
from qnas.latency import create_latency_model
from qnas.predictors import SyntheticAccuracy
from qnas.space import SearchSpace
from qnas.strategies import Budget, StrategyContext, create_strategy, strategy_names

SPACE = SearchSpace()
LATENCY = create_latency_model("cpu-ort")
ORACLE = SyntheticAccuracy(SPACE, seed=0)


def _fast_options() -> dict[str, dict]:
    return {
        "nsga2": {"pop_size": 8},
        "nsga3": {"pop_size": 8},
        "ofa": {"accuracy": ORACLE, "latency": LATENCY, "population_size": 12, "generations": 2},
        "differentiable": {"epochs": 2, "warmup_epochs": 1, "steps_per_epoch": 2, "batch_size": 16, "threads": 1},
    }


def record(arch) -> dict:
    c = count_costs(SPACE.plan(arch))
    return {"val_acc": ORACLE(arch), "latency_ms": float(LATENCY.predict(SPACE.plan(arch))),
            "size_kb": c.size_kb, "peak_act_kb": c.peak_activation_bytes / 1024, "mmacs": c.mmacs, "bitops": c.bitops}


def make(name: str, splits, seed: int = 0, budget: Budget | None = None):
    ctx = StrategyContext(splits=splits, latency=LATENCY, accuracy=lambda a: {"val_acc": ORACLE(a)})
    return create_strategy(name, SPACE, seed=seed, budget=budget or Budget(latency_ms=0.45), context=ctx,
                           **_fast_options().get(name, {}))


def drive(strategy, rounds: int = 3, n: int = 4) -> list:
    asked = []
    for _ in range(rounds):
        batch = strategy.ask(n)
        assert len(batch) <= n
        if not batch:
            break
        strategy.tell(batch, [record(a) for a in batch])
        asked += batch
    return asked


@pytest.fixture(params=strategy_names())
def name(request) -> str:
    return request.param


def test_asks_valid_archs_never_twice(name, digits_splits):
    asked = drive(make(name, digits_splits))
    assert asked, f"{name} asked for nothing"
    for a in asked:
        assert SPACE.validate(a) is a
    assert len(set(asked)) == len(asked)


def test_the_same_seed_asks_the_same_archs(name, digits_splits):
    assert drive(make(name, digits_splits, seed=3), rounds=2) == drive(make(name, digits_splits, seed=3), rounds=2)


def test_an_unknown_option_is_a_one_line_config_error(name):
    with pytest.raises(ConfigError) as e:
        create_strategy(name, SPACE, seed=0, no_such_option=1, **_fast_options().get(name, {}))
    assert "no_such_option" in str(e.value) and "\n" not in str(e.value)


def test_every_builtin_is_registered():
    assert {"random", "nsga2", "nsga3", "ofa", "differentiable"} <= set(strategy_names())
