"""The ``bitfusion`` latency target: a bit-flexible accelerator whose MAC rate scales with the operand bits
(Sharma et al., ISCA 2018), calibrated on the per-layer table APQ published
(mit-han-lab/apq@428190a6198a522ca8af8e1b509657eb5688b2b0, lut/BitFusion_new.b1.dict)."""
from __future__ import annotations

import re
import statistics
from dataclasses import replace

import pytest

from qnas.cli import main
from qnas.errors import QnasError
from qnas.latency import AnalyticLatencyModel, load_profile
from qnas.presets import preset_space, reference_arch
from qnas.quant.plan import LayerSpec

#: verbatim entries of mit-han-lab/apq lut/BitFusion_new.b1.dict (commit 428190a):
#: key "(in_channels, out_channels, input_size, kernel_size, stride, padding, groups)-W{w}A{a}",
#: latency in ms, energy in mJ; the median-size shape at each input size, 1x1 and depthwise
APQ_ENTRIES = [
    ("(816, 192, 7, 1, 1, 0, 1)-W8A8", 0.03932, 0.07401727566704),
    ("(816, 192, 7, 1, 1, 0, 1)-W4A8", 0.022796, 0.042358433388008),
    ("(816, 192, 7, 1, 1, 0, 1)-W4A4", 0.017797999999999998, 0.032145817782452006),
    ("(232, 80, 14, 1, 1, 0, 1)-W8A8", 0.019944, 0.032083905946287995),
    ("(232, 80, 14, 1, 1, 0, 1)-W4A8", 0.015017999999999997, 0.027628852667376),
    ("(232, 80, 14, 1, 1, 0, 1)-W4A4", 0.013124, 0.023222319501047996),
    ("(120, 40, 28, 1, 1, 0, 1)-W8A8", 0.029148, 0.055266170717135986),
    ("(120, 40, 28, 1, 1, 0, 1)-W4A8", 0.028948, 0.051600110097296),
    ("(120, 40, 28, 1, 1, 0, 1)-W4A4", 0.025028, 0.043338615178416),
    ("(80, 24, 56, 1, 1, 0, 1)-W8A8", 0.071244, 0.127189000725216),
    ("(80, 24, 56, 1, 1, 0, 1)-W4A8", 0.071164, 0.1236130876928),
    ("(80, 24, 56, 1, 1, 0, 1)-W4A4", 0.06071, 0.104405566787184),
    ("(16, 80, 112, 1, 1, 0, 1)-W8A8", 0.6858479999999999, 1.160627579391616),
    ("(16, 80, 112, 1, 1, 0, 1)-W4A8", 0.685794, 1.1604531764904482),
    ("(16, 80, 112, 1, 1, 0, 1)-W4A4", 0.6774319999999999, 1.146365977632864),
    ("(448, 448, 14, 3, 1, 1, 448)-W8A8", 0.209216, 0.2780841910120959),
    ("(448, 448, 14, 3, 1, 1, 448)-W4A8", 0.114072, 0.180857864755008),
    ("(448, 448, 14, 3, 1, 1, 448)-W4A4", 0.078568, 0.14493672639219196),
    ("(960, 960, 7, 5, 1, 2, 960)-W8A8", 0.35136, 0.23087359681968),
    ("(960, 960, 7, 5, 1, 2, 960)-W4A8", 0.20412, 0.16396114701120001),
    ("(960, 960, 7, 5, 1, 2, 960)-W4A4", 0.14178, 0.15033740608992002),
    ("(200, 200, 28, 3, 2, 1, 200)-W8A8", 0.0934, 0.1241447281304),
    ("(200, 200, 28, 3, 2, 1, 200)-W4A8", 0.054054, 0.09529694772031197),
    ("(200, 200, 28, 3, 2, 1, 200)-W4A4", 0.0434, 0.079331476025368),
    ("(120, 120, 56, 5, 1, 2, 120)-W8A8", 2.35875, 2.5924684549420802),
    ("(120, 120, 56, 5, 1, 2, 120)-W4A8", 1.257264, 1.4172725778835196),
    ("(120, 120, 56, 5, 1, 2, 120)-W4A4", 0.632008, 0.928431356177088),
    ("(80, 80, 112, 3, 2, 1, 80)-W8A8", 0.56638, 0.6579049011128),
    ("(80, 80, 112, 3, 2, 1, 80)-W4A8", 0.28412, 0.5295284339212799),
    ("(80, 80, 112, 3, 2, 1, 80)-W4A4", 0.258504, 0.4788603422928239),
]
_KEY = re.compile(r"^\((\d+), (\d+), (\d+), (\d+), (\d+), (\d+), (\d+)\)-W(\d)A(\d)$")


def apq_layer(key: str) -> LayerSpec:
    """The qnas layer of an APQ key (its input_size is the layer's own input H = W)."""
    cin, cout, hw, k, stride, pad, groups, w, a = map(int, _KEY.match(key).groups())
    op = "dwconv" if groups > 1 else ("pwconv" if k == 1 else "conv")
    return LayerSpec(key, op, cin, cout, hw, (hw + 2 * pad - k) // stride + 1, k, stride, groups, w, a)


@pytest.fixture(scope="module")
def model() -> AnalyticLatencyModel:
    return AnalyticLatencyModel("bitfusion")


def test_show_works_and_cites_the_table_and_the_paper(capsys):
    assert main(["latency", "show", "bitfusion"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bitfusion:") and "native w2a4" in out
    assert "mit-han-lab/apq" in out and "BitFusion_new.b1.dict" in out and "ISCA 2018" in out
    assert "units.bf.energy" in out and "low_bits" in out


def test_mac_rate_scales_with_bits_like_the_simulator():
    unit = load_profile("bitfusion").units["bf"]
    for key, rate in unit.peak_macs_per_s.items():
        w, a = map(int, re.match(r"w(\d+)a(\d+)", key).groups())
        assert rate == 2.56e11 * (8 // max(w, 2)) * (8 // max(a, 2)), key  # get_perf_factor x 512 FUs x 500 MHz
    assert {e.prec for e in unit.native} == {"w8a8", "w4a8", "w8a4", "w4a4", "w2a8", "w2a4"}


def test_a_compute_bound_layer_speeds_up_by_the_fusion_factor(model):
    dw = LayerSpec("dw", "dwconv", 240, 240, 28, 28, 5, 1, 240)  # depthwise: 1/64 of the array, compute bound
    base = model.layer_cost(replace(dw, w_bits=8, a_bits=8))
    assert base.bound == "compute"
    for (w, a), factor in {(4, 8): 2, (8, 4): 2, (4, 4): 4, (2, 8): 4}.items():
        c = model.layer_cost(replace(dw, w_bits=w, a_bits=a))
        assert c.bound == "compute" and c.ms == pytest.approx(base.ms / factor), (w, a)


def test_psum_traffic_limits_large_pointwise_layers(model):
    """32-bit partial sums are written and read back: a 112-px 1x1 barely gains (APQ: 0.686 -> 0.677 ms)."""
    layer = apq_layer("(16, 80, 112, 1, 1, 0, 1)-W8A8")
    w8, w4 = model.layer_cost(layer), model.layer_cost(replace(layer, w_bits=4, a_bits=4))
    assert w8.bound == w4.bound == "memory" and w4.ms / w8.ms > 0.95


def test_reproduces_the_published_table(model):
    err = {"pwconv": [], "dwconv": []}
    for key, ms, _ in APQ_ENTRIES:
        layer = apq_layer(key)
        err[layer.op].append(abs(model.layer_ms(layer) / ms - 1))
    assert max(err["pwconv"]) < 0.3 and statistics.median(err["pwconv"]) < 0.05, err["pwconv"]
    assert max(err["dwconv"]) < 0.5 and statistics.median(err["dwconv"]) < 0.2, err["dwconv"]


def test_bit_ratios_follow_the_published_table(model):
    table = {key: ms for key, ms, _ in APQ_ENTRIES}
    for key in table:
        if not key.endswith("W8A8"):
            continue
        shape = key[:-len("-W8A8")]
        for wa in ("W4A8", "W4A4"):
            published = table[f"{shape}-{wa}"] / table[key]
            predicted = model.layer_ms(apq_layer(f"{shape}-{wa}")) / model.layer_ms(apq_layer(key))
            assert predicted <= 1.0 and published <= 1.0
            assert abs(predicted - published) < 0.3, (shape, wa, predicted, published)


def test_energy_is_stored_and_matches_the_published_table(model):
    assert model.has_energy
    errs = []
    for key, _, mj in APQ_ENTRIES:
        errs.append(abs(model.predict_energy([apq_layer(key)]) / mj - 1))
    assert max(errs) < 0.3 and statistics.median(errs) < 0.15, errs


def test_whole_network_latency_and_energy_fall_with_bits(model):
    space = preset_space("mobilenetv2")
    ms, mj = {}, {}
    for w, a in ((8, 8), (4, 8), (4, 4), (2, 4)):
        plan = space.plan(reference_arch("mobilenetv2", 224, w, a))
        ms[w, a], mj[w, a] = model.predict(plan), model.predict_energy(plan)
        assert len(model.energy_breakdown(plan)) == len(model.breakdown(plan))
    assert ms[8, 8] > ms[4, 8] > ms[4, 4] > ms[2, 4]
    assert mj[8, 8] > mj[4, 8] > mj[4, 4] > mj[2, 4]
    # APQ's MobileNetV2-like BitFusion models span 6.11 ms / 9.14 mJ to 12.17 ms / 14.14 mJ
    assert 4 < ms[8, 8] < 16 and 6 < mj[8, 8] < 20


def test_profiles_without_energy_say_so():
    m = AnalyticLatencyModel("edgetpu")
    assert not m.has_energy
    with pytest.raises(QnasError, match="gives no energy for unit 'tpu'"):
        m.predict_energy([LayerSpec("c", "conv", 3, 16, 32, 16, 3, 2, 1, 8, 8)])


def test_float_layers_are_priced_as_int8_and_reported_mapped(model):
    layer = LayerSpec("c", "conv", 32, 64, 28, 28, 3, 1)
    c = model.layer_cost(replace(layer, w_bits=32, a_bits=32))
    assert (c.unit, c.w_bits, c.a_bits) == ("bf", 8, 8) and not c.native
    assert c.ms == model.layer_ms(replace(layer, w_bits=8, a_bits=8))


def test_precision_map_says_a_float_layer_is_priced_as_integer():
    from qnas.precision_map import precision_map

    plan = [LayerSpec("c", "conv", 3, 16, 32, 16, 3, 2, 1, 32, 32),
            LayerSpec("p", "pwconv", 16, 32, 16, 16, 1, 1, 1, 4, 4)]

    class Plan:  # precision_map reads quantized_layers() and layers()
        def layers(self):
            return plan

        def quantized_layers(self):
            return plan

    pm = precision_map(Plan(), "bitfusion")
    assert [l.how for l in pm.layers] == ["downcast", "native"]
    assert "1 float layers priced as integer" in pm.lines()[0]
