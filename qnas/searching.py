"""Search: strategies propose archs (ask/tell), an evaluator scores them,
the latency model of the target prices them, and the run directory records it."""
from __future__ import annotations

import statistics
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from qnas.arch import Arch
from qnas.costs import count_costs
from qnas.data import ImageDataset, Splits, load_dataset, split
from qnas.errors import ConfigError
from qnas.latency import LatencyModel, create_latency_model
from qnas.pareto import pareto_front
from qnas.quant.build import build_model
from qnas.quant.train import TrainConfig, evaluate, train
from qnas.rundir import RunDir
from qnas.space import SearchSpace, SpaceConfig


# ---- strategies -----------------------------------------------------------
class Strategy(ABC):
    """Proposes archs (``ask``) and learns from their scores (``tell``)."""

    def __init__(self, space: SearchSpace, seed: int = 0):
        self.space = space
        self.rng = np.random.default_rng(seed)

    @abstractmethod
    def ask(self, n: int) -> list[Arch]: ...

    def tell(self, records: Sequence[dict[str, Any]]) -> None:  # noqa: B027 - optional hook
        pass


class RandomSearch(Strategy):
    """Uniform random samples without repeats: the baseline every strategy must beat."""

    def __init__(self, space: SearchSpace, seed: int = 0):
        super().__init__(space, seed)
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


STRATEGIES: dict[str, type[Strategy]] = {"random": RandomSearch}


def create_strategy(name: str, space: SearchSpace, seed: int = 0) -> Strategy:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](space, seed)


# ---- evaluation -----------------------------------------------------------
class TrainingEvaluator:
    """Scores an arch by briefly training it (QAT) and measuring validation accuracy.

    Keeps each trained state so a chosen candidate can be finished from it."""

    def __init__(self, space: SearchSpace, splits: Splits, epochs: int = 3, batch_size: int = 64,
                 lr: float = 3e-3, seed: int = 0, progress: bool = True):
        self.space, self.splits = space, splits
        self.epochs, self.batch_size, self.lr, self.seed, self.progress = epochs, batch_size, lr, seed, progress
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        self._resized: dict[tuple[str, int], ImageDataset] = {}

    def data(self, part: str, resolution: int) -> ImageDataset:
        key = (part, resolution)
        if key not in self._resized:
            self._resized[key] = getattr(self.splits, part).at_resolution(resolution)
        return self._resized[key]

    def __call__(self, arch: Arch) -> dict[str, Any]:
        torch.manual_seed(self.seed)
        model = build_model(self.space, arch)
        t0 = time.perf_counter()
        train(model, self.data("train", arch.resolution).loader(self.batch_size, True, self.seed), None,
              TrainConfig(epochs=self.epochs, lr=self.lr, seed=self.seed, progress=self.progress,
                          desc=f"train {arch.uid}"))
        acc = evaluate(model, self.data("val", arch.resolution).loader(512, False))
        self.states[arch.uid] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {"val_acc": acc, "train_seconds": round(time.perf_counter() - t0, 3)}


def score_record(space: SearchSpace, arch: Arch, latency: LatencyModel, accuracy: dict[str, Any], index: int) -> dict[str, Any]:
    plan = space.plan(arch)
    costs = count_costs(plan)
    return {
        "index": index,
        "uid": arch.uid,
        "arch": arch.to_dict(),
        "describe": arch.describe(),
        **accuracy,
        "latency_ms": round(float(latency.predict(plan)), 6),
        "mmacs": round(costs.mmacs, 4),
        "size_kb": round(costs.size_kb, 3),
        "peak_act_kb": round(costs.peak_activation_bytes / 1024, 3),
        "bitops": costs.bitops,
    }


# ---- results --------------------------------------------------------------
@dataclass
class SearchResult:
    """What a search found: every evaluated record, the Pareto front, and where it was saved."""

    space: SearchSpace
    records: list[dict[str, Any]]
    device: str
    run_dir: Path | None = None
    evaluator: Any = field(default=None, repr=False)

    @property
    def front(self) -> list[dict[str, Any]]:
        return pareto_front(self.records)

    def best(self, latency_ms: float | None = None) -> dict[str, Any]:
        """The most accurate record whose predicted latency is within ``latency_ms`` (all if None)."""
        ok = [r for r in self.records if latency_ms is None or r["latency_ms"] <= latency_ms]
        if not ok:
            fastest = min(r["latency_ms"] for r in self.records)
            raise ConfigError(f"no evaluated arch meets the {latency_ms:g} ms budget (fastest: {fastest:.4g} ms); "
                              "raise the budget or evaluate more candidates")
        return max(ok, key=lambda r: (r["val_acc"], -r["latency_ms"]))

    def arch(self, record: dict[str, Any]) -> Arch:
        return Arch.from_dict(record["arch"])

    def default_budget(self) -> float:
        """The median predicted latency of the evaluated archs: a budget that binds."""
        return float(statistics.median(r["latency_ms"] for r in self.records))

    def plot(self, out: str | Path, budget_ms: float | None = None, chosen: dict[str, Any] | None = None) -> Path:
        from qnas.plots import plot_pareto

        return plot_pareto(self.records, self.front, out, budget_ms, chosen,
                           title=f"accuracy vs predicted latency on {self.device}")


def make_latency_model(device: str, kind: str = "analytic", table: str | None = None, hybrid: str | None = None,
                       space: SearchSpace | None = None) -> LatencyModel:
    """The predictor a search prices candidates with: ``analytic`` (the device profile's roofline),
    ``table`` (a per-layer table measured on the device), ``measured`` (time layers on this machine, cpu-ort only),
    ``hybrid`` (table or analytic plus a learned whole-model correction, ``hybrid`` = its JSON file)."""
    return create_latency_model(device, kind=kind, table=table, hybrid=hybrid, space=space)


def prepare_data(data: str, data_path: str | None, seed: int) -> Splits:
    return split(load_dataset(data, data_path), seed=seed)


def space_for(splits: Splits, space: SearchSpace | None) -> SearchSpace:
    ds = splits.train
    if space is None:
        return SearchSpace(SpaceConfig(in_channels=ds.channels, num_classes=ds.num_classes))
    c = space.config
    if (c.in_channels, c.num_classes) != (ds.channels, ds.num_classes):
        raise ConfigError(f"the search space expects {c.in_channels} channel(s) and {c.num_classes} classes, "
                          f"the data has {ds.channels} and {ds.num_classes}; set in_channels/num_classes in the space config")
    return space


def run_search(
    space: SearchSpace,
    splits: Splits,
    device: str = "cpu-ort",
    strategy: str = "random",
    n_candidates: int = 8,
    epochs: int = 3,
    batch_size: int = 64,
    seed: int = 0,
    run: RunDir | None = None,
    progress: bool = True,
    latency: LatencyModel | None = None,
) -> SearchResult:
    """Evaluate ``n_candidates`` archs proposed by ``strategy`` and record them.

    ``latency`` prices candidates (default: the analytic model of ``device``)."""
    if n_candidates < 1:
        raise ConfigError(f"n_candidates must be >= 1, got {n_candidates}")
    latency = latency or create_latency_model(device)
    strat = create_strategy(strategy, space, seed)
    evaluator = TrainingEvaluator(space, splits, epochs=epochs, batch_size=batch_size, seed=seed, progress=progress)
    records: list[dict[str, Any]] = []
    bar = tqdm(total=n_candidates, desc=f"search ({strategy})", disable=not progress, unit="arch")
    try:
        while len(records) < n_candidates:
            batch = strat.ask(min(4, n_candidates - len(records)))
            if not batch:
                break  # the space is exhausted
            new = []
            for arch in batch:
                rec = score_record(space, arch, latency, evaluator(arch), len(records))
                records.append(rec)
                new.append(rec)
                if run:
                    run.append_history(rec)
                bar.update(1)
                bar.set_postfix(acc=f"{rec['val_acc']:.3f}", ms=f"{rec['latency_ms']:.3g}")
            strat.tell(new)
    finally:
        bar.close()
    result = SearchResult(space, records, device, run.path if run else None, evaluator)
    if run:
        run.write_json("front.json", result.front)
    return result


def search(
    data: str = "digits",
    data_path: str | None = None,
    space: SearchSpace | None = None,
    device: str = "cpu-ort",
    strategy: str = "random",
    n_candidates: int = 8,
    epochs: int = 3,
    batch_size: int = 64,
    seed: int = 0,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    latency_kind: str = "analytic",
    latency_table: str | None = None,
    latency_hybrid: str | None = None,
) -> SearchResult:
    """Search ``space`` on a data set for the target ``device``.

    >>> result = qnas.search(n_candidates=4, epochs=1)           # doctest: +SKIP
    >>> result.best(latency_ms=0.5)["arch"]                      # doctest: +SKIP
    """
    latency = make_latency_model(device, latency_kind, latency_table, latency_hybrid)  # fail fast, before loading data
    splits = prepare_data(data, data_path, seed)
    space = space_for(splits, space)
    run = RunDir(out, overwrite=overwrite) if out is not None else None
    if run and latency_kind == "measured":
        latency.cache = run.file("latency_table.json")
    if run:
        run.write_json("config.json", {"data": data, "data_path": data_path, "device": device, "strategy": strategy,
                                       "n_candidates": n_candidates, "epochs": epochs, "batch_size": batch_size,
                                       "seed": seed, "latency_kind": latency_kind, "latency_table": latency_table,
                                       "latency_hybrid": latency_hybrid,
                                       "space": space.to_dict()})
    result = run_search(space, splits, device, strategy, n_candidates, epochs, batch_size, seed, run, progress,
                        latency)
    if run:
        result.plot(run.file("pareto.png"))
    return result
