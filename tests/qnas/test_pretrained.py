"""Loading torchvision MobileNet weights into the matching presets (qnas.pretrained).

torchvision's wheels do not import next to the CPU torch build qnas pins, so the
test writes a state dict in torchvision's layout itself (key names and shapes of
``torchvision.models.mobilenet_v2`` / ``mobilenet_v3_large``, built from the
published layer tables below, not from qnas' presets) and checks the loaded qnas
model, quantizers off, against a plain functional forward over that state dict.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qnas.errors import CheckpointError
from qnas.presets import preset_dict, preset_space, reference_arch
from qnas.pretrained import (TORCHVISION_BN_EPS, load_pretrained, load_torchvision_weights,
                             load_torchvision_weights_into_supernet, reference_in_space, torchvision_network)
from qnas.quant.build import build_model
from qnas.quant.ptq import float_mode

# MobileNetV2: (expand t, out channels c, repeats n, first stride s)
V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
# MobileNetV3-Large: (in, kernel, expanded, out, squeeze-excite, h-swish, stride)
V3 = [(16, 3, 16, 16, 0, 0, 1), (16, 3, 64, 24, 0, 0, 2), (24, 3, 72, 24, 0, 0, 1), (24, 5, 72, 40, 1, 0, 2),
      (40, 5, 120, 40, 1, 0, 1), (40, 5, 120, 40, 1, 0, 1), (40, 3, 240, 80, 0, 1, 2), (80, 3, 200, 80, 0, 1, 1),
      (80, 3, 184, 80, 0, 1, 1), (80, 3, 184, 80, 0, 1, 1), (80, 3, 480, 112, 1, 1, 1), (112, 3, 672, 112, 1, 1, 1),
      (112, 5, 672, 160, 1, 1, 2), (160, 5, 960, 160, 1, 1, 1), (160, 5, 960, 160, 1, 1, 1)]
ACTS = {"relu": F.relu, "relu6": F.relu6, "hswish": F.hardswish, "none": lambda x: x}


def _divisible(v: float, d: int = 8) -> int:
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


class Writer:
    """Random float tensors under torchvision's keys, and the layer list a functional forward runs."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)
        self.state: dict[str, torch.Tensor] = {}

    def rand(self, *shape: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=self.g)

    def conv(self, key: str, cin: int, cout: int, k: int, groups: int = 1, bias: bool = False) -> None:
        fan_in = cin // groups * k * k
        self.state[f"{key}.weight"] = self.rand(cout, cin // groups, k, k) * (3.0 / fan_in) ** 0.5
        if bias:
            self.state[f"{key}.bias"] = self.rand(cout, lo=-0.1, hi=0.1)

    def bn(self, key: str, c: int) -> None:
        self.state.update({f"{key}.weight": self.rand(c, lo=0.5, hi=1.5), f"{key}.bias": self.rand(c, lo=-0.2, hi=0.2),
                           f"{key}.running_mean": self.rand(c, lo=-0.2, hi=0.2),
                           f"{key}.running_var": self.rand(c, lo=0.5, hi=1.5),
                           f"{key}.num_batches_tracked": torch.tensor(7)})

    def linear(self, key: str, cin: int, cout: int) -> None:
        self.state[f"{key}.weight"] = self.rand(cout, cin) * (3.0 / cin) ** 0.5
        self.state[f"{key}.bias"] = self.rand(cout, lo=-0.1, hi=0.1)


def conv_bn_act(x, s, conv, bn, stride, groups, act, eps):
    w = s[f"{conv}.weight"]
    x = F.conv2d(x, w, s.get(f"{conv}.bias"), stride, w.shape[-1] // 2, 1, groups)
    if bn is not None:
        x = F.batch_norm(x, s[f"{bn}.running_mean"], s[f"{bn}.running_var"], s[f"{bn}.weight"], s[f"{bn}.bias"],
                         False, 0.0, eps)
    return ACTS[act](x)


def mobilenet_v2(num_classes: int, seed: int = 0):
    w = Writer(seed)
    w.conv("features.0.0", 3, 32, 3)
    w.bn("features.0.1", 32)
    blocks, cin, i = [], 32, 1
    for t, c, n, s in V2:
        for r in range(n):
            hid, p = cin * t, f"features.{i}.conv"
            layers = []
            if t != 1:
                w.conv(f"{p}.0.0", cin, hid, 1)
                w.bn(f"{p}.0.1", hid)
                layers.append((f"{p}.0.0", f"{p}.0.1", 1, 1, "relu6"))
            j = 1 if t != 1 else 0
            w.conv(f"{p}.{j}.0", hid, hid, 3, groups=hid)
            w.bn(f"{p}.{j}.1", hid)
            layers.append((f"{p}.{j}.0", f"{p}.{j}.1", s if r == 0 else 1, hid, "relu6"))
            w.conv(f"{p}.{j + 1}", hid, c, 1)
            w.bn(f"{p}.{j + 2}", c)
            layers.append((f"{p}.{j + 1}", f"{p}.{j + 2}", 1, 1, "none"))
            blocks.append((layers, None, (s if r == 0 else 1) == 1 and cin == c))
            cin, i = c, i + 1
    w.conv(f"features.{i}.0", cin, 1280, 1)
    w.bn(f"features.{i}.1", 1280)
    w.linear("classifier.1", 1280, num_classes)

    def forward(x, eps=1e-5):
        s = w.state
        x = conv_bn_act(x, s, "features.0.0", "features.0.1", 2, 1, "relu6", eps)
        for layers, _, residual in blocks:
            h = x
            for conv, bn, stride, groups, act in layers:
                h = conv_bn_act(h, s, conv, bn, stride, groups, act, eps)
            x = x + h if residual else h
        x = conv_bn_act(x, s, f"features.{i}.0", f"features.{i}.1", 1, 1, "relu6", eps).mean((2, 3))
        return F.linear(x, s["classifier.1.weight"], s["classifier.1.bias"])

    return w.state, forward


def mobilenet_v3_large(num_classes: int, seed: int = 0):
    w = Writer(seed)
    w.conv("features.0.0", 3, 16, 3)
    w.bn("features.0.1", 16)
    blocks = []
    for i, (cin, k, exp, cout, se, hs, stride) in enumerate(V3, start=1):
        act, p, j, layers, se_keys = ("hswish" if hs else "relu"), f"features.{i}.block", 0, [], None
        if exp != cin:
            w.conv(f"{p}.0.0", cin, exp, 1)
            w.bn(f"{p}.0.1", exp)
            layers.append((f"{p}.0.0", f"{p}.0.1", 1, 1, act))
            j = 1
        w.conv(f"{p}.{j}.0", exp, exp, k, groups=exp)
        w.bn(f"{p}.{j}.1", exp)
        layers.append((f"{p}.{j}.0", f"{p}.{j}.1", stride, exp, act))
        if se:
            j += 1
            sq = _divisible(exp // 4)
            w.conv(f"{p}.{j}.fc1", exp, sq, 1, bias=True)
            w.conv(f"{p}.{j}.fc2", sq, exp, 1, bias=True)
            se_keys = f"{p}.{j}"
        w.conv(f"{p}.{j + 1}.0", exp, cout, 1)
        w.bn(f"{p}.{j + 1}.1", cout)
        blocks.append((layers, se_keys, (f"{p}.{j + 1}.0", f"{p}.{j + 1}.1"), stride == 1 and cin == cout))
    w.conv("features.16.0", 160, 960, 1)
    w.bn("features.16.1", 960)
    w.linear("classifier.0", 960, 1280)
    w.linear("classifier.3", 1280, num_classes)

    def forward(x, eps=1e-3):
        s = w.state
        x = conv_bn_act(x, s, "features.0.0", "features.0.1", 2, 1, "hswish", eps)
        for layers, se_keys, (pc, pb), residual in blocks:
            h = x
            for conv, bn, stride, groups, act in layers:
                h = conv_bn_act(h, s, conv, bn, stride, groups, act, eps)
            if se_keys:
                g = conv_bn_act(h.mean((2, 3), keepdim=True), s, f"{se_keys}.fc1", None, 1, 1, "relu", eps)
                h = h * F.hardsigmoid(conv_bn_act(g, s, f"{se_keys}.fc2", None, 1, 1, "none", eps))
            h = conv_bn_act(h, s, pc, pb, 1, 1, "none", eps)
            x = x + h if residual else h
        x = conv_bn_act(x, s, "features.16.0", "features.16.1", 1, 1, "hswish", eps).mean((2, 3))
        x = F.hardswish(F.linear(x, s["classifier.0.weight"], s["classifier.0.bias"]))
        return F.linear(x, s["classifier.3.weight"], s["classifier.3.bias"])

    return w.state, forward


@pytest.mark.parametrize("preset,make", [("mobilenetv2", mobilenet_v2), ("mobilenetv3-large", mobilenet_v3_large)])
def test_torchvision_weights_give_the_same_float_outputs(preset, make, tmp_path):
    state, forward = make(num_classes=1000)
    path = tmp_path / f"{preset}.pth"
    torch.save(state, path)  # as a user saves torchvision's model.state_dict()
    model = build_model(preset_space(preset), reference_arch(preset, resolution=160))
    load_torchvision_weights(model, path, bn_eps=TORCHVISION_BN_EPS[preset])
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad(), float_mode(model):
        ours = model(x)
    theirs = forward(x)
    assert ours.shape == theirs.shape == (2, 1000)
    scale = theirs.abs().max()
    assert float((ours - theirs).abs().max()) <= 1e-4 * float(scale) + 1e-5
    # reloaded from a state dict (as model.pt is), the epsilon difference stays absorbed
    again = build_model(preset_space(preset), reference_arch(preset, resolution=160))
    missing, unexpected = again.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all("_quant" in k for k in missing)  # only quantizer scales, not yet initialised
    again.eval()
    with torch.no_grad(), float_mode(again):
        assert torch.allclose(again(x), ours, rtol=0, atol=1e-6 * float(scale) + 1e-7)


def test_wrong_weights_are_refused_with_the_first_differing_layer(tmp_path):
    state, _ = mobilenet_v2(num_classes=1000)
    model = build_model(preset_space("mobilenetv3-large"), reference_arch("mobilenetv3-large", resolution=160))
    with pytest.raises(CheckpointError, match="conv/linear layers|has shape"):
        load_torchvision_weights(model, state)
    v2 = build_model(preset_space("mobilenetv2"), reference_arch("mobilenetv2", resolution=160))
    state["features.3.conv.1.0.weight"] = state["features.3.conv.1.0.weight"][:8]
    with pytest.raises(CheckpointError, match=r"features\.3\.conv\.1\.0.*s1\.b1\.dw"):
        load_torchvision_weights(v2, state)
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(CheckpointError, match="not a torch state dict"):
        load_torchvision_weights(v2, tmp_path / "junk.pth")


def test_which_network_a_file_holds(tmp_path):
    v2, _ = mobilenet_v2(num_classes=1000)
    v3, _ = mobilenet_v3_large(num_classes=10)  # any class count
    assert torchvision_network(v2) == "mobilenetv2" and torchvision_network(v3) == "mobilenetv3-large"
    del v2["features.18.1.running_mean"], v2["features.18.1.running_var"]  # the mix BN's stats gone: a plain conv
    assert torchvision_network(v2) is None
    with pytest.raises(CheckpointError, match="not found"):
        torchvision_network(tmp_path / "missing.pth")


def test_another_class_count_keeps_the_models_classifier(tmp_path):
    from qnas.space import SearchSpace

    space = SearchSpace.from_dict({**preset_dict("mobilenetv2"), "num_classes": 10})
    arch = reference_in_space(space, "mobilenetv2")
    assert arch.describe() == reference_arch("mobilenetv2").describe()
    state, _ = mobilenet_v2(num_classes=1000)
    torch.save(state, tmp_path / "v2.pth")
    model = build_model(space, arch)
    head = model.head.weight.detach().clone()
    loaded = load_pretrained(model, tmp_path / "v2.pth")
    assert not loaded.classifier_loaded and loaded.network == "mobilenetv2"
    assert "MobileNetV2-1.0" in loaded.describe() and "new 10-class classifier" in loaded.describe()
    assert torch.equal(model.head.weight, head)
    assert torch.equal(model.mix.weight, state["features.18.0.weight"])
    with pytest.raises(CheckpointError, match="another number of classes"):
        load_torchvision_weights(build_model(space, arch), state, classifier="load")


def test_a_space_without_the_published_network_is_refused():
    with pytest.raises(CheckpointError, match="does not contain MobileNetV3-Large.*--space mobilenetv3-large"):
        reference_in_space(preset_space("ofa-mbv3"), "mobilenetv3-large")  # no expand 2.3 / 2.5
    with pytest.raises(CheckpointError, match="does not contain MobileNetV2-1.0"):
        reference_in_space(preset_space("mobilenetv3-large"), "mobilenetv2")
    from qnas.supernet import Supernet

    tiny = Supernet.from_seed(preset_space("cifar-small"), 0)
    junk = {"a.weight": torch.zeros(4, 3, 3, 3), "b.weight": torch.zeros(10, 4)}
    with pytest.raises(CheckpointError, match="not a torchvision MobileNetV2 or MobileNetV3-Large"):
        load_torchvision_weights_into_supernet(tiny, junk)


def test_supernet_from_torchvision_weights_computes_the_published_network():
    """The largest arch of the mobilenetv3-large space (larger kernels and expand ratios than the
    published net) and the published net as a subnet both compute what torchvision's model does."""
    from qnas.supernet import Supernet, full_space_largest

    state, forward = mobilenet_v3_large(num_classes=1000)
    supernet = Supernet.from_seed(preset_space("mobilenetv3-large"), 0)
    arch = load_torchvision_weights_into_supernet(supernet, state)
    assert arch.describe() == reference_arch("mobilenetv3-large").describe()
    largest = full_space_largest(supernet.space)
    assert largest != arch and largest.describe().count("k5e6") > arch.describe().count("k5e6")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # resolution-agnostic: small and fast
    theirs = forward(x)
    tol = 1e-4 * float(theirs.abs().max()) + 1e-5
    supernet.eval()
    with torch.no_grad():
        for a in (largest, arch):
            assert float((supernet.set_active(a, quantize=False)(x) - theirs).abs().max()) <= tol, a.describe()
        model = supernet.extract(arch).eval()
        with float_mode(model):
            assert float((model(x) - theirs).abs().max()) <= tol
        assert torch.isfinite(supernet.set_active(arch, quantize=True)(x)).all()  # scales re-initialised
