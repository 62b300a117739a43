"""Predict, measure and evaluate latency for whole archs: what ``qnas latency predict|measure|eval`` run.

* :func:`predict_latency` -- one arch (a run directory, model, arch file or inline JSON) on a latency target;
* :func:`measure_latency_table` -- time every distinct layer of a space (or of sampled archs) here;
* :func:`evaluate_latency_models` -- time fresh archs here and score each predictor against them
  (Kendall tau, MAPE, share within 10 %), optionally fitting a hybrid correction first.

Progress messages go to ``log`` (e.g. ``print``) when given.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from qnas.errors import QnasError
from qnas.latency._compat import deprecated_device_property, target_or_device

if TYPE_CHECKING:
    from qnas.arch import Arch
    from qnas.costs import Costs
    from qnas.latency.table import LatencyTable
    from qnas.space import SearchSpace

Log = Callable[[str], None]


def _space(space: "SearchSpace | str | Path | None") -> "SearchSpace":
    from qnas.space import SearchSpace

    if isinstance(space, SearchSpace):
        return space
    return SearchSpace.from_yaml(space) if space else SearchSpace()


def sample_archs(space: "SearchSpace", n: int, seed: int, *, unique: bool = False) -> list["Arch"]:
    """``n`` archs sampled from ``space`` with ``numpy.random.default_rng(seed)``; ``unique``: no repeats."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if not unique:
        return [space.sample(rng) for _ in range(n)]
    archs: list[Arch] = []
    seen: set[Arch] = set()
    while len(archs) < n:
        arch = space.sample(rng)
        if arch not in seen:
            seen.add(arch)
            archs.append(arch)
    return archs


# ---- predict ---------------------------------------------------------------------------
@dataclass
class LatencyPrediction:
    """An arch's predicted latency on a latency ``target`` (for a table: the target its ``meta`` names),
    with its counted costs. ``approximated``: how many of its ``n_layers`` layers a table priced by a
    fallback rule / by a default instead of their own entry (``{"fallback": n, "default": m}``)."""

    arch: "Arch"
    target: str
    kind: str
    latency_ms: float
    costs: "Costs"
    breakdown: str | None = None  # the predictor's per-layer table, when asked for
    approximated: dict[str, int] = field(default_factory=dict)
    n_layers: int = 0

    def lines(self) -> list[str]:
        c = self.costs
        out = ([self.breakdown] if self.breakdown is not None else []) + [
            self.arch.describe(),
            f"predicted latency on {self.target} ({self.kind}): {self.latency_ms:.4g} ms   ({c.mmacs:.3g} M MACs, "
            f"{c.size_kb:.1f} KB, peak activations {c.peak_activation_bytes / 1024:.1f} KB)"]
        if self.approximated:
            how = [f"{self.approximated['fallback']} by a fallback rule (another entry's bits)"
                   if "fallback" in self.approximated else "",
                   f"{self.approximated['default']} by a table default" if "default" in self.approximated else ""]
            out.append(f"priced without their own table entry: {' and '.join(h for h in how if h)}, of "
                       f"{self.n_layers} layers" + ("" if self.breakdown is not None else " (--breakdown shows which)"))
        return out


    #: Deprecated name of :attr:`target`.
    device = deprecated_device_property()


def predict_latency(arch: Any, target: str | None = None, kind: str = "auto", table: str | None = None,
                    hybrid: str | None = None, space: "SearchSpace | str | Path | None" = None,
                    breakdown: bool = False, *, device: str | None = None) -> LatencyPrediction:
    """Predict the batch-1 latency of ``arch`` (anything :func:`qnas.rundir.resolve_arch` reads) on the
    latency ``target`` (default ``cpu-ort``) with the ``kind`` of latency model (``table``/``hybrid``: its
    files; ``auto``: as a search would, :func:`~qnas.latency.machine_cache.resolve_latency_kind`).
    ``device`` is the deprecated name of ``target``."""
    from qnas.costs import count_costs
    from qnas.latency.factory import create_latency_model
    from qnas.latency.report import approximation_counts, format_breakdown
    from qnas.latency.table import check_plan_coverage
    from qnas.rundir import resolve_arch

    target = target_or_device("predict_latency", target, device, default="cpu-ort")
    found = resolve_arch(arch, space)
    model = create_latency_model(target, kind=kind, table=table, hybrid=hybrid, space=found.space)
    if hasattr(model, "calibrate"):  # the measured model's per-network offset for this space (cached)
        model.calibrate(found.space)
    plan = found.space.plan(found.arch)
    check_plan_coverage(model, plan)  # every key the arch lacks, in one line, before pricing anything
    costs = model.breakdown(plan)
    text = None
    if breakdown:
        text = model.describe(plan) if hasattr(model, "describe") else format_breakdown(costs)
    return LatencyPrediction(found.arch, getattr(model, "target", None) or target, model.kind,
                             float(model.predict(plan)), count_costs(plan), text, approximation_counts(costs), len(costs))


# ---- measure ---------------------------------------------------------------------------
def measure_latency_table(out: str | Path, *, space: "SearchSpace | str | Path | None" = None, archs: int = 0,
                          seed: int = 0, target: str | None = None, threads: int = 1, warmup: int = 5,
                          repeats: int = 20, passes: int = 1, overwrite: bool = False, progress: bool = True,
                          log: Log | None = None, device: str | None = None) -> "LatencyTable":
    """Time every distinct layer of ``space`` (or only those of ``archs`` archs sampled with ``seed``) in
    onnxruntime on this machine and write the table to ``out`` (.json or .csv). Only the latency target
    ``cpu-ort`` (this machine, the default) can be measured here; ``passes`` sweeps keep each layer's fastest
    median. ``device`` is the deprecated name of ``target``."""
    from qnas.latency.layer_measure import measure_layers
    from qnas.latency.measured import check_measurable
    from qnas.latency.table import space_layer_keys

    target = target_or_device("measure_latency_table", target, device, default="cpu-ort")
    check_measurable(target)
    out = Path(out)
    if out.suffix.lower() not in (".json", ".csv"):
        raise QnasError(f"--out must end in .json or .csv, got {out.name}")
    if out.exists() and not overwrite:
        raise QnasError(f"{out} already exists; choose another --out or pass --force to overwrite it")
    sp = _space(space)
    layers = space_layer_keys(sp, sample_archs(sp, archs, seed) if archs else None)
    if log:
        log(f"measuring {len(layers)} distinct layers in onnxruntime ({threads} thread(s), "
            f"warm-up {warmup}, median of {repeats})")
    table = measure_layers(layers, threads=threads, warmup=warmup, repeats=repeats, progress=progress,
                           target=target, passes=passes)
    table.save(out, overwrite=overwrite)
    if log:
        log(f"wrote {out} ({len(table)} entries)")
    return table


# ---- evaluate --------------------------------------------------------------------------
@dataclass
class LatencyEvaluation:
    """Each predictor's fidelity (``qnas.latency.metrics.fidelity``) on ``n`` archs sampled with ``seed``."""

    n: int
    seed: int
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "seed": self.seed, "results": self.results}

    def lines(self) -> list[str]:
        out = [f"{'predictor':<26} {'Kendall tau':>11} {'MAPE':>8} {'within 10%':>11}   (on {self.n} archs)"]
        for name, f in self.results.items():
            out.append(f"{name:<26} {f['kendall_tau']:11.3f} {100 * f['mape']:7.1f}% {100 * f['within_10pct']:10.1f}%")
        return out

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        from qnas.quant.checkpoint import atomic_write

        text = json.dumps(self.to_dict(), indent=2)
        return atomic_write(path, lambda p: p.write_text(text), overwrite=overwrite)


def evaluate_latency_models(*, n: int = 30, seed: int = 1, target: str | None = None,
                            space: "SearchSpace | str | Path | None" = None, latency_table: str | None = None,
                            latency_hybrid: str | None = None, save_hybrid: str | Path | None = None,
                            n_fit: int = 60, passes: int = 3, overwrite: bool = False, progress: bool = True,
                            log: Log | None = None, device: str | None = None) -> LatencyEvaluation:
    """Export and time ``n`` distinct archs sampled with ``seed`` in onnxruntime here (1 thread, batch 1)
    and score the analytic model of the latency ``target`` (default and only measurable one: ``cpu-ort``),
    a table (``latency_table``) and a hybrid (``latency_hybrid``) on them. ``save_hybrid``: first fit a
    hybrid correction on ``n_fit`` further archs (on the table if given, else the analytic model), write it
    there and score it too. ``device`` is the deprecated name of ``target``."""
    import numpy as np

    from qnas.latency.analytic import AnalyticLatencyModel
    from qnas.latency.hybrid import HybridLatencyModel
    from qnas.latency.measured import check_measurable
    from qnas.latency.metrics import fidelity
    from qnas.latency.model_measure import measure_archs
    from qnas.latency.profile import load_profile
    from qnas.latency.table import TableLatencyModel

    target = target_or_device("evaluate_latency_models", target, device, default="cpu-ort")
    check_measurable(target)
    if n < 2:
        raise QnasError(f"--n must be at least 2 archs to rank, got {n}")
    if save_hybrid and n_fit < 10:
        raise QnasError("--save-hybrid needs --n-fit of at least 10 archs to fit the correction")
    if save_hybrid and Path(save_hybrid).exists() and not overwrite:
        raise QnasError(f"{save_hybrid} already exists; choose another path or pass --force")
    sp = _space(space)
    archs = sample_archs(sp, n + (n_fit if save_hybrid else 0), seed, unique=True)
    if log:
        log(f"measuring {len(archs)} exported models in onnxruntime (1 thread, batch 1) ...")
    measured = np.asarray(measure_archs(sp, archs, threads=1, progress=progress, passes=passes))
    fit_archs, fit_ms = archs[n:], measured[n:]
    eval_archs, eval_ms = archs[:n], measured[:n]
    plans = [sp.plan(x) for x in eval_archs]
    models: dict[str, Any] = {"analytic": AnalyticLatencyModel(load_profile(target))}
    if latency_table:
        models["table"] = TableLatencyModel.from_file(latency_table)
    base = models.get("table", models["analytic"])
    if latency_hybrid:
        models["hybrid"] = HybridLatencyModel.load(latency_hybrid, base, sp)
    if save_hybrid:
        fitted = HybridLatencyModel(base, sp).fit(fit_archs, fit_ms)
        fitted.save(save_hybrid)
        models[f"hybrid (fitted on {len(fit_archs)})"] = fitted
        if log:
            log(f"wrote {save_hybrid}")
    results = {name: fidelity([m.predict(p) for p in plans], eval_ms) for name, m in models.items()}
    return LatencyEvaluation(n, seed, results)
