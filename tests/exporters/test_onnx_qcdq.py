import copy

import onnx
import pytest
import torch

from qnas.errors import ExportError
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
    int8 = [i for i in inits.values() if i.data_type == onnx.TensorProto.INT8]
    layers = model.quant_layers()
    n_convs = sum(l.spec.op != "fc" for l in layers)  # stem and the blocks' convs: 4-D codes; the fc's are 2-D
    assert sum(len(i.dims) == 4 for i in int8) == n_convs == len(layers) - 1
    assert sum(len(i.dims) == 2 for i in int8) == 1


def test_export_leaves_no_stale_quantizer_cache(trained_digits_model, tmp_path):
    """Brevitas caches each quantizer's output while exporting; left in place, ``scale()`` would
    answer from that cache and miss a later change of the model."""
    _, arch, model = trained_digits_model
    other = copy.deepcopy(model)
    create_exporter("onnx").export(other, torch.zeros(1, 1, arch.resolution, arch.resolution), tmp_path / "m.onnx")
    for q in [l.input_quant for l in other.quant_layers()] + other.stream_quants():
        assert q.module.act_quant._cached_act is None, q.name
    proxy = other.logit_quant.act_quant
    before = float(proxy.scale())
    impl = proxy.fused_activation_quant_proxy.tensor_quant.scaling_impl
    with torch.no_grad():  # Brevitas reads the stats buffer until collect_stats_steps, then the learned value
        (impl.buffer if impl.counter <= impl.collect_stats_steps else impl.value).mul_(2.0)
    assert float(proxy.scale()) == pytest.approx(2.0 * before, rel=1e-6)


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(ExportError, match="onnx"):
        create_exporter("caffe")
    assert "onnx" in available_exporters()


@pytest.mark.parametrize("opset", [0, 12, 21, "13", True])
def test_opsets_the_exporter_cannot_write_are_one_line_errors(opset):
    with pytest.raises(ExportError, match="ONNX opset must be an integer from 13 to 20") as e:
        create_exporter("onnx", opset=opset)
    assert "\n" not in str(e.value)
    assert create_exporter("onnx", opset=17).opset == 17
