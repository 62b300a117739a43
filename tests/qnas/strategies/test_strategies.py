"""Search strategies: the registry, pymoo's NSGA-II/III through ask/tell, and OFA's evolution finder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qnas.costs import count_costs
from qnas.errors import ConfigError
from qnas.latency import create_latency_model
from qnas.latency.vectorized import VectorizedTablePredictor
from qnas.predictors import SyntheticAccuracy
from qnas.space import SearchSpace
from qnas.strategies import Budget, create_strategy, strategy_names

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def space():
    return SearchSpace()


@pytest.fixture(scope="module")
def latency(space):
    return create_latency_model("cpu-ort")


@pytest.fixture(scope="module")
def vec(space, latency):
    return VectorizedTablePredictor(space, latency.layer_ms)


@pytest.fixture(scope="module")
def oracle(space):
    return SyntheticAccuracy(space, seed=0)


@pytest.fixture(scope="module")
def evaluate(space, vec, oracle):
    cache = {}

    def f(archs):
        out = []
        for a in archs:
            if a not in cache:
                c = count_costs(space.plan(a))
                cache[a] = {"val_acc": oracle(a), "latency_ms": float(vec.predict(a)) + 0.05,
                            "size_kb": c.size_kb, "peak_act_kb": c.peak_activation_bytes / 1024}
            out.append(dict(cache[a]))
        return out

    return f


def run(strategy, evaluate, n_evals, sizes=(16,)):
    """Drive a strategy: ask (cycling through ``sizes``), evaluate, tell, until ``n_evals``."""
    asked, records = [], []
    i = 0
    while len(asked) < n_evals:
        batch = strategy.ask(min(sizes[i % len(sizes)], n_evals - len(asked)))
        i += 1
        if not batch:
            break
        recs = evaluate(batch)
        strategy.tell(batch, recs)
        asked += batch
        records += recs
    return asked, records


def hv(records, lo, hi):
    from pymoo.indicators.hv import HV

    F = np.array([[-r["val_acc"], r["latency_ms"]] for r in records])
    return float(HV(ref_point=np.array([1.1, 1.1]))((F - lo) / (hi - lo)))


# ---- registry ------------------------------------------------------------------
def test_registry_lists_builtins_and_rejects_unknown(space):
    names = strategy_names()
    assert {"random", "nsga2", "nsga3", "ofa"} <= set(names)
    assert create_strategy("nsga2", space).name == "nsga2"
    with pytest.raises(ConfigError, match="nsga2.*nsga3.*ofa.*random"):
        create_strategy("nsga4", space)


def test_strategies_without_pymoo():
    """pymoo is an optional extra: without it random and ofa still work and nsga2 says what to install."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pymoo'] = None\n"
        "from qnas.space import SearchSpace\n"
        "from qnas.errors import ConfigError\n"
        "from qnas.strategies import create_strategy, strategy_names\n"
        "s = SearchSpace()\n"
        "assert len(create_strategy('random', s).ask(3)) == 3\n"
        "assert {'nsga2', 'ofa'} <= set(strategy_names())\n"
        "try:\n"
        "    create_strategy('nsga2', s)\n"
        "except ConfigError as e:\n"
        "    assert 'pip install pymoo' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('nsga2 without pymoo')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", ["nsga2", "nsga3"])
def test_bad_options_are_config_errors(space, name):
    with pytest.raises(ConfigError, match="no option"):
        create_strategy(name, space, popsize=8)
    with pytest.raises(ConfigError, match="objectives"):
        create_strategy(name, space, objectives=("accuracy", "speed"))
    with pytest.raises(ConfigError, match="pop_size"):
        create_strategy(name, space, pop_size=2)


# ---- NSGA-II / NSGA-III -------------------------------------------------------------
@pytest.mark.parametrize("name", ["nsga2", "nsga3"])
def test_seed_reproduces_the_asked_archs(space, evaluate, name):
    sizes = (5, 16, 3, 9)  # batches that do not line up with the generations
    a1, _ = run(create_strategy(name, space, seed=3, pop_size=12), evaluate, 60, sizes)
    a2, _ = run(create_strategy(name, space, seed=3, pop_size=12), evaluate, 60, sizes)
    a3, _ = run(create_strategy(name, space, seed=4, pop_size=12), evaluate, 60, sizes)
    assert a1 == a2
    assert a1 != a3


@pytest.mark.parametrize("name", ["nsga2", "nsga3"])
@pytest.mark.parametrize("operators", ["space", "sbx"])
def test_asked_archs_are_valid_and_distinct(space, evaluate, name, operators):
    strat = create_strategy(name, space, seed=0, pop_size=8, operators=operators)
    asked, _ = run(strat, evaluate, 80, (7, 20))
    assert len(asked) == 80 and len(set(asked)) == 80
    for a in asked:
        space.validate(a)
    assert strat.generations >= 10


def test_ask_buffers_a_generation_and_waits_for_its_results(space, evaluate):
    strat = create_strategy("nsga2", space, seed=0, pop_size=8)
    first = strat.ask(100)  # more than a generation: the generation only
    assert len(first) == 8
    assert strat.ask(4) == []  # nothing new before the generation is told
    strat.tell(first[:5], evaluate(first[:5]))
    assert strat.ask(4) == []
    strat.tell(first[5:], evaluate(first[5:]))
    nxt = strat.ask(3)
    assert len(nxt) == 3 and not set(nxt) & set(first)


def test_inactive_genes_are_canonicalised(space):
    from qnas.strategies.evolution import canonical

    a = space.sample(0)
    x = np.array(space.encode(a))
    y = x.copy()
    # a gene of a block past its stage's depth (stage 0 depth gene is at index 6; its second block starts at 14)
    depth0 = space.config.stages[0].depths[x[6]]
    if depth0 == max(space.config.stages[0].depths):
        y[6] = 0
        x[6] = 0
    y[14 + 1] = (y[14 + 1] + 1) % (space.bounds()[15] + 1)
    assert not np.array_equal(x, y)
    assert space.decode(x) == space.decode(y)
    assert np.array_equal(canonical(space, x), canonical(space, y))


@pytest.mark.parametrize("name", ["nsga2", "nsga3"])
def test_final_front_meets_the_budget(space, evaluate, name):
    budget = Budget(latency_ms=0.45, size_kb=40.0)
    strat = create_strategy(name, space, seed=1, budget=budget, pop_size=16)
    asked, records = run(strat, evaluate, 160)
    assert any(budget.ok(r) for r in records)  # the budget is feasible
    front = strat.front()
    assert front
    for arch, rec in front:
        assert budget.ok(rec), (arch.describe(), rec)
    # and the strategy learnt where the budget is: later generations are mostly feasible
    late = records[-48:]
    assert sum(budget.ok(r) for r in late) >= 24


def test_nsga2_beats_random_at_equal_budget(space, evaluate):
    n = 400
    runs = {name: [run(create_strategy(name, space, seed=s), evaluate, n)[1] for s in (0, 1)]
            for name in ("random", "nsga2")}
    F = np.array([[-r["val_acc"], r["latency_ms"]] for rs in runs.values() for recs in rs for r in recs])
    lo, hi = F.min(axis=0), F.max(axis=0)
    score = {name: np.mean([hv(recs, lo, hi) for recs in rs]) for name, rs in runs.items()}
    assert score["nsga2"] > score["random"] * 1.05, score


def test_nsga3_handles_three_objectives(space, evaluate):
    strat = create_strategy("nsga3", space, seed=0, pop_size=16, objectives=("accuracy", "latency", "size"))
    assert strat.problem.n_obj == 3
    assert strat.ref_dirs.shape[1] == 3 and strat.pop_size >= len(strat.ref_dirs)
    asked, records = run(strat, evaluate, 5 * strat.pop_size)
    assert len(set(asked)) == len(asked) == 5 * strat.pop_size
    front = strat.front()
    assert front
    # no member of pymoo's optimum is dominated (in all three objectives) by anything evaluated
    F = np.array([strat.objective_values(r) for r in records])
    for _, rec in front:
        f = strat.objective_values(rec)
        assert not np.any(np.all(F <= f, axis=1) & np.any(F < f, axis=1))


# ---- OFA ------------------------------------------------------------------------------
def test_ofa_asks_archs_within_the_latency_budget(space, vec, oracle, latency):
    budget = Budget(latency_ms=0.4)
    strat = create_strategy("ofa", space, seed=0, budget=budget, accuracy=oracle, latency=latency,
                            population_size=24, generations=4)
    archs = strat.ask(12)
    assert len(archs) == 12 and len(set(archs)) == 12
    for a in archs:
        assert latency.predict(space.plan(a)) <= 0.4
    # the finder's best candidates come first: better than random archs under the same budget
    rng = np.random.default_rng(0)
    rand = [a for a in (space.sample(rng) for _ in range(300)) if latency.predict(space.plan(a)) <= 0.4][:12]
    assert np.mean([oracle(a) for a in archs]) > np.mean([oracle(a) for a in rand])
    more = strat.ask(12)
    assert not set(more) & set(archs)


def test_ofa_sweeps_budgets_and_needs_its_predictors(space, vec, oracle):
    strat = create_strategy("ofa", space, seed=0, accuracy=oracle, latency=vec, latency_budgets=[0.2, 0.35],
                            population_size=16, generations=2)
    archs = strat.ask(6)
    lat = vec.predict_archs(archs)
    assert len(archs) == 6
    assert all(lat[0::2] <= 0.2) and all(lat[1::2] <= 0.35)
    with pytest.raises(ConfigError, match="accuracy predictor"):
        create_strategy("ofa", space, latency=vec)
    with pytest.raises(ConfigError, match="latency predictor"):
        create_strategy("ofa", space, accuracy=oracle)


def test_evolution_search_function(space, vec, oracle):
    from qnas.strategies.ofa import evolution_search

    found = evolution_search(space, oracle, vec, 0.3, population_size=16, generations=3, seed=0)
    assert len(found) == len(set(found)) >= 16
    assert all(vec.predict_archs(found) <= 0.3)
    acc = [oracle(a) for a in found[:10]]
    assert acc == sorted(acc, reverse=True)
    with pytest.raises(ConfigError, match="raise the budget"):
        evolution_search(space, oracle, vec, 1e-4, population_size=8, generations=1)


@pytest.mark.parametrize("name", ["nsga2", "nsga3"])
def test_a_used_up_space_ends_the_search(name):
    from qnas.space import SpaceConfig, StageConfig

    tiny = SearchSpace(SpaceConfig(resolutions=(12,), widths=(0.5,), stages=(StageConfig(16, (1,), 1),),
                                   kernels=(3,), expands=(3,), w_bits=(4, 8), a_bits=(8,)))  # 8 archs
    strat = create_strategy(name, tiny, seed=0, pop_size=4)
    fake = lambda archs: [{"val_acc": 0.5 + 0.01 * sum(tiny.encode(a)), "latency_ms": 1.0 + sum(a.blocks()[0].w_bits),
                           "size_kb": 1.0, "peak_act_kb": 1.0} for a in archs]  # noqa: E731
    asked, _ = run(strat, fake, 100, (3,))
    assert len(asked) == len(set(asked)) == 8
    assert strat.ask(3) == [] and strat.exhausted
