"""Published reference networks as flat ``LayerSpec`` lists, to anchor latency
models against published numbers (Coral benchmarks: MobileNet v1 224 2.4 ms,
MobileNet v2 224 2.6 ms on the USB Accelerator). Benches reuse them."""
from __future__ import annotations

from qnas.quant.plan import LayerSpec


def _conv_out(hw: int, stride: int) -> int:
    return (hw + stride - 1) // stride


def mobilenet_v1(resolution: int = 224, num_classes: int = 1000, w_bits: int = 8, a_bits: int = 8,
                 width: float = 1.0) -> list[LayerSpec]:
    """MobileNet v1 (Howard et al. 2017): 3x3 stem, 13 depthwise-separable pairs, pool, fc."""
    def c(ch: int) -> int:
        return max(8, int(ch * width))

    layers: list[LayerSpec] = []
    hw = _conv_out(resolution, 2)
    cin = c(32)
    layers.append(LayerSpec("stem", "conv", 3, cin, resolution, hw, 3, 2, 1, w_bits, a_bits))
    cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
           (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
    for i, (cout, s) in enumerate(cfg, start=1):
        cout = c(cout)
        hw_out = _conv_out(hw, s)
        layers.append(LayerSpec(f"b{i}.dw", "dwconv", cin, cin, hw, hw_out, 3, s, cin, w_bits, a_bits))
        layers.append(LayerSpec(f"b{i}.pw", "pwconv", cin, cout, hw_out, hw_out, 1, 1, 1, w_bits, a_bits))
        cin, hw = cout, hw_out
    layers.append(LayerSpec("pool", "pool", cin, cin, hw, 1, w_bits=a_bits, a_bits=a_bits))
    layers.append(LayerSpec("fc", "fc", cin, num_classes, 1, 1, w_bits=w_bits, a_bits=a_bits))
    return layers


def mobilenet_v2(resolution: int = 224, num_classes: int = 1000, w_bits: int = 8, a_bits: int = 8,
                 width: float = 1.0) -> list[LayerSpec]:
    """MobileNetV2 (Sandler et al. 2018): stem, 17 inverted-residual blocks, 1x1 to 1280, pool, fc."""
    def c(ch: int) -> int:
        return max(8, int(round(ch * width / 8)) * 8)

    layers: list[LayerSpec] = []
    hw = _conv_out(resolution, 2)
    cin = c(32)
    layers.append(LayerSpec("stem", "conv", 3, cin, resolution, hw, 3, 2, 1, w_bits, a_bits))
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    b = 0
    for t, ch, n, s in cfg:
        cout = c(ch)
        for i in range(n):
            stride = s if i == 0 else 1
            b += 1
            mid = cin * t
            hw_out = _conv_out(hw, stride)
            if t != 1:
                layers.append(LayerSpec(f"b{b}.expand", "pwconv", cin, mid, hw, hw, 1, 1, 1, w_bits, a_bits))
            layers.append(LayerSpec(f"b{b}.dw", "dwconv", mid, mid, hw, hw_out, 3, stride, mid, w_bits, a_bits))
            layers.append(LayerSpec(f"b{b}.project", "pwconv", mid, cout, hw_out, hw_out, 1, 1, 1, w_bits, a_bits))
            if stride == 1 and cin == cout:
                layers.append(LayerSpec(f"b{b}.add", "add", cout, cout, hw_out, hw_out, w_bits=a_bits, a_bits=a_bits))
            cin, hw = cout, hw_out
    last = 1280 if width <= 1.0 else c(1280)
    layers.append(LayerSpec("head_conv", "pwconv", cin, last, hw, hw, 1, 1, 1, w_bits, a_bits))
    layers.append(LayerSpec("pool", "pool", last, last, hw, 1, w_bits=a_bits, a_bits=a_bits))
    layers.append(LayerSpec("fc", "fc", last, num_classes, 1, 1, w_bits=w_bits, a_bits=a_bits))
    return layers
