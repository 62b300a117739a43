"""Configurable bit sets: a space offering weights at 3, 5, 6, 7 bits and activations at 5, 6, 7 bits
(a table measured at W6/A6 must be usable) exports with every backend, each width stored in the nearest
container its format has, on the width's exact grid."""
import pytest
import torch

from qnas.arch import Arch, Block
from qnas.exporters import create_exporter
from qnas.space import SearchSpace

SPACE = SearchSpace.from_dict({
    "resolutions": [12], "widths": [1.0], "kernels": [3, 5], "expands": [3], "w_bits": [3, 5, 6, 7],
    "a_bits": [5, 6, 7, 8], "stem_head_w_bits": [6], "stem_head_a_bits": [6],
    "stages": [{"channels": 16, "depths": [1]}, {"channels": 24, "depths": [2], "stride": 2}]})
ARCH = Arch(12, 1.0, ((Block(3, 3, (3, 5, 6), (8, 5, 7)),),
                      (Block(5, 3, (7, 6, 3), (6, 7, 5)), Block(3, 3, (6, 6, 6), (6, 6, 6)))),
            stem_bits=(6, 6), head_bits=(6, 6))


@pytest.fixture(scope="module")
def odd_model(settled_model):
    SPACE.validate(ARCH)
    return settled_model(SPACE, ARCH)


def _inputs(n=256):
    return torch.randn(n, 1, 12, 12, generator=torch.Generator().manual_seed(1))


def test_layers_quantize_at_the_odd_widths(odd_model):
    layers = [l.module for l in odd_model.quant_layers()]
    assert {round(float(m.quant_weight().bit_width)) for m in layers} == {3, 5, 6, 7}
    for m in layers:  # weight codes inside the narrow range of their width
        q = m.quant_weight()
        qmax = 2 ** (round(float(q.bit_width)) - 1) - 1
        codes = (q.value / q.scale).round()
        assert float(codes.abs().max()) <= qmax


@pytest.mark.parametrize("backend", ["onnx", "tensorrt"])
def test_onnx_forms_are_exact(backend, odd_model, tmp_path):
    exporter = create_exporter(backend)
    x = _inputs()
    path = exporter.export(odd_model, x[:1], tmp_path / f"m{exporter.suffix}")
    report = exporter.verify(path, odd_model, x, torch.randint(0, 10, (len(x),)))
    assert report.agreement == 1.0 and report.max_abs_logit_diff == 0.0


def test_tflite_stores_odd_widths_in_int8_on_their_grid(odd_model, tmp_path):
    import qnas.exporters.tflite_litert as tfl

    exporter = create_exporter("tflite")
    x = _inputs()
    path, report = exporter.export_with_report(odd_model, x[:1], tmp_path / "m.tflite")
    assert report.full_integer, report.float_ops
    check = exporter.check_codes(path, odd_model)
    assert check.ok, check.mismatches
    step = float(odd_model.logit_quant.act_quant.scale())
    with torch.no_grad():
        ref = tfl.build_reference(odd_model)(x)
    assert float((tfl.run_tflite(path, x) - ref).abs().max()) <= 1 * step + 1e-6
    parity = exporter.verify(path, odd_model, x, torch.randint(0, 10, (len(x),)))
    assert parity.agreement >= 0.98


def test_coreml_stores_odd_widths_in_the_nearest_container(odd_model, tmp_path):
    import qnas.exporters.coreml_mlprogram as cml

    exporter = create_exporter("coreml")
    x = _inputs()
    path, report = exporter.export_with_report(odd_model, x[:1], tmp_path / "m.mlpackage")
    storage = {l.w_bits: l.weight_storage for l in report.layers}
    assert "int4" in storage[3] and all("int8" in storage[w] for w in (5, 6, 7)), storage
    check = exporter.check_codes(path, odd_model)
    assert check.ok, check.mismatches
    with torch.no_grad():
        ref = odd_model(x)
    got = cml.simulate(path, x)
    step = float(odd_model.logit_quant.act_quant.scale())
    assert float((ref.argmax(1) == got.argmax(1)).float().mean()) == 1.0
    assert float((ref - got).abs().max()) <= 1 * step + 1e-6
