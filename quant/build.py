"""Build Brevitas models from a :class:`~qnas.quant.plan.NetworkPlan`."""
from __future__ import annotations

from typing import Any

import brevitas.nn as qnn
import torch
from torch import nn

from qnas.quant.plan import BlockPlan, LayerSpec, NetworkPlan
from qnas.quant.quantizers import SignedActPerTensor, SignedWeightPerChannel


def act_quant(bits: int, relu: bool = False) -> nn.Module:
    """The activation quantizer feeding a layer with ``a_bits == bits``."""
    cls = qnn.QuantReLU if relu else qnn.QuantIdentity
    return cls(act_quant=SignedActPerTensor, bit_width=bits, return_quant_tensor=True)


def quant_conv(spec: LayerSpec) -> qnn.QuantConv2d:
    return qnn.QuantConv2d(
        spec.cin, spec.cout, spec.k, stride=spec.stride, padding=spec.k // 2, groups=spec.groups,
        bias=False, weight_quant=SignedWeightPerChannel, weight_bit_width=spec.w_bits,
    )


def _value(x: Any) -> torch.Tensor:
    return x.value if hasattr(x, "value") else x


# Tensors that are not the input of a conv (the residual stream, the pooled
# features, the logits) are quantized too, at 8 bits: a full-integer target
# (TFLite / Edge TPU) must give every tensor an int8 scale, and only a scale the
# model learned keeps the exported file computing what the model computes.
STREAM_BITS = 8


class MBConv(nn.Module):
    """Inverted residual: expand 1x1 -> depthwise kxk -> project 1x1 (linear), each conv
    fed by an activation quantizer at that conv's ``a_bits``. A residual block adds
    its quantized input to its 8-bit quantized output (``out_quant``), so the sum is
    an add of two integer tensors."""

    def __init__(self, plan: BlockPlan):
        super().__init__()
        e, d, p = plan.layers
        self.residual = plan.residual
        self.in_quant = act_quant(e.a_bits)
        self.expand = quant_conv(e)
        self.bn1 = nn.BatchNorm2d(e.cout)
        self.act1 = act_quant(d.a_bits, relu=True)
        self.dw = quant_conv(d)
        self.bn2 = nn.BatchNorm2d(d.cout)
        self.act2 = act_quant(p.a_bits, relu=True)
        self.project = quant_conv(p)
        self.bn3 = nn.BatchNorm2d(p.cout)
        if self.residual:
            self.out_quant = act_quant(STREAM_BITS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = self.in_quant(x)
        h = self.act1(self.bn1(self.expand(xq)))
        h = self.act2(self.bn2(self.dw(h)))
        h = self.bn3(self.project(h))
        return _value(xq) + _value(self.out_quant(h)) if self.residual else h


class QuantNet(nn.Module):
    """quantized input -> stem conv -> MBConv blocks -> 8-bit quantized global average pool
    -> quantized fc -> 8-bit quantized logits."""

    def __init__(self, plan: NetworkPlan):
        super().__init__()
        self.plan = plan
        self.input_quant = act_quant(plan.stem.a_bits)
        self.stem = quant_conv(plan.stem)
        self.stem_bn = nn.BatchNorm2d(plan.stem.cout)
        self.stem_act = nn.ReLU()
        self.blocks = nn.Sequential(*(MBConv(b) for b in plan.blocks))
        self.pool_quant = act_quant(STREAM_BITS)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_quant = act_quant(plan.head.a_bits)
        self.head = qnn.QuantLinear(plan.head.cin, plan.head.cout, bias=True,
                                    weight_quant=SignedWeightPerChannel, weight_bit_width=plan.head.w_bits)
        self.logit_quant = act_quant(STREAM_BITS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(self.input_quant(x))))
        x = self.blocks(x)
        x = torch.flatten(self.pool(_value(self.pool_quant(x))), 1)
        return _value(self.logit_quant(_value(self.head(self.head_quant(x)))))


def build_network(plan: NetworkPlan) -> QuantNet:
    """A freshly initialised Brevitas model for ``plan``."""
    return QuantNet(plan)


def build_model(space: Any, arch: Any) -> QuantNet:
    """``build_network(space.plan(arch))``: the Brevitas model of ``arch`` in ``space``.

    ``space`` is anything with a ``plan(arch) -> NetworkPlan`` method (a
    :class:`qnas.SearchSpace`); taking it by duck type keeps ``quant`` free of
    imports from the search side."""
    return build_network(space.plan(arch))
