#!/usr/bin/env python
"""How fast can qnas price archs? Batch prediction throughput of each predictor.

    python bench/latency_throughput.py [--n 200000] [--out bench/results/latency_throughput.json]

The table predictor is vectorized over encoded archs (numpy fancy indexing),
the others price one NetworkPlan at a time. Goal (issue 3): >= 100,000 archs/s
for the table predictor. The table here is the analytic cpu-ort model's
per-layer costs (so no measurement is needed); any table has the same cost.
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
    p.add_argument("--n", type=int, default=200_000, help="archs for the vectorized predictor")
    p.add_argument("--n-plan", type=int, default=500, help="archs for the per-plan predictors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/latency_throughput.json")
    a = p.parse_args()

    from qnas.latency import create_latency_model
    from qnas.latency.table import LatencyTable, TableLatencyModel, space_layer_keys
    from qnas.latency.vectorized import ArchDistribution, VectorizedTablePredictor
    from qnas.quant.checkpoint import atomic_write
    from qnas.space import SearchSpace

    space = SearchSpace()
    analytic = create_latency_model("cpu-ort")
    t0 = time.perf_counter()
    table = LatencyTable({l.key(): analytic.layer_ms(l) for l in space_layer_keys(space)})
    t_table = time.perf_counter() - t0
    table_model = TableLatencyModel(table)
    t0 = time.perf_counter()
    vec = VectorizedTablePredictor(space, table_model.layer_ms)
    t_pre = time.perf_counter() - t0

    rng = np.random.default_rng(a.seed)
    bounds = np.asarray(space.bounds())
    X = rng.integers(0, bounds + 1, size=(a.n, len(bounds)))
    vec.predict_encoded(X[:1000])  # warm
    t0 = time.perf_counter()
    y = vec.predict_encoded(X)
    t_vec = time.perf_counter() - t0

    archs = [space.decode(x) for x in X[:a.n_plan]]
    plans = [space.plan(arch) for arch in archs]
    rates = {}
    for name, model in (("table (per plan)", table_model), ("analytic (per plan)", analytic)):
        t0 = time.perf_counter()
        got = model.predict_many(plans)
        rates[name] = a.n_plan / (time.perf_counter() - t0)
        if name.startswith("table"):
            assert np.allclose(got, y[:a.n_plan], rtol=1e-9), "vectorized and per-plan table predictions differ"

    dist = ArchDistribution.uniform(space).map(lambda t: t.clone().requires_grad_(True))
    t0 = time.perf_counter()
    for _ in range(20):
        e = vec.expected_latency(dist)
        e.backward()
    t_diff = (time.perf_counter() - t0) / 20

    res = {
        "vectorized_table_archs_per_s": a.n / t_vec,
        "per_plan_archs_per_s": rates,
        "differentiable_expected_latency_ms_per_forward_backward": 1e3 * t_diff,
        "distinct_layer_keys": len(table),
        "precompute_s": t_pre,
        "table_build_s": t_table,
        "n": a.n,
    }
    print(f"vectorized table predictor : {res['vectorized_table_archs_per_s']:,.0f} archs/s ({a.n:,} archs)")
    for k, v in rates.items():
        print(f"{k:<27}: {v:,.0f} archs/s")
    print(f"ratio vectorized / per-plan table: {res['vectorized_table_archs_per_s'] / rates['table (per plan)']:.0f}x")
    print(f"expected latency (torch) fwd+bwd: {res['differentiable_expected_latency_ms_per_forward_backward']:.2f} ms")
    print(f"precompute {t_pre:.2f} s over {len(table)} layer keys")
    out = Path(a.out)
    atomic_write(out, lambda p: p.write_text(json.dumps(res, indent=2)))
    print(f"wrote {out}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
