"""CoreML (mlprogram) exporter: the learned codes and scales land in the .mlpackage unchanged.

Prediction needs macOS (``-m macos``); on Linux the stored codes and scales are
compared with the model's, and the stored program is evaluated with a small
reference interpreter. coremltools must be installed: these tests fail, not
skip, without it."""
import copy
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import qnas.exporters.coreml_mlprogram as cml
from qnas.exporters import create_exporter
from qnas.quant.errors import ExportError

WEIGHT_BIN = "Data/com.apple.CoreML/weights/weight.bin"


@pytest.fixture(scope="module")
def exported(trained_digits_model, tmp_path_factory):
    _, arch, model = trained_digits_model
    d = tmp_path_factory.mktemp("coreml")
    exporter = create_exporter("coreml")
    path, report = exporter.export_with_report(model, torch.zeros(1, 1, arch.resolution, arch.resolution),
                                               d / "model.mlpackage")
    return path, report, exporter


def _n_quant_layers(model):
    return 2 + 3 * len(model.plan.blocks)  # stem + (expand, dw, project) per block + head


def _stream_quants(model):
    """The 8-bit quantizers that feed no weight layer: residual out_quant, pool_quant, logit_quant."""
    return ([f"{path}.out_quant" for path, b in model.named_blocks() if b.residual]
            + ["pool_quant", "logit_quant"])


def _tampered(path, tmp_path, find, edit):
    """A copy of the package whose weight blob has ``find`` (bytes) replaced by ``edit(find)``."""
    copy_path = tmp_path / "tampered.mlpackage"
    shutil.copytree(path, copy_path)
    blob = copy_path / WEIGHT_BIN
    data = bytearray(blob.read_bytes())
    at = data.find(find)
    assert at >= 0 and data.find(find, at + 1) < 0, "tensor bytes not found exactly once in the weight blob"
    new = edit(find)
    assert len(new) == len(find) and new != find
    data[at:at + len(find)] = new
    blob.write_bytes(bytes(data))
    return copy_path


def test_registered_as_coreml_and_import_is_lazy():
    assert isinstance(create_exporter("coreml"), cml.CoreMLExporter)
    assert create_exporter("coreml").suffix == ".mlpackage"
    code = "import sys, qnas.exporters.coreml_mlprogram; assert 'coremltools' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_export_writes_an_mlpackage(exported):
    path, _, _ = exported
    assert path.is_dir() and path.suffix == ".mlpackage"
    assert (path / "Manifest.json").is_file() and (path / WEIGHT_BIN).is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp dirs left behind


def test_stored_codes_and_scales_equal_the_models(exported, trained_digits_model):
    path, _, exporter = exported
    _, _, model = trained_digits_model
    check = exporter.check_codes(path, model)
    assert check.ok, check.mismatches
    assert check.tensors == _n_quant_layers(model) == 17
    assert check.max_scale_rel_err < 1e-6
    n_act = _n_quant_layers(model) + len(_stream_quants(model))
    assert _stream_quants(model) == ["s0.b0.out_quant", "s1.b1.out_quant", "pool_quant", "logit_quant"]
    assert [q.name for q in model.stream_quants()] == _stream_quants(model)
    assert any(f"{n_act} activation scales compared" in n for n in check.notes), check.notes
    _, act_scales = cml.stored_codes(path)
    for q in _stream_quants(model):  # the stream quantizers' scales are in the file too
        s = float(getattr(model.get_submodule(q), "act_quant").scale())
        assert act_scales[cml._act_op_name(q, "quantize")] == pytest.approx(s, rel=1e-6), q
        assert act_scales[cml._act_op_name(q, "dequantize")] == pytest.approx(s, rel=1e-6), q
    if sys.platform != "darwin":
        assert any("prediction was NOT run" in n for n in check.notes)
    # the file really holds int8 / int4 codes and a 2-bit LUT, per the plan's bit widths
    weights, _ = cml.stored_codes(path)
    want = {8: "int8", 4: "int4", 2: "lut2"}
    for layer in model.quant_layers():
        name = layer.name
        codes, scale, storage = weights[cml._op_name(name)]
        assert storage == want[layer.spec.w_bits], name
        ref = layer.module.quant_weight()
        assert np.array_equal(codes, ref.int().numpy().astype(np.int64)), name
        assert np.array_equal(scale.reshape(-1), ref.scale.detach().numpy().reshape(-1).astype(np.float32)), name


def test_a_tampered_code_in_the_file_is_reported(exported, trained_digits_model, tmp_path):
    path, _, exporter = exported
    _, _, model = trained_digits_model
    codes = model.stem.quant_weight().int().numpy().astype(np.int8)

    def bump(b):
        a = np.frombuffer(b, dtype=np.int8).copy()
        a[3] = a[3] - 1 if a[3] > -127 else a[3] + 1
        return a.tobytes()

    check = exporter.check_codes(_tampered(path, tmp_path, codes.tobytes(), bump), model)
    assert not check.ok
    assert any(m.startswith("stem:") and "1 of" in m and "codes differ" in m for m in check.mismatches), check.mismatches


def test_a_tampered_scale_in_the_file_is_reported(exported, trained_digits_model, tmp_path):
    path, _, exporter = exported
    _, _, model = trained_digits_model
    scale = model.head.quant_weight().scale.detach().numpy().astype(np.float32).reshape(-1)

    def nudge(b):
        a = np.frombuffer(b, dtype=np.float32).copy()
        a[0] = np.nextafter(np.float32(a[0] * 1.00001), np.float32(np.inf))
        return a.tobytes()

    check = exporter.check_codes(_tampered(path, tmp_path, scale.tobytes(), nudge), model)
    assert not check.ok and check.max_scale_rel_err > 1e-6
    assert any(m.startswith("head:") and "scale rel err" in m for m in check.mismatches), check.mismatches


def test_a_model_with_one_changed_code_does_not_match(exported, trained_digits_model):
    path, _, exporter = exported
    _, _, model = trained_digits_model
    other = copy.deepcopy(model)
    view = next(l for l in other.quant_layers() if l.spec.w_bits == 2)
    name, layer = view.name, view.module
    before = layer.quant_weight().int().clone()
    with torch.no_grad():  # push one zero code to +1 (the scale is a learned parameter, unchanged)
        i = int((before.flatten() == 0).nonzero()[0])
        layer.weight.view(-1)[i] = layer.quant_weight().scale.flatten()[i // before[0].numel()] * 1.0
    assert int((layer.quant_weight().int() != before).sum()) == 1
    check = exporter.check_codes(path, other)
    assert [m.split(":")[0] for m in check.mismatches] == [name]


@pytest.mark.parametrize("which", ["residual", "pool_quant", "logit_quant"])
def test_a_model_with_a_changed_stream_scale_does_not_match(exported, trained_digits_model, which):
    """check_codes compares the scales of the quantizers that feed no conv (residual output,
    pooled features, logits) as well."""
    path, _, exporter = exported
    _, _, model = trained_digits_model
    other = copy.deepcopy(model)
    name = next(q for q in _stream_quants(other) if q.endswith("out_quant")) if which == "residual" else which
    quant = other.get_submodule(name)
    before = float(quant.act_quant.scale())
    impl = quant.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl
    with torch.no_grad():  # Brevitas reads the stats buffer until collect_stats_steps, then the learned value
        if impl.counter <= impl.collect_stats_steps:
            impl.buffer.mul_(1.001)
        else:
            impl.value.mul_(1.001)
    assert float(quant.act_quant.scale()) != before
    check = exporter.check_codes(path, other)
    assert not check.ok and check.max_scale_rel_err > 1e-6
    assert {m.split(":")[0] for m in check.mismatches} == {name}, check.mismatches


def test_program_adds_the_quantized_block_input_to_the_quantized_output(exported, trained_digits_model):
    """The stored wiring follows QuantNet.forward: residual add of in_quant and out_quant outputs,
    pool_quant before the pooling, logit_quant's dequantize as the program output."""
    path, _, _ = exported
    _, _, model = trained_digits_model
    fn = cml._load_program(path).functions["main"]
    ops = {op.name: op for op in fn.operations}
    producer = lambda v: v.op.name  # noqa: E731
    blocks = model.named_blocks()
    assert blocks
    for path, blk in blocks:
        b = path.replace(".", "_")  # ops are named after module paths: s1.b0 -> s1_b0_*
        if blk.residual:
            add = ops[f"{b}_add"]
            assert {producer(add.x), producer(add.y)} == {f"{b}_in_quant_dequantize", f"{b}_out_quant_dequantize"}
            assert producer(ops[f"{b}_out_quant_quantize"].input) == f"{b}_bn3"
        else:
            assert f"{b}_add" not in ops and f"{b}_out_quant_quantize" not in ops
    assert producer(ops["pool"].x) == "pool_quant_dequantize"
    last, last_blk = blocks[-1]
    assert producer(ops["pool_quant_quantize"].input) == last.replace(".", "_") + (
        "_add" if last_blk.residual else "_bn3")
    assert producer(ops["logit_quant_quantize"].input) == "head"
    assert [v.name for v in fn.outputs] == [cml.OUTPUT_NAME] and fn.outputs[0].op.op_type == "dequantize"


def test_refuses_to_overwrite_an_existing_path(trained_digits_model, tmp_path):
    exporter = create_exporter("coreml")
    _, arch, model = trained_digits_model
    x = torch.zeros(1, 1, arch.resolution, arch.resolution)
    user = tmp_path / "mine.mlpackage"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="already exists"):
        exporter.export(model, x, user)
    assert (user / "notes.txt").read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == [user.name]
    out = exporter.export(model, x, user, overwrite=True)
    assert out == user and not (user / "notes.txt").exists() and exporter.check_codes(user, model).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == [user.name]
    with pytest.raises(ExportError, match=r"\.mlpackage"):
        exporter.export(model, x, tmp_path / "model.mlmodel")


def test_report_names_palettized_int4_and_int8_layers(exported, trained_digits_model):
    _, report, exporter = exported
    _, _, model = trained_digits_model
    assert not hasattr(exporter, "last_report") and len(report.layers) == _n_quant_layers(model)
    assert [m.layer for m in report.layers] == [l.name for l in model.quant_layers()]
    lines = report.lines()
    assert all("\n" not in line for line in lines)
    seen = set()
    for m, line in zip(report.layers, lines):
        seen.add(m.w_bits)
        if m.w_bits == 2:
            assert "2-bit LUT palettized" in m.weight_storage and "palettized" in line
        elif m.w_bits == 4:
            assert m.weight_storage.startswith("int4")
        else:
            assert m.weight_storage.startswith("int8")
        assert "int8 quantize/dequantize" in m.act_storage
        assert ("clipped to [-8, 7]" in m.act_storage) == (m.a_bits == 4)
    assert seen == {2, 4, 8}
    assert report.to_dict()["layers"][0]["layer"] == "stem"
    # the stream quantizers (no weight layer of their own) are reported too, after the layers
    assert [a.quantizer for a in report.activations] == _stream_quants(model)
    for a, line in zip(report.activations, lines[len(report.layers):]):
        assert a.a_bits == 8 and "int8 quantize/dequantize" in a.act_storage and "clipped" not in a.act_storage
        assert line.startswith(a.quantizer) and "\n" not in line
    assert [a["quantizer"] for a in report.to_dict()["activations"]] == _stream_quants(model)


def test_stored_program_computes_the_model_on_digits(exported, trained_digits_model, digits_splits):
    """Linux-side numerics: the file's program, run by the reference interpreter, equals PyTorch."""
    path, _, _ = exported
    _, arch, model = trained_digits_model
    test = digits_splits.test.at_resolution(arch.resolution)
    with torch.no_grad():
        ref = model(test.images)
    got = cml.simulate(path, test.images)
    agreement, max_diff = float((ref.argmax(1) == got.argmax(1)).float().mean()), float((ref - got).abs().max())
    print(f"simulate vs PyTorch on {len(test.labels)} digits: agreement {agreement:.4f}, max |dlogit| {max_diff:.3g}")
    assert agreement >= 0.995
    assert max_diff < 1e-3
    # the logits are 8-bit quantized, so both sides give integer multiples of logit_quant's scale
    step = float(model.logit_quant.act_quant.scale())
    assert torch.allclose(got / step, torch.round(got / step), atol=1e-3)


@pytest.mark.skipif(sys.platform == "darwin", reason="off macOS only: checks the message pointing at check_codes")
def test_verify_off_macos_says_what_runs_instead(exported, trained_digits_model, digits_splits):
    path, _, exporter = exported
    _, arch, model = trained_digits_model
    test = digits_splits.test.at_resolution(arch.resolution)
    assert not exporter.runtime_available()
    with pytest.raises(ExportError, match="needs macOS.*check_codes"):
        exporter.verify(path, model, test.images[:4], test.labels[:4])


@pytest.mark.macos
def test_coreml_prediction_matches_pytorch_on_digits(exported, trained_digits_model, digits_splits):
    path, _, exporter = exported
    _, arch, model = trained_digits_model
    test = digits_splits.test.at_resolution(arch.resolution)
    assert exporter.runtime_available()
    report = exporter.verify(path, model, test.images, test.labels)
    assert report.n == len(test.labels)
    assert report.agreement >= 0.995
    assert report.torch_acc > 0.8
