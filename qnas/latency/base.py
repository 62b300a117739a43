"""The one interface every latency predictor implements.

A predictor prices a network for one target at batch 1, in milliseconds.
It sees the whole layer sequence (:meth:`LatencyModel.breakdown`), because
some targets price a layer by what ran before it: on the Edge TPU the first
layer that falls back to the host CPU drags every later layer with it.

``plan`` arguments accept a ``NetworkPlan`` (anything with ``.layers()``), a
sequence of ``LayerSpec``, or a single ``LayerSpec``.
"""
from __future__ import annotations

import abc
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from qnas.errors import QnasError
from qnas.latency._compat import deprecated_device_property
from qnas.quant.plan import WEIGHTLESS_OPS

if TYPE_CHECKING:  # the plan types live in qnas.quant; only needed for annotations here
    from qnas.quant.plan import LayerSpec, NetworkPlan

    PlanLike = NetworkPlan | Sequence[LayerSpec] | LayerSpec


@dataclass(frozen=True)
class LayerCost:
    """What one layer costs and where it ran.

    ``ms`` is everything charged to the layer, ``io_ms`` included (moving its
    input between units, plus the per-inference overhead charged to the first
    layer and the output transfer charged to the last). ``w_bits``/``a_bits``
    are the precision it executes at, ``compute`` the MAC precision key,
    ``native`` whether the requested precision runs as-is on the primary unit,
    ``bound`` one of "compute", "memory", "overhead". ``note`` says how the cost was
    obtained when it is not the model's own price of that exact layer (a latency
    table's fallback rule or default, :mod:`qnas.latency.table`); empty otherwise."""

    layer: Any
    ms: float
    unit: str
    w_bits: int
    a_bits: int
    compute: str
    native: bool
    bound: str
    io_ms: float = 0.0
    note: str = ""

    @property
    def fallback(self) -> bool:
        return not self.native


def as_layers(plan: Any) -> list:
    """A NetworkPlan, a sequence of LayerSpec or one LayerSpec -> list of LayerSpec."""
    if hasattr(plan, "layers") and callable(plan.layers):
        layers = list(plan.layers())
    elif hasattr(plan, "op") and hasattr(plan, "macs"):
        layers = [plan]
    else:
        try:
            layers = list(plan)
        except TypeError:
            raise QnasError(
                f"cannot price a {type(plan).__name__}; pass a NetworkPlan or a list of LayerSpec") from None
    for l in layers:
        if not (hasattr(l, "op") and hasattr(l, "macs")):
            raise QnasError(f"cannot price a {type(l).__name__} as a layer; pass LayerSpec objects")
    return layers


def inherit_weightless_bits(layers: Sequence) -> list:
    """Give add/pool layers left at the float default (w_bits=a_bits=32) the
    activation bits of the layer that consumes their output (else of the one
    before them). ``NetworkPlan.layers()`` creates adds and the pool with the
    default bits; in a quantized network they run on quantized tensors."""
    out = list(layers)
    weighted = [i for i, l in enumerate(out) if l.op not in WEIGHTLESS_OPS]
    for i, l in enumerate(out):
        if l.op in WEIGHTLESS_OPS and l.w_bits == 32 and l.a_bits == 32:
            after = [j for j in weighted if j > i]
            before = [j for j in weighted if j < i]
            src = out[after[0]] if after else (out[before[-1]] if before else None)
            if src is not None and src.a_bits != 32:
                out[i] = replace(l, w_bits=src.a_bits, a_bits=src.a_bits)
    return out


class LatencyModel(abc.ABC):
    """Predicts batch-1 latency in ms of a network on one target.

    Subclasses implement :meth:`layer_ms`; those whose cost of a layer depends
    on the layers around it override :meth:`breakdown` as well. ``predict`` is
    always the sum of ``breakdown``."""

    kind: str = "abstract"

    @property
    @abc.abstractmethod
    def target(self) -> str:
        """Name of the latency target this model prices (a target profile name, or what a table says
        it was measured on); not a torch device."""

    #: Deprecated name of :attr:`target`.
    device = deprecated_device_property()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # a model written against the old interface names its target ``device``: serve it as ``target``
        if "device" in cls.__dict__ and not any("target" in c.__dict__ for c in cls.__mro__[:-1]
                                                if c is not LatencyModel):
            warnings.warn(f"{cls.__name__} names its latency target `device`; rename that property to `target` "
                          "(`device` is deprecated: it reads like the torch device)", DeprecationWarning, stacklevel=2)
            cls.target = cls.__dict__["device"]  # type: ignore[assignment]

    @abc.abstractmethod
    def layer_ms(self, layer: "LayerSpec") -> float:
        """Latency of one layer on its own (no inter-unit transfers, no
        per-inference overhead), in ms."""

    def breakdown(self, plan: "PlanLike") -> list[LayerCost]:
        """Per-layer costs in execution order; their ``ms`` sum to :meth:`predict`."""
        return [LayerCost(l, float(self.layer_ms(l)), "default", l.w_bits, l.a_bits,
                          f"w{l.w_bits}a{l.a_bits}", True, "compute")
                for l in inherit_weightless_bits(as_layers(plan))]

    def describe(self, plan: "PlanLike") -> str:
        """A human-readable per-layer table of :meth:`breakdown` (for ``qnas latency predict --breakdown``)."""
        from qnas.latency.report import format_breakdown

        return format_breakdown(self.breakdown(plan))

    def predict(self, plan: "PlanLike") -> float:
        """Batch-1 latency of the whole network in ms."""
        return float(sum(c.ms for c in self.breakdown(plan)))

    def predict_many(self, plans: Iterable["PlanLike"]) -> np.ndarray:
        """``predict`` for each plan, as a float64 array."""
        return np.asarray([self.predict(p) for p in plans], dtype=np.float64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self.target!r})"
