"""Human-readable views of latency target profiles (for ``qnas latency show``)."""
from __future__ import annotations

from qnas.latency.profile import TargetProfile


def format_profile(p: TargetProfile) -> str:
    lines = [f"{p.name}: {p.description}",
             f"  primary unit: {p.primary_unit}" + (f", host fallback unit: {p.host_unit}" if p.host_unit else ""),
             f"  sticky host fallback (everything after the first fallback runs on the host): {p.sticky_host_fallback}",
             f"  per-inference overhead: {p.per_inference_overhead_ms:g} ms"]
    for name, u in p.units.items():
        lines.append(f"  unit {name}: {u.description}")
        for e in u.native:
            where = []
            if e.k is not None:
                where.append(f"k in {list(e.k)}")
            if e.stride is not None:
                where.append(f"stride in {list(e.stride)}")
            if e.min_cout is not None:
                where.append(f"cout >= {e.min_cout}")
            cond = f" where {', '.join(where)}" if where else ""
            lines.append(f"    native {e.prec:<7} (computes as {e.compute}) on {', '.join(e.ops)}{cond}")
        for src, dst in u.fallback.items():
            lines.append(f"    fallback {src:<7} -> {dst}")
        peaks = ", ".join(f"{k} {v / 1e9:.3g} GMAC/s" for k, v in u.peak_macs_per_s.items())
        lines.append(f"    peak: {peaks}; bandwidth {u.bandwidth_bytes_per_s / 1e9:.3g} GB/s; per-op overhead {u.overhead_ms:g} ms")
    lines.append("  sources:")
    for key, fact in p.citations().items():
        lines.append(f"    [{fact.confidence}] {key}: {fact.source}")
    return "\n".join(lines)
