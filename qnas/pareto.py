"""Pareto fronts of (accuracy up, latency down), and the pick within a budget."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from qnas.strategies.base import Budget


def pareto_indices(acc: Sequence[float], cost: Sequence[float]) -> list[int]:
    """Indices of points not dominated in (max acc, min cost), sorted by cost."""
    order = sorted(range(len(acc)), key=lambda i: (cost[i], -acc[i]))
    front, best = [], float("-inf")
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return front


def pareto_front(records: Sequence[dict[str, Any]], acc_key: str = "val_acc", cost_key: str = "latency_ms") -> list[dict[str, Any]]:
    idx = pareto_indices([r[acc_key] for r in records], [r[cost_key] for r in records])
    return [records[i] for i in idx]


def most_accurate(records: Sequence[dict[str, Any]], budget: "Budget") -> dict[str, Any] | None:
    """The record with the highest ``val_acc`` among those within ``budget`` (ties: the faster one);
    None when no record meets it."""
    ok = [r for r in records if budget.ok(r)]
    return max(ok, key=lambda r: (r["val_acc"], -r["latency_ms"])) if ok else None
