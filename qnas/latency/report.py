"""Human-readable views of latency target profiles (``qnas latency show``) and of a latency model's
per-layer breakdown (``qnas latency predict --breakdown``)."""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from qnas.latency.profile import TargetProfile


def format_profile(p: TargetProfile) -> str:
    lines = [f"{p.name}: {p.description}",
             f"  primary unit: {p.primary_unit}" + (f", host fallback unit: {p.host_unit}" if p.host_unit else ""),
             f"  sticky host fallback (everything after the first fallback runs on the host): {p.sticky_host_fallback}",
             f"  per-inference overhead: {p.per_inference_overhead_ms:g} ms"]
    for name, u in p.units.items():
        lines.append(f"  unit {name}: {u.description}")
        for e in u.native:
            where = [e.condition()] if e.condition() else []
            if e.weight_overhead:
                where.append(f"weight bytes +{100 * e.weight_overhead:g} % (block scales)")
            cond = f" where {', '.join(where)}" if where else ""
            lines.append(f"    native {e.prec:<7} (computes as {e.compute}) on {', '.join(e.ops)}{cond}")
        for src, dst in u.fallback.items():
            lines.append(f"    fallback {src:<7} -> {dst}")
        peaks = ", ".join(f"{k} {v / 1e9:.3g} GMAC/s" for k, v in u.peak_macs_per_s.items())
        lines.append(f"    peak: {peaks}; bandwidth {u.bandwidth_bytes_per_s / 1e9:.3g} GB/s; per-op overhead {u.overhead_ms:g} ms")
        if u.output_bytes_per_elem is not None:
            lines.append(f"    outputs move {u.output_bytes_per_elem:g} bytes per element")
        if u.energy is not None:
            watts = ", ".join(f"{k} {v:g} W" for k, v in u.energy.compute_w.items())
            lines.append(f"    energy: computing {watts}; {u.energy.pj_per_byte:g} pJ per byte moved; "
                         f"static {u.energy.static_w:g} W")
    lines.extend("  " + line for line in p.low_bits_lines())
    lines.append("  sources:")
    for key, fact in p.citations().items():
        lines.append(f"    [{fact.confidence}] {key}: {fact.source}")
    return "\n".join(lines)


def format_breakdown(costs: Sequence, *, total: bool = True) -> str:
    """A per-layer table of :class:`~qnas.latency.base.LayerCost` rows: layer, op, shape, requested and
    priced precision, where it ran, ms, and how it was priced when not by its own entry (``note``)."""
    rows = [f"{'layer':<22} {'op':<7} {'shape':<22} {'req':>7} {'priced':>7} {'unit':<8} {'ms':>9}  note"]
    for c in costs:
        l = c.layer
        shape = f"{l.cin}->{l.cout} @{l.hw_in} k{l.k} s{l.stride}"
        rows.append(f"{l.name:<22} {l.op:<7} {shape:<22} {f'w{l.w_bits}a{l.a_bits}':>7} "
                    f"{f'w{c.w_bits}a{c.a_bits}':>7} {c.unit:<8} {c.ms:9.4f}  {c.note}".rstrip())
    if total:
        rows.append(f"{'total':<22} {'':<7} {'':<22} {'':>7} {'':>7} {'':<8} {sum(c.ms for c in costs):9.4f}")
    return "\n".join(rows)


def approximation_counts(costs: Iterable) -> dict[str, int]:
    """How many layers of a breakdown were priced by a table's fallback rule and by a table default
    (``{"fallback": n, "default": m}``, only the kinds that occur)."""
    kinds: Counter = Counter()
    for c in costs:
        note = getattr(c, "note", "")
        kind = note.split(" ", 1)[0] if note else ""
        if kind in ("fallback", "default"):
            kinds[kind] += 1
    return dict(kinds)
