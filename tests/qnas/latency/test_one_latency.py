"""One latency for one file: every target prices a layer as the exporter will write it (native, upcast
into a wider container on the accelerator, or host fallback only for what truly cannot run there), and
the search, ``qnas latency predict`` and the export report give the same number.

Also the bench-free low-bit check of issue 13: a uniform W8A8 arch against the same arch at W4A8 and
W2A4 moves the predicted latency the way docs/low_bit_targets.md says each target behaves."""
from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest

from qnas.errors import LatencyTableError
from qnas.latency import AnalyticLatencyModel, TargetProfile, known_profiles, load_profile
from qnas.latency.evaluation import predict_latency
from qnas.latency.profile import LOW_BIT_KEYS, LOW_BIT_MODES, PROFILES_DIR, SCHEMA_VERSION
from qnas.precision_map import precision_map
from qnas.presets import preset_space, reference_arch
from qnas.quant.plan import LayerSpec
from qnas.searching import make_latency_model, score_record

SPACE = preset_space("mobilenetv2")
BITS = {"W8A8": (8, 8), "W4A8": (4, 8), "W2A4": (2, 4)}
ARCHS = {name: reference_arch("mobilenetv2", 224, w, a) for name, (w, a) in BITS.items()}
PLANS = {name: SPACE.plan(arch) for name, arch in ARCHS.items()}

#: what docs/low_bit_targets.md says sub-8-bit widths buy on a MobileNetV2 (stem/head stay 8-bit)
NO_BENEFIT = {"edgetpu", "ethos-u", "cpu-ort", "tensorrt-a100", "tensorrt-orin"}
WEIGHT_ONLY = {"hexagon-htp", "coreml-ane"}  # weight traffic only: lower, by a few per cent
BIT_FLEXIBLE = {"bitfusion"}  # MAC rate scales with bits: much lower


def _raw(name: str) -> dict:
    return json.loads((PROFILES_DIR / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def predicted() -> dict[str, dict[str, float]]:
    return {t: {b: AnalyticLatencyModel(t).predict(p) for b, p in PLANS.items()} for t in known_profiles()}


def test_every_shipped_profile_is_classified():
    assert set(known_profiles()) == NO_BENEFIT | WEIGHT_ONLY | BIT_FLEXIBLE


# -- one number ------------------------------------------------------------------------

@pytest.mark.parametrize("target", known_profiles())
@pytest.mark.parametrize("bits", sorted(BITS))
def test_search_predict_and_export_report_agree(target, bits):
    arch, plan = ARCHS[bits], PLANS[bits]
    # the search: the latency model it builds, priced the way a history record is
    search_model = make_latency_model(target, "analytic", space=SPACE)
    search_ms = search_model.predict(plan)
    assert score_record(SPACE, arch, search_model, {"val_acc": 0.5}, 0)["latency_ms"] == round(search_ms, 6)
    # `qnas latency predict`
    cli_ms = predict_latency(arch.to_json(), target, space=SPACE).latency_ms
    # the export report: precision map on the target, then AnalyticLatencyModel(pmap.target).predict(plan)
    pmap = precision_map(plan, target)
    report_ms = AnalyticLatencyModel(pmap.target).predict(plan)
    assert search_ms == cli_ms == report_ms == pmap.latency_ms


def test_edgetpu_prices_the_upcast_int8_file_not_a_host_fallback(predicted):
    ms = predicted["edgetpu"]
    assert ms["W4A8"] == ms["W8A8"] and ms["W2A4"] == ms["W8A8"]  # the exporter writes all-int8: same file cost
    pmap = precision_map(PLANS["W4A8"], "edgetpu")
    assert pmap.mapped and all(l.on_accelerator and l.unit == "tpu" for l in pmap.layers)
    assert {l.how for l in pmap.mapped} == {"upcast"}
    assert all((l.run_w_bits, l.run_a_bits) == (8, 8) for l in pmap.layers)
    assert "upcast" in pmap.lines()[0] and pmap.to_dict()["layers"][0]["how"] in ("native", "upcast")
    # what the old rule ("*": "host" on the TPU) predicted for the same arch: the 49 ms of issue 13
    raw = _raw("edgetpu")
    raw["units"]["tpu"]["fallback"]["value"] = {"*": "host"}
    del raw["low_bits"]
    host_ms = AnalyticLatencyModel(TargetProfile.from_dict(raw)).predict(PLANS["W4A8"])
    assert host_ms > 5 * ms["W4A8"]


def test_edgetpu_float_layers_still_fall_back_to_the_host():
    m = AnalyticLatencyModel("edgetpu")
    layers = list(PLANS["W8A8"].layers())
    mid = next(i for i, l in enumerate(layers) if i > len(layers) // 2 and l.op == "pwconv")
    layers[mid] = replace(layers[mid], w_bits=32, a_bits=32)
    bd = m.breakdown(layers)
    assert bd[mid].unit == "host" and all(c.unit == "host" for c in bd[mid:])  # sticky: the graph is cut there
    assert all(c.unit == "tpu" for c in bd[:mid])


# -- where low bits help (bench-free) -------------------------------------------------

@pytest.mark.parametrize("target", sorted(NO_BENEFIT))
def test_no_benefit_targets_price_low_bits_as_int8(predicted, target):
    ms = predicted[target]
    assert ms["W4A8"] == ms["W8A8"] == ms["W2A4"], ms


@pytest.mark.parametrize("target", sorted(WEIGHT_ONLY))
def test_weight_only_targets_get_a_little_faster(predicted, target):
    ms = predicted[target]
    assert 0.9 * ms["W8A8"] < ms["W4A8"] < ms["W8A8"], ms  # bandwidth-bound layers only; MACs unchanged
    assert ms["W2A4"] <= ms["W4A8"], ms  # 4-bit activations run as 8: at most the 2-bit weight bytes help


def test_bitfusion_gets_much_faster(predicted):
    ms = predicted["bitfusion"]
    assert ms["W4A8"] < 0.8 * ms["W8A8"], ms
    assert ms["W2A4"] < 0.65 * ms["W8A8"] and ms["W2A4"] < ms["W4A8"], ms


@pytest.mark.parametrize("target", known_profiles())
def test_declared_policy_predicts_the_direction(predicted, target):
    """A target whose sub-8-bit widths are all upcast (or host) cannot get faster below 8 bits."""
    policy = load_profile(target).low_bits
    assert set(policy) and all(set(keys) <= set(LOW_BIT_KEYS) for keys in policy.values())
    assert all(mode in LOW_BIT_MODES for keys in policy.values() for mode in keys.values())
    any_native = any(mode == "native" for keys in policy.values() for mode in keys.values())
    ms = predicted[target]
    if not any_native:
        assert ms["W4A8"] == ms["W8A8"] == ms["W2A4"]
    else:  # native somewhere (TensorRT: int4 fc at 16-bit activations only, not in this arch)
        assert ms["W4A8"] <= ms["W8A8"]


PW = LayerSpec("pw", "pwconv", 256, 64, 14, 14, 1, 1)  # 1x1 stride 1, cout > 32: weight-bandwidth bound
FC = LayerSpec("fc", "fc", 1280, 1000, 1, 1)
FC_NARROW = LayerSpec("fc10", "fc", 1280, 10, 1, 1)
DW = LayerSpec("dw", "dwconv", 256, 256, 14, 14, 3, 1, 256)


def _ms(target: str, layer: LayerSpec, w: int, a: int) -> float:
    return AnalyticLatencyModel(target).layer_ms(replace(layer, w_bits=w, a_bits=a))


def test_hexagon_int4_only_on_1x1_and_fc_with_more_than_32_outputs():
    p = load_profile("hexagon-htp")
    assert p.low_bits["pwconv"]["w4"] == p.low_bits["fc"]["w4"] == "native"
    assert p.low_bits["dwconv"]["w4"] == "upcast" and p.low_bits["pwconv"]["a4"] == "upcast"
    assert _ms("hexagon-htp", PW, 4, 8) < _ms("hexagon-htp", PW, 8, 8)
    assert _ms("hexagon-htp", FC, 4, 8) < _ms("hexagon-htp", FC, 8, 8)
    assert _ms("hexagon-htp", FC_NARROW, 4, 8) == _ms("hexagon-htp", FC_NARROW, 8, 8)  # out_channels <= 32
    assert _ms("hexagon-htp", DW, 4, 8) == _ms("hexagon-htp", DW, 8, 8)
    # compute unchanged: a compute-bound 1x1 gains nothing
    big = LayerSpec("big", "pwconv", 512, 512, 56, 56, 1, 1)
    m = AnalyticLatencyModel("hexagon-htp")
    c4, c8 = m.layer_cost(replace(big, w_bits=4, a_bits=8)), m.layer_cost(replace(big, w_bits=8, a_bits=8))
    assert c4.compute == c8.compute == "w8a8" and c4.bound == "compute" and c4.ms == c8.ms


@pytest.mark.parametrize("target", ["tensorrt-a100", "tensorrt-orin"])
def test_tensorrt_int4_weight_only_fc_pays_block_scales(target):
    p = load_profile(target)
    entry = p.units["gpu"].native_entry("fc", 4, 16)
    assert entry is not None and entry.weight_overhead == pytest.approx(1 / 16)  # fp16 scale per 64 weights
    assert p.low_bits["fc"]["w4"] == "native" and p.low_bits["conv"]["w4"] == "upcast"
    m = AnalyticLatencyModel(p)
    gemv = LayerSpec("gemv", "fc", 8192, 8192, 1, 1)  # a batch-1 GEMV: weight-bandwidth bound
    w4, w8 = m.layer_cost(replace(gemv, w_bits=4, a_bits=16)), m.layer_cost(replace(gemv, w_bits=8, a_bits=16))
    assert w4.bound == w8.bound == "memory" and w4.ms < w8.ms
    # exactly half the weight bytes plus 1/16 of them: the block scales
    bw = p.units["gpu"].bandwidth_bytes_per_s
    weights = gemv.cin * gemv.cout
    assert (w8.ms - w4.ms) == pytest.approx((weights - weights * 0.5 * (1 + 1 / 16)) / bw * 1e3, rel=1e-9)
    assert _ms(target, gemv, 4, 8) == _ms(target, gemv, 8, 8)  # what the exporter writes at a8: int8
    conv = LayerSpec("c", "conv", 256, 256, 14, 14, 3, 1)
    assert _ms(target, conv, 4, 16) == _ms(target, conv, 16, 16)  # no INT4 convolution


def test_coreml_and_cpu_ort():
    assert _ms("coreml-ane", FC, 4, 16) < _ms("coreml-ane", FC, 8, 16)  # palettized weights: less traffic
    assert _ms("coreml-ane", PW, 8, 4) == _ms("coreml-ane", PW, 8, 8)  # no 4-bit activations
    # the ONNX exporter writes QCDQ int8, not MatMulNBits: no benefit for fc either
    assert _ms("cpu-ort", FC, 4, 8) == _ms("cpu-ort", FC, 8, 8)


# -- the low-bits field ----------------------------------------------------------------

@pytest.mark.parametrize("target", known_profiles())
def test_every_profile_declares_its_low_bits_with_a_source(target):
    p = load_profile(target)
    assert p.schema_version == SCHEMA_VERSION
    fact = p.citations()["low_bits"]
    assert "low_bit_targets.md" in fact.source or "mit-han-lab/apq" in fact.source
    summary = p.low_bits_summary()
    assert json.loads(json.dumps(summary)) == summary and summary["target"] == target
    assert len(p.low_bits_lines()) == 1 + len(p.low_bits)


def test_edgetpu_and_bitfusion_policies():
    assert {m for keys in load_profile("edgetpu").low_bits.values() for m in keys.values()} == {"upcast"}
    assert {m for keys in load_profile("bitfusion").low_bits.values() for m in keys.values()} == {"native"}


def test_a_declared_mode_that_contradicts_the_rules_is_rejected():
    raw = _raw("edgetpu")
    raw["low_bits"]["value"] = {"*": "host"}  # the rules upcast: a lie
    with pytest.raises(LatencyTableError, match="low_bits says .* 'host' .* 'upcast'"):
        TargetProfile.from_dict(raw)
    raw["low_bits"]["value"] = {"conv": {"w3": "upcast"}}
    with pytest.raises(LatencyTableError, match="w3"):
        TargetProfile.from_dict(raw)


def test_exclude_makes_pricing_refuse_and_is_reported():
    raw = _raw("edgetpu")
    raw["low_bits"]["value"] = {"*": "upcast", "dwconv": {"w2": "exclude"}}
    p = TargetProfile.from_dict(raw)
    assert p.low_bits["dwconv"]["w2"] == "exclude" and p.low_bits["dwconv"]["w4"] == "upcast"
    m = AnalyticLatencyModel(p)
    assert m.layer_ms(replace(DW, w_bits=4, a_bits=8)) == m.layer_ms(replace(DW, w_bits=8, a_bits=8))
    with pytest.raises(LatencyTableError, match="cannot run dwconv at w2 .*search a space without w2"):
        m.layer_ms(replace(DW, w_bits=2, a_bits=8))
    assert "w2 excluded" in "\n".join(p.low_bits_lines())
    # what a search checks before its first evaluation
    assert p.excluded_widths(SPACE.config.w_bits, SPACE.config.a_bits) == {"dwconv": ["w2"]}
    assert p.excluded_widths((4, 8), (4, 8)) == {}
    assert load_profile("edgetpu").excluded_widths((2, 4, 8), (4, 8)) == {}


def test_version_1_files_load_but_may_not_use_version_2_fields():
    raw = _raw("edgetpu")
    raw["schema_version"] = 1
    with pytest.raises(LatencyTableError, match="'low_bits' needs schema_version 2"):
        TargetProfile.from_dict(copy.deepcopy(raw))
    del raw["low_bits"]
    p = TargetProfile.from_dict(raw)  # a version 1 profile still loads; its policy comes from the rules
    assert p.schema_version == 1 and p.low_bits["conv"]["w4"] == "upcast"
