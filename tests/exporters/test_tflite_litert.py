"""TFLite (litert-torch -> ai-edge-litert) exporter. litert-torch and ai-edge-litert must be
installed (CI installs them): a missing SDK fails these tests, it does not skip them."""
import copy

import numpy as np
import pytest
import torch

import qnas.exporters.tflite_litert as tfl
from qnas.exporters import create_exporter

@pytest.fixture(scope="module")
def float_io_export(trained_digits_model, digits_splits, tmp_path_factory):
    _, arch, model = trained_digits_model
    test = digits_splits.test.at_resolution(arch.resolution)
    exporter = create_exporter("tflite")
    path, report = exporter.export_with_report(model, test.images[:1], tmp_path_factory.mktemp("tfl") / "m.tflite")
    return exporter, path, report


@pytest.fixture(scope="module")
def int8_io_export(trained_digits_model, digits_splits, tmp_path_factory):
    _, arch, model = trained_digits_model
    test = digits_splits.test.at_resolution(arch.resolution)
    exporter = tfl.TFLiteLitertExporter(int8_io=True)
    path, report = exporter.export_with_report(model, test.images[:1], tmp_path_factory.mktemp("tfl8") / "m.tflite")
    return exporter, path, report


def test_sdks_are_installed():
    import ai_edge_litert.interpreter  # noqa: F401
    import litert_torch  # noqa: F401


def test_export_writes_full_integer_tflite(trained_digits_model, float_io_export):
    _, arch, model = trained_digits_model
    exporter, path, report = float_io_export
    assert path.suffix == ".tflite" and path.stat().st_size > 0
    assert report is not None and report.full_integer, report.float_ops
    assert len(report.layers) == 2 + 3 * len(model.plan.blocks)
    assert [l.layer for l in report.layers] == [l.name for l in model.quant_layers()]  # plan names
    it = tfl.interpreter(path, delegates=False)
    ops = tfl.ops_of(it)
    inputs = [d["index"] for d in it.get_input_details()]
    outputs = [d["index"] for d in it.get_output_details()]
    assert tfl.float_ops(ops, inputs, outputs) == []
    weight_ops = [o for o in ops if o.op in tfl.WEIGHT_OPS]
    assert weight_ops and all(not o.float_tensors for o in weight_ops)
    # float IO: exactly one QUANTIZE at the input and one DEQUANTIZE at the output
    assert it.get_input_details()[0]["dtype"] == np.float32
    assert it.get_output_details()[0]["dtype"] == np.float32
    assert [o.op for o in ops if o.op in tfl.IO_OPS] == ["QUANTIZE", "DEQUANTIZE"]
    assert all(line for line in report.lines()) and report.to_dict()["full_integer"]
    assert tfl.measure_latency_ms(path, (1, 1, arch.resolution, arch.resolution), repeats=3) > 0


def test_verify_runs_on_the_digits_test_split(trained_digits_model, digits_splits, float_io_export):
    _, arch, model = trained_digits_model
    exporter, path, _ = float_io_export
    test = digits_splits.test.at_resolution(arch.resolution)
    report = exporter.verify(path, model, test.images, test.labels)
    assert report.n == len(test) == 359
    assert report.torch_acc > 0.8
    assert report.agreement >= 0.995  # the bar `qnas export` holds every file to
    assert report.logit_step == pytest.approx(float(model.logit_quant.act_quant.scale()))
    assert report.tie_images is not None and report.faithful_share >= 0.999  # traced through LiteRT's tensors
    assert not any("differs from the model's logit step" in n for n in report.notes)


def test_int8_io_has_int8_input_and_output(trained_digits_model, digits_splits, int8_io_export, float_io_export):
    _, arch, model = trained_digits_model
    exporter, path, report = int8_io_export
    it = tfl.interpreter(path, delegates=False)
    assert it.get_input_details()[0]["dtype"] == np.int8
    assert it.get_output_details()[0]["dtype"] == np.int8
    assert tfl.io_quantization(it.get_output_details()[0])[0] > 0
    assert report.full_integer
    assert not [o for o in tfl.ops_of(it) if o.op in tfl.IO_OPS and o.float_tensors]
    test = digits_splits.test.at_resolution(arch.resolution)
    r8 = exporter.verify(path, model, test.images, test.labels)
    # same integer graph as the float-IO file: identical predictions
    got8 = tfl.run_tflite(path, test.images)
    gotf = tfl.run_tflite(float_io_export[1], test.images)
    assert (got8.argmax(1) == gotf.argmax(1)).float().mean() >= 0.995
    assert r8.agreement >= 0.99  # float IO agrees with PyTorch on >= 99.5 %, int8 IO with float IO on >= 99.5 %


def test_check_codes_matches_and_detects_a_changed_code(trained_digits_model, float_io_export):
    _, _, model = trained_digits_model
    exporter, path, _ = float_io_export
    check = exporter.check_codes(path, model)
    assert check.ok, check.mismatches
    assert check.tensors == 2 + 3 * len(model.plan.blocks)
    assert check.max_scale_rel_err <= 1e-6

    altered = copy.deepcopy(model).eval()
    with torch.no_grad():
        qw = altered.head.quant_weight()
        code = int(qw.int()[0, 0])
        step = float(torch.as_tensor(qw.scale).reshape(-1)[0])
        altered.head.weight[0, 0] += -step if code > 0 else step
        assert int(altered.head.quant_weight().int()[0, 0]) != code
    bad = exporter.check_codes(path, altered)
    assert not bad.ok
    assert any(m.startswith("head") and "codes differ" in m for m in bad.mismatches)


def test_reference_module_reproduces_codes_after_bn_fold(trained_digits_model):
    _, _, model = trained_digits_model
    ref = tfl.build_reference(model)
    for layer in ref.layers():
        w = layer.weight()
        shape = [-1] + [1] * (w.dim() - 1)
        assert torch.equal(torch.round(w / layer.w_scale.view(shape)).to(torch.int8), layer.codes)
        assert torch.equal(torch.round(w / layer.stored_scale.view(shape)).to(torch.int8), layer.stored_codes())
        assert int(layer.stored_codes().abs().max()) <= 127
    # stem: folded codes are the model's codes up to per-channel sign
    codes, _, _, _ = tfl.weight_codes(model.stem)
    assert torch.equal(ref.stem.codes.abs(), codes.abs())
