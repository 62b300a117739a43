"""Latency subsystem: profiles, precision fallback rules, analytic model, anchors."""
from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import numpy as np
import pytest

from qnas.errors import ConfigError, LatencyTableError, QnasError, UnknownTargetError
from qnas.latency import (
    AnalyticLatencyModel,
    TargetProfile,
    LatencyModel,
    create_latency_model,
    known_profiles,
    latency_model_kinds,
    load_profile,
)
from qnas.latency.profile import A_GRID, PROFILES_DIR, SCHEMA_VERSION, W_GRID
from qnas.latency.reference_nets import mobilenet_v1, mobilenet_v2
from qnas.quant.plan import BlockPlan, LayerSpec, NetworkPlan

EXPECTED_PROFILES = {"cpu-ort", "edgetpu", "hexagon-htp", "ethos-u", "tensorrt-orin", "tensorrt-a100", "coreml-ane",
                     "bitfusion"}

# One layer per op kind, plus shapes on both sides of Hexagon's int4 condition.
SHAPES = {
    "conv3x3s2": LayerSpec("c", "conv", 32, 64, 56, 28, 3, 2),
    "conv1x1": LayerSpec("c1", "conv", 128, 64, 14, 14, 1, 1),
    "pwconv_c64": LayerSpec("pw", "pwconv", 256, 64, 14, 14, 1, 1),
    "pwconv_c16": LayerSpec("pw16", "pwconv", 96, 16, 28, 28, 1, 1),
    "dwconv": LayerSpec("dw", "dwconv", 256, 256, 14, 14, 3, 1, 256),
    "fc": LayerSpec("fc", "fc", 1280, 1000, 1, 1),
    "add": LayerSpec("add", "add", 64, 64, 14, 14),
    "pool": LayerSpec("pool", "pool", 1280, 1280, 7, 1),
}


def _bits(layer: LayerSpec, w: int, a: int) -> LayerSpec:
    return replace(layer, w_bits=w, a_bits=a)


@pytest.fixture(scope="module")
def models() -> dict[str, AnalyticLatencyModel]:
    return {name: AnalyticLatencyModel(name) for name in known_profiles()}


def _edgetpu_raw() -> dict:
    return json.loads((PROFILES_DIR / "edgetpu.json").read_text())


# -- profiles -------------------------------------------------------------------------

def test_known_profiles_are_the_shipped_ones():
    assert set(known_profiles()) == EXPECTED_PROFILES


@pytest.mark.parametrize("name", sorted(EXPECTED_PROFILES))
def test_every_profile_loads_with_citations(name):
    p = load_profile(name)
    assert isinstance(p, TargetProfile)
    assert p.name == name and p.schema_version == SCHEMA_VERSION
    assert p.primary_unit in p.units
    facts = p.citations()
    assert facts, "a profile without facts"
    for path, fact in facts.items():
        assert fact.source.strip(), path
        assert fact.confidence in ("rough", "estimated", "documented", "measured"), path
    ms = AnalyticLatencyModel(p).predict(mobilenet_v2())
    assert math.isfinite(ms) and ms > 0


def test_load_profile_by_path_equals_by_name():
    by_path = load_profile(str(PROFILES_DIR / "hexagon-htp.json"))
    by_name = load_profile("hexagon-htp")
    layer = SHAPES["pwconv_c64"]
    assert AnalyticLatencyModel(by_path).layer_ms(layer) == AnalyticLatencyModel(by_name).layer_ms(layer)


def test_unknown_target_lists_known_targets():
    with pytest.raises(UnknownTargetError) as info:
        load_profile("jetson-nano-9000")
    msg = str(info.value)
    assert "\n" not in msg and "unknown latency target 'jetson-nano-9000'" in msg
    for name in EXPECTED_PROFILES:
        assert name in msg
    with pytest.raises(UnknownTargetError):
        create_latency_model("jetson-nano-9000")


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ConfigError) as info:
        create_latency_model("edgetpu", kind="crystal-ball")
    msg = str(info.value)
    assert "crystal-ball" in msg and "analytic" in msg and "\n" not in msg
    assert "analytic" in latency_model_kinds()
    assert isinstance(create_latency_model("edgetpu"), LatencyModel)


def test_corrupt_json_profile_is_a_clear_error(tmp_path):
    bad = tmp_path / "mytarget.json"
    bad.write_text('{"schema_version": 1, "name": "mytarget", "units": {')
    with pytest.raises(LatencyTableError) as info:
        load_profile(str(bad))
    msg = str(info.value)
    assert str(bad) in msg and "not valid JSON" in msg and "\n" not in msg


def test_missing_field_names_file_and_field(tmp_path):
    raw = _edgetpu_raw()
    del raw["units"]["tpu"]["bandwidth_bytes_per_s"]
    f = tmp_path / "nobw.json"
    f.write_text(json.dumps(raw))
    with pytest.raises(LatencyTableError) as info:
        load_profile(f)
    msg = str(info.value)
    assert str(f) in msg and "units.tpu.bandwidth_bytes_per_s" in msg and "\n" not in msg


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_profile_numbers_are_rejected(tmp_path, value):
    raw = _edgetpu_raw()
    raw["units"]["tpu"]["bandwidth_bytes_per_s"]["value"] = value
    f = tmp_path / "nan.json"
    f.write_text(json.dumps(raw))  # Python writes NaN / Infinity, and reads them back
    with pytest.raises(LatencyTableError, match="use a finite positive number") as info:
        load_profile(f)
    assert "bandwidth_bytes_per_s" in str(info.value) and "\n" not in str(info.value)


def test_fact_without_source_is_rejected():
    raw = _edgetpu_raw()
    del raw["units"]["host"]["peak_macs_per_s"]["source"]
    with pytest.raises(LatencyTableError, match=r"units\.host\.peak_macs_per_s\.source"):
        TargetProfile.from_dict(raw)


def test_wrong_schema_version_is_rejected():
    raw = _edgetpu_raw()
    raw["schema_version"] = 99
    with pytest.raises(LatencyTableError, match="schema_version"):
        TargetProfile.from_dict(raw)


def test_incomplete_fallback_rules_are_rejected_at_load():
    raw = _edgetpu_raw()
    raw["units"]["host"]["fallback"]["value"].pop("a4")
    with pytest.raises(LatencyTableError, match="no fallback rule"):
        TargetProfile.from_dict(raw)


def test_looping_fallback_rules_are_rejected_at_load():
    raw = _edgetpu_raw()
    raw["units"]["host"]["fallback"]["value"].update({"w4": "w2", "w2": "w4"})
    with pytest.raises(LatencyTableError, match="loop"):
        TargetProfile.from_dict(raw)


# -- precision resolution ---------------------------------------------------------------

@pytest.mark.parametrize("target,args,kw,expected", [
    ("edgetpu", ("conv", 8, 8), {}, ("tpu", 8, 8)),
    ("edgetpu", ("conv", 4, 8), {}, ("tpu", 8, 8)),     # upcast: the exporter writes int8, the TPU runs it
    ("edgetpu", ("pwconv", 8, 4), {}, ("tpu", 8, 8)),
    ("edgetpu", ("conv", 32, 32), {}, ("host", 32, 32)),
    ("hexagon-htp", ("pwconv", 4, 8), dict(k=1, stride=1, cout=64), ("htp", 4, 8)),
    ("hexagon-htp", ("pwconv", 4, 8), dict(k=1, stride=1, cout=32), ("htp", 8, 8)),
    ("hexagon-htp", ("pwconv", 4, 8), dict(k=1, stride=2, cout=64), ("htp", 8, 8)),
    ("hexagon-htp", ("dwconv", 4, 8), dict(k=3, stride=1, cout=64), ("htp", 8, 8)),
    ("hexagon-htp", ("fc", 2, 4), dict(cout=10), ("htp", 8, 8)),  # int4 fc needs > 32 outputs
    ("hexagon-htp", ("fc", 2, 4), dict(cout=64), ("htp", 4, 8)),
    ("hexagon-htp", ("dwconv", 2, 4), dict(k=3), ("htp", 8, 8)),
    ("hexagon-htp", ("conv", 4, 16), dict(k=1, stride=1, cout=64), ("htp", 4, 16)),
    ("ethos-u", ("conv", 4, 8), {}, ("npu", 8, 8)),
    ("ethos-u", ("conv", 4, 16), {}, ("npu", 8, 16)),
    ("ethos-u", ("conv", 32, 32), {}, ("host", 32, 32)),
    ("tensorrt-orin", ("conv", 4, 8), {}, ("gpu", 8, 8)),
    ("tensorrt-a100", ("conv", 2, 4), {}, ("gpu", 8, 8)),
    ("tensorrt-a100", ("fc", 4, 16), {}, ("gpu", 4, 16)),
    ("tensorrt-a100", ("conv", 4, 16), {}, ("gpu", 16, 16)),
    ("coreml-ane", ("conv", 4, 16), {}, ("ane", 4, 16)),
    ("coreml-ane", ("conv", 32, 32), {}, ("ane", 16, 16)),
    ("coreml-ane", ("conv", 4, 4), {}, ("ane", 4, 8)),
    ("cpu-ort", ("conv", 4, 8), {}, ("cpu", 8, 8)),
    ("cpu-ort", ("conv", 8, 32), {}, ("cpu", 32, 32)),
    ("cpu-ort", ("conv", 3, 6), {}, ("cpu", 8, 8)),  # off-grid widths round up
])
def test_resolve_precision(target, args, kw, expected):
    assert tuple(load_profile(target).resolve_precision(*args, **kw)) == expected


@pytest.mark.parametrize("name", sorted(EXPECTED_PROFILES))
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_non_native_bits_never_cheaper_than_their_fallback(models, name, shape):
    model = models[name]
    p = model.profile
    base = SHAPES[shape]
    checked = 0
    for w in W_GRID:
        for a in A_GRID:
            layer = _bits(base, w, a)
            chain = p.resolve_precision(layer.op, w, a, k=layer.k, stride=layer.stride, cout=layer.cout)
            if model.layer_cost(layer).native:
                continue
            ms = model.layer_ms(layer)
            # never cheaper than the precision it ends up at (evaluated from the primary unit) ...
            assert ms >= model.layer_ms(_bits(base, chain.w_bits, chain.a_bits)) - 1e-12, (w, a, chain)
            # ... nor than any precision it passes through on the way
            for step in p.fallback_chain(layer.op, w, a, k=layer.k, stride=layer.stride, cout=layer.cout)[1:]:
                assert ms >= model.layer_ms(_bits(base, step.w_bits, step.a_bits)) - 1e-12, (w, a, step)
            checked += 1
    assert checked > 0, "every profile has non-native precisions on the grid"


def test_host_fallback_is_never_cheaper_even_with_a_fast_host():
    raw = _edgetpu_raw()
    raw["units"]["tpu"]["fallback"]["value"] = {"*": "host"}  # a TPU that cannot run W4 even as int8
    raw.pop("low_bits", None)
    raw["units"]["host"]["peak_macs_per_s"]["value"] = {"w8a8": 1e15, "w32a32": 1e15}
    raw["units"]["host"]["bandwidth_bytes_per_s"]["value"] = 1e15
    raw["units"]["host"]["overhead_ms"]["value"] = 0.0
    model = AnalyticLatencyModel(TargetProfile.from_dict(raw))
    for layer in (SHAPES["conv3x3s2"], SHAPES["pwconv_c64"], SHAPES["fc"]):
        w4 = model.layer_cost(_bits(layer, 4, 8))
        assert w4.unit == "host"
        assert w4.ms >= model.layer_ms(_bits(layer, 8, 8))


@pytest.mark.parametrize("name", sorted(EXPECTED_PROFILES))
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_lower_weight_bits_never_make_a_layer_slower(models, name, shape):
    """Holds on every profile; the only exception allowed is a lower width that
    the target cannot run at all and sends to the host (Edge TPU W4 -> CPU)."""
    model = models[name]
    host = model.profile.host_unit
    base = SHAPES[shape]
    for a in A_GRID:
        costs = [model.layer_cost(_bits(base, w, a)) for w in W_GRID]
        for i, lo in enumerate(costs):
            for hi in costs[i + 1:]:
                if lo.ms > hi.ms + 1e-12:
                    assert host is not None and lo.unit == host and hi.unit != host, (
                        f"{name}: {shape} w{lo.layer.w_bits}a{a} ({lo.ms:.5f} ms on {lo.unit}) slower than "
                        f"w{hi.layer.w_bits}a{a} ({hi.ms:.5f} ms on {hi.unit})")


def test_hexagon_int4_helps_1x1_stride1_conv_but_not_depthwise(models):
    m = models["hexagon-htp"]
    pw = SHAPES["pwconv_c64"]
    assert (pw.k, pw.stride, pw.cout) == (1, 1, 64)
    assert m.layer_ms(_bits(pw, 4, 8)) < m.layer_ms(_bits(pw, 8, 8))
    assert m.layer_ms(_bits(pw, 4, 16)) < m.layer_ms(_bits(pw, 8, 16))
    dw = SHAPES["dwconv"]
    assert m.layer_ms(_bits(dw, 4, 8)) == m.layer_ms(_bits(dw, 8, 8))
    narrow = replace(pw, cout=32)
    assert m.layer_ms(_bits(narrow, 4, 8)) == m.layer_ms(_bits(narrow, 8, 8))
    # 4-bit activations run as 8: no cheaper than a8
    assert m.layer_ms(_bits(pw, 8, 4)) == m.layer_ms(_bits(pw, 8, 8))


def test_coreml_low_bit_weights_cut_bytes_not_macs(models):
    m = models["coreml-ane"]
    fc = SHAPES["fc"]  # weight-bound at batch 1
    assert m.layer_ms(_bits(fc, 4, 16)) < m.layer_ms(_bits(fc, 8, 16)) < m.layer_ms(_bits(fc, 16, 16))
    big = LayerSpec("big", "conv", 256, 256, 56, 56, 3, 1, 1)  # compute-bound
    c4, c16 = m.layer_cost(_bits(big, 4, 16)), m.layer_cost(_bits(big, 16, 16))
    assert c4.bound == c16.bound == "compute" and c4.compute == c16.compute == "w16a16"
    assert c4.ms == pytest.approx(c16.ms)


def test_ethos_sub8bit_weights_give_no_speedup(models):
    m = models["ethos-u"]
    for shape in ("conv3x3s2", "pwconv_c64", "dwconv", "fc"):
        layer = SHAPES[shape]
        assert m.layer_ms(_bits(layer, 2, 8)) == m.layer_ms(_bits(layer, 4, 8)) == m.layer_ms(_bits(layer, 8, 8))


# -- whole networks ---------------------------------------------------------------------

def test_edgetpu_fallback_sends_the_rest_of_the_network_to_the_host(models):
    """A float layer cannot run on the TPU: it and everything after it run on the host (sub-8-bit
    layers are upcast to int8 and stay on the TPU, test_one_latency.py)."""
    m = models["edgetpu"]
    net = mobilenet_v2()
    mid = next(i for i, l in enumerate(net) if i >= len(net) // 2 and l.op == "pwconv")
    mixed = list(net)
    mixed[mid] = _bits(net[mid], 32, 32)
    base_bd, mixed_bd = m.breakdown(net), m.breakdown(mixed)
    assert all(c.unit == "tpu" for c in base_bd)
    assert all(c.unit == "tpu" for c in mixed_bd[:mid])
    assert all(c.unit == "host" for c in mixed_bd[mid:])
    assert not any(c.native for c in mixed_bd[mid:])
    assert (mixed_bd[mid].w_bits, mixed_bd[mid].a_bits) == (32, 32)
    assert all((c.w_bits, c.a_bits) == (8, 8) for c in mixed_bd[mid + 1:])
    assert mixed_bd[mid].io_ms > 0  # the activation crosses USB
    base_ms, mixed_ms = m.predict(net), m.predict(mixed)
    assert mixed_ms > 3 * base_ms
    # the same layer alone in W4A8 at the very end costs far less than in the middle
    tail = list(net)
    tail[-1] = _bits(net[-1], 32, 32)
    assert base_ms < m.predict(tail) < mixed_ms


def test_non_sticky_fallback_returns_to_the_accelerator(models):
    m = models["ethos-u"]
    net = mobilenet_v2()
    mid = len(net) // 2
    mixed = list(net)
    mixed[mid] = _bits(net[mid], 32, 32)
    bd = m.breakdown(mixed)
    assert bd[mid].unit == "host"
    assert all(c.unit == "npu" for i, c in enumerate(bd) if i != mid)
    assert bd[mid + 1].io_ms > 0  # back from the CPU to the NPU


@pytest.mark.parametrize("net,published", [(mobilenet_v1, 2.4), (mobilenet_v2, 2.6)])
def test_edgetpu_matches_coral_benchmarks(models, net, published):
    ms = models["edgetpu"].predict(net(224, w_bits=8, a_bits=8))
    assert abs(ms / published - 1) <= 0.25, f"{net.__name__}: {ms:.2f} ms vs published {published} ms"


def test_cpu_ort_single_core_numbers_are_plausible(models):
    m = models["cpu-ort"]
    fp32 = m.predict(mobilenet_v2(w_bits=32, a_bits=32))
    int8 = m.predict(mobilenet_v2(w_bits=8, a_bits=8))
    assert 25 <= fp32 <= 60
    assert int8 >= fp32  # DESIGN.md: int8 QDQ was not faster than fp32 on AVX2


def test_reference_nets_have_published_sizes():
    v1, v2 = mobilenet_v1(), mobilenet_v2()
    assert sum(l.macs for l in v1) / 1e6 == pytest.approx(569, rel=0.01)
    assert sum(l.params for l in v1) / 1e6 == pytest.approx(4.2, rel=0.01)
    assert sum(l.macs for l in v2) / 1e6 == pytest.approx(300, rel=0.01)
    assert sum(l.params for l in v2) / 1e6 == pytest.approx(3.47, rel=0.01)


def _tiny_plan(w: int, a: int) -> NetworkPlan:
    stem = LayerSpec("stem", "conv", 3, 16, 32, 16, 3, 2, 1, w, a)
    block = BlockPlan(
        LayerSpec("b1.expand", "pwconv", 16, 48, 16, 16, 1, 1, 1, w, a),
        LayerSpec("b1.dw", "dwconv", 48, 48, 16, 16, 3, 1, 48, w, a),
        LayerSpec("b1.project", "pwconv", 48, 16, 16, 16, 1, 1, 1, w, a),
        residual=True,
    )
    head = LayerSpec("head", "fc", 16, 10, 1, 1, w_bits=w, a_bits=a)
    return NetworkPlan(3, 32, 10, stem, (block,), head)


def test_network_plan_adds_and_pool_inherit_quantized_bits(models):
    plan = _tiny_plan(8, 8)
    assert {l.op for l in plan.layers()} >= {"add", "pool"}
    bd = models["edgetpu"].breakdown(plan)
    # NetworkPlan creates the add and pool with float defaults; in an int8 net they run int8 on the TPU
    assert [c.unit for c in bd] == ["tpu"] * len(bd)
    assert models["edgetpu"].predict(plan) == pytest.approx(
        models["edgetpu"].predict([l if l.op not in ("add", "pool") else _bits(l, 8, 8) for l in plan.layers()]))


@pytest.mark.parametrize("name", sorted(EXPECTED_PROFILES))
def test_predict_is_sum_of_breakdown_and_predict_many_matches(models, name):
    m = models[name]
    plans = [mobilenet_v1(), mobilenet_v2(w_bits=4, a_bits=8), mobilenet_v2(w_bits=32, a_bits=32),
             _tiny_plan(8, 8), _tiny_plan(4, 4)]
    single = [m.predict(p) for p in plans]
    many = m.predict_many(plans)
    assert isinstance(many, np.ndarray) and many.dtype == np.float64 and many.shape == (len(plans),)
    np.testing.assert_allclose(many, single, rtol=0, atol=0)
    for p, ms in zip(plans, single):
        assert ms == pytest.approx(sum(c.ms for c in m.breakdown(p)))


def test_predict_accepts_a_single_layer_and_rejects_junk(models):
    m = models["hexagon-htp"]
    layer = _bits(SHAPES["pwconv_c64"], 8, 8)
    assert m.predict(layer) == pytest.approx(m.predict([layer]))
    assert m.predict([layer]) >= m.layer_ms(layer)
    with pytest.raises(QnasError):
        m.predict(42)
    with pytest.raises(QnasError):
        m.predict(["not a layer"])


def test_profiles_are_loaded_without_pickle_and_are_plain_json():
    for name in EXPECTED_PROFILES:
        raw = json.loads((PROFILES_DIR / f"{name}.json").read_text())
        assert raw["schema_version"] == SCHEMA_VERSION
        again = TargetProfile.from_dict(copy.deepcopy(raw))
        assert again.name == name
