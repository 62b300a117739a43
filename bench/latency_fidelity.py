#!/usr/bin/env python
"""How well does each latency predictor match onnxruntime on this machine?

DESIGN.md §3 (nn-Meter's way of reporting): sample distinct archs from the
default search space, measure every one as a whole exported model in
onnxruntime (CPU, ``--threads`` intra-op threads, batch 1), split them into a
FIT set and a disjoint EVAL set (>= 100 archs), fit what needs fitting on the
FIT set only, and report on the EVAL set, for every predictor:

* analytic roofline (``cpu-ort`` profile), as is and scale-fitted;
* lookup table: sum of per-layer entries measured here
  (:mod:`qnas.latency.layer_measure`), as is and scale-fitted;
* hybrid: table (or analytic) + learned correction (:mod:`qnas.latency.hybrid`);
* proxies FLOPs (= MACs) and BitOps, mapped to ms by least squares on FIT;

Kendall τ, MAPE and the share of predictions within ±10%. A few EVAL archs
are measured a second time (``--noise-check``) to show the measurement's own
noise, a floor no predictor can beat. On a shared machine, interference comes
in bursts of seconds: every model is exported once, then timed in
``--passes`` passes over the whole chunk of models, and keeps its smallest
median. Results: a printed table, a JSON file
and a predicted-vs-measured scatter PNG next to it.

    python bench/latency_fidelity.py                          # 150 fit + 120 eval (~15-25 min on 2 cores)
    python bench/latency_fidelity.py --n-fit 20 --n-eval 15   # a quick trial
    python bench/latency_fidelity.py --space ofa-mbv3 --resolution 224 --n-fit 15 --n-eval 15 \
        --passes 2 --table-passes 2 --noise-check 8           # 224-px ImageNet-sized archs (~15 min)

Measurements are cached (``--cache``) and reused when CPU, onnxruntime
version and thread count match; the per-layer table is cached as well
(``--table-cache``), so a re-run only measures what is new.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PROFILE = "cpu-ort"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n-fit", type=int, default=150, help="archs the hybrid and the proxy scales are fitted on")
    p.add_argument("--n-eval", type=int, default=120, help="held-out archs every predictor is judged on")
    p.add_argument("--seed", type=int, default=0, help="seed of the arch sample (and the model weights)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--warmup", type=int, default=10, help="warm-up runs per timing round")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per round (median)")
    p.add_argument("--rounds", type=int, default=1, help="back-to-back timing rounds per arch and pass")
    p.add_argument("--table-passes", type=int, default=3,
                   help="sweeps over the per-layer table; each layer keeps its fastest median")
    p.add_argument("--passes", type=int, default=8,
                   help="timing passes over all exported models; each arch keeps its smallest median")
    p.add_argument("--chunk", type=int, default=90,
                   help="archs exported and timed together (passes spread over a chunk; cache saved per chunk)")
    p.add_argument("--noise-check", type=int, default=20,
                   help="re-measure this many EVAL archs to report the measurement noise (0: skip)")
    p.add_argument("--out", type=Path, default=RESULTS / "latency_fidelity.json", help="results JSON")
    p.add_argument("--png", type=Path, default=None, help="scatter plot (default: --out with .png)")
    p.add_argument("--cache", type=Path, default=RESULTS / "latency_fidelity_measurements.json",
                   help="whole-model measurement cache (JSON), read and updated")
    p.add_argument("--table", type=Path, default=None,
                   help="an existing per-layer latency table (JSON/CSV) to use; missing entries are measured here")
    p.add_argument("--table-cache", type=Path, default=RESULTS / "latency_fidelity_table.json",
                   help="where the per-layer table used is saved (and read from on a re-run)")
    p.add_argument("--no-table", action="store_true", help="skip the per-layer table (analytic base only)")
    p.add_argument("--hybrid-out", type=Path, default=RESULTS / "latency_fidelity_hybrid.json",
                   help="the fitted hybrid model (JSON)")
    p.add_argument("--space", default=None,
                   help="search space: a preset name (ofa-mbv3 ...) or YAML file (default: the digits space); "
                        "result and cache files then default to names carrying it")
    p.add_argument("--resolution", type=int, default=None, help="fix every arch to this input resolution")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    if a.space or a.resolution:  # keep the digits-space results and caches apart from this space's
        tag = "_" + "_".join(x for x in (Path(a.space).stem if a.space else "digits",
                                         f"r{a.resolution}" if a.resolution else "") if x)
        for name in ("out", "cache", "table_cache", "hybrid_out"):
            path = getattr(a, name)
            if path == p.get_default(name):
                setattr(a, name, path.with_name(path.stem + tag + path.suffix))
    if a.n_fit < 5 or a.n_eval < 2:
        p.error("--n-fit must be >= 5 and --n-eval >= 2")
    if min(a.threads, a.repeats, a.rounds, a.passes, a.chunk) < 1 or a.warmup < 0 or a.noise_check < 0:
        p.error("--threads, --repeats, --rounds, --passes, --chunk must be >= 1; --warmup, --noise-check >= 0")
    a.png = a.png or a.out.with_suffix(".png")
    return a


class Timer:
    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        print(f"[{name}] ...", flush=True)
        t = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t
            self.phases[name] = self.phases.get(name, 0.0) + dt
            print(f"[{name}] {dt:.1f} s", flush=True)


def sample_distinct(space: Any, n: int, seed: int) -> list:
    """``n`` distinct archs, in a reproducible order."""
    rng = np.random.default_rng(seed)
    seen: set = set()
    out: list = []
    for _ in range(100 * n + 1000):
        a = space.sample(rng)
        if a not in seen:
            seen.add(a)
            out.append(a)
            if len(out) == n:
                return out
    raise SystemExit(f"could not draw {n} distinct archs from the space; lower --n-fit/--n-eval")


def load_layer_table(args: argparse.Namespace, space: Any, archs: list) -> Any:
    """A TableLatencyModel covering every layer of ``archs``, or None if the
    table modules are not available (or ``--no-table``)."""
    if args.no_table:
        return None
    try:
        from qnas.latency.layer_measure import cpu_name, measure_layers
        from qnas.latency.table import LatencyTable, TableLatencyModel, load_table, space_layer_keys
    except ImportError as e:
        print(f"  per-layer table unavailable ({e}); reporting analytic-based predictors only")
        return None
    import onnxruntime as ort

    layers = space_layer_keys(space, archs)
    table = None
    if args.table is not None:
        table = load_table(args.table)
        print(f"  using {table!r}")
    elif args.table_cache.exists():
        cached = load_table(args.table_cache)
        runtime = str(cached.meta.get("runtime") or "")
        if (cached.meta.get("device") == cpu_name() and cached.meta.get("threads") == args.threads
                and ort.__version__ in runtime):
            table = cached
            print(f"  reusing {cached!r}")
        else:
            print(f"  ignoring {args.table_cache}: measured on {cached.meta.get('device')!r} / {runtime!r} / "
                  f"threads={cached.meta.get('threads')}")
    missing = layers if table is None else table.missing(layers)
    print(f"  {len(layers)} distinct layer keys, {len(missing)} to measure")
    if missing:
        measured = measure_layers(missing, threads=args.threads, progress=not args.no_progress,
                                  notes="bench/latency_fidelity.py", passes=args.table_passes)
        table = measured if table is None else table.merge(measured)
        table.save(args.table_cache, overwrite=True)
        print(f"  saved {len(table)} entries to {args.table_cache}")
    assert isinstance(table, LatencyTable)
    return TableLatencyModel(table)


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def print_table(results: dict[str, dict[str, Any]], n_eval: int) -> None:
    print(f"\nlatency fidelity on {n_eval} held-out archs (onnxruntime, measured here)")
    print(f"{'predictor':<32} {'Kendall tau':>11} {'MAPE':>8} {'within 10%':>11} {'n':>5}")
    for name, r in results.items():
        tau = r["kendall_tau"]
        tau_s = f"{tau:11.3f}" if tau is not None and math.isfinite(tau) else f"{'-':>11}"
        print(f"{name:<32} {tau_s} {100 * r['mape']:7.1f}% {100 * r['within_10pct']:10.1f}% {r['n']:>5}")


def plot_scatter(meas: np.ndarray, preds: dict[str, np.ndarray], results: dict[str, dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    from qnas.quant.checkpoint import atomic_write

    names = list(preds)
    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.5 * nrows), dpi=110, squeeze=False)
    lo = float(meas.min()) / 1.5
    hi = float(meas.max()) * 1.5
    for ax, name in zip(axes.flat, names):
        p = np.clip(preds[name], lo / 10, None)
        xs = np.geomspace(lo, hi, 50)
        ax.fill_between(xs, 0.9 * xs, 1.1 * xs, color="#2ca02c", alpha=0.18, lw=0, label="±10%")
        ax.plot(xs, xs, color="k", lw=0.8, label="y = x")
        ax.scatter(meas, p, s=9, c="#1f77b4", alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(min(lo, float(p.min()) / 1.2), max(hi, float(p.max()) * 1.2))
        for axis in (ax.xaxis, ax.yaxis):  # readable ticks at 1-2-5 steps, no crowded minor labels
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_formatter(NullFormatter())
        r = results[name]
        tau = r["kendall_tau"]
        ax.set_title(f"{name}\nτ={tau:.3f}  MAPE={100 * r['mape']:.1f}%  ±10%: {100 * r['within_10pct']:.0f}%",
                     fontsize=8)
        ax.set_xlabel("measured (ms)", fontsize=8)
        ax.set_ylabel("predicted (ms)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"predicted vs measured latency, {len(meas)} held-out archs (onnxruntime CPU, batch 1)", fontsize=9)
    fig.tight_layout()
    try:
        return atomic_write(out, lambda p: fig.savefig(p, format="png"))
    finally:
        plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from qnas.costs import count_costs
    from qnas.latency import create_latency_model
    from qnas.latency.hybrid import HybridLatencyModel
    from qnas.latency.metrics import fidelity, fit_scale
    from qnas.latency.model_measure import MeasurementSet, measure_archs, measure_with_cache, measurement_meta
    from qnas.quant.checkpoint import atomic_write
    from qnas.space import SearchSpace

    timer = Timer()
    t0 = time.perf_counter()
    space = SearchSpace.from_yaml(args.space) if args.space else SearchSpace()
    if args.resolution:
        from dataclasses import replace

        space = SearchSpace(replace(space.config, resolutions=(args.resolution,)))
    progress = not args.no_progress
    if args.n_eval < 100:
        print(f"note: --n-eval {args.n_eval} < 100; DESIGN.md §3 asks for >= 100 held-out archs in a real report")

    with timer.phase("sample archs"):
        archs = sample_distinct(space, args.n_fit + args.n_eval, args.seed)
        fit_a, eval_a = archs[:args.n_fit], archs[args.n_fit:]
        plans = {a: space.plan(a) for a in archs}
        assert not set(fit_a) & set(eval_a)

    with timer.phase("measure whole models (ort)"):
        cache = MeasurementSet.load_or_new(args.cache)
        meta = measurement_meta(args.threads, args.warmup, args.repeats, args.rounds, args.passes)
        n_cached = sum(cache.get(a, meta) is not None for a in archs)
        print(f"  {len(archs)} archs, {n_cached} cached in {args.cache}, threads={args.threads}, "
              f"cpu={meta['cpu']!r}, onnxruntime {meta['ort_version']}")
        # measure in a shuffled order so drift in machine load does not line up with the fit/eval split
        order = np.random.default_rng(args.seed + 1).permutation(len(archs))
        t = time.perf_counter()
        got = measure_with_cache(space, [archs[i] for i in order], cache, args.threads, args.warmup, args.repeats,
                                 cache_path=args.cache, chunk=args.chunk, seed=args.seed, progress=progress,
                                 rounds=args.rounds, passes=args.passes)
        new = len(archs) - n_cached
        if new:
            print(f"  {(time.perf_counter() - t) / new:.2f} s per newly measured arch")
        measured = np.empty(len(archs))
        measured[order] = got
        y_fit, y_eval = measured[:args.n_fit], measured[args.n_fit:]
        print(f"  measured {measured.min():.3f} .. {measured.max():.3f} ms (median {np.median(measured):.3f})")

    with timer.phase("per-layer table"):
        table_model = load_layer_table(args, space, archs)

    analytic = create_latency_model(PROFILE)
    preds: dict[str, np.ndarray] = {}
    results: dict[str, dict[str, Any]] = {}
    extra: dict[str, dict[str, Any]] = {}
    hybrids: dict[str, HybridLatencyModel] = {}

    with timer.phase("fit hybrid"):
        bases = [("analytic", analytic)] + ([("table", table_model)] if table_model is not None else [])
        for tag, base in bases:
            h = HybridLatencyModel(base, space).fit([plans[a] for a in fit_a], y_fit)
            hybrids[tag] = h
            print(f"  hybrid({tag}): alpha={h.alpha:.3g}, fit MAPE {100 * h.fit_info['mape_fit']:.1f}% "
                  f"(base alone {100 * h.fit_info['mape_fit_base']:.1f}%)")
        main_tag = "table" if "table" in hybrids else "analytic"
        hybrids[main_tag].save(args.hybrid_out)

    with timer.phase("predict + score"):
        def add(name: str, fit_vals: np.ndarray | None, eval_vals: np.ndarray, kind: str, scale: bool) -> None:
            info: dict[str, Any] = {"kind": kind}
            if scale:
                s = fit_scale(fit_vals, y_fit)
                eval_vals = s(eval_vals)
                info["scale"] = s.to_dict()
            preds[name] = np.asarray(eval_vals, dtype=np.float64)
            results[name] = {**fidelity(preds[name], y_eval), **info}

        def on(model: Any, subset: list) -> np.ndarray:
            return model.predict_many(plans[a] for a in subset)

        a_fit, a_eval = on(analytic, fit_a), on(analytic, eval_a)
        add(f"analytic ({PROFILE})", None, a_eval, "predictor", False)
        add(f"analytic ({PROFILE}) + scale", a_fit, a_eval, "predictor, scale-fitted", True)
        if table_model is not None:
            t_fit, t_eval = on(table_model, fit_a), on(table_model, eval_a)
            add("table (sum of layers)", None, t_eval, "predictor", False)
            # what `--latency auto` uses on cpu-ort: the table plus one offset per network, the median
            # (whole - sum) of CALIBRATION_ARCHS whole models (qnas.latency.measured)
            from qnas.latency.measured import CALIBRATION_ARCHS

            k = min(CALIBRATION_ARCHS, len(fit_a))
            offset = float(np.median(y_fit[:k] - t_fit[:k]))
            add(f"table + offset (the default)", None, t_eval + offset, "predictor, offset-calibrated",
                False)
            results[f"table + offset (the default)"]["offset_ms"] = offset
            add("table + scale", t_fit, t_eval, "predictor, scale-fitted", True)
            add("hybrid (table + correction)", None, hybrids["table"].predict_many(plans[a] for a in eval_a),
                "predictor, fitted", False)
        add("hybrid (analytic + correction)", None, hybrids["analytic"].predict_many(plans[a] for a in eval_a),
            "predictor, fitted", False)
        costs = {a: count_costs(plans[a]) for a in archs}
        for name, attr in (("FLOPs (MACs) + scale", "macs"), ("BitOps + scale", "bitops")):
            add(name, np.array([getattr(costs[a], attr) for a in fit_a], dtype=np.float64),
                np.array([getattr(costs[a], attr) for a in eval_a], dtype=np.float64), "proxy, scale-fitted", True)

    noise = None
    if args.noise_check:
        with timer.phase("noise check (re-measure)"):
            k = min(args.noise_check, len(eval_a))
            again = np.array(measure_archs(space, eval_a[:k], args.threads, args.warmup, args.repeats,
                                           seed=args.seed, progress=progress, rounds=args.rounds,
                                           passes=args.passes))
            noise = fidelity(again, y_eval[:k]) if k >= 2 else None
            if noise is not None:
                extra["re-measurement (noise floor)"] = {**noise, "kind": "measurement vs itself"}

    print_table({**results, **extra}, len(eval_a))

    with timer.phase("write results"):
        plot_scatter(y_eval, preds, results, args.png)
        timings = dict(timer.phases)
        timings["total"] = time.perf_counter() - t0
        doc = {
            "format": "qnas-latency-fidelity", "version": 1,
            "description": "Kendall tau, MAPE and share within +-10% of each predictor on EVAL archs "
                           "not used for fitting (DESIGN.md section 3); mape/within_10pct are fractions",
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "measurement": meta,
            "space": space.to_dict(),
            "n_fit": len(fit_a), "n_eval": len(eval_a),
            "results": results,
            "noise": noise,
            "hybrid": {tag: {**h.fit_info, "base": h.base.kind} for tag, h in hybrids.items()},
            "hybrid_file": str(args.hybrid_out),
            "timings_s": timings,
            "eval": [{"uid": a.uid, "arch": a.to_dict(), "measured_ms": float(y_eval[i]),
                      "pred_ms": {n: float(v[i]) for n, v in preds.items()}} for i, a in enumerate(eval_a)],
            "fit": [{"uid": a.uid, "arch": a.to_dict(), "measured_ms": float(y_fit[i])} for i, a in enumerate(fit_a)],
        }
        text = json.dumps(_clean(doc), indent=1, allow_nan=False)
        atomic_write(args.out, lambda p: Path(p).write_text(text))
    print(f"\nwrote {args.out}, {args.png}, {args.hybrid_out}")
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timer.phases.items())
          + f"; total {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
