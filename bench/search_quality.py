#!/usr/bin/env python
"""How good are the search strategies? Hypervolume at equal numbers of evaluations.

Every strategy (random, nsga2, nsga3, ofa) is driven by the same small loop
-- ``ask(batch) -> evaluate with the oracle -> tell`` -- not by the training
loop, and is measured by the hypervolume (pymoo ``HV``) of everything it has
evaluated, in (maximise accuracy, minimise latency), after 200, 500, 1000 and
2000 evaluations, over several seeds (mean +- std).

The oracle. Training every candidate is far too slow here, so the accuracy
of an arch is an :class:`qnas.predictors.AccuracyPredictor` (masked one-hot
MLP) fitted on ``--n-fit`` random archs labelled by
:class:`qnas.predictors.SyntheticAccuracy` -- a documented, plausible
function of MACs, resolution, kernels and per-layer bit widths (low bits and
narrow widths cost accuracy) plus small per-arch noise. It is synthetic: the
figures rank strategies, they say nothing about real accuracies. The
predictor's Kendall tau against the synthetic function on held-out archs is
reported. Latency is the ``--device`` profile's analytic model on
``space.plan(arch)`` (or ``--table``'s per-layer table); size from
:func:`qnas.costs.count_costs`.

(a) the default digits space (~10^34 archs), latency on ``space.plan(arch)``.
    There is no true front, so the reference is the *pooled front*: the
    non-dominated points of every run of every strategy. Objectives are
    normalised to [0, 1] by its ideal and nadir points, the reference point
    is (1.1, 1.1), and a strategy's hypervolume is reported as a share of the
    pooled front's. ``nsga3-3obj`` (objectives accuracy, latency, size) is
    also run; the ``hv3`` table (and columns) is the same with size added
    (3-D, reference (1.1, 1.1, 1.1)).
(b) a small space (:func:`small_space`: one stage of 1-2 MBConv blocks,
    3 resolutions x 3 widths, kernels {3,5,7}, expand 6, w_bits {2,4,8},
    8-bit activations: 59,778 archs) enumerated exhaustively; latency (and
    size) from the vectorized sum-of-table predictor of the device's
    analytic per-layer costs (or ``--table``). Its true Pareto front is exact;
    objectives are normalised by the true front's ideal and nadir, reference
    point 1.1, and reported is the share of the true front's hypervolume each
    strategy reaches (2-D acc x latency, and 3-D with size), plus the share of
    the true front's points it found.

OFA's finder does not see the oracle: like once-for-all, whose predictor is
fitted on supernet-inherited accuracies, its accuracy predictor is fitted on
``--ofa-proxy-n`` random archs labelled by the oracle plus N(0, 0.01) noise
(those labels are not counted as evaluations), and its latency predictor is
the vectorized table of the same per-layer costs (the evaluation's latency
up to a constant per-inference overhead). It sweeps 8 latency budgets
(geometric, smallest to largest 8-bit arch) round-robin.

    python bench/search_quality.py                           # 3 seeds, up to 2000 evals (~10 min on 2 cores)
    python bench/search_quality.py --seeds 1 --evals 200 500 # a quick trial
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES = ("random", "nsga2", "nsga3", "ofa")
N_BUDGETS = 8


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="seeds per strategy (0..seeds-1)")
    p.add_argument("--evals", type=int, nargs="+", default=[200, 500, 1000, 2000],
                   help="evaluation counts at which hypervolume is reported")
    p.add_argument("--batch", type=int, default=16, help="archs asked per ask() call")
    p.add_argument("--pop-size", type=int, default=16, help="NSGA-II/III population size")
    p.add_argument("--device", default="cpu-ort", help="latency profile (analytic model)")
    p.add_argument("--table", type=Path, default=None, help="per-layer latency table (JSON/CSV) instead of analytic")
    p.add_argument("--n-fit", type=int, default=1000, help="synthetic-labelled archs the oracle predictor is fitted on")
    p.add_argument("--fit-epochs", type=int, default=100, help="epochs of the oracle predictor")
    p.add_argument("--ofa-proxy-n", type=int, default=256, help="noisy oracle labels OFA's own predictor is fitted on")
    p.add_argument("--ofa-generations", type=int, default=30, help="generations of each OFA finder run")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--parts", nargs="+", default=["a", "b"], choices=["a", "b"])
    p.add_argument("--out", type=Path, default=RESULTS / "search_quality.json", help="results JSON")
    a = p.parse_args(argv)
    if a.seeds < 1 or a.batch < 1 or min(a.evals) < 1 or a.n_fit < 20:
        p.error("--seeds, --batch, --evals must be >= 1 and --n-fit >= 20")
    a.evals = sorted(set(a.evals))
    return a


# ---- the pieces ------------------------------------------------------------------
def small_space():
    """59,778 archs: 3 resolutions x 3 widths x one stage of 1-2 blocks (kernel 3/5/7, expand 6, w_bits 2/4/8)."""
    from qnas.space import SearchSpace, SpaceConfig, StageConfig

    return SearchSpace(SpaceConfig(resolutions=(12, 16, 20), widths=(0.5, 0.75, 1.0),
                                   stages=(StageConfig(16, (1, 2), 2),), kernels=(3, 5, 7), expands=(6,),
                                   w_bits=(2, 4, 8), a_bits=(8,)))


def latency_models(space, args) -> tuple[Any, Any, float]:
    """(whole-model LatencyModel, vectorized predictor, constant offset model - vectorized)."""
    from qnas.latency import TableLatencyModel, create_latency_model
    from qnas.latency.vectorized import VectorizedTablePredictor

    model = TableLatencyModel.from_file(args.table) if args.table else create_latency_model(args.device)
    vec = VectorizedTablePredictor(space, model.layer_ms)
    rng = np.random.default_rng(99)
    probe = [space.sample(rng) for _ in range(50)]
    diff = np.array([model.predict(space.plan(a)) for a in probe]) - vec.predict_archs(probe)
    if np.ptp(diff) > 1e-9 * max(1.0, float(np.abs(diff).max())):
        raise SystemExit(f"the {args.device} model is not a per-layer sum plus a constant (spread {np.ptp(diff):.3g} ms); "
                         "OFA's vectorized latency would disagree with the evaluation")
    return model, vec, float(diff.mean())


class Shifted:
    """A vectorized latency predictor plus a constant (the per-inference overhead)."""

    def __init__(self, vec: Any, offset: float):
        self.vec, self.offset = vec, offset

    def predict_encoded(self, X: np.ndarray) -> np.ndarray:
        return self.vec.predict_encoded(X) + self.offset


def fit_oracle(space, args, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    from qnas.predictors import AccuracyPredictor, SyntheticAccuracy

    syn = SyntheticAccuracy(space, seed=seed)
    rng = np.random.default_rng(1000 + seed)
    archs = list(dict.fromkeys(space.sample(rng) for _ in range(args.n_fit + 500)))
    y = syn.many(archs)
    fit, held = slice(0, len(archs) - 500), slice(len(archs) - 500, None)
    t = time.perf_counter()
    pred = AccuracyPredictor(space, epochs=args.fit_epochs, seed=seed).fit(archs[fit], y[fit])
    info = {"n_fit": len(archs[fit]), "fit_seconds": round(time.perf_counter() - t, 1),
            "held_out_vs_synthetic": pred.score(archs[held], y[held])}
    return pred, info


def ofa_predictor(space, oracle, n: int, seed: int) -> Any:
    """OFA's own accuracy predictor: fitted on ``n`` random archs labelled oracle + N(0, 0.01)."""
    from qnas.predictors import AccuracyPredictor

    rng = np.random.default_rng(5000 + seed)
    archs = list(dict.fromkeys(space.sample(rng) for _ in range(n)))
    y = oracle.predict(archs) + rng.normal(0.0, 0.01, len(archs))
    return AccuracyPredictor(space, epochs=100, seed=seed).fit(archs, y)


def hypervolume(F: np.ndarray, lo: np.ndarray, hi: np.ndarray, ref: float = 1.1) -> float:
    from pymoo.indicators.hv import HV

    if len(F) == 0:
        return 0.0
    Z = (np.asarray(F, dtype=float) - lo) / (hi - lo)
    return float(HV(ref_point=np.full(Z.shape[1], ref))(Z))


def nondominated(F: np.ndarray) -> np.ndarray:
    """The non-dominated rows of ``F`` (minimised), duplicates once (moocore, pymoo's HV backend)."""
    from moocore import is_nondominated

    F = np.asarray(F, dtype=float)
    return F[is_nondominated(F)] if len(F) else F


def drive(strategy, evaluate: Callable[[list], np.ndarray], checkpoints: Sequence[int], batch: int) -> dict[int, np.ndarray]:
    """ask -> evaluate -> tell until the last checkpoint; the objective rows seen by each checkpoint."""
    rows: list[np.ndarray] = []
    snaps: dict[int, np.ndarray] = {}
    todo = list(checkpoints)
    while todo:
        archs = strategy.ask(min(batch, todo[0] - len(rows)))
        if not archs:
            break
        recs, F = evaluate(archs)
        strategy.tell(archs, recs)
        rows.extend(F)
        while todo and len(rows) >= todo[0]:
            c = todo.pop(0)
            snaps[c] = np.asarray(rows[:c])
    for c in todo:  # the strategy ran out of archs
        snaps[c] = np.asarray(rows)
    return snaps


def make_strategy(name: str, space, seed: int, args, ofa_kw: dict[str, Any]):
    from qnas.strategies import create_strategy

    if name in ("nsga2", "nsga3"):
        return create_strategy(name, space, seed=seed, pop_size=args.pop_size)
    if name == "nsga3-3obj":
        return create_strategy("nsga3", space, seed=seed, pop_size=args.pop_size,
                               objectives=("accuracy", "latency", "size"))
    if name == "ofa":
        return create_strategy("ofa", space, seed=seed, population_size=100, generations=args.ofa_generations,
                               **ofa_kw)
    return create_strategy(name, space, seed=seed)


def summary(values: list[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=float)
    return {"mean": round(float(v.mean()), 5), "std": round(float(v.std()), 5), "values": [round(x, 5) for x in v]}


# ---- part (a) ------------------------------------------------------------------
def part_a(args) -> dict[str, Any]:
    from qnas.costs import count_costs
    from qnas.space import SearchSpace

    space = SearchSpace()
    model, vec, offset = latency_models(space, args)
    oracle, oracle_info = fit_oracle(space, args)
    cache: dict[Any, tuple[dict[str, Any], np.ndarray]] = {}

    def evaluate(archs: list) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
        new = [a for a in archs if a not in cache]
        if new:
            acc = oracle.predict(new)
            for a, v in zip(new, acc):
                c = count_costs(space.plan(a))
                rec = {"val_acc": float(v), "latency_ms": float(model.predict(space.plan(a))), "size_kb": c.size_kb,
                       "peak_act_kb": c.peak_activation_bytes / 1024, "mmacs": c.mmacs}
                cache[a] = (rec, np.array([-rec["val_acc"], rec["latency_ms"], rec["size_kb"]]))
        return [cache[a][0] for a in archs], [cache[a][1] for a in archs]

    lat_lo = model.predict(space.plan(space.uniform(8, 8, largest=False)))
    lat_hi = model.predict(space.plan(space.uniform(8, 8, largest=True)))
    budgets = list(np.geomspace(lat_lo, lat_hi, N_BUDGETS))

    names = list(args.strategies) + (["nsga3-3obj"] if "nsga3" in args.strategies else [])
    runs: dict[str, list[dict[int, np.ndarray]]] = {}
    seconds: dict[str, float] = {}
    for name in names:
        t = time.perf_counter()
        runs[name] = []
        for seed in range(args.seeds):
            ofa_kw = {}
            if name == "ofa":
                ofa_kw = {"accuracy": ofa_predictor(space, oracle, args.ofa_proxy_n, seed),
                          "latency": Shifted(vec, offset), "latency_budgets": budgets}
            strat = make_strategy(name, space, seed, args, ofa_kw)
            runs[name].append(drive(strat, evaluate, args.evals, args.batch))
        seconds[name] = round(time.perf_counter() - t, 1)
        print(f"  (a) {name}: {seconds[name]} s", file=sys.stderr)

    # normalisation: ideal/nadir of the pooled front (non-dominated points of every run, all strategies)
    last = max(args.evals)
    pooled = np.concatenate([snaps[last] for r in runs.values() for snaps in r])
    out: dict[str, Any] = {"space": "default digits SearchSpace()", "space_log10_size": round(space.size(), 1),
                           "latency": str(args.table or f"{args.device} analytic"), "oracle": oracle_info,
                           "ofa_latency_budgets_ms": [round(b, 4) for b in budgets], "bounds": {}, "strategies": {}}
    for key, dims in (("hv", [0, 1]), ("hv3", [0, 1, 2])):
        front = nondominated(pooled[:, dims])
        lo, hi = front.min(axis=0), front.max(axis=0)
        hv_pool = hypervolume(front, lo, hi)
        out["bounds"][key] = {"objectives": [["-acc", "latency_ms", "size_kb"][d] for d in dims],
                              "lo": lo.tolist(), "hi": hi.tolist(), "pooled_front_points": int(len(front)),
                              "pooled_front_hv": round(hv_pool, 6)}
        for name, r in runs.items():
            row = out["strategies"].setdefault(name, {"seconds": seconds[name]})
            row[key] = {str(c): summary([hypervolume(s[c][:, dims], lo, hi) / hv_pool for s in r]) for c in args.evals}
    return out


# ---- part (b) ------------------------------------------------------------------
def enumerate_space(space) -> np.ndarray:
    """Every arch of ``space`` as a canonical gene vector (inactive genes 0)."""
    c = space.config
    bounds = space.bounds()
    header = [range(bounds[i] + 1) for i in range(6)]
    n_op = len(space.ops) + (1 if c.allow_skip else 0)
    stage_parts = []
    for si, s in enumerate(c.stages):
        D = max(s.depths)
        options = []
        for di, d in enumerate(s.depths):
            per_block = []
            for j in range(D):
                if j >= d:
                    per_block.append([(0,) * 7])
                    continue
                blocks = []
                for op in range(n_op):
                    if op == len(space.ops):
                        if space.skip_allowed(si, j):
                            blocks.append((op,) + (0,) * 6)
                        continue
                    for bits in itertools.product(*[range(len(c.w_bits))] * 3, *[range(len(c.a_bits))] * 3):
                        blocks.append((op,) + bits)
                per_block.append(blocks)
            for combo in itertools.product(*per_block):
                options.append((di,) + tuple(g for b in combo for g in b))
        stage_parts.append(options)
    rows = [tuple(h) + tuple(g for part in st for g in part)
            for h in itertools.product(*header) for st in itertools.product(*stage_parts)]
    X = np.asarray(rows, dtype=np.int64)
    assert abs(np.log10(len(X)) - space.size()) < 1e-6, (len(X), space.size())
    return X


def part_b(args) -> dict[str, Any]:
    from qnas.costs import count_costs, layer_size_bits
    from qnas.latency.vectorized import VectorizedTablePredictor

    space = small_space()
    model, vec, offset = latency_models(space, args)
    # size is a per-layer sum too: the same vectorized machinery prices it (checked against count_costs)
    size_vec = VectorizedTablePredictor(space, lambda layer: layer_size_bits(layer) / 8 / 1024)
    probe = [space.sample(s) for s in range(20)]
    assert np.allclose(size_vec.predict_archs(probe), [count_costs(space.plan(a)).size_kb for a in probe])
    oracle, oracle_info = fit_oracle(space, args)
    t = time.perf_counter()
    X = enumerate_space(space)
    Fall = np.stack([-oracle.predict(X), vec.predict_encoded(X) + offset, size_vec.predict_encoded(X)], axis=1)
    enum_s = time.perf_counter() - t
    lookup = {tuple(x): i for i, x in enumerate(X)}

    def evaluate(archs: list) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
        idx = [lookup[tuple(space.encode(a))] for a in archs]
        recs = [{"val_acc": float(-Fall[i, 0]), "latency_ms": float(Fall[i, 1]), "size_kb": float(Fall[i, 2]),
                 "peak_act_kb": 0.0} for i in idx]
        return recs, [Fall[i] for i in idx]

    lat_lo = float(vec.predict_archs([space.uniform(8, 8, largest=False)])[0] + offset)
    lat_hi = float(vec.predict_archs([space.uniform(8, 8, largest=True)])[0] + offset)
    budgets = list(np.geomspace(lat_lo, lat_hi, N_BUDGETS))
    out: dict[str, Any] = {"space": space.to_dict(), "n_archs": int(len(X)),
                           "latency": str(args.table or f"{args.device} analytic per-layer costs, vectorized"),
                           "oracle": oracle_info, "enumeration_seconds": round(enum_s, 2), "true_front": {},
                           "strategies": {}}
    fronts = {}
    for key, dims in (("hv_share", [0, 1]), ("hv3_share", [0, 1, 2])):
        front = nondominated(Fall[:, dims])
        lo, hi = front.min(axis=0), front.max(axis=0)
        fronts[key] = (dims, lo, hi, hypervolume(front, lo, hi), {tuple(f) for f in front})
        out["true_front"][key] = {"objectives": [["-acc", "latency_ms", "size_kb"][d] for d in dims],
                                  "points": int(len(front)), "lo": lo.tolist(), "hi": hi.tolist(),
                                  "hv": round(fronts[key][3], 6)}
    names = list(args.strategies) + (["nsga3-3obj"] if "nsga3" in args.strategies else [])
    for name in names:
        res: dict[str, dict[int, list[float]]] = {k: {c: [] for c in args.evals}
                                                  for k in ("hv_share", "hv3_share", "front_found", "front3_found")}
        t = time.perf_counter()
        for seed in range(args.seeds):
            ofa_kw = {}
            if name == "ofa":
                ofa_kw = {"accuracy": ofa_predictor(space, oracle, args.ofa_proxy_n, seed),
                          "latency": Shifted(vec, offset), "latency_budgets": budgets}
            strat = make_strategy(name, space, seed, args, ofa_kw)
            snaps = drive(strat, evaluate, args.evals, args.batch)
            for c, F in snaps.items():
                for key, found in (("hv_share", "front_found"), ("hv3_share", "front3_found")):
                    dims, lo, hi, hv_true, front_set = fronts[key]
                    res[key][c].append(hypervolume(F[:, dims], lo, hi) / hv_true)
                    res[found][c].append(sum(tuple(f) in front_set for f in nondominated(F[:, dims])) / len(front_set))
        out["strategies"][name] = {"seconds": round(time.perf_counter() - t, 1),
                                   **{k: {str(c): summary(v) for c, v in r.items()} for k, r in res.items()}}
        print(f"  (b) {name}: {out['strategies'][name]['seconds']} s", file=sys.stderr)
    return out


# ---- report --------------------------------------------------------------------
def table(title: str, rows: dict[str, Any], key: str, evals: Sequence[int]) -> str:
    lines = [title, f"{'strategy':<12}" + "".join(f"{c:>20}" for c in evals)]
    for name, r in rows.items():
        cells = "".join(f"{r[key][str(c)]['mean']:>12.4f} ±{r[key][str(c)]['std']:<6.4f}" for c in evals)
        lines.append(f"{name:<12}{cells}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    torch.set_num_threads(1)
    args = parse_args(argv)
    t0 = time.perf_counter()
    res: dict[str, Any] = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                           "hv_reference_point": 1.1, "seeds": list(range(args.seeds))}
    if "a" in args.parts:
        res["a"] = part_a(args)
    if "b" in args.parts:
        res["b"] = part_b(args)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    if "a" in res:
        a = res["a"]
        print(f"(a) default space; oracle vs synthetic on held-out archs: {a['oracle']['held_out_vs_synthetic']}")
        print(table("(a) hypervolume (acc x latency) as a share of the pooled front's, mean ± std over seeds",
                    a["strategies"], "hv", args.evals))
        print(table("(a) 3-D hypervolume (acc x latency x size) as a share of the pooled front's",
                    a["strategies"], "hv3", args.evals))
    if "b" in res:
        b = res["b"]
        tf = b["true_front"]
        print(f"(b) small space: {b['n_archs']} archs; true fronts: {tf['hv_share']['points']} points (2-D), "
              f"{tf['hv3_share']['points']} (3-D); oracle {b['oracle']['held_out_vs_synthetic']}")
        print(table("(b) share of the true front's hypervolume (acc x latency)", b["strategies"], "hv_share", args.evals))
        print(table("(b) share of the true front's points found (acc x latency)", b["strategies"], "front_found",
                    args.evals))
        print(table("(b) share of the true 3-D front's hypervolume (acc x latency x size)", b["strategies"],
                    "hv3_share", args.evals))
    print(f"wrote {args.out} ({res['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
