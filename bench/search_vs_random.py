#!/usr/bin/env python
"""Does the search beat random archs under the same latency budget? (issue 12, item 4)

    .venv/bin/python bench/search_vs_random.py [--seeds 3] [--n-random 10] [--budget-percentile 30]
                                               [--supernet-epochs 6] [--candidates 64] [--epochs 5] [--jobs 2]
    .venv/bin/python bench/search_vs_random.py --work runs/svr --keep      # keep (and resume) the search runs

The budget is the ``--budget-percentile`` percentile of the predicted latency (``--target``, analytic
model; default ``bitfusion``, where bits scale latency, so the budget trades bits against structure) of 1000 random archs of the default digits space (one fixed sample for every seed): at the
default 30th percentile most of the space is out of budget, so the accuracy/latency trade-off binds.
Harder task: a smaller ``--budget-percentile`` makes the budget tighter.

Per search seed s (0 .. ``--seeds``-1):

1. Search: the full pipeline a user runs -- ``demo_search_config`` (NSGA-II, pop 16, batches of 8)
   with the supernet accuracy source (``--supernet-epochs`` per progressive-shrinking phase),
   ``--candidates`` evaluations, the latency budget and seed s; the searched arch is
   ``result.best(budget)``. The splits are always ``ranking_ground_truth.load_splits`` (split seed 0),
   so in every seed the supernet never trains on the val/test images the archs are finished and
   measured on.
2. Random: ``--n-random`` distinct ``space.sample`` archs (rng seeded 1000 + s) within the budget.
3. Finishing, the same way for every arch (the ranked ones below, random):
   stand-alone QAT from scratch (``ranking_ground_truth.ground_truth``,
   ``--epochs`` epochs, training seeds 0 .. ``--finish-seeds``-1, cached in ``--finish-cache``).
   Finished accuracy = mean over training seeds of top-1 on val + test (628 images); test-only too.

The search's refine stage (``SearchConfig.refine_top``: the most accurate in-budget archs get a few
QAT epochs and ``best()`` chooses among them) runs as the demo config sets it, or ``--refine-top N``
(0: off). Ranked per seed: the chosen arch, the refined archs and the ``--front-max`` front members.

Measured per seed: the searched arch's percentile among the random ones (share of random archs whose
finished accuracy is <= the searched one's; goal: >= 80 % in every seed) and Kendall tau between the
ranked archs' search-time accuracy (supernet val_acc; ``refined_val_acc`` of the refined ones) and their
finished accuracy; and the same tau of the supernet's val_acc over the ranked and the random archs
together (the seed's supernet scores the random ones as the search scores candidates). Prints a markdown table and writes ``--out`` (JSON, atomically).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ranking_ground_truth as rgt  # noqa: E402
from supernet_ranking import fmt, git_commit  # noqa: E402

RESULTS = rgt.ROOT / "bench" / "results"
BUDGET_SEED = 12  # the 1000-arch latency sample that sets the budget: the same for every search seed
GOAL = 0.8


def latency_budget(space: Any, latency: Any, percentile: float) -> float:
    rng = np.random.default_rng(BUDGET_SEED)
    return float(np.percentile([latency.predict(space.plan(space.sample(rng))) for _ in range(1000)], percentile))


def random_in_budget(space: Any, latency: Any, budget: float, n: int, seed: int) -> list:
    """``n`` distinct random archs within ``budget`` (out-of-budget draws are skipped, not replaced)."""
    rng = np.random.default_rng(seed)
    found: dict[str, Any] = {}
    for _ in range(10000 * n):
        if len(found) >= n:
            return list(found.values())
        a = space.sample(rng)
        if a.uid not in found and latency.predict(space.plan(a)) <= budget:
            found[a.uid] = a
    raise SystemExit(f"only {len(found)} of {n} random archs within {budget:.4g} ms; raise --budget-percentile")


def run_dir(work: Path, cfg: Any) -> tuple[Any, bool]:
    """The seed's run directory: resumed (supernet, history) when it holds the same config, else started over
    -- a supernet checkpoint left by other settings would otherwise be resumed by the search."""
    from qnas.rundir import RunDir

    path = work / f"seed{cfg.seed}"
    old = path / "config.json"
    same = old.is_file() and json.loads(old.read_text()) == cfg.to_dict()
    if path.exists() and not same:
        shutil.rmtree(path)
    run = RunDir(path, resume=same)
    run.write_json("config.json", cfg.to_dict())
    return run, same


def search_time(rec: dict[str, Any], refined: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The accuracies the search saw: the source's val_acc and, for refined archs, the refined one."""
    ref = rec.get("refined_val_acc", refined.get(rec["uid"], {}).get("refined_val_acc"))
    return {"uid": rec["uid"], "latency_ms": rec["latency_ms"], "val_acc": rec["val_acc"], "refined_val_acc": ref}


def search_seed(a: argparse.Namespace, seed: int, space: Any, splits: Any, latency: Any, budget: float,
                work: Path) -> dict[str, Any]:
    from qnas.options import demo_search_config
    from qnas.searching import run_search
    from qnas.strategies import Budget

    extra = {} if a.refine_top is None else {"refine_top": a.refine_top}  # None: the library's default
    cfg = demo_search_config(accuracy="supernet", supernet_epochs=a.supernet_epochs, n_candidates=a.candidates,
                             batch=8, strategy_options={"pop_size": 16}, latency_budget_ms=budget, seed=seed,
                             target=a.target, threads=a.threads, **extra)
    cfg.space = space.to_dict()
    t0 = time.perf_counter()
    run, resumed = run_dir(work, cfg)  # resumed: the seconds below leave out the earlier run's work
    result = run_search(cfg, space, splits, run, progress=sys.stderr.isatty(), latency=latency)
    seconds = time.perf_counter() - t0
    chosen = result.best(budget)
    refined: dict[str, dict[str, Any]] = dict(getattr(result, "refined", None) or {})  # the refine stage's entries
    ok = Budget(budget)
    front: dict[str, dict[str, Any]] = {}
    for r in sorted(result.front, key=lambda r: (-r["val_acc"], r["latency_ms"])):
        if ok.ok(r):
            front.setdefault(r["uid"], r)  # one per arch: the front may hold repeats
    members = {u: r for u, r in list(front.items())[:a.front_max]}
    # the chosen and the refined archs (the ones the library chose among) are ranked too, on the front or not
    by_uid = {r["uid"]: r for r in result.records}
    for u in [chosen["uid"], *refined]:
        members.setdefault(u, by_uid[u])
    refine_s = sum(float(e.get("seconds", 0)) for e in refined.values())
    # the same supernet scores the random archs too: does its accuracy rank archs across the whole budget?
    rnd = random_in_budget(space, latency, budget, a.n_random, 1000 + seed)
    scored = supernet_scores(run.path, space, splits, cfg, rnd)
    print(f"seed {seed}: search {seconds:.0f} s{' (resumed)' if resumed else ''} (refine {refine_s:.0f} s), "
          f"{len(result.records)} evaluated, {len(front)} in-budget front members, {len(refined)} refined; "
          f"chosen {chosen['uid']} val_acc "
          f"{chosen['val_acc']:.3f}" + (f" refined {chosen['refined_val_acc']:.3f}" if "refined_val_acc" in chosen
                                        else "") + f" {chosen['latency_ms']:.4g} ms", flush=True)
    return {"seed": seed, "config": cfg.to_dict(), "resumed": resumed,
            "search_seconds": round(seconds, 1), "refine_seconds": round(refine_s, 1),
            "n_records": len(result.records), "n_front_in_budget": len(front),
            "chosen": search_time(chosen, refined),
            "ranked": [{**search_time(r, refined), "on_front": u in front, "refined": u in refined}
                      for u, r in members.items()],
            "archs": {**{u: result.arch(r) for u, r in members.items()}, **{x.uid: x for x in rnd}},
            "random": [{"uid": x.uid, "latency_ms": latency.predict(space.plan(x)), "val_acc": scored[x.uid]}
                       for x in rnd]}


def supernet_scores(run_path: Path, space: Any, splits: Any, cfg: Any, archs: list) -> dict[str, float]:
    """Validation accuracy of ``archs`` in the run's supernet, scored as the search scores candidates."""
    from qnas.supernet import SupernetEvaluator, load_supernet

    net = load_supernet(run_path / "supernet" / "supernet.pt")
    ev = SupernetEvaluator(net, splits, batch_size=cfg.batch_size, seed=cfg.seed, threads=cfg.threads)
    return {x.uid: float(ev(x)["val_acc"]) for x in archs}


def finished(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"acc": float(np.mean([rgt.combined(e)["acc"] for e in entries])),
            "test_acc": float(np.mean([e["test"]["acc"] for e in entries])),
            "per_seed": [rgt.combined(e)["acc"] for e in entries]}


def tau(members: list[dict[str, Any]], key: str) -> float | None:
    pts = [(m[key], m["finished"]["acc"]) for m in members if m.get(key) is not None]
    return rgt.finite(rgt.rank_corr([p[0] for p in pts], [p[1] for p in pts])[0]) if len(pts) >= 2 else None


def main() -> None:
    class Fmt(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        pass

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=Fmt)
    p.add_argument("--seeds", type=int, default=3, help="search seeds 0..N-1")
    p.add_argument("--n-random", type=int, default=10, help="random in-budget archs per seed")
    p.add_argument("--budget-percentile", type=float, default=30,
                   help="budget = this percentile of 1000 random archs' predicted latency (smaller: tighter)")
    p.add_argument("--target", default="bitfusion",
                   help="latency target (analytic model); bitfusion: bits scale latency, so the budget trades them")
    p.add_argument("--supernet-epochs", type=int, default=6, help="per progressive-shrinking phase")
    p.add_argument("--candidates", type=int, default=64, help="archs the search evaluates")
    p.add_argument("--refine-top", type=int, default=None,
                   help="SearchConfig.refine_top (archs refined after the search; None: the demo config's)")
    p.add_argument("--front-max", type=int, default=6, help="most accurate in-budget front members finished")
    p.add_argument("--epochs", type=int, default=5, help="stand-alone QAT epochs of the finish")
    p.add_argument("--finish-seeds", type=int, default=2, help="finishing training seeds 0..N-1")
    p.add_argument("--jobs", type=int, default=2, help="finishing processes (one torch thread each)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the search")
    p.add_argument("--work", default=None,
                   help="directory of the search runs (None: a temp dir, removed unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the default temp work dir")
    p.add_argument("--finish-cache", default=str(RESULTS / "search_vs_random_finish.json"),
                   help="cache of finished (stand-alone) results")
    p.add_argument("--out", default=None, help="result JSON (default bench/results/search_vs_random_TARGET.json)")
    a = p.parse_args()
    if min(a.seeds, a.n_random, a.candidates, a.finish_seeds, a.jobs, a.threads) < 1 or a.front_max < 0:
        raise SystemExit("counts must be >= 1 (--front-max >= 0)")

    from qnas.searching import make_latency_model
    from qnas.space import SearchSpace

    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    settings = rgt.Settings(epochs=a.epochs)
    splits = rgt.load_splits(settings)  # split seed 0 in every search seed: val/test never trained on
    space = SearchSpace()
    latency = make_latency_model(a.target, "analytic", space=space)
    budget = latency_budget(space, latency, a.budget_percentile)
    print(f"budget: {budget:.4g} ms ({a.budget_percentile:g}th percentile of 1000 random archs on {a.target})",
          flush=True)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="svr-"))
    try:
        seeds = [search_seed(a, s, space, splits, latency, budget, work) for s in range(a.seeds)]
    finally:
        if not a.work and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"search runs kept in {work}")
    # one finishing call for every arch of every seed: --jobs processes stay busy to the end
    archs = list({u: x for s in seeds for u, x in s["archs"].items()}.values())
    gt = rgt.ground_truth(archs, list(range(a.finish_seeds)), settings, a.finish_cache, a.jobs)
    fin = {x.uid: finished(e) for x, e in zip(archs, gt["entries"])}

    for s in seeds:
        del s["archs"]
        for m in [s["chosen"], *s["ranked"], *s["random"]]:
            m["finished"] = fin[m["uid"]]
        mine, rnd = s["chosen"]["finished"]["acc"], [m["finished"]["acc"] for m in s["random"]]
        s["percentile"] = float(np.mean([r <= mine for r in rnd]))
        s["goal_met"] = s["percentile"] >= GOAL
        s["tau_val_acc"], s["tau_refined"] = tau(s["ranked"], "val_acc"), tau(s["ranked"], "refined_val_acc")
        every = list({m["uid"]: m for m in [*s["ranked"], *s["random"]]}.values())
        s["tau_val_acc_all"], s["n_all"] = tau(every, "val_acc"), len(every)
        print(f"seed {s['seed']}: searched {100 * mine:.1f} % ({s['chosen']['latency_ms']:.4g} ms); random "
              f"{' '.join(f'{100 * r:.1f}' for r in sorted(rnd))}; ranked (search-time val_acc[/refined] -> finished) "
              + ", ".join(f"{m['val_acc']:.3f}" + (f"/{m['refined_val_acc']:.3f}" if m["refined_val_acc"] is not None
                                                   else "") + f"->{m['finished']['acc']:.3f}" for m in s["ranked"]))

    print(f"\n| seed | budget ms | searched ms | searched acc % | test % | random acc % min / median / max "
          f"| percentile | goal >= {GOAL:.0%} | ranked n | tau val_acc | tau refined | tau val_acc, ranked + random (n) "
          f"| search s |")
    print("|---:|---:|---:|---:|---:|---|---:|:---:|---:|---:|---:|---:|---:|")
    for s in seeds:
        rnd = [m["finished"]["acc"] for m in s["random"]]
        c = s["chosen"]
        print(f"| {s['seed']} | {budget:.4g} | {c['latency_ms']:.4g} | {100 * c['finished']['acc']:.1f} | "
              f"{100 * c['finished']['test_acc']:.1f} | {100 * min(rnd):.1f} / {100 * np.median(rnd):.1f} / "
              f"{100 * max(rnd):.1f} | {s['percentile']:.0%} | {'met' if s['goal_met'] else 'not met'} | "
              f"{len(s['ranked'])} | {fmt(s['tau_val_acc'], '.2f')} | {fmt(s['tau_refined'], '.2f')} | "
              f"{fmt(s['tau_val_acc_all'], '.2f')} ({s['n_all']}) | {s['search_seconds']:.0f} |")
    k = sum(s["goal_met"] for s in seeds)
    taus = [s["tau_val_acc"] for s in seeds if s["tau_val_acc"] is not None]
    mean_tau = float(np.mean(taus)) if taus else None
    taus_all = [s["tau_val_acc_all"] for s in seeds if s["tau_val_acc_all"] is not None]
    mean_tau_all = float(np.mean(taus_all)) if taus_all else None
    print(f"\ngoal met in {k} of {len(seeds)} seeds; ranked archs' search-time vs finished Kendall tau mean "
          f"{fmt(mean_tau, '.2f')}, over ranked + random archs {fmt(mean_tau_all, '.2f')}; finishing: {gt['trained']} trained, {gt['cached']} cached, {gt['seconds']:.0f} s")

    from qnas.quant.checkpoint import atomic_write  # temp file + os.replace

    res = {"commit": git_commit(), "args": vars(a), "settings": asdict(settings), "budget_ms": budget,
           "goal_percentile": GOAL, "goal_met_seeds": k, "n_seeds": len(seeds), "mean_tau_val_acc": mean_tau,
           "mean_tau_val_acc_all": mean_tau_all,
           "timings": {"search_seconds": [s["search_seconds"] for s in seeds],
                       "refine_seconds": [s["refine_seconds"] for s in seeds], "finish_seconds": gt["seconds"],
                       "finish_trained": gt["trained"], "finish_cached": gt["cached"],
                       "total_seconds": round(time.perf_counter() - t_start, 1)},
           "seeds": seeds}
    out = Path(a.out) if a.out else RESULTS / f"search_vs_random_{a.target}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: Path(f).write_text(json.dumps(res, indent=2)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
