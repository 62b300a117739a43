#!/usr/bin/env python
"""Does the differentiable search's derived arch meet its latency budget?

    python bench/differentiable_budget.py [--percentiles 10 30 60] [--epochs 4]

For budgets at percentiles of the predicted latency of random archs (cpu-ort
analytic model), runs the differentiable strategy on digits and reports the
derived arch's predicted latency against the budget, and its accuracy inside
the super-network.
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
    p.add_argument("--percentiles", type=float, nargs="+", default=[10, 30, 60])
    p.add_argument("--epochs", type=int, default=4)
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
    rows = []
    for pct in a.percentiles:
        budget = float(np.percentile(sample, pct))
        t0 = time.perf_counter()
        strat = create_strategy("differentiable", space, seed=a.seed, budget=Budget(latency_ms=budget),
                                context=StrategyContext(splits=splits, latency=latency), epochs=a.epochs)
        archs = strat.ask(4)
        lat = [latency.predict(space.plan(x)) for x in archs]
        row = {"percentile": pct, "budget_ms": budget, "derived_ms": lat[0], "meets_budget": lat[0] <= budget,
               "samples_ms": lat[1:], "all_meet": all(x <= budget for x in lat), "derived": archs[0].describe(),
               "seconds": time.perf_counter() - t0, "summary": getattr(strat, "summary", None)}
        rows.append(row)
        print(f"p{pct:g} budget {budget:.4f} ms -> derived {lat[0]:.4f} ms ({'meets' if row['meets_budget'] else 'MISSES'}), "
              f"samples {['%.4f' % x for x in lat[1:]]}, {row['seconds']:.0f} s  {archs[0].describe()}", flush=True)
    out = Path(a.out)
    atomic_write(out, lambda f: f.write_text(json.dumps({"rows": rows}, indent=2, default=str)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
