#!/usr/bin/env python
"""Does the supernet rank archs like stand-alone training does, and how close does it come to the ceiling?

    .venv/bin/python bench/supernet_ranking.py [--archs 30] [--supernet-epochs 10] [--standalone-epochs 5]
    .venv/bin/python bench/supernet_ranking.py --supernet runs/sn/supernet.pt        # reuse a trained supernet
    .venv/bin/python bench/supernet_ranking.py --supernet-options '{"n_random": 4, "lr": 0.005}'

1. Ground truth (``bench/ranking_ground_truth.py``, cached in ``--ground-truth``): ``--archs``
   distinct random mixed-precision archs of the default digits space (sampled with ``--seed``),
   each trained stand-alone (QAT from scratch, ``--standalone-epochs``, BN re-calibrated) with
   ``--standalone-seeds`` training seeds. The ground truth of an arch is the mean over its seeds;
   the *ceiling* of a signal is the Kendall tau (and Spearman rho) between two seeds' values of it
   (the mean over seed pairs): no accuracy source can rank like stand-alone training more
   consistently than stand-alone training ranks like itself. Cached results are reused, so a
   rerun with another supernet trains only the supernet.
2. A supernet (``Supernet.from_seed(space, seed)``, progressive shrinking with ``--supernet-epochs``
   per phase, ``SupernetTrainConfig(**--supernet-options)``) is trained on the training split
   (training seconds and optimizer steps are reported), or loaded with ``--supernet``.
3. Inherited scores: ``SupernetEvaluator`` (BN re-calibrated on 10 training batches per arch)
   gives the validation accuracy the search sees; ``SupernetEvaluator.extract(arch)`` -- the same
   re-calibrated subnet as a stand-alone model -- is evaluated on validation + test.
4. Signals, each compared with the same signal of the ground truth: top-1 on the validation split
   (269 images, what the search uses today), top-1 on validation + test (628 images, neither ever
   trained on) and mean cross-entropy on validation + test (negated: continuous, so it resolves
   differences that top-1 on a few hundred images cannot). For each: Kendall tau with a 95 %
   bootstrap interval over archs (against the mean of the seeds), Spearman rho, and like for
   like with the seed-to-seed ceiling: tau against one seed at a time (mean over seeds) and
   that tau / ceiling (the goal of issue 12: >= 0.9; 1.0 ranks as well as another stand-alone
   run). ``bench/ground_truth_length.py`` recomputes these against a longer ground truth.
5. Accuracy: median and worst inherited accuracy, median stand-alone, median and worst gap
   inherited - stand-alone in points (validation + test); ``--w8a8 N`` adds the same for the W8A8
   version of the first N archs (their stand-alone ground truth is cached alike).
6. What the supernet misjudges: Spearman rho of each arch feature (resolution, width, blocks,
   expansion, kernel, 2-bit weights, 4-bit activations) with the rank of its inherited loss minus
   the rank of its stand-alone loss.
7. With >= 3 stand-alone seeds, whether a few stand-alone trainings would fix the ranking: a ridge
   regression on the same features (and the inherited score) fitted on k random archs' seed-0
   runs, judged on the others against their other seeds (:func:`calibrated`).

``--finetune-epochs N`` also scores each extracted subnet after N epochs of the stand-alone QAT
recipe from its inherited weights (a costlier accuracy source), with the same signals.
``--source-resolution PX`` / ``--train-images N`` run everything on a harder task (see
``bench/ranking_ground_truth.py``).

Writes ``--out`` (JSON, atomically) and ends with a one-line summary. Stand-alone training runs
on one torch thread per process (``--jobs`` processes); supernet training and the inherited
evaluation on ``--threads``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ranking_ground_truth as rgt  # noqa: E402

SIGNALS = (  # name, description, the value of one evaluation (higher is better)
    ("val_top1", "val top-1 (269)", lambda m: m["val"]["acc"]),
    ("eval_top1", "val+test top-1 (628)", lambda m: rgt.combined(m)["acc"]),
    ("eval_neg_loss", "val+test -CE loss (628)", lambda m: -rgt.combined(m)["loss"]),
)


def supernet_config(a: argparse.Namespace) -> Any:
    from qnas.supernet import Phase, SupernetTrainConfig, progressive_phases

    opts = json.loads(a.supernet_options) if a.supernet_options else {}
    if not isinstance(opts, dict):
        raise SystemExit(f"--supernet-options must be a JSON object, got {a.supernet_options!r}")
    valid = {f.name for f in fields(SupernetTrainConfig)}
    unknown = sorted(set(opts) - valid)
    if unknown:
        raise SystemExit(f"--supernet-options: unknown SupernetTrainConfig field(s) {unknown}; valid: {sorted(valid)}")
    if "phases" in opts:
        opts["phases"] = tuple(Phase.from_dict(p) for p in opts["phases"])
    else:
        opts["phases"] = progressive_phases(a.supernet_epochs)
    opts.setdefault("progress", False)
    return SupernetTrainConfig(**opts).validate()


def get_supernet(a: argparse.Namespace, space: Any, splits: Any) -> tuple[Any, dict[str, Any]]:
    """The trained supernet and what its training cost."""
    from qnas.quant.checkpoint import load_checkpoint
    from qnas.supernet import Supernet, load_supernet, train_supernet

    if a.supernet:
        supernet = load_supernet(a.supernet)
        p = Path(a.supernet)
        meta = load_checkpoint(p / "supernet.pt" if p.is_dir() else p)[1]
        hist, bs = meta.get("history", []), int((meta.get("config") or {}).get("batch_size", 64))
        n = len(splits.train)  # as train_supernet counts its steps (a last batch of one sample is dropped)
        steps = len(hist) * (n // bs + (1 if n % bs >= 2 else 0))
        return supernet, {"source": str(p), "train_seconds": round(sum(h.get("seconds", 0) for h in hist), 1),
                          "optimizer_steps": steps, "optimizer_steps_counted": False, "epochs": meta.get("epoch"),
                          "config": meta.get("config"), "history": hist}
    cfg = supernet_config(a)
    steps = [0]

    def count(*_: Any) -> None:
        steps[0] += 1

    supernet = Supernet.from_seed(space, cfg.seed, act_ranges=a.act_ranges)  # the same initial weights in every run
    from torch.optim.optimizer import register_optimizer_step_post_hook

    hook = register_optimizer_step_post_hook(count)
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            hist = train_supernet(supernet, splits, cfg, on_epoch=lambda e: print(
                f"  epoch {e['epoch']}/{cfg.epochs} ({e['phase']}) loss {e['loss']:.3f}"
                + (f", val largest {e['val_acc_largest']:.3f} smallest {e['val_acc_smallest']:.3f}"
                   if "val_acc_largest" in e else "") + f" ({e['seconds']:.0f} s)", flush=True))
    finally:
        hook.remove()
    return supernet, {"source": "trained", "train_seconds": round(time.perf_counter() - t0, 1),
                      "optimizer_steps": steps[0], "optimizer_steps_counted": True, "epochs": cfg.epochs,
                      "config": cfg.to_dict(), "act_ranges": a.act_ranges, "history": hist}


def finetuned(model: Any, data: Any, resolution: int, epochs: int, lr: float) -> dict[str, dict[str, float]]:
    """``evaluate_parts`` of ``model`` (an extracted subnet) after ``epochs`` of the stand-alone QAT recipe
    (seed 0, batch 64, cosine ``lr``) and BN re-calibration: the inherited weights as a starting point."""
    from qnas.quant.batchnorm import recalibrate_bn
    from qnas.quant.configs import TrainConfig
    from qnas.quant.train import train

    torch.manual_seed(0)
    train(model, data("train", resolution).loader(64, True, 0), None,
          TrainConfig(epochs=epochs, lr=lr, seed=0, progress=False))
    recalibrate_bn(model, data("train", resolution).loader(64, True, 0), batches=10)
    model.eval()
    return rgt.evaluate_parts(model, data, resolution)


def inherited_scores(supernet: Any, splits: Any, archs: list, threads: int, bn_batches: int = 10,
                     finetune_epochs: int = 0, finetune_lr: float = 1e-3) -> list[dict[str, Any]]:
    from qnas.data import ResizedSplits
    from qnas.quant.clipping import clipping_report
    from qnas.supernet import SupernetEvaluator

    ev = SupernetEvaluator(supernet, splits, bn_batches=bn_batches, seed=0, threads=threads)
    data = ResizedSplits(splits)
    out = []
    for arch in archs:
        t0 = time.perf_counter()
        official = ev(arch)["val_acc"]
        model = ev.extract(arch)
        m = rgt.evaluate_parts(model, data, arch.resolution)
        # issue 12: the share of values each range clips, on the validation images (logits: goal <= 1 %)
        clip = clipping_report(model, data("val", arch.resolution).images, max_batches=None, weights=False)
        out.append({**m, "evaluator_val_acc": official, "logits_clipped": clip.logits.share,
                    "worst_act_clipped": clip.worst_activation.share, "median_act_clipped": clip.median_activation_share,
                    "seconds": round(time.perf_counter() - t0, 2)})
        if finetune_epochs:
            t0 = time.perf_counter()
            out[-1]["finetuned"] = finetuned(model, data, arch.resolution, finetune_epochs, finetune_lr)
            out[-1]["finetune_seconds"] = round(time.perf_counter() - t0, 2)
    return out


def signal_stats(inh: list[dict], gt: list[list[dict]], boot: int) -> dict[str, Any]:
    res = {}
    for key, label, get in SIGNALS:
        x = [get(m) for m in inh]
        y = [float(np.mean([get(e) for e in row])) for row in gt]
        tau, rho = rgt.rank_corr(x, y)
        lo, hi = rgt.bootstrap_tau(x, y, boot) if boot else (float("nan"), float("nan"))
        c_tau, c_rho = rgt.seed_ceiling(rgt.runs_per_seed(gt, get))
        s_tau, s_rho = rgt.corr_vs_single_runs(x, gt, get)  # like for like with the ceiling
        res[key] = {k: rgt.finite(v) for k, v in {
            "tau": tau, "tau_ci95_low": lo, "tau_ci95_high": hi, "rho": rho, "ceiling_tau": c_tau,
            "ceiling_rho": c_rho, "tau_over_ceiling": s_tau / c_tau if c_tau and c_tau > 0 else float("nan"),
            "rho_over_ceiling": s_rho / c_rho if c_rho and c_rho > 0 else float("nan"),
            "tau_vs_single_seed": s_tau, "rho_vs_single_seed": s_rho}.items()}
        res[key]["label"] = label
    return res


def accuracy_stats(inh: list[dict], gt: list[list[dict]]) -> dict[str, Any]:
    i = np.array([rgt.combined(m)["acc"] for m in inh])
    s = np.array([np.mean([rgt.combined(e)["acc"] for e in row]) for row in gt])
    gap = 100 * (i - s)
    return {"n": int(len(i)), "median_inherited": float(np.median(i)), "worst_inherited": float(i.min()),
            "median_standalone": float(np.median(s)), "worst_standalone": float(s.min()),
            "median_gap_points": float(np.median(gap)), "worst_gap_points": float(gap.min()),
            "median_inherited_val": float(np.median([m["val"]["acc"] for m in inh]))}


def arch_features(arch: dict[str, Any]) -> dict[str, float]:
    """What a subnet is made of, for :func:`misjudged_features`."""
    blocks = [b for stage in arch["stages"] for b in stage if b]
    return {"resolution": arch["resolution"], "width": arch["width"], "blocks": len(blocks),
            "mean expansion": float(np.mean([b["e"] for b in blocks])),
            "mean kernel": float(np.mean([b["k"] for b in blocks])),
            "2-bit weights": sum(w == 2 for b in blocks for w in b["w"]),
            "4-bit activations": sum(x == 4 for b in blocks for x in b["a"])}


def misjudged_features(rows: list[dict[str, Any]], source: str = "inherited") -> dict[str, float]:
    """Spearman rho of each arch feature with (rank of the source's loss - rank of the stand-alone loss):
    > 0 where the source judges archs with more of the feature worse than stand-alone training does."""
    from scipy.stats import rankdata

    resid = rankdata([r[source]["eval_loss"] for r in rows]) - rankdata([r["standalone"]["eval_loss"] for r in rows])
    feats = [arch_features(r["arch"]) for r in rows]
    return {k: rgt.finite(rgt.rank_corr([f[k] for f in feats], list(resid))[1]) for k in feats[0]}


def calibrated(rows: list[dict[str, Any]], sizes: tuple[int, ...] = (5, 10, 15, 20), repeats: int = 300,
               seed: int = 0) -> dict[str, Any] | None:
    """Would a few stand-alone trainings fix the supernet's ranking? For each size k, ``repeats`` times: k
    random archs "trained stand-alone" (their seed-0 run) fit a ridge regression (standardised inputs,
    alpha 1) of stand-alone loss / top-1 on the arch's :func:`arch_features`, with and without the
    inherited score; the other archs are ranked by its prediction and judged like for like against
    their seed-1.. runs (tau against one run at a time / the tau between those runs on the same archs).
    None with fewer than 3 stand-alone seeds (the fitting seed must not be judged)."""
    from scipy.stats import kendalltau
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    runs_of = {"eval_neg_loss": lambda p: -p["eval_loss"], "eval_top1": lambda p: p["eval_acc"]}
    inherited_of = {"eval_neg_loss": lambda r: -r["inherited"]["eval_loss"], "eval_top1": lambda r: r["inherited"]["eval_acc"]}
    if len(rows[0]["standalone"]["per_seed"]) < 3:
        return None
    feats = np.array([list(arch_features(r["arch"]).values()) for r in rows], float)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"features": list(arch_features(rows[0]["arch"])), "repeats": repeats}
    for key in runs_of:
        runs = np.array([[runs_of[key](p) for p in r["standalone"]["per_seed"]] for r in rows])
        inh = np.array([inherited_of[key](r) for r in rows])
        sources = {"inherited": None, "features": feats, "features + inherited": np.c_[feats, inh]}
        out[key] = {}
        for k in sizes:
            if k > len(rows) - 3:
                continue
            taus: dict[str, list[float]] = {name: [] for name in sources}
            ceilings = []
            for _ in range(repeats):
                order = rng.permutation(len(rows))
                fit, held = order[:k], order[k:]
                judge = [runs[held, j] for j in range(1, runs.shape[1])]
                ceilings.append(np.mean([kendalltau(a, b).statistic for i, a in enumerate(judge) for b in judge[i + 1:]]))
                for name, X in sources.items():
                    pred = inh[held] if X is None else make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(
                        X[fit], runs[fit, 0]).predict(X[held])
                    taus[name].append(np.mean([kendalltau(pred, run).statistic for run in judge]))
            c = float(np.nanmean(ceilings))
            out[key][k] = {"ceiling_tau": c, **{name: {"tau_vs_single_seed": float(np.nanmean(v)),
                                                       "tau_over_ceiling": float(np.nanmean(v)) / c}
                                                for name, v in taus.items()}}
    return out


def print_calibrated(calib: dict[str, Any], prefix: str) -> None:
    """One line per signal and k of :func:`calibrated`'s result."""
    for key, label, _ in SIGNALS[1:]:
        for k, c in calib[key].items():
            print(f"{prefix}{label:24s} k={k:2d}  ceiling {c['ceiling_tau']:.3f}  " + "  ".join(
                f"{name} {c[name]['tau_vs_single_seed']:.3f} ({c[name]['tau_over_ceiling']:.2f}x)"
                for name in ("inherited", "features", "features + inherited")))


def print_signals(sig: dict[str, Any], title: str) -> None:
    print(f"\n{title}\n{'signal':24s} {'tau':>6s} {'95% CI':>15s}   {'tau 1 seed':>10s} {'ceiling':>8s} {'ratio':>6s}   "
          f"{'rho 1 seed':>10s} {'ceiling':>8s} {'ratio':>6s}   (tau: vs the seeds' mean; ratio: 1-seed / ceiling)")
    for key, label, _ in SIGNALS:
        s = sig[key]
        ci = f"[{fmt(s['tau_ci95_low'], '.2f')}, {fmt(s['tau_ci95_high'], '.2f')}]"
        print(f"{label:24s} {fmt(s['tau']):>6s} {ci:>15s}   {fmt(s['tau_vs_single_seed']):>10s} "
              f"{fmt(s['ceiling_tau']):>8s} {fmt(s['tau_over_ceiling'], '.2f'):>6s}   "
              f"{fmt(s['rho_vs_single_seed']):>10s} {fmt(s['ceiling_rho']):>8s} {fmt(s['rho_over_ceiling'], '.2f'):>6s}")


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=rgt.ROOT, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "  n/a" if v is None else format(v, spec)


def main() -> None:
    from qnas.cli._args import non_negative_int, phase_epochs, positive_float

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--archs", type=int, default=30)
    p.add_argument("--standalone-epochs", type=int, default=5)
    p.add_argument("--standalone-seeds", type=int, default=2, help="training seeds per arch (>= 2 for a ceiling)")
    p.add_argument("--supernet-epochs", type=phase_epochs, default=10, metavar="N|K,D,W,B",
                   help="epochs per progressive-shrinking phase (4 phases), or per phase: kernel,depth,width,bits")
    p.add_argument("--eval-bn-batches", type=int, default=10,
                   help="training batches of 64 that re-estimate each arch's BN (and activation ranges) before "
                        "it is scored (SupernetEvaluator's bn_batches; default 10)")
    p.add_argument("--act-ranges", default="batch", choices=["batch", "learned"],
                   help="the supernet's activation ranges: batch statistics (default) or learned thresholds")
    p.add_argument("--supernet-options", default=None,
                   help="JSON object of SupernetTrainConfig fields, e.g. '{\"n_random\": 4, \"lr\": 0.005}' "
                        "(\"phases\": a list of Phase dicts replaces --supernet-epochs; \"checkpoint_dir\" "
                        "saves the supernet for --supernet)")
    p.add_argument("--supernet", default=None, help="a trained supernet checkpoint (supernet.pt or its directory) "
                                                    "instead of training one")
    p.add_argument("--finetune-epochs", type=non_negative_int, default=0,
                   help="also score each extracted subnet after this many epochs of stand-alone QAT from its "
                        "inherited weights (a costlier accuracy source; 0: off)")
    p.add_argument("--finetune-lr", type=positive_float, default=1e-3, help="peak learning rate of that fine-tuning")
    p.add_argument("--seed", type=int, default=1, help="arch sampling seed")
    p.add_argument("--w8a8", type=int, default=0, help="also compare the W8A8 version of the first N archs")
    p.add_argument("--jobs", type=int, default=1, help="stand-alone training processes (one thread each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for supernet training and evaluation")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for tau's 95 %% interval (0: none)")
    p.add_argument("--ground-truth", default=str(rgt.DEFAULT_PATH), help="stand-alone results cache (JSON)")
    p.add_argument("--refresh-ground-truth", action="store_true",
                   help="retrain cached stand-alone results made with other stand-alone code")
    p.add_argument("--out", default=str(rgt.ROOT / "bench" / "results" / "supernet_ranking.json"))
    rgt.add_task_args(p)
    a = p.parse_args()
    if a.archs < 3 or a.standalone_seeds < 1:
        raise SystemExit("--archs must be >= 3 and --standalone-seeds >= 1")

    from qnas.quant.checkpoint import atomic_write
    from qnas.space import SearchSpace

    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    settings = rgt.task_settings(a, a.standalone_epochs)
    splits = rgt.load_splits(settings)
    print(f"task: {settings.task} ({len(splits.train)} training images)", flush=True)
    space = SearchSpace()
    archs = rgt.sample_archs(space, a.archs, a.seed)
    extra = [rgt.w8a8(x) for x in archs[:a.w8a8]]
    seeds = list(range(a.standalone_seeds))
    if a.supernet_options or not a.supernet:
        supernet_config(a)  # fail on bad options before the slow part
    gt = rgt.ground_truth(archs + extra, seeds, settings, a.ground_truth, a.jobs, a.refresh_ground_truth)
    gt_rows, gt_extra = gt["entries"][:len(archs)], gt["entries"][len(archs):]

    print("supernet: " + (f"loading {a.supernet}" if a.supernet else "training ..."), flush=True)
    supernet, sn = get_supernet(a, space, splits)
    print(f"supernet: {sn['train_seconds']:.0f} s, {sn['optimizer_steps']} optimizer steps, {sn['epochs']} epochs",
          flush=True)
    t0 = time.perf_counter()
    inh = inherited_scores(supernet, splits, archs + extra, a.threads, a.eval_bn_batches,
                           a.finetune_epochs, a.finetune_lr)
    t_inh = time.perf_counter() - t0
    inh_rows, inh_extra = inh[:len(archs)], inh[len(archs):]

    rows = []
    print(f"\n{'#':>3} {'inherited':>17} {'stand-alone':>17}  (val+test top-1 / CE loss; stand-alone: mean of "
          f"{len(seeds)} seeds)  arch")
    for k, (arch, m, g) in enumerate(zip(archs + extra, inh, gt["entries"]), 1):
        c = rgt.combined(m)
        gs = [rgt.combined(e) for e in g]
        row = {"arch": arch.to_dict(), "uid": arch.uid, "describe": arch.describe(), "w8a8": k > len(archs),
               "inherited": {"val_acc": m["val"]["acc"], "val_loss": m["val"]["loss"], "eval_acc": c["acc"],
                             "eval_loss": c["loss"], "evaluator_val_acc": m["evaluator_val_acc"]},
               "standalone": {"val_acc": float(np.mean([e["val"]["acc"] for e in g])),
                              "val_loss": float(np.mean([e["val"]["loss"] for e in g])),
                              "eval_acc": float(np.mean([x["acc"] for x in gs])),
                              "eval_loss": float(np.mean([x["loss"] for x in gs])),
                              "per_seed": [{"seed": e["seed"], "val_acc": e["val"]["acc"], "eval_acc": x["acc"],
                                            "eval_loss": x["loss"], "train_seconds": e["train_seconds"]}
                                           for e, x in zip(g, gs)]}}
        if "finetuned" in m:
            f = rgt.combined(m["finetuned"])
            row["finetuned"] = {"val_acc": m["finetuned"]["val"]["acc"], "eval_acc": f["acc"], "eval_loss": f["loss"]}
        rows.append(row)
        tag = "W8A8 " if row["w8a8"] else ""
        print(f"{k:3d} {c['acc']:8.3f} / {c['loss']:5.3f}  {row['standalone']['eval_acc']:8.3f} / "
              f"{row['standalone']['eval_loss']:5.3f}  {tag}{arch.describe()}")
    parity = max(abs(m["val"]["acc"] - m["evaluator_val_acc"]) for m in inh)

    sig = signal_stats(inh_rows, gt_rows, a.bootstrap)
    acc = accuracy_stats(inh_rows, gt_rows)
    acc_w8 = accuracy_stats(inh_extra, gt_extra) if extra else None
    print_signals(sig, "inherited")
    ft = None
    if a.finetune_epochs:
        ft_rows = [m["finetuned"] for m in inh_rows]
        ft = {"epochs": a.finetune_epochs, "lr": a.finetune_lr, "signals": signal_stats(ft_rows, gt_rows, a.bootstrap),
              "accuracy": accuracy_stats(ft_rows, gt_rows),
              "median_seconds_per_arch": float(np.median([m["finetune_seconds"] for m in inh_rows]))}
        print_signals(ft["signals"], f"inherited + {a.finetune_epochs} epoch(s) of QAT "
                                     f"({ft['median_seconds_per_arch']:.1f} s per arch)")
        print(f"fine-tuned: median {100 * ft['accuracy']['median_inherited']:.1f} %, worst "
              f"{100 * ft['accuracy']['worst_inherited']:.1f} %")
    for name, st in (("mixed", acc), ("W8A8", acc_w8)):
        if st:
            print(f"{name} ({st['n']} archs, val+test top-1): inherited median {100 * st['median_inherited']:.1f} %, "
                  f"worst {100 * st['worst_inherited']:.1f} %; stand-alone median {100 * st['median_standalone']:.1f} %; "
                  f"gap inherited - stand-alone median {st['median_gap_points']:+.1f} points, "
                  f"worst {st['worst_gap_points']:+.1f}")
    bias = {src: misjudged_features([r for r in rows if not r["w8a8"]], src)
            for src in ("inherited", "finetuned") if src in rows[0]}
    for src, b in bias.items():
        print(f"what the {src} loss misjudges (Spearman rho of each feature with its rank minus the stand-alone "
              "rank; > 0: judged worse than stand-alone does): "
              + ", ".join(f"{k} {fmt(v, '+.2f')}" for k, v in b.items()))
    calib = calibrated([r for r in rows if not r["w8a8"]])
    if calib:
        print(f"\ncalibrated by k stand-alone archs (ridge on {', '.join(calib['features'])}; "
              f"{calib['repeats']} random draws; held-out archs, like for like):")
        print_calibrated(calib, "  ")
    clipped = [m["logits_clipped"] for m in inh_rows]
    clip_stats = {"logits_clipped_median": float(np.median(clipped)), "logits_clipped_max": float(np.max(clipped)),
                  "worst_act_clipped_median": float(np.median([m["worst_act_clipped"] for m in inh_rows]))}
    print(f"clipped logits (validation images): median {100 * clip_stats['logits_clipped_median']:.3f} %, max "
          f"{100 * clip_stats['logits_clipped_max']:.3f} % (goal <= 1 %: "
          f"{'met' if clip_stats['logits_clipped_max'] <= 0.01 else 'not met'}); the most-clipping activation "
          f"quantizer of an arch clips a median {100 * clip_stats['worst_act_clipped_median']:.3f} %")
    for key, label, _ in SIGNALS[1:]:
        r = sig[key]["tau_over_ceiling"]
        print(f"goal tau >= 0.9 x ceiling on {label}: {'met' if r is not None and r >= 0.9 else 'not met'} "
              f"({fmt(r, '.2f')}x)")
    if parity > 1e-6:
        print(f"note: the extracted subnet's val accuracy differs from SupernetEvaluator's by up to "
              f"{100 * parity:.2f} points (extract() parity)")

    res = {
        "commit": git_commit(), "args": vars(a), "task": settings.task, "n_archs": len(archs), "standalone_seeds": seeds,
        "eval_set": {p: int(len(getattr(splits, p))) for p in ("train", "val", "test")},
        "supernet": sn, "inherited_eval_seconds": round(t_inh, 1),
        "ground_truth": {"path": str(a.ground_truth), "settings": asdict(settings), "trained": gt["trained"], "cached": gt["cached"], "seconds": gt["seconds"],
                         "stale": gt["stale"],
                         "median_train_seconds": float(np.median([e["train_seconds"] for r in gt["entries"] for e in r]))},
        "signals": sig, "finetuned": ft, "misjudged_features": bias, "calibrated": calib, "accuracy": acc, "accuracy_w8a8": acc_w8, "clipping": clip_stats, "extract_parity_max_abs": parity,
        "total_seconds": round(time.perf_counter() - t_start, 1), "rows": rows,
    }
    out = Path(a.out)
    atomic_write(out, lambda f: Path(f).write_text(json.dumps(res, indent=2)))
    print(f"wrote {out}")
    L, T = sig["eval_neg_loss"], sig["eval_top1"]
    print(f"SUMMARY supernet {sn['train_seconds']:.0f} s / {sn['optimizer_steps']} steps | {len(archs)} archs | "
          f"tau (1 seed) loss {fmt(L['tau_vs_single_seed'], '.2f')} (ceiling {fmt(L['ceiling_tau'], '.2f')}, {fmt(L['tau_over_ceiling'], '.2f')}x) | "
          f"tau top-1 {fmt(T['tau_vs_single_seed'], '.2f')} (ceiling {fmt(T['ceiling_tau'], '.2f')}, {fmt(T['tau_over_ceiling'], '.2f')}x) | "
          f"inherited median {100 * acc['median_inherited']:.1f} % worst {100 * acc['worst_inherited']:.1f} % | "
          f"gap median {acc['median_gap_points']:+.1f} pts | logits clipped max {100 * clip_stats['logits_clipped_max']:.2f} %")


if __name__ == "__main__":
    main()
