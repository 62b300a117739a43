"""Fidelity metrics, proxy scale fitting, the hybrid (table + learned correction)
latency model and whole-model ORT measurement (DESIGN.md §3)."""
import json
import math

import numpy as np
import pytest

from qnas.errors import LatencyTableError, QnasError
from qnas.latency import create_latency_model
from qnas.latency.hybrid import FEATURES, HybridLatencyModel
from qnas.latency.metrics import fidelity, fit_scale, kendall_tau, relative_errors
from qnas.latency.model_measure import MeasurementSet, measure_arch_ms, measurement_meta
from qnas.space import SearchSpace


@pytest.fixture(scope="module")
def space():
    return SearchSpace()


@pytest.fixture(scope="module")
def archs(space):
    rng = np.random.default_rng(0)
    seen, out = set(), []
    while len(out) < 60:
        a = space.sample(rng)
        if a not in seen:
            seen.add(a)
            out.append(a)
    return out


# -- metrics ------------------------------------------------------------------------------
def test_kendall_tau_perfect_and_reversed_ranking():
    meas = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert kendall_tau([10, 20, 30, 40, 50], meas) == pytest.approx(1.0)
    assert kendall_tau([5, 4, 3, 2, 1], meas) == pytest.approx(-1.0)
    # one swapped pair out of 10: (9 - 1) / 10
    assert kendall_tau([1, 3, 2, 4, 5], meas) == pytest.approx(0.8)


def test_fidelity_mape_and_within_10pct_by_hand():
    meas = [1.0, 2.0, 4.0, 10.0]
    pred = [1.05, 2.4, 4.0, 8.9]  # relative errors 5%, 20%, 0%, 11%
    f = fidelity(pred, meas)
    assert f["n"] == 4
    assert f["mape"] == pytest.approx((0.05 + 0.20 + 0.0 + 0.11) / 4)
    assert f["within_10pct"] == pytest.approx(2 / 4)
    assert f["rmspe"] == pytest.approx(math.sqrt((0.05**2 + 0.2**2 + 0 + 0.11**2) / 4))
    assert f["kendall_tau"] == pytest.approx(1.0)
    # exactly 10% off counts as within
    assert fidelity([1.1, 0.9], [1.0, 1.0])["within_10pct"] == 1.0
    np.testing.assert_allclose(relative_errors([2.0], [4.0]), [0.5])


def test_fidelity_rejects_bad_inputs():
    with pytest.raises(QnasError, match="length"):
        fidelity([1.0, 2.0], [1.0])
    with pytest.raises(QnasError, match="positive"):
        fidelity([1.0, 2.0], [0.0, 1.0])
    with pytest.raises(QnasError, match="finite"):
        fidelity([1.0, float("nan")], [1.0, 2.0])


def test_fit_scale_recovers_a_linear_relation():
    rng = np.random.default_rng(1)
    proxy = rng.uniform(1e6, 5e7, size=50)          # e.g. MACs
    meas = 2.5e-8 * proxy + 0.3
    s = fit_scale(proxy, meas)
    assert s.a == pytest.approx(2.5e-8, rel=1e-9)
    assert s.b == pytest.approx(0.3, rel=1e-6)
    held_out = np.array([2e6, 3e7])
    np.testing.assert_allclose(s(held_out), 2.5e-8 * held_out + 0.3, rtol=1e-9)
    r = fit_scale(proxy, meas, relative=True)
    assert (r.a, r.b) == (pytest.approx(2.5e-8, rel=1e-6), pytest.approx(0.3, rel=1e-6))
    with pytest.raises(QnasError, match="constant"):
        fit_scale([3.0, 3.0, 3.0], [1.0, 2.0, 3.0])


# -- hybrid -----------------------------------------------------------------------------------
def _synthetic(base, space, archs):
    return np.array([1.3 * base.predict(space.plan(a)) + 0.2 for a in archs])


def test_hybrid_learns_a_scale_and_offset_the_base_misses(space, archs):
    base = create_latency_model("cpu-ort")
    fit_a, eval_a = archs[:40], archs[40:]
    y_fit, y_eval = _synthetic(base, space, fit_a), _synthetic(base, space, eval_a)
    hybrid = HybridLatencyModel(base, space).fit(fit_a, y_fit)
    base_eval = fidelity(base.predict_many(space.plan(a) for a in eval_a), y_eval)
    hyb_eval = fidelity(hybrid.predict_many(eval_a), y_eval)
    assert hyb_eval["mape"] < base_eval["mape"] / 5
    assert hyb_eval["mape"] < 0.03
    assert hyb_eval["within_10pct"] == 1.0
    # arch, plan and predict_many agree; the breakdown sums to predict
    a = eval_a[0]
    p = hybrid.predict(a)
    assert hybrid.predict(space.plan(a)) == pytest.approx(p)
    assert hybrid.predict_many([a])[0] == pytest.approx(p)
    assert sum(c.ms for c in hybrid.breakdown(a)) == pytest.approx(p)
    assert hybrid.target == base.target and hybrid.kind == "hybrid"
    assert hybrid.fit_info["n"] == 40 and hybrid.fit_info["mape_fit"] < hybrid.fit_info["mape_fit_base"]


def test_hybrid_json_round_trip_and_corrupt_files(space, archs, tmp_path):
    base = create_latency_model("cpu-ort")
    hybrid = HybridLatencyModel(base, space).fit(archs[:30], _synthetic(base, space, archs[:30]))
    path = hybrid.save(tmp_path / "hybrid.json")
    d = json.loads(path.read_text())  # plain JSON, no pickle
    assert d["features"] == list(FEATURES) and len(d["coef"]) == len(FEATURES)
    loaded = HybridLatencyModel.load(path, base, space)
    np.testing.assert_array_equal(loaded.predict_many(archs[30:]), hybrid.predict_many(archs[30:]))

    bad = tmp_path / "bad.json"
    bad.write_text(path.read_text()[:200])
    with pytest.raises(QnasError, match="not valid JSON"):
        HybridLatencyModel.load(bad, base, space)
    d2 = dict(d, coef=d["coef"][:-1])
    bad.write_text(json.dumps(d2))
    with pytest.raises(LatencyTableError, match="damaged"):
        HybridLatencyModel.load(bad, base, space)
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(LatencyTableError, match="not a qnas hybrid"):
        HybridLatencyModel.load(bad, base, space)
    # a correction is tied to the base it was fitted on
    with pytest.raises(LatencyTableError, match="fitted on"):
        HybridLatencyModel.load(path, create_latency_model("edgetpu"), space)


def test_unfitted_hybrid_refuses_to_predict(space, archs):
    hybrid = HybridLatencyModel(create_latency_model("cpu-ort"), space)
    with pytest.raises(QnasError, match="not fitted"):
        hybrid.predict(archs[0])
    with pytest.raises(QnasError, match="at least 5"):
        hybrid.fit(archs[:3], [1.0, 2.0, 3.0])


# -- measurement ----------------------------------------------------------------------------------
def test_measure_arch_ms_and_cache_round_trip(space, tmp_path):
    arch = space.uniform(8, 8, largest=False)
    ms = measure_arch_ms(space, arch, warmup=1, repeats=3, rounds=1, workdir=tmp_path)
    assert math.isfinite(ms) and ms > 0
    assert not any(tmp_path.iterdir()), "the temporary ONNX file is removed"

    meta = measurement_meta(threads=1, warmup=1, repeats=3, rounds=1)
    cache = MeasurementSet()
    cache.add(arch, ms, meta)
    path = cache.save(tmp_path / "m.json")
    again = MeasurementSet.load(path)
    assert again.get(arch, meta) == ms
    assert again.get(arch, dict(meta, threads=4)) is None  # other thread count: not reused
    assert again.get(space.uniform(8, 8), meta) is None
    path.write_text("{not json")
    with pytest.raises(LatencyTableError):
        MeasurementSet.load(path)


def test_hybrid_load_detects_a_changed_base(space, archs, tmp_path):
    base = create_latency_model("cpu-ort")
    hybrid = HybridLatencyModel(base, space).fit(archs[:20], _synthetic(base, space, archs[:20]))
    d = hybrid.to_dict()
    d["reference"]["base_ms"] *= 2  # as if the table/profile had been re-measured since the fit
    path = tmp_path / "h.json"
    path.write_text(json.dumps(d))
    with pytest.raises(LatencyTableError, match="re-fit"):
        HybridLatencyModel.load(path, base, space)
    lenient = HybridLatencyModel.load(path, base, space, strict=False)
    assert lenient.predict(archs[25]) == pytest.approx(hybrid.predict(archs[25]))


def test_timing_rounds_are_spread_out_and_the_least_disturbed_is_kept(monkeypatch):
    """A shared VM can run a core ~2x slower for seconds: rounds pause between them, the smallest median wins."""
    import qnas.exporters.onnx_qcdq as oq
    import qnas.latency.model_measure as mm

    medians = iter([0.80, 0.83, 0.44, 0.79])
    monkeypatch.setattr(oq, "measure_latency_ms", lambda *a, **k: next(medians))
    pauses = []
    monkeypatch.setattr(mm.time, "sleep", pauses.append)
    assert mm.time_onnx_ms("m.onnx", (1, 1, 8, 8), rounds=4, pause_s=0.5) == 0.44
    assert pauses == [0.5, 0.5, 0.5]  # between rounds, not before the first or after the last
    with pytest.raises(QnasError, match="pause_s"):
        mm.time_onnx_ms("m.onnx", (1, 1, 8, 8), pause_s=-1)
