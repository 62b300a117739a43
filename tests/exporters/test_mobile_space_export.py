"""Export conformance of an arch with squeeze-excite, h-swish / ReLU6, a block without expand
conv, a feature-mix conv and a pre-classifier linear (the standard mobile spaces)."""
import pytest
import torch

from qnas.arch import Arch, Block
from qnas.errors import ExportError
from qnas.exporters import create_exporter
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


@pytest.mark.parametrize("backend, suffix", [("tflite", ".tflite"), ("coreml", ".mlpackage")])
def test_backends_without_support_refuse_in_one_line(backend, suffix, se_model, tmp_path):
    with pytest.raises(ExportError, match=f"the {backend} backend cannot export a .*(squeeze-excite|hswish)") as ei:
        create_exporter(backend).export(se_model, torch.zeros(1, 1, 16, 16), tmp_path / f"m{suffix}")
    assert "\n" not in str(ei.value)
    assert not (tmp_path / f"m{suffix}").exists()
