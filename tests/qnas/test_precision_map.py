import pytest

from qnas.arch import Arch, Block
from qnas.errors import ExportError
from qnas.latency.analytic import AnalyticLatencyModel
from qnas.precision_map import module_paths, precision_map
from qnas.quant.build import build_model
from qnas.space import SearchSpace

SPACE = SearchSpace()
MIXED = Arch(16, 0.75, (
    (Block(3, 4, (8, 4, 8), (8, 8, 4)),),
    (Block(5, 3, (4, 2, 4), (8, 4, 8)), Block(3, 3, (2, 8, 8), (4, 8, 8))),
    (Block(7, 6, (8, 8, 4), (8, 8, 8)),),
    (Block(3, 4, (4, 4, 8), (8, 4, 4)),),
))


def by_layer(pm):
    return {l.layer: l for l in pm.layers}


def test_module_paths_name_real_quantized_modules():
    plan = SPACE.plan(MIXED)
    model = build_model(SPACE, MIXED)
    modules = dict(model.named_modules())
    paths = module_paths(plan)
    assert len(paths) == len(plan.quantized_layers())
    for spec in plan.quantized_layers():
        assert paths[spec.name] == spec.name  # a layer's module path is its plan name
        m = modules[paths[spec.name]]
        assert m.weight.shape[0] == spec.cout  # the module is the layer the plan describes
    pm = precision_map(plan, "edgetpu")
    assert [l.module for l in pm.layers] == [l.layer for l in pm.layers] == [l.name for l in model.quant_layers()]


def test_uniform_int8_runs_unmapped_everywhere_it_is_native():
    plan = SPACE.plan(SPACE.uniform(8, 8))
    for target in ("edgetpu", "tensorrt-orin", "coreml-ane", "hexagon-htp", "cpu-ort", "ethos-u"):
        pm = precision_map(plan, target)
        assert pm.mapped == [], target
        pm.require_exact()  # no error


def test_edgetpu_runs_sub_8_bit_layers_upcast_on_the_tpu():
    """What the TFLite exporter writes with --allow-upcast is all int8, and that runs on the TPU."""
    pm = precision_map(SPACE.plan(MIXED), "edgetpu")
    assert all(l.on_accelerator for l in pm.layers)
    low = [l for l in pm.layers if (l.w_bits, l.a_bits) != (8, 8)]
    assert low and all(l.mapped and l.how == "upcast" for l in low) and set(pm.mapped) == set(low)
    assert by_layer(pm)["s0.b0.project"].run_a_bits == 8  # 4-bit activations run as int8


def test_coreml_keeps_low_bit_weights_but_maps_4bit_activations():
    pm = by_layer(precision_map(SPACE.plan(MIXED), "coreml-ane"))
    assert (pm["s1.b0.dw"].run_w_bits, pm["s0.b0.dw"].run_w_bits) == (2, 4)  # palettized / int4 weights stay
    assert not pm["s0.b0.dw"].mapped
    assert pm["s0.b0.project"].a_bits == 4 and pm["s0.b0.project"].run_a_bits == 8 and pm["s0.b0.project"].mapped


def test_map_agrees_with_the_latency_model_breakdown():
    plan = SPACE.plan(MIXED)
    pm = by_layer(precision_map(plan, "hexagon-htp"))
    for cost in AnalyticLatencyModel("hexagon-htp").breakdown(plan):
        if cost.layer.name in pm:
            l = pm[cost.layer.name]
            assert (l.unit, l.run_w_bits, l.run_a_bits) == (cost.unit, cost.w_bits, cost.a_bits)


def test_refusal_is_one_line_names_layers_and_the_flag():
    pm = precision_map(SPACE.plan(MIXED), "tensorrt-orin")
    with pytest.raises(ExportError) as e:
        pm.require_exact()
    msg = str(e.value)
    assert "\n" not in msg and "--allow-upcast" in msg and "s0.b0.dw w4a8 -> gpu w8a8" in msg
    assert f"{len(pm.mapped)} of {len(pm.layers)} layers" in msg
    pm.require_exact(allow_upcast=True)  # asked for: no error
    assert any("[weights 4->8 bit]" in line for line in pm.lines())
