"""Evolutionary multi-objective search with pymoo's NSGA-II and NSGA-III (DESIGN.md §4).

pymoo does the evolution; this module only adapts it to the ask/tell
contract of :class:`~qnas.strategies.base.Strategy`:

* the **problem** (:class:`ArchProblem`) is the integer gene vector of
  :meth:`SearchSpace.encode` (lower bound 0, inclusive upper bound
  :meth:`SearchSpace.bounds`), with objectives (all minimised) picked by name
  from :data:`OBJECTIVES` (default ``-val_acc`` and ``latency_ms``) and one
  inequality constraint ``G = value / limit - 1 <= 0`` per limit set in the
  :class:`~qnas.strategies.base.Budget` (latency, size, peak memory);
* the **algorithm** is pymoo's ``NSGA2`` / ``NSGA3`` driven through
  ``algorithm.ask()`` / ``algorithm.tell(infills=pop)`` (the evaluated values
  enter through pymoo's ``StaticProblem`` + ``Evaluator``, as in pymoo's
  ask-and-tell guide); it never terminates by itself (``NoTermination``): the
  search loop decides how many archs it evaluates;
* the **operators**: ``operators="space"`` (default) samples with
  :meth:`SearchSpace.sample`, mutates with :meth:`SearchSpace.mutate` (each gene
  resampled with ``mutation_prob``, default ``1/#genes``, child always differs
  from its parent) and crosses with pymoo's uniform crossover (the gene-wise
  crossover of :meth:`SearchSpace.crossover`, two complementary children);
  ``operators="sbx"`` uses pymoo's integer recipe instead
  (``IntegerRandomSampling``, ``SBX``/``PM`` with ``RoundingRepair``).

Duplicates: genes of inactive blocks (positions past a stage's depth, bits of
a skipped block) do not change the decoded arch, so different vectors can be
the same network. Every vector pymoo creates is canonicalised by a repair
(``encode(decode(x))``: inactive genes become 0), and the duplicate
elimination (:class:`SeenElimination`) then drops, on the canonical vectors,
duplicates within the offspring, of the current population, and of every arch
asked before -- so no arch is ever asked twice.

Batches: pymoo works a generation at a time, the search loop asks any ``n``.
``ask(n)`` hands out the current generation's offspring (buffered) and returns
fewer than ``n`` when the generation is used up; the next generation is bred
once every arch of this one has been told. A strategy is deterministic for a
seed: the same sequence of ask/tell calls with the same records asks the same
archs (which also replays a killed search).

    >>> strat = create_strategy("nsga2", space, seed=0, budget=Budget(latency_ms=0.5), pop_size=16)
    >>> archs = strat.ask(16); strat.tell(archs, [evaluate(a) for a in archs])

Importing this module registers ``"nsga2"``, ``"nsga3"`` and (from
:mod:`qnas.strategies.ofa`) ``"ofa"``. pymoo (a core dependency, imported lazily) is
imported only when an NSGA strategy is created (:func:`pymoo_parts`), so
``random`` and ``ofa`` work without it.
"""
from __future__ import annotations

from typing import Any, Sequence

import functools
from types import SimpleNamespace

import numpy as np

from qnas.arch import Arch
from qnas.errors import ConfigError, QnasError
from qnas.pareto import OBJECTIVES  # objective name -> (record key, sign): pymoo minimises sign * value
from qnas.space import SearchSpace
from qnas.strategies.base import Budget, Strategy, register_strategy
from qnas.strategies.ofa import OFAEvolutionStrategy  # noqa: F401  (importing it registers "ofa")

#: budget fields that become pymoo inequality constraints, in this order
CONSTRAINTS = ("latency_ms", "size_kb", "peak_act_kb", "energy_mj")
OPERATORS = ("space", "sbx")


def canonical(space: SearchSpace, X: np.ndarray) -> np.ndarray:
    """``encode(decode(x))`` of each row (rounded, clipped to the bounds): genes of inactive blocks set to 0."""
    X = np.atleast_2d(np.asarray(X))
    hi = space.bounds()
    return np.asarray([space.canonical(np.clip(np.rint(x), 0, hi).astype(int)) for x in X],
                      dtype=int).reshape(len(X), -1)


# ---- the pymoo problem and operators (pymoo is imported lazily) ----------
@functools.cache
def pymoo_parts() -> SimpleNamespace:
    """pymoo's classes and qnas' adapters to them, imported on first use.

    Raises :class:`ConfigError` naming the extra to install when pymoo is missing."""
    try:
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.algorithms.moo.nsga3 import NSGA3
        from pymoo.core.duplicate import DuplicateElimination
        from pymoo.core.evaluator import Evaluator
        from pymoo.core.mutation import Mutation
        from pymoo.core.population import Population
        from pymoo.core.problem import Problem
        from pymoo.core.repair import Repair
        from pymoo.core.sampling import Sampling
        from pymoo.core.termination import NoTermination
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.crossover.ux import UniformCrossover
        from pymoo.operators.mutation.pm import PM
        from pymoo.operators.repair.rounding import RoundingRepair
        from pymoo.operators.sampling.rnd import IntegerRandomSampling
        from pymoo.problems.static import StaticProblem
        from pymoo.util.ref_dirs import get_reference_directions
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in ("pymoo", "moocore"):
            raise ConfigError("the nsga2/nsga3 strategies need pymoo; reinstall qnas (pip install qnas) or pip install pymoo") from None
        raise

    class ArchProblem(Problem):
        """The integer gene vectors of ``space`` as a pymoo problem.

        Values come from outside (ask/tell), so :meth:`_evaluate` is never called."""

        def __init__(self, space: SearchSpace, n_obj: int, n_ieq_constr: int):
            self.space = space
            super().__init__(n_var=len(space.bounds()), n_obj=n_obj, n_ieq_constr=n_ieq_constr,
                             xl=np.zeros(len(space.bounds()), dtype=int), xu=np.asarray(space.bounds(), dtype=int),
                             vtype=int)

        def _evaluate(self, X: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            raise QnasError("ArchProblem is evaluated by the search loop through ask/tell, not by pymoo")

    class CanonicalRepair(Repair):
        """Rounds to integers inside the bounds and canonicalises every vector (see :func:`canonical`)."""

        def __init__(self, space: SearchSpace):
            super().__init__()
            self.space = space

        def _do(self, problem: Any, X: np.ndarray, **kwargs: Any) -> np.ndarray:
            return canonical(self.space, X) if len(X) else X

    class SpaceSampling(Sampling):
        """Initial population from :meth:`SearchSpace.sample` (uniform per gene), pymoo's random state."""

        def __init__(self, space: SearchSpace):
            super().__init__()
            self.space = space

        def _do(self, problem: Any, n_samples: int, *args: Any, random_state: Any = None, **kwargs: Any) -> np.ndarray:
            return np.asarray([self.space.encode(self.space.sample(random_state)) for _ in range(n_samples)], dtype=int)

    class SpaceMutation(Mutation):
        """:meth:`SearchSpace.mutate` of each offspring (gene resampling; the child always differs)."""

        def __init__(self, space: SearchSpace, prob_var: float | None = None):
            super().__init__(prob=1.0)
            self.space = space
            self.gene_prob = prob_var

        def _do(self, problem: Any, X: np.ndarray, *args: Any, random_state: Any = None, **kwargs: Any) -> np.ndarray:
            s = self.space
            return np.asarray([s.encode(s.mutate(s.decode(np.asarray(x, dtype=int)), random_state, self.gene_prob))
                               for x in X], dtype=int).reshape(X.shape)

    class SeenElimination(DuplicateElimination):
        """Duplicate elimination on canonical gene vectors that also drops every vector in ``seen``
        (all archs asked so far), not only those of the current population."""

        def __init__(self, seen: set[tuple[int, ...]]):
            super().__init__()
            self.seen = seen

        @staticmethod
        def _keys(pop: Any) -> list[tuple[int, ...]]:
            return [tuple(int(v) for v in np.rint(x)) for x in pop.get("X")]

        def _do(self, pop: Any, other: Any, is_duplicate: np.ndarray) -> np.ndarray:
            keys = self._keys(pop)
            if other is None:
                first: set[tuple[int, ...]] = set()
                for i, k in enumerate(keys):
                    if k in first or k in self.seen:
                        is_duplicate[i] = True
                    first.add(k)
            else:
                taken = set(self._keys(other))
                for i, k in enumerate(keys):
                    if k in taken:
                        is_duplicate[i] = True
            return is_duplicate

    return SimpleNamespace(
        NSGA2=NSGA2, NSGA3=NSGA3, Evaluator=Evaluator, Population=Population, NoTermination=NoTermination,
        SBX=SBX, UniformCrossover=UniformCrossover, PM=PM, RoundingRepair=RoundingRepair,
        IntegerRandomSampling=IntegerRandomSampling, StaticProblem=StaticProblem,
        get_reference_directions=get_reference_directions, ArchProblem=ArchProblem,
        CanonicalRepair=CanonicalRepair, SpaceSampling=SpaceSampling, SpaceMutation=SpaceMutation,
        SeenElimination=SeenElimination)


# ---- the strategies ------------------------------------------------------------
class PymooStrategy(Strategy):
    """Ask/tell adapter around a pymoo genetic algorithm (subclasses pick NSGA-II or NSGA-III).

    Options: ``pop_size`` (offspring per generation too), ``objectives`` (names
    from :data:`OBJECTIVES`, ``"accuracy"`` first by convention),
    ``operators`` (``"space"`` or ``"sbx"``), ``mutation_prob`` (per gene,
    ``"space"`` operators only), ``crossover_prob``."""

    default_objectives: tuple[str, ...] = ("accuracy", "latency")

    def __init__(self, space: SearchSpace, seed: int = 0, budget: Budget | None = None, *,
                 pop_size: int = 16, objectives: Sequence[str] | None = None, operators: str = "space",
                 mutation_prob: float | None = None, crossover_prob: float = 0.9, **options: Any):
        super().__init__(space, seed, budget, **options)
        objectives = tuple(objectives) if objectives is not None else self.default_objectives
        bad = [o for o in objectives if o not in OBJECTIVES]
        if bad or len(objectives) < 2 or len(set(objectives)) != len(objectives):
            raise ConfigError(f"strategy {self.name!r}: objectives must be 2 or more distinct names of "
                              f"{sorted(OBJECTIVES)}, got {list(objectives)}")
        if isinstance(pop_size, bool) or not isinstance(pop_size, int) or pop_size < 4:
            raise ConfigError(f"strategy {self.name!r}: pop_size must be an integer >= 4, got {pop_size!r}")
        if operators not in OPERATORS:
            raise ConfigError(f"strategy {self.name!r}: operators must be one of {list(OPERATORS)}, got {operators!r}")
        if mutation_prob is not None and not 0 < mutation_prob <= 1:
            raise ConfigError(f"strategy {self.name!r}: mutation_prob must be in (0, 1], got {mutation_prob!r}")
        if not 0 <= crossover_prob <= 1:
            raise ConfigError(f"strategy {self.name!r}: crossover_prob must be in [0, 1], got {crossover_prob!r}")
        self.objectives = objectives
        self.constraint_keys = tuple(k for k in CONSTRAINTS if getattr(self.budget, k) is not None)
        pm = self._pm = pymoo_parts()
        self.problem = pm.ArchProblem(space, len(objectives), len(self.constraint_keys))
        self.seen: set[tuple[int, ...]] = set()
        if operators == "space":
            ops = dict(sampling=pm.SpaceSampling(space), crossover=pm.UniformCrossover(prob=crossover_prob),
                       mutation=pm.SpaceMutation(space, mutation_prob))
        else:
            ops = dict(sampling=pm.IntegerRandomSampling(),
                       crossover=pm.SBX(prob=crossover_prob, eta=15, vtype=float, repair=pm.RoundingRepair()),
                       mutation=pm.PM(eta=20, vtype=float, repair=pm.RoundingRepair()))
        self.algorithm = self._make_algorithm(pop_size, ops, pm.CanonicalRepair(space), pm.SeenElimination(self.seen))
        self.pop_size = self.algorithm.pop_size
        self.algorithm.setup(self.problem, termination=pm.NoTermination(), seed=seed, verbose=False)
        self.records: list[tuple[Arch, dict[str, Any]]] = []  # everything told, in order
        self._gen: Any = None  # the pymoo Population being evaluated
        self._gen_archs: list[Arch] = []
        self._gen_index: dict[Arch, int] = {}
        self._gen_values: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._queue: list[int] = []  # indices of _gen not handed out yet
        self.exhausted = False
        self.generations = 0

    def _make_algorithm(self, pop_size: int, ops: dict[str, Any], repair: Any, dedup: Any) -> Any:
        raise NotImplementedError

    # ---- values ---------------------------------------------------------------
    def objective_values(self, record: dict[str, Any]) -> np.ndarray:
        """The minimised objective vector of a record (a missing or NaN accuracy counts as 0)."""
        out = []
        for name in self.objectives:
            key, sign = OBJECTIVES[name]
            if key not in record:
                if key == "val_acc":
                    out.append(0.0)
                    continue
                raise QnasError(f"strategy {self.name!r} optimises {name!r} but a record lacks {key!r}; "
                                f"records have {sorted(record)}")
            v = float(record[key])
            if not np.isfinite(v):
                v = 0.0 if key == "val_acc" else 1e12
            out.append(sign * v)
        return np.asarray(out, dtype=float)

    def constraint_values(self, record: dict[str, Any]) -> np.ndarray:
        """``value / limit - 1`` per budget limit (feasible when every entry is <= 0)."""
        missing = [k for k in self.constraint_keys if k not in record]
        if missing:
            raise QnasError(f"strategy {self.name!r} has a budget on {missing} but a record lacks them; "
                            f"records have {sorted(record)}")
        return np.asarray([float(record[k]) / getattr(self.budget, k) - 1.0 for k in self.constraint_keys], dtype=float)

    # ---- ask/tell -----------------------------------------------------------------
    def _breed(self) -> bool:
        if self.exhausted or not self.algorithm.has_next():
            self.exhausted = True
            return False
        pop = self.algorithm.ask()
        if pop is None or len(pop) == 0:
            self.exhausted = True  # duplicate elimination found nothing new: the space is used up
            return False
        X = np.asarray(pop.get("X")).astype(int)
        pop.set("X", X)
        self._gen = pop
        self._gen_archs = [self.space.decode(x) for x in X]
        self._gen_index = {a: i for i, a in enumerate(self._gen_archs)}
        self._gen_values = {}
        self._queue = list(range(len(pop)))
        for x in X:
            self.seen.add(tuple(int(v) for v in x))
        self.generations += 1
        return True

    def ask(self, n: int) -> list[Arch]:
        out: list[Arch] = []
        while len(out) < n:
            if not self._queue:
                if self._gen is not None or out or not self._breed():
                    break  # this generation awaits results (or the space is used up)
                continue
            out.append(self._gen_archs[self._queue.pop(0)])
        return out

    def tell(self, archs: Sequence[Arch], records: Sequence[dict[str, Any]]) -> None:
        if len(archs) != len(records):
            raise QnasError(f"tell got {len(archs)} archs but {len(records)} records")
        for arch, rec in zip(archs, records):
            self.records.append((arch, dict(rec)))
            F, G = self.objective_values(rec), self.constraint_values(rec)
            key = tuple(self.space.encode(arch))
            self.seen.add(key)  # never ask an arch that was told from elsewhere
            i = self._gen_index.get(arch)
            if i is not None:
                self._gen_values[i] = (F, G)
        if self._gen is not None and len(self._gen_values) == len(self._gen):
            self._advance()

    def _advance(self) -> None:
        pop = self._gen
        order = range(len(pop))
        F = np.stack([self._gen_values[i][0] for i in order])
        kw: dict[str, Any] = {"F": F}
        if self.constraint_keys:
            kw["G"] = np.stack([self._gen_values[i][1] for i in order])
        self._pm.Evaluator().eval(self._pm.StaticProblem(self.problem, **kw), pop)
        self.algorithm.tell(infills=pop)
        self._gen = None
        self._gen_archs, self._gen_index, self._gen_values = [], {}, {}

    # ---- results --------------------------------------------------------------------
    def front(self) -> list[tuple[Arch, dict[str, Any]]]:
        """pymoo's current optimum (non-dominated members of the population; feasible ones
        if any is feasible, else the least infeasible) as ``(arch, record)`` pairs."""
        opt = self.algorithm.opt
        if opt is None or len(opt) == 0:
            return []
        by_key = {tuple(self.space.encode(a)): (a, r) for a, r in self.records}
        out = []
        for x in opt.get("X"):
            key = tuple(int(v) for v in x)
            if key in by_key:
                out.append(by_key[key])
        return out


class NSGA2Strategy(PymooStrategy):
    """pymoo's NSGA-II (rank and crowding survival, binary tournament) over the gene vectors."""

    name = "nsga2"

    def _make_algorithm(self, pop_size: int, ops: dict[str, Any], repair: Any, dedup: Any) -> Any:
        return self._pm.NSGA2(pop_size=pop_size, repair=repair, eliminate_duplicates=dedup, **ops)


class NSGA3Strategy(PymooStrategy):
    """pymoo's NSGA-III (reference-direction survival) over the gene vectors.

    Reference directions are Das-Dennis with ``n_partitions`` (default: the
    most partitions whose number of directions fits in ``pop_size``); the
    population grows to the number of directions if that is larger.
    ``objectives=("accuracy", "latency", "size")`` makes it a 3-objective search."""

    name = "nsga3"

    def __init__(self, space: SearchSpace, seed: int = 0, budget: Budget | None = None, *,
                 n_partitions: int | None = None, **options: Any):
        if n_partitions is not None and (isinstance(n_partitions, bool) or not isinstance(n_partitions, int)
                                         or n_partitions < 1):
            raise ConfigError(f"strategy 'nsga3': n_partitions must be a positive integer, got {n_partitions!r}")
        self.n_partitions = n_partitions
        super().__init__(space, seed, budget, **options)

    def _make_algorithm(self, pop_size: int, ops: dict[str, Any], repair: Any, dedup: Any) -> Any:
        n_obj = self.problem.n_obj
        p = self.n_partitions
        if p is None:
            p = 1
            while _n_directions(n_obj, p + 1) <= pop_size:
                p += 1
        self.ref_dirs = self._pm.get_reference_directions("das-dennis", n_obj, n_partitions=p)
        return self._pm.NSGA3(self.ref_dirs, pop_size=max(pop_size, len(self.ref_dirs)), repair=repair,
                     eliminate_duplicates=dedup, **ops)


def _n_directions(n_obj: int, p: int) -> int:
    from math import comb

    return comb(p + n_obj - 1, n_obj - 1)


register_strategy("nsga2", NSGA2Strategy)
register_strategy("nsga3", NSGA3Strategy)
