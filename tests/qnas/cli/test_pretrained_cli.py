"""``--pretrained PATH`` on ``qnas finish qat|ptq`` and ``qnas supernet train``: the file is loaded
before training, and every bad file or flag combination is a one-line error (exit 2) with nothing
written. The torchvision-layout state dicts come from tests/qnas/test_pretrained.py."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qnas.presets import preset_dict, reference_arch
from qnas.space import SearchSpace

_spec = importlib.util.spec_from_file_location("_tv_layout", Path(__file__).parents[1] / "test_pretrained.py")
tv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tv)


from .test_cli import assert_one_line_error, run_cli  # noqa: E402


def write_arch(path: Path, arch) -> Path:
    path.write_text(json.dumps(arch.to_dict()))
    return path


@pytest.fixture(scope="module")
def v2_file(tmp_path_factory):
    state, _ = tv.mobilenet_v2(num_classes=1000)
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2.pth"
    torch.save(state, path)
    return path


def tiny_file(model, path: Path, num_classes: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float weights for ``model``'s layers in execution order, each conv followed by its BN
    (the layout torchvision writes), under made-up keys; the classifier with ``num_classes`` rows."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    layers = model.quant_layers()
    for i, layer in enumerate(layers):
        shape = list(layer.module.weight.shape)
        if i == len(layers) - 1 and num_classes is not None:
            shape[0] = num_classes
        state[f"layers.{i}.0.weight"] = torch.randn(*shape, generator=g) * 0.3
        if layer.bias is not None:
            state[f"layers.{i}.0.bias"] = torch.randn(shape[0], generator=g) * 0.1
        if layer.bn is not None:
            c = shape[0]
            state.update({f"layers.{i}.1.weight": 1 + 0.1 * torch.randn(c, generator=g),
                          f"layers.{i}.1.bias": 0.1 * torch.randn(c, generator=g),
                          f"layers.{i}.1.running_mean": 0.1 * torch.randn(c, generator=g),
                          f"layers.{i}.1.running_var": 1 + torch.rand(c, generator=g),
                          f"layers.{i}.1.num_batches_tracked": torch.tensor(3)})
    torch.save(state, path)
    return state


def test_finish_refuses_bad_pretrained_files_before_anything_runs(tmp_path, capsys, v2_file):
    v3 = write_arch(tmp_path / "v3.json", reference_arch("mobilenetv3-large"))
    # the mobilenetv2 space's largest arch: kernel 7, not MobileNetV2's 3
    big = write_arch(tmp_path / "v2_k7.json", SearchSpace.from_yaml("mobilenetv2").uniform())
    out = tmp_path / "model.pt"
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    cases = [
        (["qat", v3, "--space", "mobilenetv3-large", "--pretrained", tmp_path / "missing.pth"], ["not found"]),
        (["ptq", v3, "--space", "mobilenetv3-large", "--pretrained", tmp_path / "junk.pth"],
         ["not a torch state dict"]),
        # a MobileNetV2 file for the MobileNetV3-Large arch
        (["qat", v3, "--space", "mobilenetv3-large", "--pretrained", v2_file], ["conv/linear layers"]),
        # the right file, but an arch of the space that is not the published network
        (["ptq", big, "--space", "mobilenetv2", "--pretrained", v2_file, "--init", "pretrained"],
         ["features.2.conv.1.0", "s1.b0.dw", "(96, 1, 7, 7)", "reference arch"]),
        (["qat", big, "--space", "mobilenetv2", "--init", "pretrained"], ["--init pretrained needs", "--pretrained"]),
        (["ptq", big, "--space", "mobilenetv2", "--init", "pretrained"], ["--pretrained PATH"]),
        (["qat", big, "--space", "mobilenetv2", "--init", "scratch", "--pretrained", v2_file],
         ["--init scratch", "implies --init pretrained"]),
    ]
    for argv, needles in cases:
        code, _, err = run_cli(capsys, "finish", *argv, "--out", out, "--no-progress")
        assert_one_line_error(code, err, *needles)
        assert not out.exists() and not list(tmp_path.glob("*.qat-state.pt")), argv


def test_finish_qat_and_ptq_start_from_the_file(tmp_path, capsys):
    space = SearchSpace()  # digits: a tiny arch, its own layer layout
    arch = space.uniform(8, 8, largest=False)
    arch_file = write_arch(tmp_path / "arch.json", arch)
    from qnas.quant.build import build_model

    state = tiny_file(build_model(space, arch), tmp_path / "w.pth")
    code, out, err = run_cli(capsys, "finish", "qat", arch_file, "--pretrained", tmp_path / "w.pth", "--epochs", 0,
                             "--teacher", "none", "--out", tmp_path / "qat.pt", "--no-progress")
    assert code == 0, err
    assert "pretrained: float weights from" in out
    from qnas.model_io import load_model

    loaded = load_model(tmp_path / "qat.pt")
    assert loaded.meta["finish"]["init"] == "pretrained"
    assert loaded.meta["finish"]["init_weights"].startswith("pretrained: float weights from")
    layers = loaded.model.quant_layers()
    for i in (0, 1, len(layers) - 2):  # no QAT epochs: the float weights are the file's (PTQ sets only scales)
        assert torch.equal(layers[i].module.weight.detach(), state[f"layers.{i}.0.weight"]), layers[i].name
    code, out, err = run_cli(capsys, "finish", "ptq", arch_file, "--pretrained", tmp_path / "w.pth",
                             "--method", "minmax", "--out", tmp_path / "ptq.pt", "--no-progress")
    assert code == 0, err
    assert "pretrained: float weights from" in out
    assert load_model(tmp_path / "ptq.pt").meta["finish"]["weights"].startswith("pretrained: float weights from")
    # another class count: a new classifier, trained in float before PTQ
    tiny_file(build_model(space, arch), tmp_path / "w12.pth", num_classes=12)
    code, out, err = run_cli(capsys, "finish", "ptq", arch_file, "--pretrained", tmp_path / "w12.pth",
                             "--method", "minmax", "--float-epochs", 1, "--out", tmp_path / "ptq12.pt", "--no-progress")
    assert code == 0, err
    assert "new 10-class classifier" in out


def test_supernet_train_refuses_what_does_not_fit(tmp_path, capsys, v2_file):
    out = tmp_path / "sn"
    cases = [
        ([], ["--space mobilenetv2"]),  # the default space holds no MobileNet
        (["--space", "mobilenetv3-large"], ["does not contain MobileNetV2-1.0"]),
        (["--space", "mobilenetv2", "--pretrained", tmp_path / "missing.pth"], ["not found"]),
    ]
    for extra, needles in cases:
        argv = ["supernet", "train", "--out", out, "--no-progress", *extra]
        if "--pretrained" not in extra:
            argv += ["--pretrained", v2_file]
        code, _, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, *needles)
        assert not out.exists()


def test_supernet_train_starts_from_the_file(tmp_path, capsys, monkeypatch):
    """The supernet handed to training is the published network (training itself is stubbed out)."""
    import qnas.supernet

    state, _ = tv.mobilenet_v2(num_classes=10)
    torch.save(state, tmp_path / "v2_10.pth")
    (tmp_path / "space.yaml").write_text(json.dumps({**preset_dict("mobilenetv2"), "num_classes": 10}))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 255, (60, 16, 16, 3), dtype=np.uint8),
             labels=np.arange(60) % 10, num_classes=10)
    seen = {}

    def fake_train(supernet, splits, cfg=None, on_epoch=None):
        seen["supernet"], seen["cfg"] = supernet, cfg
        return []

    monkeypatch.setattr(qnas.supernet, "train_supernet", fake_train)
    code, out, err = run_cli(capsys, "supernet", "train", "--space", tmp_path / "space.yaml", "--data", "npz",
                             "--data-path", tmp_path / "d.npz", "--out", tmp_path / "sn", "--epochs", 1,
                             "--pretrained", tmp_path / "v2_10.pth", "--no-progress")
    assert code == 0, err
    sn = seen["supernet"]
    assert seen["cfg"].checkpoint_dir == str(tmp_path / "sn")
    assert torch.equal(sn.stem.weight, state["features.0.0.weight"])
    assert torch.equal(sn.head.weight, state["classifier.1.weight"])
    dw = sn.block(1, 0).dw.weight  # a 3x3 depthwise kernel in the centre of the 7x7, zero around it
    assert torch.equal(dw[:, :, 2:5, 2:5], state["features.2.conv.1.0.weight"])
    kernel = state["features.2.conv.1.0.weight"]
    assert float(dw.detach().abs().sum()) == pytest.approx(float(kernel.abs().sum()), rel=1e-6)
