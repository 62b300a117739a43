"""``qnas latency {show,predict,measure,eval}``: parse and call :mod:`qnas.latency`
(:mod:`qnas.latency.evaluation` for predict / measure / eval)."""
from __future__ import annotations

import argparse
from typing import Any

from qnas.cli._args import (add_command_group, add_force_progress, add_latency_args, add_target_args,
                            non_negative_int, refuse_existing, seed_int)


def cmd_latency_show(a: argparse.Namespace) -> int:
    from qnas.latency import load_profile
    from qnas.latency.report import format_profile

    print(format_profile(load_profile(a.profile)))
    return 0


def cmd_latency_predict(a: argparse.Namespace) -> int:
    from qnas.options import check_latency_target

    check_latency_target(a.target)
    from qnas.latency.evaluation import predict_latency

    prediction = predict_latency(a.arch, a.target, a.latency_kind, a.latency_table, a.latency_hybrid, a.space,
                                 breakdown=a.breakdown)
    print("\n".join(prediction.lines()))
    return 0


def cmd_latency_measure(a: argparse.Namespace) -> int:
    from qnas.options import check_latency_target

    check_latency_target(a.target)
    from qnas.latency.evaluation import measure_latency_table

    measure_latency_table(a.out, space=a.space, archs=a.archs, seed=a.seed, target=a.target, threads=a.threads,
                          warmup=a.warmup, repeats=a.repeats, passes=a.passes, overwrite=a.overwrite,
                          progress=a.progress, log=print)
    return 0


def cmd_latency_eval(a: argparse.Namespace) -> int:
    from qnas.options import check_latency_target

    check_latency_target(a.target)
    refuse_existing(a.out, a.overwrite, "--out")  # before the evaluation, not after it
    from qnas.latency.evaluation import evaluate_latency_models

    evaluation = evaluate_latency_models(n=a.n, seed=a.seed, target=a.target, space=a.space,
                                         latency_table=a.latency_table, latency_hybrid=a.latency_hybrid,
                                         save_hybrid=a.save_hybrid, n_fit=a.n_fit, passes=a.passes,
                                         overwrite=a.overwrite, progress=a.progress, log=print)
    print("\n".join(evaluation.lines()))
    if a.out:
        evaluation.save(a.out, overwrite=a.overwrite)
    return 0


def add_latency_parser(sub: Any) -> argparse.ArgumentParser:
    lat, lsub = add_command_group(sub, "latency", "latency target profiles and latency predictors",
                                  "Inspect latency target profiles and predict, measure and evaluate latency.",
                                  "latency_command")
    ls = lsub.add_parser("show", help="print a latency target's profile with its sources",
                         description="Print what a latency target's profile says the target executes, and where "
                                     "each fact comes from.")
    ls.add_argument("profile", help="latency target: profile name (e.g. edgetpu) or path of a profile JSON")
    ls.set_defaults(func=cmd_latency_show)
    lp = lsub.add_parser("predict", help="predict the latency of an arch on a latency target",
                         description="Predict the batch-1 latency of ARCH (arch JSON file, run directory, "
                                     "model.pt or inline JSON).")
    lp.add_argument("arch", metavar="ARCH")
    add_target_args(lp)
    lp.add_argument("--space", metavar="YAML", help="search-space config the arch belongs to")
    lp.add_argument("--breakdown", action="store_true", help="print the per-layer breakdown")
    add_latency_args(lp)
    lp.set_defaults(func=cmd_latency_predict)
    lm = lsub.add_parser("measure", help="build a per-layer latency table by timing layers here",
                         description="Time every distinct layer of the search space (or of --archs sampled archs) "
                                     "in onnxruntime on this machine, in the float/QDQ form its bits dictate.")
    add_target_args(lm, help="latency target; only cpu-ort (this machine) can be measured here")
    lm.add_argument("--out", required=True, help="table file to write (.json or .csv)")
    lm.add_argument("--space", metavar="YAML", help="search-space config (default: the embedded digits space)")
    lm.add_argument("--archs", type=non_negative_int, default=0, help="measure only the layers of N sampled archs (default: all)")
    lm.add_argument("--seed", type=seed_int, default=0)
    lm.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    lm.add_argument("--warmup", type=int, default=5)
    lm.add_argument("--repeats", type=int, default=20)
    lm.add_argument("--passes", type=int, default=1, help="sweeps over all layers; each keeps its fastest median")
    add_force_progress(lm, "overwrite --out if it exists")
    lm.set_defaults(func=cmd_latency_measure)
    le = lsub.add_parser("eval", help="measure fresh archs here and report each predictor's fidelity",
                         description="Export and time --n archs sampled with --seed in onnxruntime on this machine, "
                                     "and report Kendall tau, MAPE and the share within +-10%% for the analytic "
                                     "model, a table (--latency-table) and a hybrid (--latency-hybrid); "
                                     "--save-hybrid fits a hybrid on --n-fit other archs first.")
    add_target_args(le, help="latency target; only cpu-ort (this machine) can be measured here")
    le.add_argument("--n", type=int, default=30, help="archs to evaluate on (default 30)")
    le.add_argument("--n-fit", type=int, default=60, help="archs to fit --save-hybrid on (default 60)")
    le.add_argument("--save-hybrid", metavar="PATH", help="fit a hybrid correction and write it here (JSON)")
    le.add_argument("--latency-table", metavar="PATH", help="per-layer table to evaluate (and use as hybrid base)")
    le.add_argument("--latency-hybrid", metavar="PATH", help="fitted hybrid correction to evaluate")
    le.add_argument("--space", metavar="YAML")
    le.add_argument("--seed", type=seed_int, default=1, help="arch sampling seed (default 1)")
    le.add_argument("--passes", type=int, default=3, help="timing passes per model; the fastest is kept")
    le.add_argument("--out", help="write the figures as JSON")
    add_force_progress(le, "overwrite --out and --save-hybrid if they exist")
    le.set_defaults(func=cmd_latency_eval)
    return lat
