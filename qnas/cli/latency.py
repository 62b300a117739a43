"""``qnas latency {show,predict,measure,eval,check-table,import,kit}``: parse and call :mod:`qnas.latency`
(:mod:`qnas.latency.evaluation` for predict / measure / eval, :mod:`qnas.latency.table` for check-table,
:mod:`qnas.latency.importers` for import, :mod:`qnas.latency.kit` for kit)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from qnas.cli._args import (add_command_group, add_force_progress, add_latency_args, add_target_args,
                            non_negative_int, positive_int, refuse_existing, seed_int, thread_count)


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
    refuse_existing(a.out, a.overwrite, "--out")  # before the timing, not after it
    from qnas.latency.evaluation import measure_latency_table

    measure_latency_table(a.out, space=a.space, archs=a.archs, seed=a.seed, target=a.target, threads=a.threads,
                          warmup=a.warmup, repeats=a.repeats, passes=a.passes, overwrite=a.overwrite,
                          progress=a.progress, log=print)
    return 0


def cmd_latency_eval(a: argparse.Namespace) -> int:
    from qnas.options import check_latency_target

    check_latency_target(a.target)
    refuse_existing(a.out, a.overwrite, "--out")  # before the evaluation, not after it
    refuse_existing(a.save_hybrid, a.overwrite, "--save-hybrid")
    if a.latency_table:  # read (and refused) now, not after timing the archs
        from qnas.latency.table import load_table

        load_table(a.latency_table)
    if a.latency_hybrid:
        from qnas.latency import create_latency_model
        from qnas.latency.hybrid import HybridLatencyModel

        HybridLatencyModel.load(a.latency_hybrid, create_latency_model(a.target))
    from qnas.latency.evaluation import evaluate_latency_models

    evaluation = evaluate_latency_models(n=a.n, seed=a.seed, target=a.target, space=a.space,
                                         latency_table=a.latency_table, latency_hybrid=a.latency_hybrid,
                                         save_hybrid=a.save_hybrid, n_fit=a.n_fit, passes=a.passes,
                                         overwrite=a.overwrite, progress=a.progress, log=print)
    print("\n".join(evaluation.lines()))
    if a.out:
        evaluation.save(a.out, overwrite=a.overwrite)
    return 0


def cmd_latency_check_table(a: argparse.Namespace) -> int:
    from qnas.cli._args import load_space
    from qnas.latency.table import load_table, space_layer_keys
    from qnas.space import SearchSpace

    table = load_table(a.table)
    space = load_space(a.space) or SearchSpace()
    what = f"space {a.space}" if a.space else "the default space"
    cov = table.coverage(space_layer_keys(space))
    print(cov.summary(what))
    for note, n in cov.rule_counts().items():
        print(f"  {n:6d} keys priced by {note}")
    if cov.complete:
        return 0
    print(f"missing keys ({len(cov.missing)}; op, cin, cout, hw = input size, k, stride, groups, w_bits, a_bits):")
    print("\n".join(cov.missing_lines(a.limit)))
    more = f"; --limit 0 lists all {len(cov.missing)}" if a.limit and len(cov.missing) > a.limit else ""
    print(f"qnas: error: latency table {table.name} cannot price {len(cov.missing)} of the {cov.n_keys} distinct "
          f"layer keys of {what}{more}", file=sys.stderr)
    return 2


def cmd_latency_import(a: argparse.Namespace) -> int:
    from qnas.latency.importers import import_table_file

    result = import_table_file(a.src, a.format, a.out, overwrite=a.overwrite, device=a.device_name, unit=a.unit,
                               kernel=a.kernel, bits=a.bits)
    print("\n".join(result.lines()))
    print(f"wrote {a.out} ({len(result.table)} entries); check it against a space with "
          f"`qnas latency check-table --space SPACE.yaml {a.out}`")
    return 0


def cmd_latency_kit(a: argparse.Namespace) -> int:
    from qnas.latency.kit import check_backend, check_kit_out

    check_backend(a.backend)  # both refusals before the space is read or anything is built
    check_kit_out(a.out, a.overwrite)
    from qnas.cli._args import load_space
    from qnas.latency.kit import write_kit
    from qnas.space import SearchSpace

    space = load_space(a.space) or SearchSpace()
    if a.archs:
        from qnas.latency.evaluation import sample_archs

        archs = sample_archs(space, a.archs, a.seed)
    else:
        archs = None
    write_kit(a.backend, space, a.out, target_profile=a.target_profile, overwrite=a.overwrite, progress=a.progress,
              archs=archs, log=print)
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
    lm.add_argument("--threads", type=thread_count, default=1, help="onnxruntime intra-op threads (default 1)")
    lm.add_argument("--warmup", type=non_negative_int, default=5)
    lm.add_argument("--repeats", type=positive_int, default=20)
    lm.add_argument("--passes", type=positive_int, default=1, help="sweeps over all layers; each keeps its fastest median")
    add_force_progress(lm, "overwrite --out if it exists")
    lm.set_defaults(func=cmd_latency_measure)
    le = lsub.add_parser("eval", help="measure fresh archs here and report each predictor's fidelity",
                         description="Export and time --n archs sampled with --seed in onnxruntime on this machine, "
                                     "and report Kendall tau, MAPE and the share within +-10%% for the analytic "
                                     "model, a table (--latency-table) and a hybrid (--latency-hybrid); "
                                     "--save-hybrid fits a hybrid on --n-fit other archs first.")
    add_target_args(le, help="latency target; only cpu-ort (this machine) can be measured here")
    le.add_argument("--n", type=positive_int, default=30, help="archs to evaluate on (default 30)")
    le.add_argument("--n-fit", type=positive_int, default=60, help="archs to fit --save-hybrid on (default 60)")
    le.add_argument("--save-hybrid", metavar="PATH", help="fit a hybrid correction and write it here (JSON)")
    le.add_argument("--latency-table", metavar="PATH", help="per-layer table to evaluate (and use as hybrid base)")
    le.add_argument("--latency-hybrid", metavar="PATH", help="fitted hybrid correction to evaluate")
    le.add_argument("--space", metavar="YAML")
    le.add_argument("--seed", type=seed_int, default=1, help="arch sampling seed (default 1)")
    le.add_argument("--passes", type=positive_int, default=3, help="timing passes per model; the fastest is kept")
    le.add_argument("--out", help="write the figures as JSON")
    add_force_progress(le, "overwrite --out and --save-hybrid if they exist")
    le.set_defaults(func=cmd_latency_eval)
    lc = lsub.add_parser("check-table", help="list every layer key of a space a latency table cannot price",
                         description="Enumerate every distinct layer a search space can produce and check that "
                                     "TABLE prices each (by its entry, a fallback rule or a default). Exit 0 when "
                                     "it does, 2 with the count and the missing keys when not.")
    lc.add_argument("table", metavar="TABLE", help="latency table (.json or .csv)")
    lc.add_argument("--space", metavar="YAML", help="search-space config or preset name (default: the embedded "
                                                    "digits space)")
    lc.add_argument("--limit", type=non_negative_int, default=50, metavar="N",
                    help="list at most N missing keys (default %(default)s; 0: all)")
    lc.set_defaults(func=cmd_latency_check_table)
    li = lsub.add_parser("import", help="convert a published per-layer latency table to a qnas table",
                         description="Convert SRC (APQ's '(cin, cout, hw, k, stride, pad, groups)-WxAy' dict, an "
                                     "nn-Meter kernel CSV, any per-layer CSV, or the results.csv of a `qnas latency "
                                     "kit` runner, checked against the kit's manifest.json) to a qnas latency table; "
                                     "the key conventions are in qnas/latency/importers.py.")
    li.add_argument("src", metavar="SRC", help="the table to convert")
    li.add_argument("--format", choices=["apq", "nnmeter", "csv", "kit"],
                    help="format of SRC (a latency kit's results.csv is recognised without it)")
    li.add_argument("--out", required=True, metavar="TABLE", help="qnas table to write (.json or .csv)")
    li.add_argument("--device", dest="device_name", metavar="NAME",
                    help="the latency target SRC was measured on, stored as the table's meta.device and shown "
                         "wherever the table prices (default: the name of SRC)")
    li.add_argument("--bits", metavar="W,A", help="weight,activation bits of rows that carry none (nnmeter, csv; "
                                                  "default 32,32 = float)")
    li.add_argument("--kernel", metavar="KIND", help="nn-Meter kernel type of SRC (default: its kernel column or "
                                                     "file name Data_<kernel>_<mark>.csv)")
    li.add_argument("--unit", default="ms", choices=["ms", "us", "s"],
                    help="unit of SRC's values when it is not what its format says (default ms)")
    li.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                    help="replace --out if it exists")
    li.set_defaults(func=cmd_latency_import)
    lk = lsub.add_parser("kit", help="write a kit that measures a latency table on your own device",
                         description="Write every distinct layer of the search space as the one-layer model the "
                                     "backend's exporter writes, plus a standalone runner for the device (onnx: "
                                     "run_onnx.py with onnxruntime; tflite: run_tflite.py with LiteRT and "
                                     "run_android.sh with adb + benchmark_model; tensorrt: run_trtexec.sh; coreml: "
                                     "run_coreml.py on a Mac). The runner writes KIT/results.csv; `qnas latency "
                                     "import KIT/results.csv --out T.json` builds the table.")
    lk.add_argument("--backend", required=True, metavar="BACKEND",
                    help="onnx, tflite, coreml or tensorrt: the exporter whose files the device will run")
    lk.add_argument("--out", required=True, metavar="KIT", help="kit folder to write (must not exist or be empty)")
    lk.add_argument("--space", metavar="YAML", help="search-space config or preset name (default: the embedded "
                                                    "digits space)")
    lk.add_argument("--target-profile", default="default", metavar="P",
                    help="latency target profile whose precision map the manifest records per layer (default: the "
                         "backend's export default; 'none': no map)")
    lk.add_argument("--archs", type=non_negative_int, default=0,
                    help="only the layers of N sampled archs (default: every layer of the space)")
    lk.add_argument("--seed", type=seed_int, default=0, help="seed of the --archs samples")
    add_force_progress(lk, "replace a non-empty --out")
    lk.set_defaults(func=cmd_latency_kit)
    return lat
