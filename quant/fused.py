"""Faster drop-ins for two Brevitas internals, with the same numbers.

Profiling a quantized train step on CPU (``bench/scale.py``) put most of the
time over the float step in two places, neither of them in the convolutions:

* Brevitas' :class:`~brevitas.core.quant.IntQuant` builds fake quantization
  from ~8 small autograd ops (divide, round with a straight-through estimator,
  two ``torch.where`` clamps, multiply), each a pass over the tensor forward
  and again backward, each keeping its own tensors for the backward pass.
  :class:`FusedIntQuant` computes the same forward with the same operations in
  the same order (bit-identical output) inside one autograd function whose
  backward is the gradient autograd derives for Brevitas' graph (a
  straight-through round; the scale gradient ``q - x/s`` inside the range and
  ``q`` where clamped, LSQ's without its gradient scaling), in two passes.
* During its first ``collect_stats_steps`` (300) training steps every
  activation quantizer takes the 99.999th percentile of ``|x|`` with a
  ``kthvalue`` over the whole tensor. :class:`TopAbsPercentile` returns the
  same element: it bounds the answer from below by the smallest of ``m`` chunk
  maxima (``m`` = the answer's rank from the top, so at least ``m`` elements
  reach the bound) and runs ``kthvalue`` on the few elements above the bound.

Both are injected through the quantizer recipes (:mod:`qnas.quant.quantizers`);
anything outside the cases they were written for (a learned bit width or zero
point, another rounding or clamp, a per-channel percentile) falls back to
Brevitas' own code.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from brevitas.core.function_wrapper import RoundSte, TensorClamp
from brevitas.core.quant import IntQuant
from brevitas.core.quant.delay import _NoDelay
from torch import Tensor, nn

__all__ = ["FusedIntQuant", "TopAbsPercentile", "abs_percentile", "fake_quant"]


def _sum_to(g: Tensor, shape: torch.Size) -> Tensor:
    """``g`` summed over the dimensions it was broadcast along to reach ``shape``."""
    if g.shape == shape:
        return g
    return g.sum_to_size(shape) if len(shape) else g.sum()


class _FakeQuant(torch.autograd.Function):
    """``(clamp(round(x / s + z), lo, hi) - z) * s`` with Brevitas' straight-through gradients."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, lo: Tensor | float, hi: Tensor | float,
                zero: bool) -> Tensor:  # type: ignore[override]
        xs = x / scale
        q = torch.round(xs if zero else xs + zero_point)
        qc = _clamp(q, lo, hi)
        # TensorClamp keeps the gradient of a value that lands exactly on a bound: "inside" is q == qc,
        # written straight into x's dtype so the backward pass multiplies without a conversion
        inside = torch.eq(q, qc, out=torch.empty_like(q))
        if not zero:
            qc = qc - zero_point
        ctx.save_for_backward(xs, qc, inside, scale)
        return qc * scale

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        xs, qz, inside, scale = ctx.saved_tensors
        grad_x = g * inside
        grad_s = None
        if ctx.needs_input_grad[1]:
            # d/ds [(clamp(round(x/s + z)) - z) s] with d round(y)/dy = 1: (q - z) - x/s inside the range,
            # (q - z) outside; for one scale that is two dot products, with no temporary tensor
            if scale.numel() == 1:
                a, b, c, d = _flat_same_order(g, qz, grad_x, xs)
                grad_s = (torch.dot(a, b) - torch.dot(c, d)).reshape(scale.shape)
            else:
                grad_s = _sum_to(g * qz - grad_x * xs, scale.shape)
        return grad_x if ctx.needs_input_grad[0] else None, grad_s, None, None, None, None


def _flat_same_order(*ts: Tensor) -> list[Tensor]:
    """The tensors as 1-D, element ``i`` of each from the same position: views in memory order when they
    all share one layout (contiguous or channels-last: no copy), else copies in logical order."""
    if all(t.is_contiguous() for t in ts):
        return [t.view(-1) for t in ts]
    if all(t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) for t in ts):
        return [t.permute(0, 2, 3, 1).reshape(-1) for t in ts]
    return [t.reshape(-1) for t in ts]


def _clamp(q: Tensor, lo: Tensor | float, hi: Tensor | float) -> Tensor:
    # bounds as Python numbers (the CPU case) take torch's vectorized scalar clamp, several times
    # faster than tensor bounds or TensorClamp's torch.where; on an accelerator reading them would
    # synchronize, so there they stay tensors
    if isinstance(lo, Tensor) and isinstance(hi, Tensor):
        return torch.clamp(q, lo.to(q.dtype), hi.to(q.dtype))
    return torch.clamp(q, lo, hi)


_ZERO = torch.zeros(())


def fake_quant(x: Tensor, scale: Tensor, lo: float, hi: float) -> Tensor:
    """``clamp(round(x / scale), lo, hi) * scale`` (zero point 0) with Brevitas' straight-through
    gradients for ``x`` and ``scale`` (``scale`` broadcasts against ``x``), in one autograd function."""
    return _FakeQuant.apply(x, scale, _ZERO, lo, hi, True)


class FusedIntQuant(IntQuant):
    """Brevitas' :class:`~brevitas.core.quant.IntQuant` in one autograd function (same forward,
    same gradients; see the module docstring). Falls back to Brevitas' code for a learned zero
    point or bit width, another rounding or clamp, or a quantization delay."""

    def forward(self, scale: Tensor, zero_point: Tensor, bit_width: Tensor, x: Tensor) -> Tensor:
        if not self._fusable(zero_point, bit_width):
            return super().forward(scale, zero_point, bit_width, x)
        x = self.input_view_impl(x)
        if bit_width.device.type == "cpu":  # integer bounds as Python numbers: no tensor ops for them
            b = float(bit_width)
            lo: Tensor | float = -(2.0 ** (b - 1)) + (1 if self.narrow_range else 0) if self.signed else 0.0
            hi: Tensor | float = 2.0 ** (b - 1) - 1 if self.signed else 2.0 ** b - 1 - (1 if self.narrow_range else 0)
        else:
            lo, hi = self.min_int(bit_width), self.max_int(bit_width)
        # a zero point known to be 0 (read on the CPU only: elsewhere that would synchronize) skips two passes
        zero = zero_point.device.type == "cpu" and zero_point.numel() == 1 and float(zero_point) == 0.0
        return _FakeQuant.apply(x, scale, zero_point, lo, hi, zero)

    def _fusable(self, zero_point: Tensor, bit_width: Tensor) -> bool:
        return (type(self.float_to_int_impl) is RoundSte and type(self.tensor_clamp_impl) is TensorClamp
                and isinstance(self.delay_wrapper.delay_impl, _NoDelay)
                and not zero_point.requires_grad and not bit_width.requires_grad
                and not torch.jit.is_scripting() and not torch.jit.is_tracing()
                and not torch.onnx.is_in_onnx_export())


def abs_percentile(x: Tensor, q: float) -> Tensor:
    """The ``q``-th percentile of ``|x|`` over the whole tensor, exactly as Brevitas'
    ``AbsPercentile`` (``kthvalue`` at ``k = floor(q/100 * n + 0.5)``), differentiable in ``x``
    like it, in a fraction of the time for the high percentiles quantizers use."""
    flat = _flat_same_order(x.abs())[0]  # in memory order: a percentile does not depend on the order
    n = flat.numel()
    k = min(n, max(1, int(math.floor(0.01 * q * n + 0.5))))
    m = n - k + 1  # the answer's rank counted from the largest
    per_chunk = n // m
    if per_chunk < 16:  # a low percentile: nothing to gain
        return torch.kthvalue(flat, k)[0]
    # m disjoint chunks have m distinct maxima, all >= the smallest of them, so the m-th largest
    # element is >= it too: every element the answer can be is among those reaching that bound
    bound = flat.detach()[: m * per_chunk].view(m, per_chunk).amax(dim=1).min()
    candidates = flat[flat >= bound]
    if candidates.numel() < m:  # NaN in x: no bound holds; give kthvalue's own answer
        return torch.kthvalue(flat, k)[0]
    return torch.kthvalue(candidates, candidates.numel() - m + 1)[0]


class TopAbsPercentile(nn.Module):
    """Brevitas' ``AbsPercentile`` statistic (same constructor, same value) computed by
    :func:`abs_percentile`; a per-dimension reduction uses Brevitas' own."""

    def __init__(self, high_percentile_q: float, stats_reduce_dim: Optional[int], percentile_q: object = None,
                 keepdim: bool = False):
        super().__init__()
        if percentile_q is not None:
            raise RuntimeError("percentile_q is deprecated, please pass high_percentile_q.")
        if not 0 < high_percentile_q <= 100:
            raise ValueError(f"high_percentile_q must be in (0, 100], got {high_percentile_q}")
        self.q = high_percentile_q
        self.stats_reduce_dim = stats_reduce_dim
        self.keepdim = keepdim
        if stats_reduce_dim is not None:
            from brevitas.core.stats.stats_op import AbsPercentile
            self._fallback = AbsPercentile(high_percentile_q, stats_reduce_dim, keepdim=keepdim)

    def forward(self, x: Tensor) -> Tensor:
        if self.stats_reduce_dim is not None:
            return self._fallback(x)
        return abs_percentile(x, self.q)
