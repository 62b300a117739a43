#!/usr/bin/env python
"""Does the stand-alone ground truth's ranking depend on how long it trains, and which one does the supernet rank like?

    .venv/bin/python bench/ground_truth_length.py [--short 5] [--long 20] [--seeds 3] [--jobs 2]

``bench/supernet_ranking.py`` judges the supernet against stand-alone QAT from scratch for a few
epochs (5), which may rank low the archs that train slowly from scratch (2-bit convs), while the
pipeline finishes from supernet weights for 20 epochs. This script trains the same archs
(``rgt.sample_archs``, seed ``--seed``) stand-alone for ``--long`` epochs as well (cached in
the same ground-truth file; only missing entries are trained) and reports:

1. per training length: median accuracy and the seed-to-seed ceiling (Kendall tau, val+test
   top-1 and -loss);
2. across lengths: tau between single runs of the two lengths (mean over seed pairs), and the
   same corrected for both lengths' seed noise (``disattenuated``; 1.0: the same ranking);
3. Spearman rho of each arch's count of 2-bit convs (per layer: expand, depthwise, project)
   with its accuracy at each length: what the short training punishes;
4. for every ``--results`` file of ``bench/supernet_ranking.py`` (same archs): tau of its
   inherited scores against each single stand-alone run (mean over seeds) / the seed-to-seed
   ceiling -- like for like: 1.0x ranks as well as another stand-alone run -- and, with >= 3
   seeds, tau against the mean of all seeds but one / tau of that left-out run against the same
   mean (a ground truth less noisy than one run, judged like for like as well). A ratio to the
   ceiling flatters a noisy ground truth (a perfect predictor scores 1 / sqrt(reliability) x), so
   each line also estimates tau against the noise-free ground truth (Spearman's correction for
   attenuation on the Pearson scale, ``disattenuated``).
5. ``--calibrated FILE``: ``supernet_ranking.calibrated`` for that result against each length --
   does a ridge on arch features fitted on k stand-alone archs rank better than the supernet?

Writes ``--out`` (JSON, atomically).
"""
from __future__ import annotations

import argparse
import glob
import itertools
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ranking_ground_truth as rgt  # noqa: E402

SIGNALS: dict[str, Callable[[dict], float]] = {  # higher is better
    "eval_top1": lambda e: rgt.combined(e)["acc"],
    "eval_neg_loss": lambda e: -rgt.combined(e)["loss"],
}
INHERITED: dict[str, Callable[[dict], float]] = {
    "eval_top1": lambda r: r["inherited"]["eval_acc"],
    "eval_neg_loss": lambda r: -r["inherited"]["eval_loss"],
}
LAYERS = ("expand", "dw", "project")


def two_bit_counts(arch_dict: dict[str, Any]) -> dict[str, int]:
    """How many convs of each layer kind run 2-bit weights (blocks listed in the arch are active)."""
    counts = dict.fromkeys(LAYERS, 0)
    for stage in arch_dict["stages"]:
        for block in stage:
            for layer, bits in zip(LAYERS, block.get("w", ())):
                counts[layer] += int(bits == 2)
    return counts


def json_safe(x: Any) -> Any:
    """``x`` with every NaN/inf float as None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return rgt.finite(x) if isinstance(x, float) else x


def others_means(rows: list[list[dict]], get: Callable[[dict], float]) -> list[tuple[list[float], list[float]]]:
    """For each seed s: (its run, the mean of the other seeds' runs) -- needs >= 3 seeds to mean anything."""
    runs = rgt.runs_per_seed(rows, get)
    return [(run, list(np.mean([r for j, r in enumerate(runs) if j != s], axis=0))) for s, run in enumerate(runs)]


def length_stats(rows: list[list[dict]]) -> dict[str, Any]:
    out: dict[str, Any] = {"median_eval_acc": float(np.median([np.mean([rgt.combined(e)["acc"] for e in r])
                                                              for r in rows]))}
    for key, get in SIGNALS.items():
        out[f"ceiling_tau_{key}"] = rgt.seed_ceiling(rgt.runs_per_seed(rows, get))[0]
        if len(rows[0]) >= 3:  # how well one run ranks like the mean of the others
            out[f"ceiling_loo_tau_{key}"] = float(np.mean([rgt.rank_corr(run, rest)[0]
                                                           for run, rest in others_means(rows, get)]))
    return out


def cross_tau(short: list[list[dict]], long: list[list[dict]], get: Callable[[dict], float]) -> float:
    """Mean tau between one short run and one long run of the same archs, over all seed pairs."""
    return float(np.mean([rgt.rank_corr(a, b)[0]
                          for a, b in itertools.product(rgt.runs_per_seed(short, get), rgt.runs_per_seed(long, get))]))


def disattenuated(tau: float, ceiling: float, other_ceiling: float = 1.0) -> float:
    """Estimated tau against the noise-free ground truth (the mean of infinitely many seeds).

    Spearman's correction for attenuation, r / sqrt(reliability x other reliability), applied on the
    Pearson scale (Greiner's relation r = sin(pi tau / 2), exact for normal scores); the reliability
    of a signal is its seed-to-seed ceiling (1 for one fixed supernet's scores). A ratio to the ceiling
    flatters a noisy ground truth (a perfect predictor scores 1 / sqrt(reliability) x); this does not."""
    if not (ceiling > 0 and other_ceiling > 0 and math.isfinite(tau)):
        return float("nan")
    reliability = math.sin(math.pi * ceiling / 2) * math.sin(math.pi * other_ceiling / 2)
    r = math.sin(math.pi * tau / 2) / math.sqrt(reliability)
    return 2 / math.pi * math.asin(max(-1.0, min(1.0, r)))


def score(inh: list[dict], rows: dict[int, list[list[dict]]], lengths: dict[int, dict[str, Any]],
          entry: dict[str, Any]) -> list[str]:
    """Score inherited rows against each ground truth into ``entry``; the printed cells."""
    cells = []
    for n in rows:
        for k, get in SIGNALS.items():
            x = [INHERITED[k](row) for row in inh]
            single = rgt.corr_vs_single_runs(x, rows[n], get)[0]
            mean = rgt.rank_corr(x, [float(np.mean([get(e) for e in row])) for row in rows[n]])[0]
            ratio = single / lengths[n][f"ceiling_tau_{k}"]
            noise_free = disattenuated(single, lengths[n][f"ceiling_tau_{k}"])
            entry[f"{k}_{n}"] = {"tau_vs_single_seed": single, "tau_vs_seed_mean": mean,
                                 "single_over_ceiling": ratio, "tau_vs_noise_free_estimate": noise_free}
            cells.append(f"{single:.3f} ({ratio:.2f}x) ~{noise_free:.2f}")
            if f"ceiling_loo_tau_{k}" in lengths[n]:  # like for like against means of k-1 runs
                loo = float(np.mean([rgt.rank_corr(x, rest)[0] for _, rest in others_means(rows[n], get)]))
                entry[f"{k}_{n}"].update(tau_vs_others_mean=loo,
                                         others_mean_over_ceiling=loo / lengths[n][f"ceiling_loo_tau_{k}"])
                cells[-1] += f" {loo:.3f} ({entry[f'{k}_{n}']['others_mean_over_ceiling']:.2f}x)"
    return cells


def calibrated_by_length(path: str, rows: dict[int, list[list[dict]]], uids: list[str]) -> dict[int, Any]:
    """``supernet_ranking.calibrated`` of the result ``path`` against each length's stand-alone runs."""
    import supernet_ranking

    r = json.loads(Path(path).read_text())
    inh = [row for row in r["rows"] if not row.get("w8a8")]
    if [row["uid"] for row in inh] != uids:
        raise SystemExit(f"--calibrated {path}: other archs than these")
    out = {}
    for n, entries in rows.items():
        per_arch = [{"arch": row["arch"], "inherited": row["inherited"], "standalone": {"per_seed": [
            {"eval_acc": rgt.combined(e)["acc"], "eval_loss": rgt.combined(e)["loss"]} for e in runs]}}
            for row, runs in zip(inh, entries)]
        out[n] = supernet_ranking.calibrated(per_arch, sizes=(10, 15, 20), repeats=200)
        if out[n] is not None:
            supernet_ranking.print_calibrated(out[n], f"calibrated, {n:2d} epochs: ")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--archs", type=int, default=30)
    p.add_argument("--seed", type=int, default=1, help="arch sampling seed (as bench/supernet_ranking.py)")
    p.add_argument("--short", type=int, default=5, help="stand-alone epochs of the usual ground truth")
    p.add_argument("--long", type=int, default=20, help="stand-alone epochs of the longer ground truth (20: as long as finishing)")
    p.add_argument("--seeds", type=int, default=3,
                   help="training seeds per arch and length (>= 2 for ceilings, >= 3 for the mean-of-others ones)")
    p.add_argument("--jobs", type=int, default=2, help="training processes (one torch thread each)")
    p.add_argument("--ground-truth", default=str(rgt.DEFAULT_PATH), help="stand-alone results cache (JSON)")
    p.add_argument("--results", nargs="*", default=None,
                   help="bench/supernet_ranking.py result files (default: bench/results/supernet_ranking*.json)")
    p.add_argument("--pair", nargs=2, default=None, metavar=("A", "B"),
                   help="two of the results that differ only in the supernet's seed: their seed-to-seed tau and "
                        "the ranking of their mean")
    p.add_argument("--out", default=str(rgt.ROOT / "bench" / "results" / "ground_truth_length.json"))
    p.add_argument("--calibrated", default=None, metavar="FILE",
                   help="a supernet_ranking result: its calibrated-predictor comparison against each length (~1 min)")
    rgt.add_task_args(p)
    a = p.parse_args()
    if a.seeds < 2 or a.archs < 3 or a.long <= 0 or a.short <= 0:
        raise SystemExit("need --seeds >= 2, --archs >= 3 and positive --short/--long epochs")
    sys.path.insert(0, str(rgt.ROOT))
    from qnas.quant.checkpoint import atomic_write
    from qnas.space import SearchSpace

    archs = rgt.sample_archs(SearchSpace(), a.archs, a.seed)
    seeds = list(range(a.seeds))
    settings = {n: rgt.task_settings(a, n) for n in (a.short, a.long)}
    gts = {n: rgt.ground_truth(archs, seeds, st, a.ground_truth, a.jobs) for n, st in settings.items()}
    rows = {n: g["entries"] for n, g in gts.items()}
    task = settings[a.short].task
    res: dict[str, Any] = {"task": task, "archs": a.archs, "seed": a.seed, "seeds": seeds,
                           "settings": {n: asdict(st) for n, st in settings.items()},
                           "train_seconds": {n: float(np.median([e["train_seconds"] for r in rows[n] for e in r]))
                                             for n in rows},
                           "lengths": {n: length_stats(rows[n]) for n in rows}}

    print(f"{a.archs} archs x {a.seeds} seeds, stand-alone QAT from scratch, task: {task}")
    print(f"{'epochs':>6s} {'median acc':>10s} {'ceiling tau top-1':>18s} {'ceiling tau -loss':>18s}")
    for n, s in res["lengths"].items():
        loo = (f"   one run vs the mean of the others: top-1 {s['ceiling_loo_tau_eval_top1']:.3f}, -loss "
               f"{s['ceiling_loo_tau_eval_neg_loss']:.3f}") if "ceiling_loo_tau_eval_top1" in s else ""
        print(f"{n:6d} {100 * s['median_eval_acc']:9.1f}% {s['ceiling_tau_eval_top1']:18.3f} "
              f"{s['ceiling_tau_eval_neg_loss']:18.3f}{loo}")
    res["cross_tau"] = {k: cross_tau(rows[a.short], rows[a.long], get) for k, get in SIGNALS.items()}
    print(f"tau between a {a.short}-epoch and a {a.long}-epoch run (mean over seed pairs): "
          f"top-1 {res['cross_tau']['eval_top1']:.3f}, -loss {res['cross_tau']['eval_neg_loss']:.3f}")
    # 1.0: both lengths rank alike once their seed noise is taken out; lower: the length changes the ranking
    res["cross_tau_noise_free"] = {k: disattenuated(t, res["lengths"][a.short][f"ceiling_tau_{k}"],
                                                    res["lengths"][a.long][f"ceiling_tau_{k}"])
                                   for k, t in res["cross_tau"].items()}
    print(f"  estimated between the noise-free rankings (corrected for both lengths' seed noise): "
          f"top-1 {res['cross_tau_noise_free']['eval_top1']:.2f}, -loss {res['cross_tau_noise_free']['eval_neg_loss']:.2f}")

    counts = [two_bit_counts(x.to_dict()) for x in archs]
    res["two_bit_rho"] = {}
    for n in rows:
        acc = [float(np.mean([rgt.combined(e)["acc"] for e in r])) for r in rows[n]]
        res["two_bit_rho"][n] = {layer: rgt.rank_corr([c[layer] for c in counts], acc)[1] for layer in LAYERS}
        print(f"Spearman rho(2-bit convs, accuracy) at {n} epochs: "
              + ", ".join(f"{layer} {v:+.2f}" for layer, v in res["two_bit_rho"][n].items()))

    files = a.results if a.results is not None else sorted(glob.glob(str(rgt.ROOT / "bench" / "results" /
                                                                        "supernet_ranking*.json")))
    uids = [x.uid for x in archs]
    res["supernets"] = []
    inherited: dict[str, list[dict]] = {}
    print(f"\ntau of inherited scores vs single stand-alone runs (mean over seeds) / the seed-to-seed ceiling "
          f"-- like for like: 1.0x ranks as well as another stand-alone run; ~: estimated tau against the "
          f"noise-free ground truth (corrected for attenuation); with >= 3 seeds then tau vs the mean of k-1 runs "
          f"/ a left-out run's tau vs that mean")
    wide = 44 if a.seeds >= 3 else 30  # with >= 3 seeds: also tau vs the mean of k-1 runs / its ceiling
    print(f"{'supernet result':40s} " + " ".join(f"{f'{k} vs {n} ep':>{wide}s}" for n in rows for k in SIGNALS))
    for f in files:
        r = json.loads(Path(f).read_text())
        inh = [row for row in r["rows"] if not row.get("w8a8")]
        if [row["uid"] for row in inh] != uids or r.get("task", "digits") != task:
            print(f"{Path(f).name:40s} skipped: other archs or another task ({r.get('task', 'digits')})")
            continue
        entry: dict[str, Any] = {"file": Path(f).name, "epochs": r["supernet"].get("epochs"),
                                 "train_seconds": r["supernet"].get("train_seconds")}
        cells = score(inh, rows, res["lengths"], entry)
        res["supernets"].append(entry)
        inherited[Path(f).name] = inh
        print(f"{Path(f).name:40s} " + " ".join(f"{c:>{wide}s}" for c in cells))
    if a.pair:
        first, second = (inherited.get(Path(f).name) for f in a.pair)
        if first is None or second is None:
            raise SystemExit(f"--pair: both files must be among the results scored above, got {a.pair}")
        # two supernets that differ only in their seed: how reproducible is a supernet's ranking, and
        # does averaging the two rank better?
        both = [{"inherited": {"eval_acc": (x["inherited"]["eval_acc"] + y["inherited"]["eval_acc"]) / 2,
                               "eval_loss": (x["inherited"]["eval_loss"] + y["inherited"]["eval_loss"]) / 2}}
                for x, y in zip(first, second)]
        entry = {"files": [Path(f).name for f in a.pair],
                 "supernet_seed_to_seed_tau": {k: rgt.rank_corr([get(x) for x in first], [get(y) for y in second])[0]
                                               for k, get in INHERITED.items()}}
        cells = score(both, rows, res["lengths"], entry)
        res["pair"] = entry
        print(f"{'mean of the pair':40s} " + " ".join(f"{c:>{wide}s}" for c in cells))
        print("tau between the pair's inherited scores (supernet seed to seed): "
              + ", ".join(f"{k} {v:.3f}" for k, v in entry["supernet_seed_to_seed_tau"].items()))
    if a.calibrated:
        res["calibrated"] = calibrated_by_length(a.calibrated, rows, uids)
    out = Path(a.out)
    atomic_write(out, lambda t: Path(t).write_text(json.dumps(json_safe(res), indent=2)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
