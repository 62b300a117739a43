"""Accuracy sources: how a search scores an arch's accuracy, chosen by name like every other plug-in.

An accuracy source is a callable ``evaluator(arch) -> {"val_acc": ..., ...}``. A source registers a
factory under a name (:func:`register_accuracy_source`); :func:`create_accuracy_source` builds one for
a search from its :class:`~qnas.options.SearchConfig` (which also says the torch device the sources train
and evaluate on, ``torch_device``). Built in:

* ``train``     -- brief stand-alone QAT per arch (:class:`qnas.evaluators.TrainingEvaluator`);
* ``supernet``  -- weights inherited from the weight-sharing supernet + BN re-calibration;
* ``predictor`` -- an accuracy predictor fitted earlier (needs ``accuracy_path``);
* ``zero-cost`` -- a zero-cost proxy at initialisation (:mod:`qnas.zero_cost`).

The registry is torch-free (each factory imports its implementation when called), so the CLI
reads the names for ``--accuracy`` without loading torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from qnas.errors import ConfigError

if TYPE_CHECKING:
    from qnas.arch import Arch
    from qnas.data import Splits
    from qnas.options import SearchConfig
    from qnas.rundir import RunDir
    from qnas.space import SearchSpace

__all__ = ["AccuracySource", "Evaluator", "accuracy_source", "accuracy_source_names", "create_accuracy_source",
           "register_accuracy_source"]

#: What an accuracy source gives a search: arch -> record fields, at least ``val_acc`` in [0, 1].
Evaluator = Callable[["Arch"], "dict[str, Any]"]
#: ``factory(cfg, space, splits, run, progress) -> Evaluator``; ``run`` (a :class:`~qnas.rundir.RunDir`)
#: is None for a search without a run directory.
AccuracyFactory = Callable[["SearchConfig", "SearchSpace", "Splits", "RunDir | None", bool], Evaluator]


@dataclass(frozen=True)
class AccuracySource:
    """A registered accuracy source. ``path_needed`` describes the file it reads from
    ``accuracy_path`` (``--accuracy-path``) when it cannot work without one, else None."""

    name: str
    factory: AccuracyFactory
    path_needed: str | None = None

    def check(self, cfg: "SearchConfig") -> None:
        """Refuse a search config this source cannot run (one line, before any work)."""
        if self.path_needed and not cfg.accuracy_path:
            raise ConfigError(f"accuracy={self.name} needs accuracy_path (--accuracy-path), {self.path_needed}")


_REGISTRY: dict[str, AccuracySource] = {}


def register_accuracy_source(name: str, factory: AccuracyFactory, *, path_needed: str | None = None) -> None:
    """Make ``SearchConfig(accuracy=name)`` (``--accuracy NAME``) score archs with ``factory(cfg, space,
    splits, run, progress)``; ``path_needed`` says which file it needs in ``accuracy_path``, if any."""
    _REGISTRY[name] = AccuracySource(name, factory, path_needed)


def accuracy_source_names(*, without_path: bool = False) -> list[str]:
    """Registered names in registration order; ``without_path``: only those that need no ``accuracy_path``."""
    return [n for n, s in _REGISTRY.items() if not (without_path and s.path_needed)]


def accuracy_source(name: str) -> AccuracySource:
    """The registered source ``name``; an unknown name is a one-line error listing the valid ones."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown accuracy source {name!r}; choose one of {accuracy_source_names()}")
    return _REGISTRY[name]


def create_accuracy_source(name: str, cfg: "SearchConfig", space: "SearchSpace", splits: "Splits",
                           run: "RunDir | None" = None, progress: bool = True) -> Evaluator:
    """Build accuracy source ``name`` for a search (``cfg`` carries its settings: epochs, seed, threads,
    ``accuracy_path``, ``proxy`` ...)."""
    source = accuracy_source(name)
    source.check(cfg)
    return source.factory(cfg, space, splits, run, progress)


# ---- built-in sources (implementations imported when used: they need torch) ----------------
def _train(cfg: "SearchConfig", space: "SearchSpace", splits: "Splits", run: "RunDir | None",
           progress: bool) -> Evaluator:
    from qnas.evaluators import TrainingEvaluator

    state_dir = run.file("candidates") if run else None
    return TrainingEvaluator(space, splits, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                             progress=progress and cfg.executor == "local", threads=cfg.threads, state_dir=state_dir,
                             torch_device=cfg.torch_device, amp=cfg.amp)


def _supernet(cfg: "SearchConfig", space: "SearchSpace", splits: "Splits", run: "RunDir | None",
              progress: bool) -> Evaluator:
    from qnas.searching import obtain_supernet
    from qnas.supernet import SupernetEvaluator

    supernet = obtain_supernet(cfg, space, splits, run, progress)
    return SupernetEvaluator(supernet, splits, batch_size=cfg.batch_size, seed=cfg.seed, threads=cfg.threads)


def _predictor(cfg: "SearchConfig", space: "SearchSpace", splits: "Splits", run: "RunDir | None",
               progress: bool) -> Evaluator:
    from qnas.predictors import AccuracyPredictor, PredictorEvaluator

    return PredictorEvaluator(AccuracyPredictor.load(cfg.accuracy_path, space))


def _zero_cost(cfg: "SearchConfig", space: "SearchSpace", splits: "Splits", run: "RunDir | None",
               progress: bool) -> Evaluator:
    from qnas.zero_cost import ZeroCostEvaluator

    return ZeroCostEvaluator(space, splits.train, proxy=cfg.proxy, seed=cfg.seed, torch_device=cfg.torch_device)


register_accuracy_source("train", _train)
register_accuracy_source("supernet", _supernet)
register_accuracy_source("predictor", _predictor,
                         path_needed="a predictor saved by qnas.predictors.AccuracyPredictor.save")
register_accuracy_source("zero-cost", _zero_cost)
