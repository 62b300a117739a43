import onnx
import pytest
import torch

from qnas.errors import ExportError, QnasError
from qnas.exporters import available_exporters, create_exporter
from qnas.exporters.onnx_qcdq import measure_latency_ms


def test_onnx_export_matches_pytorch_on_digits_test_split(trained_digits_model, digits_splits, tmp_path):
    space, arch, model = trained_digits_model
    test = digits_splits.test.at_resolution(arch.resolution)
    exporter = create_exporter("onnx")
    path = exporter.export(model, test.images[:1], tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    # sub-8-bit layers show up as int8 Q -> Clip -> DQ (QCDQ)
    assert "Clip" in ops
    report = exporter.verify(path, model, test.images, test.labels)
    assert report.n == len(test) == 359
    assert report.torch_acc > 0.8, "the shared model should have learned digits"
    assert report.agreement >= 0.99
    assert abs(report.export_acc - report.torch_acc) <= 0.01
    assert measure_latency_ms(path, (1, 1, arch.resolution, arch.resolution), repeats=5) > 0


def test_weights_are_stored_as_integer_codes(trained_digits_model, tmp_path):
    space, arch, model = trained_digits_model
    path = create_exporter("onnx").export(model, torch.zeros(1, 1, arch.resolution, arch.resolution), tmp_path / "m.onnx")
    inits = {i.name: i for i in onnx.load(str(path)).graph.initializer}
    int8 = [i for i in inits.values() if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    n_convs = 2 + 3 * len(model.plan.blocks)  # stem, blocks; fc is 2-D
    assert len(int8) >= n_convs - 1


def test_export_refuses_to_overwrite(trained_digits_model, tmp_path):
    _, arch, model = trained_digits_model
    out = tmp_path / "m.onnx"
    out.write_text("user file")
    with pytest.raises(QnasError, match="already exists"):
        create_exporter("onnx").export(model, torch.zeros(1, 1, arch.resolution, arch.resolution), out)
    assert out.read_text() == "user file"


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(ExportError, match="onnx"):
        create_exporter("caffe")
    assert "onnx" in available_exporters()
