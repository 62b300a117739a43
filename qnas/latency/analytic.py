"""Roofline latency from a latency target's profile.

Per layer, on the unit and at the precision it really executes at::

    ms = max(MACs / (peak[compute] * eff[op] * precision_eff[compute]),
             bytes_moved / bandwidth) * 1e3 + overhead_ms

    bytes_moved = weights * w_exec/8 * (1 + weight_overhead) + int32 bias
                + input [x2 for add] * a_exec/8
                + output * (output_bytes_per_elem of a conv/fc unit, else a_exec/8)

``w_exec`` is the weight width of the native entry that runs the layer: a
weight-only format (CoreML's w4a16, TensorRT's int4 weight-only GEMM) moves
packed low-bit weights but computes at its ``compute`` precision;
``weight_overhead`` is that entry's block scales (TensorRT INT4: one fp16 scale
per 64 weights). A precision that falls back moves weights in the container of
what it falls back to: a 4-bit layer the Edge TPU exporter stores as int8 is
priced exactly as the int8 layer (an *upcast*, on the accelerator), a float
layer it cannot run at all as a host fallback. ``output_bytes_per_elem`` is for
accelerators that spill wide partial sums (BitFusion: 32-bit, written and read
back). add and pool have no MACs, so they are memory-bound.

So the price of a plan is the price of the file the exporter writes for the
target (:mod:`qnas.precision_map` maps the same way), and the search
(``AnalyticLatencyModel(target).predict``), ``qnas latency predict`` and the
export report's "predicted latency on TARGET" are one number.

Energy (:meth:`AnalyticLatencyModel.energy_breakdown`, for profiles whose units
carry an ``energy`` fact): per layer, in mJ::

    compute_w[compute] * t_compute + pj_per_byte * bytes_moved + static_w * t_layer

Across the network (:meth:`AnalyticLatencyModel.breakdown`): moving an
activation between units costs ``transfer``; with ``sticky_host_fallback``
(Edge TPU) every layer after the first host fallback runs on the host; the
first layer is charged the per-inference overhead.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from qnas.errors import QnasError
from qnas.latency.base import LatencyModel, LayerCost, as_layers, inherit_weightless_bits
from qnas.latency.profile import ExecPrecision, TargetProfile, load_profile, precision_key
from qnas.quant.plan import WEIGHTED_OPS

if TYPE_CHECKING:
    from qnas.latency.base import PlanLike
    from qnas.quant.plan import LayerSpec

_BIAS_BYTES = 4  # int32 (or fp32) bias per output channel


def weight_count(layer: Any) -> int:
    if layer.op in ("conv", "dwconv", "pwconv"):
        return layer.cout * (layer.cin // layer.groups) * layer.k * layer.k
    if layer.op == "fc":
        return layer.cin * layer.cout
    return 0


def activation_bytes(layer: Any, a_bits: int) -> float:
    n_in = layer.in_elems * (2 if layer.op == "add" else 1)
    return (n_in + layer.out_elems) * a_bits / 8


def bytes_moved(layer: Any, w_bits: int, a_bits: int, weight_overhead: float = 0.0,
                output_bytes_per_elem: float | None = None) -> float:
    """Bytes a layer moves at ``w_bits``/``a_bits``: packed weights (plus ``weight_overhead`` of them for
    block scales), the int32 bias, its input and output activations (a conv/fc's outputs at
    ``output_bytes_per_elem`` each when given: wide partial sums)."""
    wb = weight_count(layer) * w_bits / 8 * (1.0 + weight_overhead)
    if layer.op not in WEIGHTED_OPS:
        return wb + activation_bytes(layer, a_bits)
    wb += layer.cout * _BIAS_BYTES
    if output_bytes_per_elem is None:
        return wb + activation_bytes(layer, a_bits)
    return wb + layer.in_elems * a_bits / 8 + layer.out_elems * output_bytes_per_elem


class AnalyticLatencyModel(LatencyModel):
    """Roofline model of one latency target profile (a name, a JSON path or a TargetProfile)."""

    kind = "analytic"

    def __init__(self, profile: "TargetProfile | str"):
        self.profile = load_profile(profile)

    @property
    def target(self) -> str:
        return self.profile.name

    # -- one layer ----------------------------------------------------------------
    def _roofline(self, layer: "LayerSpec", exe: ExecPrecision) -> tuple[float, float, float, str]:
        """(compute seconds, bytes moved, memory seconds, compute precision key) at ``exe``."""
        unit = self.profile.units[exe.unit]
        entry = self.profile.native_entry_for(layer, exe)
        compute_s = layer.macs / unit.throughput(layer.op, entry.compute) if layer.macs else 0.0
        nbytes = bytes_moved(layer, entry.w_bits, entry.a_bits, entry.weight_overhead, unit.output_bytes_per_elem)
        return compute_s, nbytes, nbytes / unit.bandwidth_bytes_per_s, entry.compute

    def unit_cost(self, layer: "LayerSpec", exe: ExecPrecision) -> tuple[float, str, str]:
        """(ms, compute precision key, bound) of a layer run natively at ``exe``."""
        unit = self.profile.units[exe.unit]
        compute_s, _, memory_s, compute = self._roofline(layer, exe)
        roof_ms = max(compute_s, memory_s) * 1e3
        bound = "compute" if compute_s >= memory_s else "memory"
        if unit.overhead_ms > roof_ms:
            bound = "overhead"
        return roof_ms + unit.overhead_ms, compute, bound

    def layer_cost(self, layer: "LayerSpec", unit: str | None = None) -> LayerCost:
        """Cost of one layer on its own, resolved from ``unit`` (default: primary)."""
        p = self.profile
        exe = p.resolve_layer(layer, unit)
        ms, compute, bound = self.unit_cost(layer, exe)
        if exe.unit != p.primary_unit:
            # Never cheaper than the precision it falls back to: if that
            # precision also runs natively on the primary unit, the host can't beat it.
            if p.units[p.primary_unit].native_entry(layer.op, exe.w_bits, exe.a_bits,
                                                    layer.k, layer.stride, layer.cout) is not None:
                primary_ms, _, _ = self.unit_cost(layer, ExecPrecision(p.primary_unit, exe.w_bits, exe.a_bits))
                ms = max(ms, primary_ms)
        native = (exe.unit == p.primary_unit and
                  (layer.op not in WEIGHTED_OPS or (exe.w_bits, exe.a_bits) == (layer.w_bits, layer.a_bits))
                  and exe.a_bits == layer.a_bits)
        return LayerCost(layer, ms, exe.unit, exe.w_bits, exe.a_bits, compute, native, bound)

    def layer_ms(self, layer: "LayerSpec") -> float:
        return self.layer_cost(layer).ms

    # -- whole network ------------------------------------------------------------
    def breakdown(self, plan: "PlanLike") -> list[LayerCost]:
        p = self.profile
        layers = inherit_weightless_bits(as_layers(plan))
        t = p.transfer
        io_side = p.host_unit or "<io>"
        # Where the data currently lives; None = wherever the first layer runs.
        loc = io_side if (t is not None and t.include_model_io) else None
        on_host = False
        costs: list[LayerCost] = []
        for layer in layers:
            start = p.host_unit if on_host else None
            c = self.layer_cost(layer, start)
            if p.sticky_host_fallback and c.unit == p.host_unit and p.host_unit != p.primary_unit:
                on_host = True
            io = 0.0
            if t is not None and loc is not None and c.unit != loc:
                io += t.ms(layer.in_elems * (2 if layer.op == "add" else 1) * c.a_bits / 8)
            loc = c.unit
            if io:
                c = _with_io(c, io)
            costs.append(c)
        if costs:
            if t is not None and t.include_model_io and loc != io_side:
                last = costs[-1]
                costs[-1] = _with_io(last, t.ms(last.layer.out_elems * last.a_bits / 8))
            if p.per_inference_overhead_ms:
                costs[0] = _with_io(costs[0], p.per_inference_overhead_ms)
        return costs

    # -- energy -------------------------------------------------------------------
    @property
    def has_energy(self) -> bool:
        """Whether every unit of the profile carries an ``energy`` fact."""
        return all(u.energy is not None for u in self.profile.units.values())

    def energy_breakdown(self, plan: "PlanLike") -> list[float]:
        """Energy of each layer of :meth:`breakdown` (same order, same unit and precision), in mJ."""
        out = []
        for c in self.breakdown(plan):
            energy = self.profile.units[c.unit].energy
            if energy is None:
                raise QnasError(f"latency target {self.target!r} gives no energy for unit {c.unit!r} "
                                f"(units.{c.unit}.energy in {self.profile.path or 'its profile'}); energy cannot "
                                "be predicted on it")
            compute_s, nbytes, _, compute = self._roofline(c.layer, ExecPrecision(c.unit, c.w_bits, c.a_bits))
            joules = (energy.compute_watts(compute) * compute_s + energy.pj_per_byte * 1e-12 * nbytes
                      + energy.static_w * c.ms * 1e-3)
            out.append(joules * 1e3)
        return out

    def predict_energy(self, plan: "PlanLike") -> float:
        """Batch-1 energy of the whole network in mJ (profiles with ``energy`` facts)."""
        return float(sum(self.energy_breakdown(plan)))

    def describe(self, plan: "PlanLike") -> str:
        """A human-readable per-layer table (for CLIs and debugging)."""
        rows = [f"{'layer':<22} {'op':<7} {'unit':<6} {'req':>7} {'exec':>7} {'bound':<8} {'ms':>9}"]
        for c in self.breakdown(plan):
            l = c.layer
            rows.append(f"{l.name:<22} {l.op:<7} {c.unit:<6} {precision_key(l.w_bits, l.a_bits):>7} "
                        f"{precision_key(c.w_bits, c.a_bits):>7} {c.bound:<8} {c.ms:9.4f}")
        return "\n".join(rows)


def _with_io(c: LayerCost, io_ms: float) -> LayerCost:
    return replace(c, ms=c.ms + io_ms, io_ms=c.io_ms + io_ms)
