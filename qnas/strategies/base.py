"""The strategy contract: propose archs (``ask``), learn from their scores (``tell``).

A strategy never trains or prices anything itself: the search loop
evaluates what it asks for (accuracy source + latency model injected there)
and tells it the archs with their records. Records are JSON-able dicts with
at least ``val_acc`` (higher is better), ``latency_ms``, ``size_kb`` and
``peak_act_kb`` (lower is better).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import numpy as np

from qnas.arch import Arch
from qnas.costs import count_costs
from qnas.errors import ConfigError
from qnas.space import SearchSpace

if TYPE_CHECKING:
    from qnas.quant.plan import NetworkPlan


@dataclass(frozen=True)
class Budget:
    """Hard constraints a returned arch must meet (None = unconstrained), on the record fields
    :attr:`KEYS` (lower is better); :meth:`record` builds those fields for an arch."""

    latency_ms: float | None = None
    size_kb: float | None = None
    peak_act_kb: float | None = None
    energy_mj: float | None = None
    """batch-1 energy in mJ, on latency targets whose profile gives energy (``qnas latency show``)"""

    KEYS: ClassVar[tuple[str, ...]] = ("latency_ms", "size_kb", "peak_act_kb", "energy_mj")

    @staticmethod
    def record(plan: "NetworkPlan", latency_ms: float, energy_mj: float | None = None) -> dict[str, float]:
        """What a budget reads of an arch: its predicted ``latency_ms`` (and ``energy_mj`` where the
        target predicts energy), and the ``size_kb`` and ``peak_act_kb`` its layer plan
        (``space.plan(arch)``) counts; unrounded."""
        costs = count_costs(plan)
        out = {"latency_ms": float(latency_ms), "size_kb": costs.size_kb,
               "peak_act_kb": costs.peak_activation_bytes / 1024}
        if energy_mj is not None:
            out["energy_mj"] = float(energy_mj)
        return out

    def violation(self, record: dict[str, Any]) -> float:
        """Sum of relative overshoots (0 when every constraint holds). A limit on a field the record
        lacks (energy on a target without energy) is an error, not a pass."""
        v = 0.0
        for key in self.KEYS:
            limit = getattr(self, key)
            if limit is None:
                continue
            if key not in record:
                raise ConfigError(f"a budget on {key} needs records that have it; the latency target gives no "
                                  f"{key.split('_')[0]} (choose a target whose profile has energy, e.g. bitfusion)")
            if record[key] > limit:
                v += (record[key] - limit) / limit
        return v

    def ok(self, record: dict[str, Any]) -> bool:
        return self.violation(record) == 0.0


@dataclass
class StrategyContext:
    """What the search loop can lend a strategy that needs more than scores:
    the data splits (differentiable search trains on them), the target's latency
    model, and the accuracy source (OFA's evolution queries it internally)."""

    splits: Any = None
    latency: Any = None
    accuracy: Callable[[Arch], dict[str, Any]] | None = None
    progress: bool = False


class Strategy(ABC):
    """Proposes archs and learns from their scores. Deterministic for a seed."""

    name = ""
    prices_energy: ClassVar[bool] = True
    """whether the strategy judges budgets on the evaluated records (which carry ``energy_mj``), so an
    energy budget holds; False for strategies that price candidates themselves by latency"""

    def __init__(self, space: SearchSpace, seed: int = 0, budget: Budget | None = None,
                 context: StrategyContext | None = None, **options: Any):
        self.space = space
        self.seed = seed
        self.budget = budget or Budget()
        if self.budget.energy_mj is not None and not self.prices_energy:
            raise ConfigError(f"strategy {self.name!r} cannot hold an energy budget (it prices archs by latency "
                              "alone); use nsga2, nsga3 or random with --energy-mj")
        self.context = context or StrategyContext()
        self.rng = np.random.default_rng(seed)
        if options:
            raise ConfigError(f"strategy {self.name!r} takes no option(s) {sorted(options)}")

    @abstractmethod
    def ask(self, n: int) -> list[Arch]:
        """Up to ``n`` new archs to evaluate (fewer, or none, when the strategy is done)."""

    def tell(self, archs: Sequence[Arch], records: Sequence[dict[str, Any]]) -> None:  # noqa: B027 - optional hook
        """Scores (``records[i]`` for ``archs[i]``) of archs this strategy asked for, in the order asked."""


class RandomSearch(Strategy):
    """Uniform random samples without repeats: the baseline every strategy must beat."""

    name = "random"

    def __init__(self, space: SearchSpace, seed: int = 0, budget: Budget | None = None,
                 context: StrategyContext | None = None, **options: Any):
        super().__init__(space, seed, budget, context, **options)
        self.seen: set[Arch] = set()

    def ask(self, n: int) -> list[Arch]:
        out: list[Arch] = []
        for _ in range(n * 100):
            if len(out) == n:
                break
            a = self.space.sample(self.rng)
            if a not in self.seen:
                self.seen.add(a)
                out.append(a)
        return out


_REGISTRY: dict[str, Callable[..., Strategy]] = {"random": RandomSearch}


def register_strategy(name: str, factory: Callable[..., Strategy]) -> None:
    _REGISTRY[name] = factory


def strategy_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def create_strategy(name: str, space: SearchSpace, seed: int = 0, budget: Budget | None = None,
                    context: StrategyContext | None = None, **options: Any) -> Strategy:
    """Factory: ``create_strategy("nsga2", space, seed=0, budget=Budget(latency_ms=1.0))``.

    ``context`` is passed only to strategies that accept it (a ``context`` parameter)."""
    import inspect

    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {sorted(_REGISTRY)}")
    factory = _REGISTRY[name]
    try:
        accepts_context = "context" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepts_context = False
    if accepts_context:
        options["context"] = context
    return factory(space, seed=seed, budget=budget, **options)


def _load_builtin() -> None:
    # Strategy modules register themselves; importing them lazily keeps pymoo optional at import time.
    import importlib

    for mod in ("qnas.strategies.evolution", "qnas.strategies.differentiable"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("qnas"):
                continue  # not written yet
            raise
