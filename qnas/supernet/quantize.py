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
exactly as Brevitas' ``RoundSte``/``ScalarSignedClampMinSte`` do (the fake
quantization itself is :func:`qnas.quant.fused.fake_quant`, which the
stand-alone model's quantizers use too).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from qnas.quant.fused import abs_percentile as fused_abs_percentile
from qnas.quant.fused import fake_quant as fused_fake_quant

#: Brevitas' ``scaling_min_val`` for both recipes.
SCALING_MIN_VAL = 1e-10
#: Brevitas' ``high_percentile_q`` for the activation recipe.
ACT_PERCENTILE = 99.999


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
    return fused_fake_quant(x, scale, -thr, 2.0 ** (bits - 1) - 1)


def abs_percentile(x: torch.Tensor, q: float = ACT_PERCENTILE) -> torch.Tensor:
    """Brevitas ``AbsPercentile`` over the whole tensor."""
    return fused_abs_percentile(x.detach(), q)


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


#: how an :class:`ActQuantizers` gets its range (see :attr:`ActQuantizers.ranges`)
RANGE_MODES: tuple[str, ...] = ("learned", "batch")
#: weight of a new batch in the running average of ``"batch"`` ranges (BN's default momentum)
RANGE_MOMENTUM = 0.1


@contextlib.contextmanager
def calibrating_ranges(model: nn.Module) -> Iterator[None]:
    """While on, every ``"batch"``-range :class:`ActQuantizers` of ``model`` quantizes each batch with its
    own range (also in eval mode) and averages those ranges; on exit each threshold it saw becomes that
    average. Run BN re-calibration inside it, so that one sub-network's BN statistics and activation ranges
    are estimated together on the same batches (the ranges it is evaluated and extracted with)."""
    quants = [m for m in model.modules() if isinstance(m, ActQuantizers) and m.ranges == "batch"]
    for q in quants:
        q._calibration = {}
    try:
        yield
    finally:
        for q in quants:
            q.finish_calibration()


class ActQuantizers(nn.Module):
    """Per-tensor activation quantizers, one learned threshold per bit width.

    ``relu=True`` (or ``act="relu"``) applies ReLU first (Brevitas ``QuantReLU``),
    ``act`` = relu6 / hswish / hsigmoid that activation (``QuantNonLinearActLayer``),
    else identity (``QuantIdentity``). ``bits=None`` (float mode) skips quantization."""

    def __init__(self, bits: Iterable[int], relu: bool = False, act: str | None = None, ranges: str = "learned"):
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
        self.ranges = ranges
        #: (sum, count) of batch thresholds per bit width while :func:`calibrating_ranges` is on, else None
        self._calibration: dict[int, list[float]] | None = None

    @property
    def ranges(self) -> str:
        """``"learned"``: the threshold is a parameter (initialised from the first batch, then trained);
        ``"batch"``: in training each batch quantizes with its own range (the 99.999th percentile of
        ``|x|``, as BatchQuant/QFA take ranges from batch statistics), the threshold parameter is only
        their running average, and :func:`calibrating_ranges` re-estimates it for one sub-network."""
        return self._ranges

    @ranges.setter
    def ranges(self, mode: str) -> None:
        if mode not in RANGE_MODES:
            raise ValueError(f"unknown activation range mode {mode!r}; one of {list(RANGE_MODES)}")
        self._ranges = mode
        for p in self.scaling.values():
            p.requires_grad_(mode == "learned")

    def value(self, bits: int) -> torch.Tensor:
        return self.scaling[f"a{bits}"]

    def _quant(self, x: torch.Tensor, b: int) -> torch.Tensor:
        i = self.bits.index(b)
        if self._ranges == "batch" and (self.training or self._calibration is not None):
            return fake_quant(x, self._batch_range(x, b, i), b, narrow=False)
        if self.training and not bool(self.initialized[i]):
            with torch.no_grad():
                self.scaling[f"a{b}"].copy_(abs_percentile(x).clamp_min(SCALING_MIN_VAL))
                self.initialized[i] = True
        return fake_quant(x, self.value(b), b, narrow=False)

    @torch.no_grad()
    def _batch_range(self, x: torch.Tensor, b: int, i: int) -> torch.Tensor:
        """This batch's threshold; folded into the running average (training) or the calibration mean."""
        t = abs_percentile(x).clamp_min(SCALING_MIN_VAL)
        v = self.scaling[f"a{b}"]
        if self._calibration is not None:
            acc = self._calibration.setdefault(b, [0.0, 0.0])
            acc[0] += float(t)
            acc[1] += 1.0
        elif not bool(self.initialized[i]):
            v.copy_(t)
            self.initialized[i] = True
        else:
            v.mul_(1 - RANGE_MOMENTUM).add_(RANGE_MOMENTUM * t)
        return t

    def finish_calibration(self) -> None:
        """Set each calibrated bit width's threshold to the mean of the batches it saw, and stop."""
        with torch.no_grad():
            for b, (total, count) in (self._calibration or {}).items():
                self.scaling[f"a{b}"].fill_(total / count)
                self.initialized[self.bits.index(b)] = True
        self._calibration = None

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
