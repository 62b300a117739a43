"""Pareto fronts of (accuracy up, latency down) or of any named objectives, and the pick within a budget."""
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


#: objective name -> (record key, sign): a front (and pymoo) minimises ``sign * record[key]``
OBJECTIVES: dict[str, tuple[str, float]] = {
    "accuracy": ("val_acc", -1.0),
    "latency": ("latency_ms", 1.0),
    "size": ("size_kb", 1.0),
    "peak_memory": ("peak_act_kb", 1.0),
    "memory": ("peak_act_kb", 1.0),  # the same, by the name budgets use (--memory-kb)
    "mmacs": ("mmacs", 1.0),
    "bitops": ("bitops", 1.0),
    "energy": ("energy_mj", 1.0),
}
DEFAULT_OBJECTIVES = ("accuracy", "latency")


def objective_front(records: Sequence[dict[str, Any]], objectives: Sequence[str] = DEFAULT_OBJECTIVES) -> list[dict[str, Any]]:
    """Records no other record dominates in ``objectives`` (names of :data:`OBJECTIVES`), sorted by latency;
    the (accuracy, latency) default is :func:`pareto_front`."""
    if tuple(objectives) == DEFAULT_OBJECTIVES:
        return pareto_front(records)
    points = [tuple(OBJECTIVES[o][1] * r[OBJECTIVES[o][0]] for o in objectives) for r in records]

    def dominated(i: int) -> bool:
        return any(all(a <= b for a, b in zip(q, points[i])) and q != points[i] for q in points)

    keep = [i for i in range(len(records)) if not dominated(i)]
    unique = {points[i]: i for i in reversed(keep)}  # one record per point, the earliest
    return sorted((records[i] for i in unique.values()), key=lambda r: (r["latency_ms"], -r["val_acc"]))


def most_accurate(records: Sequence[dict[str, Any]], budget: "Budget") -> dict[str, Any] | None:
    """The record with the highest ``val_acc`` among those within ``budget`` (ties: the faster one);
    None when no record meets it."""
    ok = [r for r in records if budget.ok(r)]
    return max(ok, key=lambda r: (r["val_acc"], -r["latency_ms"])) if ok else None
