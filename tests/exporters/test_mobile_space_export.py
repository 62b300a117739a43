"""Export conformance of an arch with squeeze-excite, h-swish / ReLU6, a block without expand
conv, a feature-mix conv and a pre-classifier linear (the standard mobile spaces)."""
import pytest
import torch

from qnas.arch import Arch, Block
from qnas.errors import ExportError
from qnas.exporters import create_exporter
from qnas.exporters.base import mobile_space_features
from qnas.quant.build import build_model
from qnas.space import SearchSpace


@pytest.fixture(scope="module")
def se_model():
    sp = SearchSpace.from_dict({
        "in_channels": 1, "num_classes": 10, "resolutions": [16], "widths": [1.0], "stem_channels": 16,
        "stem_act": "hswish", "expand1_no_conv": True, "mix_channels": 64, "mix_act": "hswish",
        "pre_head_channels": 32, "expands": [3, 4],
        "stages": [{"channels": 16, "depths": [1], "kernels": [3], "expands": [1], "act": "relu6"},
                   {"channels": 24, "depths": [2], "stride": 2, "act": "hswish", "se": True}]})
    arch = Arch(16, 1.0, ((Block(3, 1, (8,) * 3, (8,) * 3),),
                          (Block(5, 4, (8, 4, 8), (8, 8, 4)), Block(3, 3, (8,) * 3, (8,) * 3))))
    torch.manual_seed(0)
    model = build_model(sp, arch).train()
    with torch.no_grad():  # past the activation quantizers' statistics phase
        for _ in range(3):
            model(torch.randn(8, 1, 16, 16))
    return model.eval()


@pytest.mark.parametrize("backend", ["onnx", "tensorrt"])
def test_se_hswish_arch_exports_with_exact_parity(backend, se_model, tmp_path):
    exporter = create_exporter(backend)
    x = torch.randn(48, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    path = exporter.export(se_model, x[:1], tmp_path / f"m{exporter.suffix}")
    report = exporter.verify(path, se_model, x, torch.randint(0, 10, (48,)))
    assert report.agreement == 1.0 and report.max_abs_logit_diff == 0.0


# ---- TFLite and CoreML ------------------------------------------------------------------------
# A CIFAR-sized arch with every kind at once: 5x5 stem with ReLU6, a block without expand conv
# (ReLU6), ReLU6 blocks, h-swish blocks with squeeze-excite, a 4-bit activation read by an SE
# block, an h-swish feature-mix conv and an h-swish pre-classifier linear.


@pytest.fixture(scope="module")
def mobile_model(settled_model):
    sp = SearchSpace.from_dict({
        "in_channels": 3, "num_classes": 5, "resolutions": [32], "widths": [1.0], "stem_channels": 16,
        "stem_kernel": 5, "stem_act": "relu6", "expand1_no_conv": True, "mix_channels": 96, "mix_act": "hswish",
        "pre_head_channels": 48, "pre_head_act": "hswish", "expands": [3, 4],
        "stages": [{"channels": 16, "depths": [1], "kernels": [3], "expands": [1], "act": "relu6"},
                   {"channels": 24, "depths": [2], "stride": 2, "act": "relu6"},
                   {"channels": 32, "depths": [2], "stride": 2, "act": "hswish", "se": True}]})
    arch = Arch(32, 1.0, ((Block(3, 1, (8,) * 3, (8,) * 3),),
                          (Block(3, 4, (8, 4, 8), (8, 8, 4)), Block(5, 3, (4, 8, 8), (8, 4, 8))),
                          (Block(5, 4, (8, 4, 8), (8, 8, 4)), Block(3, 3, (8, 8, 4), (4, 8, 8)))))
    model = settled_model(sp, arch)
    kinds = {k for k, _ in mobile_space_features(model)}
    assert kinds == {"relu6 activation", "hswish activation", "block without expand conv", "squeeze-excite",
                     "feature-mix conv", "pre-classifier linear"}
    assert model.plan.stem.k == 5
    return model


def _inputs(model, n=256, seed=1):
    p = model.plan
    return torch.randn(n, p.in_channels, p.resolution, p.resolution, generator=torch.Generator().manual_seed(seed))


def _export(model, backend, out):
    """``(model, exporter, inputs, path, report)``: ``model`` exported by ``backend`` to ``out``."""
    exporter = create_exporter(backend)
    x = _inputs(model)
    path, report = exporter.export_with_report(model, x[:1], out)
    return model, exporter, x, path, report


@pytest.mark.parametrize("fixture", ["mobile_model", "se_model"])
def test_tflite_exports_mobile_kinds_full_integer(fixture, request, tmp_path):
    import qnas.exporters.tflite_litert as tfl

    model, exporter, x, path, report = _export(request.getfixturevalue(fixture), "tflite", tmp_path / "m.tflite")
    assert report.full_integer, report.float_ops
    assert [l.layer for l in report.layers] == [l.name for l in model.quant_layers()]
    assert all(l.op != "?" for l in report.layers)
    ops = report.op_counts
    n_se = sum(b.se is not None for b in model.plan.blocks)
    assert ops["MUL"] == n_se and ops["MEAN"] == n_se + 1  # SE pool + gate multiply, the global pool
    assert ops["HARD_SWISH"] == sum(l.act == "hswish" for l in model.quant_layers())
    check = exporter.check_codes(path, model)
    assert check.ok, check.mismatches
    assert check.tensors == len(model.quant_layers()) and check.max_scale_rel_err <= 1e-6
    # the PyTorch model vs LiteRT's interpreter. Exact but for TFLite's int8 HARD_SWISH, which reads its
    # input requantized to int8 (the model applies h-swish to the float BN output): ~0.4 output steps per
    # h-swish element, measured 4-5 logit steps (max) on these models, top-1 identical; TFLite's own
    # requantization rounding adds <= 1 step (the reference module with the same int8 pre-quantization).
    report = exporter.verify(path, model, x, torch.randint(0, model.plan.num_classes, (len(x),)))
    step = float(model.logit_quant.act_quant.scale())
    print(f"tflite {fixture}: agreement {report.agreement:.4f}, max |dlogit| {report.max_abs_logit_diff / step:.2f} "
          f"steps on {len(x)} random inputs")
    assert report.agreement >= 0.98
    assert report.max_abs_logit_diff <= 8 * step + 1e-6
    ref = tfl.build_reference(model)
    with torch.no_grad():
        r = ref(x)
    assert float((tfl.run_tflite(path, x) - r).abs().max()) <= 1 * step + 1e-6  # the file computes the reference


@pytest.mark.parametrize("fixture", ["mobile_model", "se_model"])
def test_coreml_exports_mobile_kinds_with_model_codes(fixture, request, tmp_path):
    import qnas.exporters.coreml_mlprogram as cml

    model, exporter, x, path, report = _export(request.getfixturevalue(fixture), "coreml", tmp_path / "m.mlpackage")
    assert [l.layer for l in report.layers] == [l.name for l in model.quant_layers()]
    assert [a.quantizer for a in report.activations] == [q.name for q in model.stream_quants()]
    check = exporter.check_codes(path, model)
    assert check.ok, check.mismatches
    assert check.tensors == len(model.quant_layers()) and check.max_scale_rel_err < 1e-6
    # the stored program, run by the reference interpreter: the model's logits (measured: 0 steps)
    with torch.no_grad():
        ref = model(x)
    got = cml.simulate(path, x)
    step = float(model.logit_quant.act_quant.scale())
    print(f"coreml {fixture}: simulate agreement {float((ref.argmax(1) == got.argmax(1)).float().mean()):.4f}, "
          f"max |dlogit| {float((ref - got).abs().max()) / step:.2f} steps on {len(x)} random inputs")
    assert float((ref.argmax(1) == got.argmax(1)).float().mean()) == 1.0
    assert float((ref - got).abs().max()) <= 1 * step + 1e-6
    ops = {op.op_type for op in cml._load_program(path).functions["main"].operations}
    assert {"relu6", "real_div", "mul"} <= ops  # relu6, hard-swish / hard-sigmoid as torch computes them, SE gate
