"""The quantizer recipes qnas uses, chosen so exporters never re-quantize.

Signed, symmetric, zero-point-0 everywhere: that is what TensorRT explicit
quantization and full-integer TFLite need (DESIGN.md §5). Weights are
per-output-channel (axis 0) with a scale initialised from the weight
statistics and then learned; activations per-tensor with a scale initialised
from runtime statistics and then learned. Two Brevitas internals are swapped
for faster ones that compute the same numbers (:mod:`qnas.quant.fused`).
"""
from __future__ import annotations

from brevitas.inject.enum import ScalingImplType
from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerChannelFloat

from qnas.quant.fused import FusedIntQuant, TopAbsPercentile


class SignedWeightPerChannel(Int8WeightPerChannelFloat):
    """Signed narrow-range per-channel weights; the bit width comes from the layer."""

    scaling_impl_type = ScalingImplType.PARAMETER_FROM_STATS
    int_quant = FusedIntQuant


class SignedActPerTensor(Int8ActPerTensorFloat):
    """Signed per-tensor activations (zero point 0); the bit width comes from the layer."""

    int_quant = FusedIntQuant
    scaling_stats_impl = TopAbsPercentile
