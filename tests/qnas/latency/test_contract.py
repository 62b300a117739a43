"""The latency-model contract, run by every registered kind (a new kind is tested without a new test).

Each kind prices a plan as the sum of its per-layer breakdown, in finite,
non-negative ms, deterministically, names its latency target, and (where it offers a
vectorized form) agrees with it. ``SETUP`` builds what a kind needs here (a
table file, a fitted correction); a kind not listed is created with no options.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from qnas.latency import create_latency_model, latency_model_kinds
from qnas.latency.base import LatencyModel
from qnas.latency.table import LatencyTable, space_layer_keys
from qnas.space import SearchSpace

SPACE = SearchSpace()
ARCHS = [SPACE.sample(s) for s in range(6)]
# a space small enough to price (or measure) every layer it can produce, for the vectorized forms
SMALL = SearchSpace.from_dict({"resolutions": [12], "widths": [0.5], "kernels": [3, 5], "expands": [3],
                               "w_bits": [4, 8], "a_bits": [8], "stages": [{"channels": 16, "depths": [1, 2]},
                                                                          {"channels": 24, "depths": [1], "stride": 2}]})


def _table_file(tmp) -> str:
    analytic = create_latency_model("cpu-ort")
    layers = space_layer_keys(SPACE, ARCHS) + space_layer_keys(SMALL)
    path = tmp / "table.json"
    LatencyTable([(l.key(), analytic.layer_ms(l)) for l in layers], meta={"device": "cpu-ort"}).save(path)
    return str(path)


def _hybrid_file(tmp) -> str:
    from qnas.latency.hybrid import HybridLatencyModel

    base = create_latency_model("cpu-ort")
    rng = np.random.default_rng(0)
    fit = [SPACE.sample(rng) for _ in range(24)]
    ms = [1.3 * base.predict(SPACE.plan(a)) + 0.05 for a in fit]  # a stand-in for measurements
    path = tmp / "hybrid.json"
    HybridLatencyModel(base, SPACE).fit(fit, ms).save(path)
    return str(path)


SETUP = {
    "table": lambda tmp: {"table": _table_file(tmp)},
    "measured": lambda tmp: {"cache": str(tmp / "measured.json")},
    "hybrid": lambda tmp: {"hybrid": _hybrid_file(tmp), "space": SPACE},
}


@pytest.fixture(scope="module", params=latency_model_kinds())
def model(request, tmp_path_factory) -> LatencyModel:
    kind = request.param
    opts = SETUP.get(kind, lambda tmp: {})(tmp_path_factory.mktemp(kind))
    return create_latency_model("cpu-ort", kind=kind, **opts)


def test_is_a_latency_model_naming_its_target(model):
    assert isinstance(model, LatencyModel)
    assert isinstance(model.target, str) and model.target
    with pytest.deprecated_call():
        assert model.device == model.target  # the former name


def test_predict_is_the_sum_of_a_finite_breakdown(model):
    for a in ARCHS:
        plan = SPACE.plan(a)
        costs = model.breakdown(plan)
        assert costs and all(math.isfinite(c.ms) and c.ms >= 0 for c in costs)
        total = model.predict(plan)
        assert total > 0 and math.isclose(total, sum(c.ms for c in costs), rel_tol=1e-9)
        assert model.predict(plan) == total  # deterministic


def test_predict_many_matches_predict(model):
    plans = [SPACE.plan(a) for a in ARCHS]
    np.testing.assert_allclose(model.predict_many(plans), [model.predict(p) for p in plans], rtol=1e-9)


def test_vectorized_form_agrees(model):
    if not hasattr(model, "vectorized"):
        pytest.skip(f"{type(model).__name__} has no vectorized form")  # not every kind offers one
    vec = model.vectorized(SMALL)
    for s in range(20):
        a = SMALL.sample(s)
        assert math.isclose(float(vec.predict(a)), model.predict(SMALL.plan(a)), rel_tol=1e-9)
