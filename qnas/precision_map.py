"""What a target runs for each searched layer: the precision map exporters report.

Each quantized layer's searched ``(w_bits, a_bits)`` is resolved against a
device profile (``qnas/latency/profiles``) the same way the latency model
prices it, sticky host fallback included, so the map and the predicted
latency never disagree. A layer is *mapped* when the target stores or runs it
at other bits than searched, or runs it on the host instead of the
accelerator. Mapping up never changes the values (a 4-bit grid is exactly
representable in int8); it changes size and speed, which is why exporting a
mapped model needs the user's consent (``allow_upcast``).

How a layer is priced (:attr:`LayerPrecision.how`): ``native`` (as searched),
``upcast`` (stored in the wider container the exporter writes and run on the
accelerator at that container's cost, e.g. 4-bit weights as int8 on the Edge
TPU), ``host`` (what the accelerator truly cannot run, e.g. float layers on
the Edge TPU) or ``downcast`` (a float layer on an integer-only target such as
``bitfusion``, priced at its widest integer width). :attr:`PrecisionMap.latency_ms` is the predicted latency of the
same breakdown, so the map and the price of the exported file are one result;
:attr:`PrecisionMap.low_bits` is the target's policy for sub-8-bit widths
(:meth:`qnas.latency.profile.TargetProfile.low_bits`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from qnas.errors import ExportError
from qnas.latency.analytic import AnalyticLatencyModel
from qnas.latency.profile import TargetProfile
from qnas.quant.plan import NetworkPlan


@dataclass(frozen=True)
class LayerPrecision:
    """One quantized layer: searched bits -> what the target runs."""

    layer: str
    """name in the plan, e.g. ``s1.b0.dw``, which is also its module path in the model"""
    module: str
    """module path in the model: the same as ``layer`` (kept for the report's JSON schema)"""
    op: str
    w_bits: int
    a_bits: int
    run_w_bits: int
    run_a_bits: int
    unit: str
    on_accelerator: bool

    @property
    def mapped(self) -> bool:
        return (self.run_w_bits, self.run_a_bits) != (self.w_bits, self.a_bits) or not self.on_accelerator

    @property
    def how(self) -> str:
        """``"native"``, ``"upcast"`` (a wider container on the accelerator), ``"host"`` (host fallback), or
        ``"downcast"`` (an integer-only target pricing a float layer at its own widest integer width)."""
        if not self.on_accelerator:
            return "host"
        if not self.mapped:
            return "native"
        return "downcast" if self.run_w_bits < self.w_bits or self.run_a_bits < self.a_bits else "upcast"

    def short(self) -> str:
        return f"{self.layer} w{self.w_bits}a{self.a_bits} -> {self.unit} w{self.run_w_bits}a{self.run_a_bits}"

    def __str__(self) -> str:
        target = f"{self.unit} w{self.run_w_bits}a{self.run_a_bits}"
        why = []
        if self.run_w_bits != self.w_bits:
            why.append(f"weights {self.w_bits}->{self.run_w_bits} bit")
        if self.run_a_bits != self.a_bits:
            why.append(f"activations {self.a_bits}->{self.run_a_bits} bit")
        if not self.on_accelerator:
            why.append("host fallback")
        return (f"{self.layer:<12} w{self.w_bits}a{self.a_bits} -> {target}"
                + (f"  [{', '.join(why)}]" if why else ""))


@dataclass
class PrecisionMap:
    """Per-layer precision map of one model on one target profile."""

    target: str
    layers: list[LayerPrecision] = field(default_factory=list)
    latency_ms: float | None = None
    """predicted latency of the whole plan on the target, from the breakdown the map was read from"""
    low_bits: dict[str, dict[str, str]] = field(default_factory=dict)
    """the target's sub-8-bit policy, ``{op: {"w4": "upcast", ...}}``"""

    @property
    def mapped(self) -> list[LayerPrecision]:
        return [l for l in self.layers if l.mapped]

    def lines(self) -> list[str]:
        head = f"precision map on {self.target}: {len(self.mapped)} of {len(self.layers)} layers mapped"
        hows = [l.how for l in self.mapped]
        if hows:
            head += (f" ({hows.count('upcast')} upcast: priced as the wider container on the accelerator; "
                     f"{hows.count('host')} host fallback"
                     + (f"; {hows.count('downcast')} float layers priced as integer" if "downcast" in hows else "")
                     + ")")
        return [head] + [f"  {l}" for l in self.layers]

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "mapped": len(self.mapped), "latency_ms": self.latency_ms,
                "low_bits": self.low_bits,
                "layers": [{**asdict(l), "mapped": l.mapped, "how": l.how} for l in self.layers]}

    def require_exact(self, allow_upcast: bool = False) -> None:
        """Refuse (ExportError) a model the target cannot run as searched, unless allowed."""
        bad = self.mapped
        if not bad or allow_upcast:
            return
        shown = "; ".join(l.short() for l in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ExportError(
            f"target {self.target} cannot run {len(bad)} of {len(self.layers)} layers as searched ({shown}{more}); "
            f"pass --allow-upcast (allow_upcast=True) to export with this mapping (values are unchanged, size and "
            f"speed are not), or search a space limited to what it runs natively (qnas latency show {self.target})")


def module_paths(plan: NetworkPlan) -> dict[str, str]:
    """Plan layer name -> module path in :class:`qnas.quant.build.QuantNet`, for every quantized
    layer: the identity, since a layer's module path is its plan name (``qnas.quant.naming``)."""
    return {spec.name: spec.name for spec in plan.quantized_layers()}


def precision_map(plan: NetworkPlan, profile: str | TargetProfile) -> PrecisionMap:
    """Resolve every quantized layer of ``plan`` on ``profile`` (a name, JSON path or profile)."""
    model = AnalyticLatencyModel(profile)
    p = model.profile
    quantized = {spec.name for spec in plan.quantized_layers()}
    costs = model.breakdown(plan)
    out = PrecisionMap(p.name, latency_ms=float(sum(c.ms for c in costs)), low_bits=p.low_bits)
    for cost in costs:
        spec = cost.layer
        if spec.name not in quantized:  # adds and the pool carry no weights of their own
            continue
        out.layers.append(LayerPrecision(spec.name, spec.name, spec.op, spec.w_bits, spec.a_bits,
                                         cost.w_bits, cost.a_bits, cost.unit,
                                         on_accelerator=cost.unit == p.primary_unit))
    return out
