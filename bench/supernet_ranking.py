#!/usr/bin/env python
"""Does the supernet rank archs like stand-alone training does?

    python bench/supernet_ranking.py [--archs 20] [--supernet-epochs 2] [--standalone-epochs 5]

Trains a supernet on digits (progressive shrinking, sandwich rule, in-place
distillation), then for ``--archs`` archs sampled with ``--seed`` compares the
supernet-inherited validation accuracy (after BN re-calibration) with the
validation accuracy of the same arch trained stand-alone (QAT from scratch,
BN re-calibrated too). Reports Kendall tau and Spearman rho, saves JSON.
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
    p.add_argument("--archs", type=int, default=20)
    p.add_argument("--supernet-epochs", type=int, default=2, help="epochs per shrinking phase")
    p.add_argument("--standalone-epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="bench/results/supernet_ranking.json")
    a = p.parse_args()

    from scipy.stats import kendalltau, spearmanr

    from qnas.data import load_digits, split
    from qnas.evaluators import TrainingEvaluator
    from qnas.quant.checkpoint import atomic_write
    from qnas.space import SearchSpace
    from qnas.supernet import Supernet, SupernetEvaluator, SupernetTrainConfig, progressive_phases, train_supernet

    torch.set_num_threads(2)
    splits = split(load_digits(), seed=0)
    space = SearchSpace()
    t0 = time.perf_counter()
    supernet = Supernet.from_seed(space, 0)  # the same initial weights in every run
    train_supernet(supernet, splits, SupernetTrainConfig(phases=progressive_phases(a.supernet_epochs), seed=0,
                                                         progress=False))
    t_supernet = time.perf_counter() - t0
    rng = np.random.default_rng(a.seed)
    archs = list(dict.fromkeys(space.sample(rng) for _ in range(a.archs)))
    inherited_eval = SupernetEvaluator(supernet, splits, seed=0)
    standalone_eval = TrainingEvaluator(space, splits, epochs=a.standalone_epochs, seed=0, progress=False)
    rows = []
    for i, arch in enumerate(archs):
        t = time.perf_counter()
        inh = inherited_eval(arch)["val_acc"]
        sa = standalone_eval(arch)["val_acc"]
        rows.append({"arch": arch.to_dict(), "describe": arch.describe(), "inherited": inh, "standalone": sa})
        print(f"[{i + 1:2d}/{len(archs)}] inherited {inh:.3f}  stand-alone {sa:.3f}  ({time.perf_counter() - t:.0f} s)  "
              f"{arch.describe()}", flush=True)
    inh = [r["inherited"] for r in rows]
    sa = [r["standalone"] for r in rows]
    tau = float(kendalltau(inh, sa).statistic)
    rho = float(spearmanr(inh, sa).statistic)
    res = {"kendall_tau": tau, "spearman_rho": rho, "n": len(rows), "supernet_epochs_per_phase": a.supernet_epochs,
           "standalone_epochs": a.standalone_epochs, "supernet_train_s": t_supernet,
           "mean_inherited": float(np.mean(inh)), "mean_standalone": float(np.mean(sa)), "rows": rows}
    print(f"Kendall tau {tau:.3f}, Spearman rho {rho:.3f} over {len(rows)} archs "
          f"(mean inherited {np.mean(inh):.3f}, stand-alone {np.mean(sa):.3f}; supernet trained in {t_supernet:.0f} s)")
    out = Path(a.out)
    atomic_write(out, lambda f: f.write_text(json.dumps(res, indent=2)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
