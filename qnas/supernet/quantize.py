"""Switchable fake quantization in plain torch, with exactly Brevitas' math.

The supernet cannot hold one Brevitas quantizer per (layer, bit width, channel
slice), so it computes the same numbers itself and, on extraction, writes its
learned scales into the Brevitas modules of :func:`qnas.quant.build.build_model`
(see :mod:`qnas.quant.quantizers` for the recipes this mirrors):

* weights (``SignedWeightPerChannel``): signed, narrow range
  ``[-(2^(b-1)-1), 2^(b-1)-1]``, one learned threshold per output channel
  (``scaling_impl.value``), ``scale = max(|value|, 1e-10) / (2^(b-1)-1)``,
  initialised from the weights (the MSE-optimal threshold, at most the
  absolute maximum Brevitas starts from; the extracted model carries the
  learned value, so the init rule does not have to be Brevitas');
* activations (``SignedActPerTensor``): signed, full range
  ``[-2^(b-1), 2^(b-1)-1]``, one learned threshold per tensor,
  ``scale = max(|value|, 1e-10) / 2^(b-1)``, initialised from the 99.999th
  percentile of ``|x|`` of the first training batch that reaches it.

``q = clamp(round(x / scale)) * scale`` with round-half-to-even and
straight-through gradients for the rounding and the minimum-scale clamp,
exactly as Brevitas' ``RoundSte``/``ScalarSignedClampMinSte`` do.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

#: Brevitas' ``scaling_min_val`` for both recipes.
SCALING_MIN_VAL = 1e-10
#: Brevitas' ``high_percentile_q`` for the activation recipe.
ACT_PERCENTILE = 99.999


class _RoundSte(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return g


class _ClampMinSte(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, min_val: float) -> torch.Tensor:  # type: ignore[override]
        return x.clamp_min(min_val)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return g, None


def int_threshold(bits: int, narrow: bool) -> float:
    """Brevitas ``IntScaling`` for signed quantizers: ``-min_int``."""
    return float(2 ** (bits - 1) - 1 if narrow else 2 ** (bits - 1))


def fake_quant(x: torch.Tensor, value: torch.Tensor, bits: int, narrow: bool) -> torch.Tensor:
    """Signed, zero-point-0 fake quantization of ``x`` with learned threshold ``value`` (broadcast)."""
    thr = int_threshold(bits, narrow)
    scale = _ClampMinSte.apply(value.abs(), SCALING_MIN_VAL) / thr
    y = _RoundSte.apply(x / scale)
    y = torch.clamp(y, -thr, 2 ** (bits - 1) - 1)
    return y * scale


def abs_percentile(x: torch.Tensor, q: float = ACT_PERCENTILE) -> torch.Tensor:
    """Brevitas ``AbsPercentile`` over the whole tensor."""
    flat = x.detach().abs().reshape(-1)
    k = min(flat.numel(), max(1, int(math.floor(0.01 * q * flat.numel() + 0.5))))
    return flat.kthvalue(k).values


def mse_threshold(weight: torch.Tensor, bits: int, grid: int = 17) -> torch.Tensor:
    """Per-output-channel threshold minimising the weight quantization error, searched over
    ``[0.2, 1] x max |w|`` (1 = Brevitas' abs-max init, so never worse than it)."""
    w = weight.detach().reshape(weight.shape[0], -1)
    amax = w.abs().amax(dim=1).clamp_min(SCALING_MIN_VAL)
    best, best_err = amax.clone(), torch.full_like(amax, float("inf"))
    for f in torch.linspace(0.2, 1.0, grid).tolist():
        t = amax * f
        err = (fake_quant(w, t[:, None], bits, narrow=True) - w).pow(2).sum(dim=1)
        better = err < best_err
        best, best_err = torch.where(better, t, best), torch.where(better, err, best_err)
    return best


class WeightQuantizers(nn.Module):
    """One learned per-output-channel threshold per choice key (``"w4"``, ``"k5_w4"``, ...).

    Thresholds start from the weights at construction and are re-initialised
    from the then-current weights the first time a key is used in training
    (``calibrated``): a bit width that progressive shrinking opens late starts
    from trained weights, not from the random init."""

    def __init__(self, channels: int, keys: Iterable[str]):
        super().__init__()
        self.keys = list(keys)
        self.scaling = nn.ParameterDict({k: nn.Parameter(torch.ones(channels)) for k in self.keys})
        self.register_buffer("calibrated", torch.zeros(len(self.keys), dtype=torch.bool))

    @staticmethod
    def bits_of(key: str) -> int:
        return int(key.rsplit("w", 1)[1])

    @torch.no_grad()
    def init_from(self, key: str, weight: torch.Tensor) -> None:
        """``value`` = the MSE-optimal threshold of ``weight`` per output channel (first ``weight.shape[0]``)."""
        self.scaling[key][: weight.shape[0]].copy_(mse_threshold(weight, self.bits_of(key)))

    def calibrate(self, key: str, full_weight: Callable[[], torch.Tensor]) -> None:
        """In training, initialise ``key`` from ``full_weight()`` on its first use."""
        i = self.keys.index(key)
        if not bool(self.calibrated[i]):
            self.init_from(key, full_weight())
            self.calibrated[i] = True

    def value(self, key: str, channels: int) -> torch.Tensor:
        return self.scaling[key][:channels]

    def forward(self, weight: torch.Tensor, key: str, bits: int) -> torch.Tensor:
        v = self.value(key, weight.shape[0]).view(-1, *([1] * (weight.dim() - 1)))
        return fake_quant(weight, v, bits, narrow=True)


#: the activation an :class:`ActQuantizers` applies before quantizing (the plan's names; torch's functions,
#: as the stand-alone model's ``nn.ReLU6``/``nn.Hardswish``/``nn.Hardsigmoid`` compute them)
ACT_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu, "relu6": F.relu6, "hswish": F.hardswish, "hsigmoid": F.hardsigmoid}


class ActQuantizers(nn.Module):
    """Per-tensor activation quantizers, one learned threshold per bit width.

    ``relu=True`` (or ``act="relu"``) applies ReLU first (Brevitas ``QuantReLU``),
    ``act`` = relu6 / hswish / hsigmoid that activation (``QuantNonLinearActLayer``),
    else identity (``QuantIdentity``). ``bits=None`` (float mode) skips quantization."""

    def __init__(self, bits: Iterable[int], relu: bool = False, act: str | None = None):
        super().__init__()
        if act is not None and act not in ACT_FUNCTIONS:
            raise ValueError(f"unknown activation {act!r}; one of {list(ACT_FUNCTIONS)}")
        self.bits = tuple(bits)
        self.act: str | None = act if act is not None else ("relu" if relu else None)
        self.relu = self.act == "relu"
        self.scaling = nn.ParameterDict({f"a{b}": nn.Parameter(torch.tensor(1.0)) for b in self.bits})
        self.register_buffer("initialized", torch.zeros(len(self.bits), dtype=torch.bool))
        self.active_bits: int | None = max(self.bits)
        #: gate weights over ``bits`` (differentiable search): the output mixes every bit width's quantization
        self.mix: torch.Tensor | None = None

    def value(self, bits: int) -> torch.Tensor:
        return self.scaling[f"a{bits}"]

    def _quant(self, x: torch.Tensor, b: int) -> torch.Tensor:
        i = self.bits.index(b)
        if self.training and not bool(self.initialized[i]):
            with torch.no_grad():
                self.scaling[f"a{b}"].copy_(abs_percentile(x).clamp_min(SCALING_MIN_VAL))
                self.initialized[i] = True
        return fake_quant(x, self.value(b), b, narrow=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = ACT_FUNCTIONS[self.act](x)
        b = self.active_bits
        if b is None:
            return x
        if self.mix is None:
            return self._quant(x, b)
        return sum(g * self._quant(x, bits) for g, bits in zip(self.mix, self.bits))

    def active_state(self) -> dict[str, torch.Tensor]:
        """The state entries of the Brevitas ``QuantIdentity``/``QuantReLU`` at the active bits."""
        if self.active_bits is None:
            raise ValueError("a float-mode activation has no quantizer state; set_active(arch, quantize=True)")
        v = self.value(self.active_bits).detach().clone()
        return {"act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl.value": v}

    def extra_repr(self) -> str:
        act = "" if self.act in (None, "relu") else f", act={self.act}"
        return f"bits={self.bits}, relu={self.relu}{act}, active={self.active_bits}"
