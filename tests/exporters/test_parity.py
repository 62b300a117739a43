"""Parity in quantization steps: an exported file must reproduce the model's logits, not only its top class."""
import onnx
import pytest
import torch
from onnx import numpy_helper

from qnas.errors import ExportError
from qnas.exporters import create_exporter
from qnas.exporters.base import compare_logits
from qnas.exporters.parity import QuantizerInputs, logit_step, model_reference, quantizer_inputs, rounding_tie, torch_logits
from qnas.exporting import check_parity


def _grid_logits(n: int = 100, classes: int = 10, step: float = 0.05) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(-100, 100, (n, classes), generator=g).float() * step


def test_compare_logits_counts_logits_within_one_step():
    step = 0.05
    ref = _grid_logits(step=step)
    labels = ref.argmax(1)
    got = ref.clone()
    got[0, 0] += step          # one step: still "within one step"
    got[1, 1] -= 3 * step      # three steps off
    got[2, 2] += 2 * step      # two steps off
    r = compare_logits("x", ref, got, labels, step=step)
    assert r.within_one_step == pytest.approx(1 - 2 / ref.numel())
    assert r.faithful_share == r.within_one_step  # nothing traced, nothing excused
    assert r.max_step_diff == pytest.approx(3, abs=1e-3)
    assert "max 3 steps" in r.step_line()
    r.tie_images, r.tie_logits = 2, 2
    assert r.faithful_share == pytest.approx(1.0) and "2 image(s)" in r.step_line()
    plain = compare_logits("x", ref, got, labels)  # no step known: nothing counted in steps
    assert plain.within_one_step is None and plain.step_line() is None and plain.faithful_share is None


def test_check_parity_fails_a_file_whose_top_class_agrees_but_logits_do_not(tmp_path):
    step = 0.05
    ref = _grid_logits(step=step)
    got = ref * 1.05  # same argmax everywhere, logits several steps off
    r = compare_logits("x", ref, got, ref.argmax(1), step=step)
    assert r.agreement == 1.0
    with pytest.raises(ExportError, match="within one quantization step"):
        check_parity(r, tmp_path / "m.onnx")
    check_parity(r, tmp_path / "m.onnx", min_within_step=0.0)  # the bar is configurable
    with pytest.raises(ExportError, match="agrees with PyTorch on only"):
        check_parity(compare_logits("x", ref, -ref, ref.argmax(1), step=step), tmp_path / "m.onnx")


def _inputs(real: list[float]) -> QuantizerInputs:
    t = torch.tensor([real])
    return QuantizerInputs("q", t, torch.round(t))


def test_a_rounding_tie_explains_only_a_one_code_flip_at_a_boundary():
    ref = [_inputs([0.2, 3.0]), _inputs([1.5000001, 7.2])]
    same = [torch.tensor([[0.0, 3.0]]), torch.tensor([[2.0, 7.0]])]
    assert rounding_tie(ref, same, 0) is None                     # nothing differs
    flip = [torch.tensor([[0.0, 3.0]]), torch.tensor([[1.0, 7.0]])]
    assert rounding_tie(ref, flip, 0) == "q"                      # 1.5000001 rounded down: a tie
    far = [torch.tensor([[0.0, 3.0]]), torch.tensor([[2.0, 8.0]])]
    assert rounding_tie(ref, far, 0) is None                      # 7.2 -> 8 is no tie
    early = [torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 7.0]])]
    assert rounding_tie(ref, early, 0) is None                    # the first difference (0.2 -> 1) decides
    two = [torch.tensor([[0.0, 3.0]]), torch.tensor([[0.0, 7.0]])]
    assert rounding_tie(ref, two, 0) is None                      # two codes apart


def test_model_reference_and_quantizer_inputs(trained_digits_model, digits_splits):
    _, arch, model = trained_digits_model
    images = digits_splits.test.at_resolution(arch.resolution).images[:16]
    ref = model_reference(model, images)
    assert ref.step == pytest.approx(float(model.logit_quant.act_quant.scale())) == logit_step(model)
    assert torch.equal(ref.logits, torch_logits(model, images))
    seen = quantizer_inputs(model, images)
    assert seen[0].name == "input_quant" and seen[-1].name == "logit_quant"
    assert torch.allclose(seen[-1].codes * ref.step, ref.logits)  # the last quantizer's codes are the logits
    assert all(torch.equal(q.codes, q.codes.round()) for q in seen)


def _scale_output_dq(graph: onnx.GraphProto, factor: float) -> None:
    """Multiply the scale of the DequantizeLinear producing the logits (its own copy: Brevitas shares one
    scale tensor between a QuantizeLinear and its DequantizeLinear)."""
    producer = {o: n for n in graph.node for o in n.output}
    node = producer[graph.output[0].name]
    while node.op_type != "DequantizeLinear":
        node = producer[node.input[0]]
    scale = next(i for i in graph.initializer if i.name == node.input[1])
    graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(scale) * factor, "scaled_logit_scale"))
    node.input[1] = "scaled_logit_scale"


def test_onnx_verify_catches_logits_off_by_steps_with_identical_predictions(trained_digits_model, digits_splits,
                                                                             tmp_path):
    _, arch, model = trained_digits_model
    test = digits_splits.test.at_resolution(arch.resolution)
    exporter = create_exporter("onnx")
    path = exporter.export(model, test.images[:1], tmp_path / "m.onnx")
    faithful = exporter.verify(path, model, test.images, test.labels)
    assert faithful.tie_images is not None  # onnxruntime's codes were traced
    assert faithful.faithful_share >= 0.999
    check_parity(faithful, path)
    assert any("within one step" in n for n in faithful.notes)  # the fused session is counted in steps too

    m = onnx.load(str(path))
    _scale_output_dq(m.graph, 1.5)
    onnx.save(m, str(tmp_path / "scaled.onnx"))
    off = exporter.verify(tmp_path / "scaled.onnx", model, test.images, test.labels)
    assert off.agreement >= 0.99  # scaling every logit keeps (nearly) every top-1 prediction
    # a rounding tie excuses an image or two, never logits scaled throughout
    assert off.faithful_share < 0.9 and off.max_step_diff > 1.5
    assert any("not traced" in n for n in off.notes)  # hundreds of images off: no tie explains that
    with pytest.raises(ExportError, match="within one quantization step"):
        check_parity(off, tmp_path / "scaled.onnx", min_agreement=0.99)
