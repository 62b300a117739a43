#!/usr/bin/env python
"""Does the differentiable search's derived arch meet its latency budget?

    python bench/differentiable_budget.py [--percentiles 10 30 60] [--epochs 4]
    python bench/differentiable_budget.py --percentiles --free-weights 0 0.1 --epochs 4 12   # why depth collapses

For budgets at percentiles of the predicted latency of random archs (cpu-ort
analytic model), runs the differentiable strategy on digits and reports the
derived arch's predicted latency against the budget, and its accuracy inside
the super-network. ``--free-weights`` adds runs without a budget at those
latency weights (``CE + w * log E[latency]``; 0: cross-entropy alone), which
separate what pushes depth down: the latency term or the accuracy signal.
Every row records each stage's final depth distribution (softmax of its
logits) and the derived depths against the space's minimum.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--percentiles", type=float, nargs="*", default=[10, 30, 60])
    p.add_argument("--free-weights", type=float, nargs="*", default=[],
                   help="latency weights of extra runs without a budget (0: cross-entropy alone)")
    p.add_argument("--epochs", type=int, nargs="+", default=[4], help="search epochs (one set of rows each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/differentiable_budget.json")
    a = p.parse_args()

    from qnas.data import load_digits, split
    from qnas.latency import create_latency_model
    from qnas.quant.checkpoint import atomic_write
    from qnas.space import SearchSpace
    from qnas.strategies import Budget, StrategyContext, create_strategy

    torch.set_num_threads(1)
    space = SearchSpace()
    splits = split(load_digits(), seed=0)
    latency = create_latency_model("cpu-ort")
    sample = [latency.predict(space.plan(space.sample(i))) for i in range(200)]
    min_depths = [min(st.depths) for st in space.config.stages]
    rows = []
    runs = [(e, pct, None) for e in a.epochs for pct in a.percentiles] + [(e, None, w) for e in a.epochs
                                                                          for w in a.free_weights]
    for epochs, pct, weight in runs:
        budget = float(np.percentile(sample, pct)) if pct is not None else None
        t0 = time.perf_counter()
        opts = {"epochs": epochs} if weight is None else {"epochs": epochs, "latency_weight": weight}
        strat = create_strategy("differentiable", space, seed=a.seed, budget=Budget(latency_ms=budget),
                                context=StrategyContext(splits=splits, latency=latency), **opts)
        archs = strat.ask(4)
        lat = [latency.predict(space.plan(x)) for x in archs]
        with torch.no_grad():
            depth_probs = [[round(float(v), 3) for v in d.softmax(-1)] for d in strat.search.arch.depth]
        derived_depths = [len(stage) for stage in archs[0].stages]
        row = {"epochs": epochs, "percentile": pct, "latency_weight": weight, "budget_ms": budget,
               "derived_ms": lat[0], "meets_budget": budget is None or lat[0] <= budget, "samples_ms": lat[1:],
               "all_meet": budget is None or all(x <= budget for x in lat), "derived": archs[0].describe(),
               "derived_depths": derived_depths, "min_depths": min_depths, "depth_probs": depth_probs,
               "seconds": time.perf_counter() - t0, "summary": getattr(strat, "summary", None)}
        rows.append(row)
        what = f"p{pct:g} budget {budget:.4f} ms" if budget is not None else f"no budget, latency weight {weight:g}"
        acc = (row["summary"] or {}).get("derived_val_acc")
        print(f"{epochs} epochs, {what} -> derived {lat[0]:.4f} ms "
              f"({'meets' if row['meets_budget'] else 'MISSES'}), depths {derived_depths} (min {min_depths}), "
              f"P(depth) {depth_probs}, acc in supernet {acc if acc is None else round(acc, 3)}, "
              f"{row['seconds']:.0f} s  {archs[0].describe()}", flush=True)
    out = Path(a.out)
    atomic_write(out, lambda f: f.write_text(json.dumps({"rows": rows}, indent=2, default=str)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
