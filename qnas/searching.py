"""Search: a strategy proposes archs (ask/tell), an accuracy source scores
them, the target's latency model prices them, and the run directory records
every evaluation as it happens, so a killed search resumes where it stopped."""
from __future__ import annotations

import math
import statistics
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from qnas.accuracy_sources import accuracy_source_names, create_accuracy_source
from qnas.arch import Arch
from qnas.costs import count_costs
from qnas.data import Splits, load_dataset, split
from qnas.errors import ConfigError, QnasError
from qnas.executors import executor_from_config
from qnas.latency import LatencyModel, create_latency_model
from qnas.options import SearchConfig, target_alias
from qnas.pareto import DEFAULT_OBJECTIVES, most_accurate, objective_front
from qnas.rundir import RunDir
from qnas.space import SearchSpace, SpaceConfig
from qnas.strategies import Budget, StrategyContext, create_strategy

__all__ = ["SearchConfig", "SearchResult", "keep_latency_table", "make_latency_model", "make_evaluator", "obtain_supernet", "prepare_data",
           "resume_search", "run_search", "score_record", "search", "search_from_config", "space_for",
           "strategy_options", "train_supernet_run"]


def __getattr__(name: str) -> Any:
    if name == "ACCURACY_SOURCES":  # the if-chain's list became the registry in qnas.accuracy_sources
        warnings.warn("qnas.searching.ACCURACY_SOURCES is deprecated; use "
                      "qnas.accuracy_sources.accuracy_source_names()", DeprecationWarning, stacklevel=2)
        return tuple(accuracy_source_names())
    raise AttributeError(f"module 'qnas.searching' has no attribute {name!r}")


def make_latency_model(target: str | None = None, kind: str = "auto", table: str | None = None,
                       hybrid: str | None = None, space: SearchSpace | None = None, *,
                       device: str | None = None) -> LatencyModel:
    """The predictor a search prices candidates with on the latency ``target`` (a device profile):
    ``analytic`` (the profile's roofline), ``table`` (a per-layer table measured on the target),
    ``measured`` (time layers on this machine, cpu-ort only), ``hybrid`` (table or analytic plus a learned
    whole-model correction, ``hybrid`` = its JSON file), or ``auto`` (the default: ``measured`` on ``cpu-ort``
    with this machine's cached table, else ``table``/``hybrid`` when their file is given, else ``analytic``;
    :func:`~qnas.latency.machine_cache.resolve_latency_kind`). ``device`` is the deprecated name of ``target``."""
    if device is not None:
        warnings.warn("make_latency_model(device=...) is deprecated; pass target=... (the latency target)",
                      DeprecationWarning, stacklevel=2)
        target = target or device
    from qnas.options import check_latency_target

    target = target or "cpu-ort"
    check_latency_target(target)
    return create_latency_model(target, kind=kind, table=table, hybrid=hybrid, space=space)


def keep_latency_table(latency: LatencyModel, run: RunDir) -> None:
    """A measured latency model keeps a copy of its table in the run (``latency_table.json``): the numbers
    the run's latencies came from, whatever later happens to the machine's cache."""
    if hasattr(latency, "keep_copy"):
        latency.keep_copy(run.file("latency_table.json"))


def score_record(space: SearchSpace, arch: Arch, latency: LatencyModel, accuracy: dict[str, Any], index: int) -> dict[str, Any]:
    """The history record of an evaluated arch: its accuracy fields, the budget fields
    (:meth:`Budget.record`, rounded) and its MACs and bit operations."""
    plan = space.plan(arch)
    energy = energy_model(latency)
    costs = Budget.record(plan, latency.predict(plan), energy(plan) if energy is not None else None)
    counted = count_costs(plan)
    return {
        "index": index,
        "uid": arch.uid,
        "arch": arch.to_dict(),
        "describe": arch.describe(),
        **accuracy,
        "latency_ms": round(costs["latency_ms"], 6),
        "mmacs": round(counted.mmacs, 4),
        "size_kb": round(costs["size_kb"], 3),
        "peak_act_kb": round(costs["peak_act_kb"], 3),
        "bitops": counted.bitops,
        **({"energy_mj": round(costs["energy_mj"], 6)} if "energy_mj" in costs else {}),
    }


def energy_model(latency: Any) -> Callable[[Any], float] | None:
    """``plan -> mJ`` where the latency model's target profile gives energy (an analytic model, or the
    analytic base of a hybrid one), else None."""
    for model in (latency, getattr(latency, "base", None)):
        if model is not None and getattr(model, "has_energy", False) and hasattr(model, "predict_energy"):
            return model.predict_energy
    return None


def check_energy_use(cfg: SearchConfig, latency: Any) -> None:
    """Refuse, before anything runs, an energy objective or budget on a target that predicts no energy."""
    objectives = cfg.strategy_options.get("objectives") or ()
    if ("energy" in objectives or cfg.energy_budget_mj is not None) and energy_model(latency) is None:
        raise ConfigError(f"latency target {getattr(latency, 'target', cfg.target)!r} predicts no energy, so "
                          "'energy' cannot be an objective or a budget; choose a target whose profile gives energy "
                          "(e.g. --target bitfusion; qnas latency show TARGET)")


# ---- results --------------------------------------------------------------
@target_alias
@dataclass
class SearchResult:
    """What a search found: every evaluated record, the Pareto front, and where it was saved.
    ``target`` is the latency target the records were priced on (formerly ``device``)."""

    space: SearchSpace
    records: list[dict[str, Any]]
    target: str | None = None
    run_dir: Path | None = None
    evaluator: Any = field(default=None, repr=False)
    budget: Budget = field(default_factory=Budget)
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    """what the front is non-dominated in (the strategy's ``objectives``)"""
    #: uid -> refinement entry (``refined_val_acc`` ...) of the archs :meth:`refine` trained further
    refined: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def front(self) -> list[dict[str, Any]]:
        return objective_front(self.records, self.objectives)

    def feasible(self) -> list[dict[str, Any]]:
        return [r for r in self.records if self.budget.ok(r)]

    def best(self, latency_ms: float | None = None) -> dict[str, Any]:
        """The most accurate record within ``latency_ms`` (default: the search's budget) and the other budgets."""
        limit = latency_ms if latency_ms is not None else self.budget.latency_ms
        budget = replace(self.budget, latency_ms=limit)
        refined = [{**r, "refined_val_acc": self.refined[r["uid"]]["refined_val_acc"]} for r in self.records
                   if r["uid"] in self.refined and budget.ok(r)]
        if refined:  # refined archs are chosen by their refined accuracy (see refine())
            return max(refined, key=lambda r: (r["refined_val_acc"], -r["latency_ms"]))
        best = most_accurate(self.records, budget)
        if best is None:
            fastest = min(r["latency_ms"] for r in self.records)
            raise ConfigError(f"no evaluated arch meets the budget ({limit} ms; fastest: {fastest:.4g} ms); "
                              "raise the budget or evaluate more candidates")
        return best

    def arch(self, record: dict[str, Any]) -> Arch:
        return Arch.from_dict(record["arch"])

    def default_budget(self) -> float:
        """The search's latency budget, else the median predicted latency of the evaluated archs (one that binds)."""
        if self.budget.latency_ms is not None:
            return self.budget.latency_ms
        return float(statistics.median(r["latency_ms"] for r in self.records))

    def refine(self, splits: Splits, top: int, epochs: int, *, run: RunDir | None = None, progress: bool = True,
               **options: Any) -> dict[str, dict[str, Any]]:
        """Give the ``top`` most accurate archs within the budget (:meth:`default_budget` for latency)
        ``epochs`` epochs of QAT from the weights the search's accuracy source gave them, and choose
        among them by that accuracy from now on (:mod:`qnas.refining`; ``options``: seed, batch_size,
        lr, threads, torch_device, amp)."""
        from qnas.refining import refine_candidates

        budget = replace(self.budget, latency_ms=self.default_budget())
        self.refined = refine_candidates(self.space, self.records, splits, budget, top=top, epochs=epochs,
                                         evaluator=self.evaluator, run=run, progress=progress, **options)
        return self.refined

    def plot(self, out: str | Path | None = None, budget_ms: float | None = None,
             chosen: dict[str, Any] | None = None) -> Path:
        """Pareto plot PNG (default: ``RUN/pareto.png``) with the budget line and the chosen arch."""
        from qnas.plots import plot_pareto

        if out is None:
            if self.run_dir is None:
                raise ConfigError("this search has no run directory; pass the PNG path to plot()")
            out = self.run_dir / "pareto.png"
        return plot_pareto(self.records, self.front, out, budget_ms if budget_ms is not None else self.budget.latency_ms,
                           chosen, title=f"accuracy vs predicted latency on {self.target}",
                           refined=list(self.refined.values()))

    def plot_progress(self, out: str | Path | None = None, batch: int = 4) -> Path:
        """Accuracy and latency per generation (batch of asks), PNG."""
        from qnas.plots import plot_progress

        out = out or (self.run_dir / "progress.png" if self.run_dir else None)
        if out is None:
            raise ConfigError("this search has no run directory; pass the PNG path to plot_progress()")
        return plot_progress(self.records, out, batch, self.budget.latency_ms)


# ---- the loop ---------------------------------------------------------------
def prepare_data(data: str, data_path: str | None, seed: int, stream: bool = False,
                 space: SearchSpace | None = None) -> Splits:
    """Train/val/test splits of a data set: loaded whole (default) or, with ``stream``, read lazily from
    disk in DataLoader workers with train-only augmentation (:mod:`qnas.streaming`; an image folder is
    delivered at ``space``'s largest resolution)."""
    if not stream:
        return split(load_dataset(data, data_path), seed=seed)
    from qnas.streaming import open_stream

    size = max(space.config.resolutions) if space is not None and data == "imagefolder" else None
    return split(open_stream(data, data_path, size=size), seed=seed)


def space_for(splits: Splits, space: SearchSpace | None) -> SearchSpace:
    ds = splits.train
    if space is None:
        return SearchSpace(SpaceConfig(in_channels=ds.channels, num_classes=ds.num_classes))
    c = space.config
    if (c.in_channels, c.num_classes) != (ds.channels, ds.num_classes):
        raise ConfigError(f"the search space expects {c.in_channels} channel(s) and {c.num_classes} classes, "
                          f"the data has {ds.channels} and {ds.num_classes}; set in_channels/num_classes in the space config")
    return space


def make_evaluator(cfg: SearchConfig, space: SearchSpace, splits: Splits, run: RunDir | None,
                   progress: bool) -> Callable[[Arch], dict[str, Any]]:
    """The accuracy source ``cfg.accuracy`` names (see :mod:`qnas.accuracy_sources`)."""
    return create_accuracy_source(cfg.accuracy, cfg, space, splits, run, progress)


def obtain_supernet(cfg: SearchConfig, space: SearchSpace, splits: Splits, run: RunDir | None, progress: bool):
    """The supernet at ``cfg.accuracy_path``, else one trained in (or resumed from) ``RUN/supernet``."""
    from qnas.supernet import load_supernet

    if cfg.accuracy_path:
        from qnas.quant.torch_device import resolve_torch_device

        supernet = load_supernet(cfg.accuracy_path).to(resolve_torch_device(cfg.torch_device))
        if supernet.space.to_dict() != space.to_dict():
            raise ConfigError(f"the supernet at {cfg.accuracy_path} was trained on another search space")
        return supernet
    ckpt_dir = run.file("supernet") if run else None
    resume = bool(ckpt_dir and (ckpt_dir / "supernet.pt").is_file())
    return _train_new_supernet(space, splits, cfg.supernet_epochs, cfg.batch_size, cfg.seed, ckpt_dir, resume,
                               progress, cfg.torch_device, cfg.amp, lr=cfg.supernet_lr)[0]


def _train_new_supernet(space: SearchSpace, splits: Splits, epochs: int | Sequence[int], batch_size: int, seed: int,
                        checkpoint_dir: Path | None, resume: bool, progress: bool, torch_device: str = "cpu",
                        amp: str = "off", init: Callable[[Any], None] | None = None,
                        lr: float | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """A supernet initialised from ``seed`` (the same weights in any process), then by ``init(supernet)``
    if given (e.g. pretrained weights), trained by progressive shrinking with ``epochs`` per phase (or
    one count per phase) at Adam learning rate ``lr`` (None: the default) on ``torch_device``
    (checkpointed into ``checkpoint_dir``); and its history. The supernet stays on ``torch_device``."""
    from qnas.supernet import Supernet, SupernetTrainConfig, progressive_phases, train_supernet

    supernet = Supernet.from_seed(space, seed)
    if init is not None:
        init(supernet)
    history = train_supernet(supernet, splits, SupernetTrainConfig(
        phases=progressive_phases(epochs), batch_size=batch_size, seed=seed, **({"lr": lr} if lr is not None else {}),
        checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None, resume=resume, progress=progress,
        torch_device=torch_device, amp=amp))
    return supernet, history


def train_supernet_run(out: str | Path, *, data: str = "digits", data_path: str | None = None,
                       space: SearchSpace | None = None, epochs: int | Sequence[int] = 2, batch_size: int = 64,
                       seed: int = 0, resume: bool = False, overwrite: bool = False, progress: bool = True,
                       torch_device: str = "cpu", amp: str = "off", stream: bool = False,
                       init: Callable[[Any], None] | None = None, lr: float | None = None) -> list[dict[str, Any]]:
    """Train a supernet over ``space`` (default: the embedded space sized for the data) into
    ``OUT/supernet.pt``, ``epochs`` per progressive-shrinking phase (or four counts: kernel, depth, width,
    bits) at Adam learning rate ``lr`` (None: 3e-3), checkpointed every epoch; ``resume``
    continues that file, ``overwrite`` starts over. ``torch_device``/``amp``: where and in which
    precision to train; under ``torchrun`` every rank trains its slice of each batch and rank 0 writes
    the file. ``init(supernet)`` runs on the freshly built supernet (a resumed checkpoint's weights
    replace what it set). Returns the per-epoch history."""
    from qnas.options import checked_phase_epochs

    epochs = checked_phase_epochs(epochs, "epochs", 1)
    check_supernet_out(out, resume, overwrite)
    splits = prepare_data(data, data_path, seed, stream, space)
    space = space_for(splits, space)
    return _train_new_supernet(space, splits, epochs, batch_size, seed, Path(out), resume, progress, torch_device,
                               amp, init, lr)[1]


def check_supernet_out(out: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse (one line, before any work) an ``out`` that is a file, a ``resume`` with nothing to
    resume, and training over an existing ``OUT/supernet.pt`` unless resuming or told to."""
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"{out} is a file; --out names the directory supernet.pt goes into")
    if resume and not (Path(out) / "supernet.pt").is_file():
        raise ConfigError(f"nothing to resume: {Path(out) / 'supernet.pt'} does not exist; drop --resume to start one")
    if (Path(out) / "supernet.pt").exists() and not (resume or overwrite):
        raise ConfigError(f"{Path(out) / 'supernet.pt'} exists; pass --resume to continue it or --force to start over")


def strategy_options(cfg: SearchConfig, space: SearchSpace, evaluator: Callable[[Arch], dict[str, Any]],
                     latency: LatencyModel, run: RunDir | None) -> dict[str, Any]:
    """``cfg.strategy_options`` with what strategies get from the run: OFA's accuracy predictor
    (loaded from ``predictor``, or fitted on ``predictor_samples`` archs scored by the accuracy
    source and kept in ``RUN/accuracy_predictor.json``) and latency model."""
    opts = dict(cfg.strategy_options)
    if cfg.strategy == "differentiable":  # it trains its own supernet: on the search's torch device
        opts.setdefault("torch_device", cfg.torch_device)
    if cfg.strategy != "ofa" or "accuracy" in opts:
        return opts
    from qnas.predictors import AccuracyPredictor

    path = opts.pop("predictor", None)
    n_fit = int(opts.pop("predictor_samples", 64))
    saved = run.file("accuracy_predictor.json") if run else None
    if path:
        predictor = AccuracyPredictor.load(path, space)
    elif saved is not None and saved.is_file():
        predictor = AccuracyPredictor.load(saved, space)
    else:
        import numpy as np

        rng = np.random.default_rng(cfg.seed + 1)
        archs = list(dict.fromkeys(space.sample(rng) for _ in range(n_fit)))
        accs = [evaluator(a)["val_acc"] for a in tqdm(archs, desc="fit accuracy predictor", leave=False)]
        predictor = AccuracyPredictor(space, seed=cfg.seed).fit(archs, accs)
        if saved is not None:
            predictor.save(saved)
    opts["accuracy"] = predictor
    opts.setdefault("latency", latency.vectorized(space) if hasattr(latency, "vectorized") else latency)
    return opts


def _check_record(h: Any, space: SearchSpace, run: RunDir) -> None:
    """Refuse (one line) a history record a resumed search must not reuse: one whose arch is not valid
    in the space or is not the arch its ``uid`` names, or whose scores are not finite numbers."""

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{run.file('history.jsonl')}: record {h.get('index') if isinstance(h, dict) else h!r} "
                           f"{why}; delete that line to evaluate it again")

    if not isinstance(h, dict) or not {"index", "uid", "arch", "val_acc", "latency_ms"} <= set(h):
        raise bad("lacks index, uid, arch, val_acc or latency_ms")
    try:
        arch = space.validate(Arch.from_dict(h["arch"]))
    except QnasError as e:
        raise bad(f"holds an arch this search space cannot have ({e})") from None
    if arch.uid != h["uid"]:
        raise bad(f"holds an arch whose uid is {arch.uid}, not {h['uid']} (edited?)")
    for key in ("val_acc", "latency_ms"):
        v = h[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(f"has {key} {v!r}, not a finite number")


def run_search(
    cfg: SearchConfig,
    space: SearchSpace,
    splits: Splits,
    run: RunDir | None = None,
    progress: bool = True,
    latency: LatencyModel | None = None,
    evaluator: Callable[[Arch], dict[str, Any]] | None = None,
    note: str | None = None,
) -> SearchResult:
    """Ask the strategy for ``cfg.n_candidates`` archs in batches of ``cfg.batch``, evaluate them
    (reusing the run's history on resume), price them, and tell the strategy. ``note`` (a line for
    stderr) is printed once everything is checked and the search loop starts."""
    cfg.validate()
    latency = latency or make_latency_model(cfg.target, cfg.latency_kind, cfg.latency_table, cfg.latency_hybrid, space)
    from qnas.latency.table import check_space_coverage

    # a table that cannot price every layer of the space is refused now, listing what it lacks, not at the
    # first arch that needs a missing key (after a supernet's training); what its defaults/fallbacks price is said
    log = (lambda m: print(m, file=sys.stderr)) if progress else None
    check_space_coverage(latency, space, log=log)
    if hasattr(latency, "prepare"):  # a measured table times the space's layers once per machine, up front,
        latency.prepare(space, log=log)  # and a few whole models for its per-network offset
        latency.calibrate(space, log=log)
    evaluator = evaluator or make_evaluator(cfg, space, splits, run, progress)
    context = StrategyContext(splits=splits, latency=latency, accuracy=evaluator, progress=progress)
    strat = create_strategy(cfg.strategy, space, seed=cfg.seed, budget=cfg.budget, context=context,
                            **strategy_options(cfg, space, evaluator, latency, run))
    history = run.read_history() if run else []
    for h in history:
        _check_record(h, space, run)
    done = {(h["index"], h["uid"]): h for h in history}
    executor = executor_from_config(cfg)
    records: list[dict[str, Any]] = []
    if note:  # after every input was checked: a refused input prints its one line alone
        print(note, file=sys.stderr)
    bar = tqdm(total=cfg.n_candidates, desc=f"search ({cfg.strategy})", disable=not progress, unit="arch")
    try:
        while len(records) < cfg.n_candidates:
            batch = strat.ask(min(cfg.batch, cfg.n_candidates - len(records)))
            if not batch:
                break  # the strategy (or the space) is exhausted
            start = len(records)
            scored = {i: done[(start + i, a.uid)] for i, a in enumerate(batch) if (start + i, a.uid) in done}
            bar.update(len(scored))
            todo = [i for i in range(len(batch)) if i not in scored]
            # each evaluation is recorded as it finishes: a kill loses only the ones still running
            for j, accuracy in executor.imap(evaluator, [batch[i] for i in todo]):
                i = todo[j]
                rec = scored[i] = score_record(space, batch[i], latency, accuracy, start + i)
                if run:
                    run.append_history(rec)
                bar.update(1)
                bar.set_postfix(acc=f"{rec['val_acc']:.3f}", ms=f"{rec['latency_ms']:.3g}")
            new = [scored[i] for i in range(len(batch))]
            records.extend(new)
            strat.tell(batch, new)
    finally:
        bar.close()
        executor.close()
    result = SearchResult(space, records, getattr(latency, "target", None) or cfg.target, run.path if run else None,
                          evaluator, cfg.budget, tuple(cfg.strategy_options.get("objectives") or DEFAULT_OBJECTIVES))
    if cfg.refine_top and records:
        result.refine(splits, cfg.refine_top, cfg.refine_epochs, run=run, progress=progress, seed=cfg.seed,
                      batch_size=cfg.batch_size, threads=cfg.threads, torch_device=cfg.torch_device, amp=cfg.amp)
    if run:
        run.write_json("front.json", result.front)
        result.plot()
        result.plot_progress(batch=cfg.batch)
    return result


def search(
    data: str = "digits",
    data_path: str | None = None,
    space: SearchSpace | None = None,
    target: str | None = None,
    strategy: str = "random",
    n_candidates: int = 8,
    epochs: int = 3,
    batch_size: int = 64,
    seed: int = 0,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    latency_kind: str = "auto",
    latency_table: str | None = None,
    latency_hybrid: str | None = None,
    **options: Any,
) -> SearchResult:
    """Search ``space`` on a data set for the latency ``target`` (a device profile, default ``cpu-ort``).

    Further keyword options are :class:`SearchConfig` fields (``latency_budget_ms``, ``torch_device="cuda"``,
    ``executor="ray"``, ``strategy_options={...}``, ``batch`` ...); ``device=`` is the deprecated name of
    ``target``.

    >>> result = qnas.search(strategy="nsga2", n_candidates=16, epochs=1)   # doctest: +SKIP
    >>> result.best(latency_ms=0.5)["arch"]                                  # doctest: +SKIP
    """
    if "device" in options:
        warnings.warn("qnas.search(device=...) is deprecated; pass target=... (the latency target; the torch "
                      "device is torch_device=...)", DeprecationWarning, stacklevel=2)
        if target is not None:
            raise ConfigError("give qnas.search either target or its deprecated name device, not both")
        target = options.pop("device")
    cfg = SearchConfig(data=data, data_path=data_path, target=target or "cpu-ort", strategy=strategy,
                       n_candidates=n_candidates,
                       epochs=epochs, batch_size=batch_size, seed=seed, latency_kind=latency_kind,
                       latency_table=latency_table, latency_hybrid=latency_hybrid, **options)
    return search_from_config(cfg, space, out, overwrite=overwrite, progress=progress)


def search_from_config(cfg: SearchConfig, space: SearchSpace | None = None, out: str | Path | None = None, *,
                       overwrite: bool = False, progress: bool = True) -> SearchResult:
    """Run the search ``cfg`` describes (what :func:`search` does from keywords), into run directory ``out``
    if given; ``space`` defaults to the embedded space sized for the data."""
    return _run(cfg.validate(), space, out, overwrite=overwrite, resume=False, progress=progress)


def resume_search(run_dir: str | Path, progress: bool = True) -> SearchResult:
    """Continue a search that was killed: same config, finished evaluations are not repeated."""
    from qnas.jsonfile import read_json

    run_dir = Path(run_dir)
    d = read_json(run_dir / "config.json", "run config", "pass the directory of a qnas search run to resume")
    if not isinstance(d, dict):
        raise ConfigError(f"{run_dir / 'config.json'} is not a JSON object; pass the directory of a qnas search run")
    cfg = SearchConfig.from_dict(d)
    return _run(cfg, SearchSpace.from_dict(cfg.space) if cfg.space else None, run_dir, overwrite=False,
                resume=True, progress=progress)


def record_low_bit_policy(cfg: SearchConfig, latency: Any, space: SearchSpace) -> str | None:
    """Put how the latency target prices sub-8-bit widths into ``cfg`` and return it as one line to print
    once the run is under way; refuse a space offering a width the target excludes, before anything runs."""
    profile = getattr(latency, "profile", None) or getattr(getattr(latency, "base", None), "profile", None)
    if profile is None or not hasattr(profile, "low_bits_summary"):
        return None
    c = space.config
    excluded = profile.excluded_widths(tuple(c.w_bits) + tuple(c.stem_head_w_bits),
                                       tuple(c.a_bits) + tuple(c.stem_head_a_bits))
    if excluded:
        what = "; ".join(f"{op}: {', '.join(keys)}" for op, keys in excluded.items())
        raise ConfigError(f"latency target {profile.name} excludes widths the space offers ({what}); "
                          f"remove them from the space's w_bits/a_bits (qnas latency show {profile.name})")
    cfg.latency_low_bits = policy = profile.low_bits_summary()["policy"]
    return f"sub-8-bit widths on {profile.name}: {_policy_text(policy)} (qnas latency show {profile.name})"


def _policy_text(policy: dict[str, dict[str, str]]) -> str:
    """``w2 upcast, w4 native on pwconv, fc (upcast elsewhere), a4 upcast``"""
    parts = []
    for key in ("w2", "w4", "a4"):
        modes: dict[str, list[str]] = {}
        for op, keys in policy.items():
            if key in keys:
                modes.setdefault(keys[key], []).append(op)
        if len(modes) == 1:
            parts.append(f"{key} {next(iter(modes))}")
        elif modes:
            common = max(modes, key=lambda m: len(modes[m]))
            rest = ", ".join(f"{m} on {', '.join(ops)}" for m, ops in modes.items() if m != common)
            parts.append(f"{key} {rest} ({common} elsewhere)")
    return ", ".join(parts)


def _run(cfg: SearchConfig, space: SearchSpace | None, out: str | Path | None, overwrite: bool, resume: bool,
         progress: bool) -> SearchResult:
    from qnas.quant.torch_device import resolve_torch_device, validate_amp

    # fail fast on a device this machine lacks (or an amp mode it cannot run), before any file is written
    validate_amp(cfg.amp, resolve_torch_device(cfg.torch_device))
    latency = make_latency_model(cfg.target, cfg.latency_kind, cfg.latency_table, cfg.latency_hybrid, space)
    if cfg.strategy != "ofa":  # fail fast on a bad strategy, before loading data (OFA needs its predictor first)
        create_strategy(cfg.strategy, space or SearchSpace(), seed=cfg.seed, budget=cfg.budget,
                        **cfg.strategy_options)
    splits = prepare_data(cfg.data, cfg.data_path, cfg.seed, cfg.stream, space)
    space = space_for(splits, space)
    cfg.space = space.to_dict()
    check_energy_use(cfg, latency)
    policy = record_low_bit_policy(cfg, latency, space) if not resume else None
    run = RunDir(out, overwrite=overwrite, resume=resume) if out is not None else None
    note = policy if progress else None
    if run and resume:  # a damaged history is refused before the run is locked (no lock file left behind)
        for h in run.read_history():
            _check_record(h, space, run)
    if run is None:
        return run_search(cfg, space, splits, None, progress, latency, note=note)
    with run.locked(), run.removed_on_early_failure():
        if not resume:
            run.write_json("config.json", cfg.to_dict())
        keep_latency_table(latency, run)
        return run_search(cfg, space, splits, run, progress, latency, note=note)
