"""Typed, named views of a quantized model's layers and quantizers.

:meth:`qnas.quant.build.QuantNet.quant_layers` yields one :class:`QuantLayer` per
weight layer (stem, each block's expand / dw / project, head) in execution order,
with its :class:`~qnas.quant.plan.LayerSpec`, its Brevitas module, its BatchNorm,
the quantizer feeding it and the one consuming its output. Exporters, bias
snapping and checks read the learned integers through :meth:`QuantLayer.weight`
and :meth:`ActQuantizer.read` instead of walking the model by attribute names.

Every name is a module path of the model (``model.get_submodule(name)``), and a
layer's name is its plan name (``s0.b1.dw``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from qnas.quant.plan import LayerSpec

StreamKind = Literal["residual", "pool", "logits", "se", "gate"]


@dataclass(frozen=True)
class WeightQuant:
    """The learned integer weights of one layer, as Brevitas computes them."""

    codes: torch.Tensor
    """integer codes (Brevitas' ``int()``), the weight's shape"""
    scale: torch.Tensor
    """float32 scales, flattened: one per output channel (or one per tensor)"""
    bits: int
    signed: bool
    zero_point: torch.Tensor
    """flattened zero points (all 0 for qnas' symmetric quantizers)"""

    @property
    def qmax(self) -> int:
        """The largest code magnitude of the signed narrow range at ``bits``."""
        return 2 ** (self.bits - 1) - 1


@dataclass(frozen=True)
class ActQuant:
    """A learned activation quantizer: value ``code * scale`` with codes in ``[qmin, qmax]``."""

    scale: torch.Tensor
    """float32 scales, flattened (one entry when per-tensor)"""
    bits: int
    signed: bool
    narrow: bool
    zero_point: torch.Tensor
    """flattened zero points"""

    @property
    def per_tensor(self) -> bool:
        return self.scale.numel() == 1

    @property
    def scale_value(self) -> float:
        """The per-tensor scale as a Python float (exactly the float32 value)."""
        return float(self.scale.reshape(()))

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + int(self.narrow)

    @property
    def qmax(self) -> int:
        if not self.signed:
            return 2 ** self.bits - 1 - int(self.narrow)
        return 2 ** (self.bits - 1) - 1


def read_weight_quant(layer: nn.Module) -> WeightQuant:
    """Codes, scales and bit width of a Brevitas weight-quantized layer (``quant_weight()``)."""
    with torch.no_grad():
        qw = layer.quant_weight()
    return WeightQuant(codes=qw.int().detach(), scale=torch.as_tensor(qw.scale).detach().float().reshape(-1),
                       bits=int(round(float(qw.bit_width))), signed=bool(qw.signed),
                       zero_point=torch.as_tensor(qw.zero_point).detach().float().reshape(-1))


def read_act_quant(module: nn.Module) -> ActQuant | None:
    """Scale, bits and range of a Brevitas ``QuantIdentity``/``QuantReLU``; None when it
    has no enabled activation quantizer."""
    proxy = getattr(module, "act_quant", None)
    if proxy is None or not getattr(proxy, "is_quant_enabled", False):
        return None
    with torch.no_grad():
        zp, scale, bits = proxy.zero_point(), proxy.scale(), proxy.bit_width()
    if scale is None:
        return None
    zero = torch.zeros(1) if zp is None else torch.as_tensor(zp).detach().float().reshape(-1)
    return ActQuant(scale=torch.as_tensor(scale).detach().float().reshape(-1), bits=int(round(float(bits))),
                    signed=bool(proxy.is_signed), narrow=bool(proxy.is_narrow_range), zero_point=zero)


@dataclass(frozen=True, eq=False)
class ActQuantizer:
    """An activation quantizer of the model and its module path."""

    name: str
    module: nn.Module
    kind: StreamKind | None = None
    """for the 8-bit stream quantizers that feed no weight layer: what the tensor is"""

    def read(self) -> ActQuant | None:
        """Its learned scale and range now (None when disabled)."""
        return read_act_quant(self.module)


@dataclass(frozen=True, eq=False)
class ResidualAdd:
    """The residual add closing a block: ``skip``'s output + ``quant``'s output (both quantized)."""

    name: str
    """``s0.b1.add``, the add's name in the plan"""
    skip: ActQuantizer
    """the block's input quantizer, whose output is the skip branch"""
    quant: ActQuantizer
    """the 8-bit quantizer of the block's last BatchNorm output (``out_quant``)"""


@dataclass(frozen=True, eq=False)
class QuantLayer:
    """One quantized weight layer of a QuantNet, in execution order.

    The data flow it stands for::

        input_quant -> module (conv / linear) -> bn -> relu -> [residual add] -> output_quant
    """

    spec: LayerSpec
    module: nn.Module
    """the Brevitas ``QuantConv2d`` / ``QuantLinear`` at module path ``spec.name``"""
    input_quant: ActQuantizer
    """the quantizer whose output the weights multiply"""
    output_quant: ActQuantizer
    """the quantizer that consumes the layer's output (after BN, ReLU and the residual add)"""
    bn: nn.BatchNorm2d | None = None
    bn_name: str | None = None
    relu: str | None = None
    """module path of the ReLU applied after the BatchNorm (a plain ReLU, or the QuantReLU that
    ``output_quant`` is), None when the output is linear"""
    residual: ResidualAdd | None = None
    """set on the last layer of a residual block"""
    block: str | None = None
    """the block path (``s0.b1``), None for the stem and the head"""
    act: str = "relu"
    """the activation at ``relu`` (when set): relu, relu6, hswish (the standard mobile spaces) or
    hsigmoid (a squeeze-excite gate); exporters that only write ReLU refuse the others"""

    @property
    def name(self) -> str:
        """Plan name and module path (``s0.b1.dw``)."""
        return self.spec.name

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.module, "bias", None)

    def weight(self) -> WeightQuant:
        """The learned integer codes and scales now."""
        return read_weight_quant(self.module)

    def input_act(self) -> ActQuant | None:
        """Scale and range of the quantizer feeding the layer now."""
        return self.input_quant.read()
