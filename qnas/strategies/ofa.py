"""Once-for-all's evolution finder: latency-constrained search on predictors only.

In once-for-all (Cai et al., ICLR 2020) a trained supernet is searched
without training anything: an accuracy predictor (fitted on
supernet-inherited accuracies) and an efficiency predictor (a latency table
of the target) are handed to the finder through its constructor, and a
plain evolution keeps the archs that meet the latency budget:

1. a population of ``population_size`` random archs that meet the budget;
2. each generation keeps the ``parent_ratio`` best as parents, then adds
   ``mutation_ratio * population_size`` mutants of random parents (each gene
   resampled with ``mutate_prob``) and fills up with uniform crossovers of two
   random parents, every child resampled until it meets the budget;
3. after ``generations`` generations the best arch is the answer.

:func:`evolution_search` is that algorithm; it returns every distinct
budget-satisfying arch it scored, best predicted accuracy first.
:class:`OFAEvolutionStrategy` (registered as ``"ofa"``) wraps it in the
ask/tell contract: ``ask(n)`` runs the finder (once per latency budget, lazily)
and hands out its top candidates, not asked before, for real evaluation;
with several ``latency_budgets`` it goes round-robin over them, so the asked
archs trace a front. ``tell`` records real scores; with ``refit=True`` and a
predictor that has ``update(archs, accs)`` (:class:`qnas.predictors.AccuracyPredictor`)
it refits the predictor on them and re-runs the finder.

Predictors are duck-typed:

* accuracy: anything with ``predict(list[Arch]) -> array`` (batched) or a
  callable ``arch -> accuracy``;
* latency: a :class:`~qnas.latency.vectorized.VectorizedTablePredictor`
  (``predict_encoded``, fastest), a :class:`~qnas.latency.base.LatencyModel`
  (priced on ``space.plan(arch)``), or a callable ``arch -> ms``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from qnas.arch import Arch
from qnas.errors import ConfigError, QnasError
from qnas.space import SearchSpace
from qnas.strategies.base import Budget, Strategy, register_strategy

BatchFn = Callable[[Sequence[Arch]], np.ndarray]


def accuracy_fn(acc: Any) -> BatchFn:
    """A batched ``list[Arch] -> np.ndarray`` accuracy function from a predictor or a callable."""
    if acc is None:
        raise ConfigError("an accuracy predictor is needed: pass an object with predict(archs) "
                          "(e.g. qnas.predictors.AccuracyPredictor) or a callable arch -> accuracy")
    if hasattr(acc, "predict") and callable(acc.predict):
        return lambda archs: np.asarray(acc.predict(list(archs)), dtype=np.float64).ravel()
    if callable(acc):
        return lambda archs: np.asarray([float(acc(a)) for a in archs], dtype=np.float64)
    raise ConfigError(f"cannot use a {type(acc).__name__} as an accuracy predictor; "
                      "pass an object with predict(archs) or a callable arch -> accuracy")


def latency_fn(lat: Any, space: SearchSpace) -> BatchFn:
    """A batched ``list[Arch] -> np.ndarray`` latency (ms) function from a latency predictor."""
    from qnas.latency.base import LatencyModel

    if lat is None:
        raise ConfigError("a latency predictor is needed: pass a LatencyModel, a VectorizedTablePredictor "
                          "or a callable arch -> ms")
    if hasattr(lat, "predict_encoded"):
        def f(archs: Sequence[Arch]) -> np.ndarray:
            if not archs:
                return np.zeros(0)
            return np.asarray(lat.predict_encoded(np.asarray([space.encode(a) for a in archs])), dtype=np.float64)
        return f
    if isinstance(lat, LatencyModel):
        return lambda archs: np.asarray([lat.predict(space.plan(a)) for a in archs], dtype=np.float64)
    if callable(lat):
        return lambda archs: np.asarray([float(lat(a)) for a in archs], dtype=np.float64)
    raise ConfigError(f"cannot use a {type(lat).__name__} as a latency predictor; "
                      "pass a LatencyModel, a VectorizedTablePredictor or a callable arch -> ms")


class _Scorer:
    """Cached predicted accuracy / latency and budget check of archs."""

    def __init__(self, space: SearchSpace, acc: BatchFn, lat: BatchFn, budget: Budget):
        self.space, self.acc, self.lat, self.budget = space, acc, lat, budget
        self.acc_cache: dict[Arch, float] = {}
        self.lat_cache: dict[Arch, float] = {}
        self.ok_cache: dict[Arch, bool] = {}

    def ok(self, archs: Sequence[Arch]) -> list[bool]:
        """Whether each arch meets the budget (latency predicted; size and peak memory counted)."""
        b = self.budget
        todo = [a for a in dict.fromkeys(archs) if a not in self.ok_cache]
        if todo:
            if b.latency_ms is not None:
                for a, v in zip(todo, self.lat(todo)):
                    self.lat_cache[a] = float(v)
            for a in todo:
                self.ok_cache[a] = b.ok(Budget.record(self.space.plan(a), self.lat_cache.get(a, 0.0)))
        return [self.ok_cache[a] for a in archs]

    def accuracy(self, archs: Sequence[Arch]) -> np.ndarray:
        todo = [a for a in dict.fromkeys(archs) if a not in self.acc_cache]
        if todo:
            for a, v in zip(todo, self.acc(todo)):
                self.acc_cache[a] = float(v)
        return np.asarray([self.acc_cache[a] for a in archs])


def _feasible(scorer: _Scorer, make: Callable[[], Arch], n: int, tries: int) -> list[Arch]:
    """Up to ``n`` archs from ``make`` that meet the budget, drawing candidates in batches."""
    out: list[Arch] = []
    drawn = 0
    while len(out) < n and drawn < tries:
        batch = [make() for _ in range(min(max(2 * (n - len(out)), 8), tries - drawn))]
        drawn += len(batch)
        out.extend(a for a, ok in zip(batch, scorer.ok(batch)) if ok)
    return out[:n]


def evolution_search(space: SearchSpace, acc_fn: Any, lat_fn: Any, budget: "Budget | float | None" = None, *,
                     population_size: int = 100, generations: int = 50, mutate_prob: float = 0.1,
                     mutation_ratio: float = 0.5, parent_ratio: float = 0.25, seed: int = 0,
                     exclude: "set[Arch] | None" = None, _scorer: "_Scorer | None" = None) -> list[Arch]:
    """OFA's evolution finder (see module doc) on predictors only.

    ``acc_fn`` / ``lat_fn``: predictors or callables (see :func:`accuracy_fn`,
    :func:`latency_fn`); ``budget``: a :class:`Budget` or a latency limit in ms
    (None = unconstrained). Returns every distinct arch that met the budget,
    sorted by predicted accuracy (best first), leaving out ``exclude``.
    Raises :class:`ConfigError` when no random arch meets the budget."""
    _check_positive(population_size=population_size, generations=generations)
    for name, v in (("mutate_prob", mutate_prob), ("mutation_ratio", mutation_ratio), ("parent_ratio", parent_ratio)):
        if not 0 < v <= 1:
            raise ConfigError(f"{name} must be in (0, 1], got {v!r}")
    if not isinstance(budget, Budget):
        budget = Budget(latency_ms=None if budget is None else float(budget))
    scorer = _scorer or _Scorer(space, accuracy_fn(acc_fn), latency_fn(lat_fn, space), budget)
    rng = np.random.default_rng(seed)
    tries = 20 * population_size

    population = _feasible(scorer, lambda: space.sample(rng), population_size, tries)
    if len(population) < population_size:
        # A tight budget: random archs rarely meet it. Start from the smallest archs (every uniform
        # bit width, since low bits are not always faster) and fill up with their feasible mutants.
        c = space.config
        small = [space.uniform(w, a, largest=False) for w in c.w_bits for a in c.a_bits]
        population += [a for a, ok in zip(small, scorer.ok(small)) if ok and a not in population]
        if not population:
            lat = min(scorer.lat(small))
            raise ConfigError(f"no arch of {tries} random ones met the budget {budget}; the smallest arch of the "
                              f"space is predicted at {lat:.4g} ms: raise the budget")
        pool = list(population)
        population += _feasible(scorer, lambda: space.mutate(pool[rng.integers(len(pool))], rng),
                                population_size - len(population), tries)
        population = list(dict.fromkeys(population))
    seen: dict[Arch, None] = dict.fromkeys(population)
    n_parents = max(1, int(round(parent_ratio * population_size)))
    n_mutate = int(round(mutation_ratio * population_size))
    for _ in range(generations):
        acc = scorer.accuracy(population)
        order = np.argsort(-acc, kind="stable")
        parents = [population[i] for i in order[:n_parents]]
        children = _feasible(scorer, lambda: space.mutate(parents[rng.integers(len(parents))], rng, mutate_prob),
                             n_mutate, 50 * max(1, n_mutate))

        def cross() -> Arch:
            i, j = rng.choice(len(parents), size=2, replace=len(parents) < 2)
            return space.crossover(parents[i], parents[j], rng)

        children += _feasible(scorer, cross, population_size - n_parents - len(children),
                              50 * population_size)
        population = parents + children
        seen.update(dict.fromkeys(children))
    ranked = list(seen)
    acc = scorer.accuracy(ranked)
    exclude = exclude or set()
    return [ranked[i] for i in np.argsort(-acc, kind="stable") if ranked[i] not in exclude]


def _check_positive(**kw: Any) -> None:
    for name, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")


class OFAEvolutionStrategy(Strategy):
    """``"ofa"``: OFA's evolution finder on injected predictors; asks its best candidates.

    Options: ``accuracy`` and ``latency`` (predictors, required),
    ``latency_budgets`` (list of ms to sweep; default the budget's
    ``latency_ms``), ``population_size``, ``generations``, ``mutate_prob``,
    ``mutation_ratio``, ``parent_ratio``, ``max_rounds`` (finder reruns per
    budget, with a new seed, once its candidates are all asked), ``refit``.
    Every asked arch meets the budget *as predicted* by ``latency``."""

    prices_energy = False

    name = "ofa"

    def __init__(self, space: SearchSpace, seed: int = 0, budget: Budget | None = None, *, accuracy: Any = None,
                 latency: Any = None, latency_budgets: Sequence[float] | None = None, population_size: int = 100,
                 generations: int = 50, mutate_prob: float = 0.1, mutation_ratio: float = 0.5,
                 parent_ratio: float = 0.25, max_rounds: int = 3, refit: bool = False, **options: Any):
        super().__init__(space, seed, budget, **options)
        self.accuracy = accuracy
        self._acc = accuracy_fn(accuracy)
        self._lat = latency_fn(latency, space)
        _check_positive(population_size=population_size, generations=generations, max_rounds=max_rounds)
        if latency_budgets is None:
            budgets: list[float | None] = [self.budget.latency_ms]
        else:
            budgets = [float(b) for b in latency_budgets]
            if not budgets or any(not b > 0 for b in budgets):
                raise ConfigError(f"latency_budgets must be a non-empty list of positive ms, got {list(latency_budgets)}")
            if self.budget.latency_ms is not None:
                budgets = [min(b, self.budget.latency_ms) for b in budgets]
        self.budgets = budgets
        self.finder = dict(population_size=population_size, generations=generations, mutate_prob=mutate_prob,
                           mutation_ratio=mutation_ratio, parent_ratio=parent_ratio)
        self.max_rounds, self.refit = max_rounds, refit
        self.asked: set[Arch] = set()
        self.records: list[tuple[Arch, dict[str, Any]]] = []
        self._reset()

    def _reset(self) -> None:
        self._lists: list[list[Arch]] = [[] for _ in self.budgets]
        self._rounds = [0] * len(self.budgets)
        self._scorers = [_Scorer(self.space, self._acc, self._lat,
                                 Budget(b, self.budget.size_kb, self.budget.peak_act_kb)) for b in self.budgets]
        self._turn = 0

    def _next(self, k: int) -> Arch | None:
        lst = self._lists[k]
        while True:
            while lst:
                a = lst.pop(0)
                if a not in self.asked:
                    return a
            if self._rounds[k] >= self.max_rounds:
                return None
            seed = self.seed * 1000 + k * 97 + self._rounds[k]
            self._rounds[k] += 1
            lst.extend(evolution_search(self.space, None, None, self._scorers[k].budget, seed=seed,
                                        exclude=self.asked, _scorer=self._scorers[k], **self.finder))

    def ask(self, n: int) -> list[Arch]:
        out: list[Arch] = []
        dead: set[int] = set()
        while len(out) < n and len(dead) < len(self.budgets):
            k = self._turn % len(self.budgets)
            self._turn += 1
            if k in dead:
                continue
            a = self._next(k)
            if a is None:
                dead.add(k)
                continue
            self.asked.add(a)
            out.append(a)
        return out

    def tell(self, archs: Sequence[Arch], records: Sequence[dict[str, Any]]) -> None:
        if len(archs) != len(records):
            raise QnasError(f"tell got {len(archs)} archs but {len(records)} records")
        self.records.extend((a, dict(r)) for a, r in zip(archs, records))
        if self.refit and archs and hasattr(self.accuracy, "update"):
            pairs = [(a, r["val_acc"]) for a, r in zip(archs, records) if np.isfinite(r.get("val_acc", np.nan))]
            if pairs:
                self.accuracy.update([a for a, _ in pairs], [v for _, v in pairs])
                self._reset()  # the predictor changed: rank again

    def best(self) -> tuple[Arch, dict[str, Any]] | None:
        """The most accurate told arch that meets the whole budget (real records), if any."""
        ok = [(a, r) for a, r in self.records if self.budget.ok(r)]
        return max(ok, key=lambda p: p[1]["val_acc"]) if ok else None


register_strategy("ofa", OFAEvolutionStrategy)
