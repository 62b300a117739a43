"""Dynamic (elastic) layers of the supernet.

Each layer holds the largest weights of its position, runs the configuration
last given to ``set_active`` (a :class:`~qnas.quant.plan.LayerSpec` from the
search space's plan, so the space stays the only place that maps an arch to
layers), and has ``config``, ``active_state()`` (the state-dict entries of the
static Brevitas layer of that configuration) and ``get_active_subnet()`` (that
static layer, loaded) in the once-for-all way.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qnas.quant.build import act_quant, quant_conv
from qnas.quant.plan import LayerSpec
from qnas.supernet.quantize import ActQuantizers, WeightQuantizers

W_SCALE_KEY = "weight_quant.tensor_quant.scaling_impl.value"


def _load(static: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    static.load_state_dict(state, strict=True)
    return static


def _fake_quant_weight(layer: nn.Module, w: torch.Tensor, key_of: Callable[[int], str],
                       full_weight: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``w`` fake-quantized at the active spec's bits, or -- when ``layer.mix`` holds gate
    weights over ``layer.w_bits`` (differentiable search) -- the gate-weighted sum of its
    quantized versions at every bit width. In training, a bit width's thresholds are
    initialised from ``full_weight()`` on first use."""
    pairs = [(None, layer.spec.w_bits)] if layer.mix is None else list(zip(layer.mix, layer.w_bits))
    out: Any = 0
    for gate, bits in pairs:
        key = key_of(bits)
        if layer.training:
            layer.quant.calibrate(key, full_weight)
        q = layer.quant(w, key, bits)
        out = q if gate is None else out + gate * q
    return out


class _SwitchableWeightLayer(nn.Module):
    """What the dynamic weight layers share: learned thresholds per choice key, the active
    spec, and the float (``quantize``) and mixed-bits (``mix``) switches."""

    w_bits: tuple[int, ...]

    def _setup_quantizers(self, channels: int, keys: Iterable[str]) -> None:
        # registered after the weight, so parameter order (and checkpoints) stay as they were
        self.quant = WeightQuantizers(channels, keys)
        self.spec: LayerSpec | None = None
        self.quantize = True
        self.mix: torch.Tensor | None = None  # gate weights over w_bits (differentiable search)
        self.reset_weight_scales()

    def reset_weight_scales(self) -> None:
        raise NotImplementedError

    def active_state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def get_active_subnet(self) -> nn.Module:
        return _load(quant_conv(self.spec), self.active_state())


class DynamicQConv2d(_SwitchableWeightLayer):
    """A dense (groups=1) conv with elastic in/out channels (first-k) and switchable weight bits;
    ``bias=True`` adds a float bias, sliced with the output channels (the squeeze-excite convs,
    as OFA's dynamic SE)."""

    def __init__(self, max_in: int, max_out: int, kernel: int, stride: int, w_bits: Sequence[int],
                 bias: bool = False):
        super().__init__()
        self.max_in, self.max_out, self.kernel, self.stride = max_in, max_out, kernel, stride
        self.w_bits = tuple(w_bits)
        self.weight = nn.Parameter(torch.empty(max_out, max_in, kernel, kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        if bias:
            self.bias = nn.Parameter(torch.zeros(max_out))
        else:
            self.register_parameter("bias", None)
        self._setup_quantizers(max_out, (f"w{b}" for b in self.w_bits))

    @property
    def config(self) -> dict[str, Any]:
        out = {"max_in": self.max_in, "max_out": self.max_out, "kernel": self.kernel,
               "stride": self.stride, "w_bits": list(self.w_bits)}
        if self.bias is not None:
            out["bias"] = True
        return out

    def reset_weight_scales(self) -> None:
        for b in self.w_bits:
            self.quant.init_from(f"w{b}", self.weight)

    def active_weight(self) -> torch.Tensor:
        s = self.spec
        return self.weight[: s.cout, : s.cin]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.active_weight()
        if self.quantize:
            w = _fake_quant_weight(self, w, lambda b: f"w{b}", lambda: self.weight)
        bias = None if self.bias is None else self.bias[: self.spec.cout]
        return F.conv2d(x, w, bias, self.stride, self.kernel // 2)

    def active_state(self) -> dict[str, torch.Tensor]:
        s = self.spec
        out = {"weight": self.active_weight().detach().clone(),
               W_SCALE_KEY: self.quant.value(f"w{s.w_bits}", s.cout).detach().clone().view(-1, 1, 1, 1)}
        if self.bias is not None:
            out["bias"] = self.bias[: s.cout].detach().clone()
        return out

class DynamicQDepthwise(_SwitchableWeightLayer):
    """Depthwise conv with elastic channels, elastic kernel (center of the largest kernel,
    optionally through OFA's kernel transform matrices) and switchable weight bits.

    Each (kernel, bits) pair has its own learned per-channel thresholds: a 3x3
    center has other magnitudes than the 7x7 it is cut from."""

    def __init__(self, max_channels: int, kernels: Sequence[int], stride: int, w_bits: Sequence[int],
                 kernel_transform: bool = True):
        super().__init__()
        self.max_channels, self.stride = max_channels, stride
        self.kernels = tuple(sorted(set(kernels)))
        self.max_kernel = max(self.kernels)
        self.w_bits = tuple(w_bits)
        self.kernel_transform = kernel_transform
        self.weight = nn.Parameter(torch.empty(max_channels, 1, self.max_kernel, self.max_kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        # OFA: a (k_small^2 x k_small^2) matrix per step down, shared by all channels, identity at start.
        self.transforms = nn.ParameterDict()
        if kernel_transform:
            for big, small in zip(self.kernels[::-1], self.kernels[::-1][1:]):
                self.transforms[f"{big}to{small}"] = nn.Parameter(torch.eye(small * small))
        self._setup_quantizers(max_channels, (f"k{k}_w{b}" for k in self.kernels for b in self.w_bits))

    @property
    def config(self) -> dict[str, Any]:
        return {"max_channels": self.max_channels, "kernels": list(self.kernels), "stride": self.stride,
                "w_bits": list(self.w_bits), "kernel_transform": self.kernel_transform}

    def reset_weight_scales(self) -> None:
        for k in self.kernels:
            w = self.kernel_weight(k, self.max_channels)
            for b in self.w_bits:
                self.quant.init_from(f"k{k}_w{b}", w)

    def kernel_weight(self, k: int, channels: int) -> torch.Tensor:
        w = self.weight[:channels]
        src = self.max_kernel
        for small in reversed(self.kernels):
            if small >= src or small < k:
                continue
            start = (src - small) // 2
            w = w[:, :, start:start + small, start:start + small]
            if self.kernel_transform:
                flat = w.contiguous().view(channels, small * small)
                w = F.linear(flat, self.transforms[f"{src}to{small}"]).view(channels, 1, small, small)
            src = small
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        w = self.kernel_weight(s.k, s.cout)
        if self.quantize:
            w = _fake_quant_weight(self, w, lambda b: f"k{s.k}_w{b}", lambda: self.kernel_weight(s.k, self.max_channels))
        pad = (s.k // 2, s.k // 2)
        if self.stride == 1 and min(x.shape[-2:]) - 1 < pad[0]:
            # a kernel wider than its feature map reads zero padding with its outer taps: drop them
            # (the same output; the backward pass of a depthwise conv is slow on large kernels over
            # small maps, e.g. 7x7 over 2x2)
            kh, kw = min(pad[0], x.shape[-2] - 1), min(pad[1], x.shape[-1] - 1)
            w = w[:, :, pad[0] - kh: pad[0] + kh + 1, pad[1] - kw: pad[1] + kw + 1]
            pad = (kh, kw)
        return F.conv2d(x, w, None, self.stride, pad, 1, s.cout)

    def active_state(self) -> dict[str, torch.Tensor]:
        s = self.spec
        return {"weight": self.kernel_weight(s.k, s.cout).detach().clone(),
                W_SCALE_KEY: self.quant.value(f"k{s.k}_w{s.w_bits}", s.cout).detach().clone().view(-1, 1, 1, 1)}

class DynamicQLinear(_SwitchableWeightLayer):
    """A linear layer with a float bias: elastic input features, switchable weight bits, and
    elastic (first-k) output features when the active spec has fewer than ``out`` (the
    pre-classifier linear at a width multiplier; the classifier always has all ``out``)."""

    def __init__(self, max_in: int, out: int, w_bits: Sequence[int]):
        super().__init__()
        self.max_in, self.out = max_in, out
        self.w_bits = tuple(w_bits)
        ref = nn.Linear(max_in, out)
        self.weight = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone())
        self._setup_quantizers(out, (f"w{b}" for b in self.w_bits))

    @property
    def config(self) -> dict[str, Any]:
        return {"max_in": self.max_in, "out": self.out, "w_bits": list(self.w_bits)}

    def reset_weight_scales(self) -> None:
        for b in self.w_bits:
            self.quant.init_from(f"w{b}", self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        w = self.weight[: s.cout, : s.cin]
        if self.quantize:
            w = _fake_quant_weight(self, w, lambda b: f"w{b}", lambda: self.weight)
        return F.linear(x, w, self.bias[: s.cout])

    def active_state(self) -> dict[str, torch.Tensor]:
        s = self.spec
        return {"weight": self.weight[: s.cout, : s.cin].detach().clone(), "bias": self.bias[: s.cout].detach().clone(),
                W_SCALE_KEY: self.quant.value(f"w{s.w_bits}", s.cout).detach().clone().view(-1, 1)}

    def get_active_subnet(self) -> nn.Module:
        import brevitas.nn as qnn

        from qnas.quant.quantizers import SignedWeightPerChannel

        s = self.spec
        static = qnn.QuantLinear(s.cin, s.cout, bias=True, weight_quant=SignedWeightPerChannel, weight_bit_width=s.w_bits)
        return _load(static, self.active_state())


class SwitchableBN(nn.Module):
    """Batch norm with one ``BatchNorm2d`` (affine + running stats) per choice key,
    sliced to the first ``k`` channels.

    The running statistics are updated exactly as ``nn.BatchNorm2d`` does (also
    the cumulative average when ``momentum is None``), so BN recalibration of
    the supernet and of the extracted model agree."""

    def __init__(self, max_channels: int, keys: Iterable[str]):
        super().__init__()
        self.max_channels = max_channels
        self.bns = nn.ModuleDict({k: nn.BatchNorm2d(max_channels) for k in keys})
        self.key: str = next(iter(self.bns))

    @property
    def config(self) -> dict[str, Any]:
        return {"max_channels": self.max_channels, "keys": list(self.bns)}

    @property
    def active_bn(self) -> nn.BatchNorm2d:
        return self.bns[self.key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, k = self.active_bn, x.shape[1]
        factor = 0.0
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        return F.batch_norm(x, bn.running_mean[:k], bn.running_var[:k], bn.weight[:k], bn.bias[:k],
                            bn.training, factor, bn.eps)

    def active_state(self, channels: int) -> dict[str, torch.Tensor]:
        bn = self.active_bn
        k = channels
        return {"weight": bn.weight[:k].detach().clone(), "bias": bn.bias[:k].detach().clone(),
                "running_mean": bn.running_mean[:k].clone(), "running_var": bn.running_var[:k].clone(),
                "num_batches_tracked": bn.num_batches_tracked.clone()}

    def get_active_subnet(self, channels: int) -> nn.Module:
        return _load(nn.BatchNorm2d(channels), self.active_state(channels))


def act_subnet(q: ActQuantizers) -> nn.Module:
    """The static Brevitas activation quantizer of an :class:`ActQuantizers` at its active bits."""
    return _load(act_quant(q.active_bits, act=q.act), q.active_state())


class DynamicSqueezeExcite(nn.Module):
    """Squeeze-excite on the first ``k`` of ``max_channels`` channels (OFA's dynamic SE): the
    ``reduce`` conv sliced to ``[:squeeze, :k]`` and the ``expand`` conv to ``[:k, :squeeze]``
    (biases likewise), ``squeeze`` from the active :class:`~qnas.quant.plan.SEPlan`. The same
    computation as :class:`qnas.quant.build.SqueezeExcite`: pool -> ``in_quant`` -> reduce ->
    ReLU + ``act`` -> expand -> hard-sigmoid + ``gate`` -> multiply -> ``out_quant``. Its convs
    and inner quantizers have the plan's fixed bits (8); ``out_quant`` feeds the block's project
    conv, so it switches over the space's activation bits."""

    def __init__(self, max_channels: int, max_squeeze: int, bits: int, out_bits: Sequence[int], gate_bits: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.in_quant = ActQuantizers([bits])
        self.reduce = DynamicQConv2d(max_channels, max_squeeze, 1, 1, [bits], bias=True)
        self.act = ActQuantizers([bits], relu=True)
        self.expand = DynamicQConv2d(max_squeeze, max_channels, 1, 1, [bits], bias=True)
        self.gate = ActQuantizers([gate_bits], act="hsigmoid")
        self.out_quant = ActQuantizers(out_bits)

    def set_active(self, plan: Any, out_bits: int, gate_bits: int, quantize: bool) -> None:
        for q, b in ((self.in_quant, plan.reduce.a_bits), (self.act, plan.expand.a_bits), (self.gate, gate_bits),
                     (self.out_quant, out_bits)):
            q.active_bits = b if quantize else None
        for conv, spec in ((self.reduce, plan.reduce), (self.expand, plan.expand)):
            conv.spec, conv.quantize = spec, quantize

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        s = self.act(self.reduce(self.in_quant(self.pool(h))))
        return self.out_quant(h * self.gate(self.expand(s)))

    def active_state(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name, child in self.named_children() if hasattr(child, "active_state")
                for k, v in child.active_state().items()}
