"""Plots a person would rather look at than read (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from qnas.quant.checkpoint import atomic_write


def plot_pareto(records: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]], out: str | Path,
                budget_ms: float | None = None, chosen: dict[str, Any] | None = None,
                title: str = "accuracy vs predicted latency",
                refined: Sequence[dict[str, Any]] = ()) -> Path:
    """Scatter of every evaluated arch, the Pareto front as a step line, the budget and the chosen arch;
    ``refined`` entries (``uid``, ``refined_val_acc``: :mod:`qnas.refining`) as diamonds joined to
    their search-time accuracy, the chosen arch at its refined accuracy when it has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    ax.scatter([r["latency_ms"] for r in records], [100 * r["val_acc"] for r in records],
               s=22, c="#9aa5b1", label=f"evaluated ({len(records)})", zorder=2)
    fx = [r["latency_ms"] for r in front]
    fy = [100 * r["val_acc"] for r in front]
    ax.step(fx, fy, where="post", color="#1f77b4", lw=1.5, zorder=3)
    ax.scatter(fx, fy, s=36, c="#1f77b4", label=f"Pareto front ({len(front)})", zorder=4)
    latency = {r["uid"]: r["latency_ms"] for r in records}
    refined = [e for e in refined if e.get("uid") in latency]
    for e in refined:
        x = latency[e["uid"]]
        ax.plot([x, x], [100 * e["val_acc"], 100 * e["refined_val_acc"]], color="#2ca02c", lw=0.8, ls=":", zorder=3)
    if refined:
        ax.scatter([latency[e["uid"]] for e in refined], [100 * e["refined_val_acc"] for e in refined], s=40,
                   marker="D", c="#2ca02c", label=f"refined ({refined[0]['epochs']} QAT epochs)", zorder=4)
    if budget_ms is not None:
        ax.axvline(budget_ms, color="#d62728", ls="--", lw=1.2, label=f"budget {budget_ms:.3g} ms")
    if chosen is not None:
        ax.scatter([chosen["latency_ms"]], [100 * chosen.get("refined_val_acc", chosen["val_acc"])], s=140, marker="*", c="#ff7f0e",
                   edgecolors="k", label="chosen", zorder=5)
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(out, lambda p: fig.savefig(p, format="png"))
    finally:
        plt.close(fig)


def plot_progress(records: Sequence[dict[str, Any]], out: str | Path, batch: int = 4,
                  budget_ms: float | None = None) -> Path:
    """Validation accuracy and predicted latency of each evaluation, by generation (batch of asks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    gen = [r["index"] // max(1, batch) for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.8), dpi=110)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.scatter(gen, [100 * r["val_acc"] for r in records], s=14, c="#1f77b4", alpha=0.7)
    best, run_best = float("-inf"), []
    for r in records:
        if budget_ms is None or r["latency_ms"] <= budget_ms:
            best = max(best, 100 * r["val_acc"])
        run_best.append(best if best > float("-inf") else float("nan"))
    ax1.plot(gen, run_best, color="#ff7f0e", lw=1.5, label="best so far" + (" (in budget)" if budget_ms else ""))
    ax1.set_xlabel("generation")
    ax1.set_ylabel("validation accuracy (%)")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8, loc="lower right")
    ax2.scatter(gen, [r["latency_ms"] for r in records], s=14, c="#2ca02c", alpha=0.7)
    if budget_ms is not None:
        ax2.axhline(budget_ms, color="#d62728", ls="--", lw=1.2, label=f"budget {budget_ms:.3g} ms")
        ax2.legend(fontsize=8)
    ax2.set_xlabel("generation")
    ax2.set_ylabel("predicted latency (ms)")
    ax2.grid(alpha=0.3)
    fig.suptitle("search progress")
    fig.tight_layout()
    try:
        return atomic_write(out, lambda p: fig.savefig(p, format="png"))
    finally:
        plt.close(fig)
