"""Command line: parses arguments and calls the library; user errors exit 2 with one line."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Sequence

from qnas.errors import QnasError


def _space(path: str | None):
    from qnas.space import SearchSpace

    return SearchSpace.from_yaml(path) if path else None


def _positive_float(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {v!r}") from None
    if not f > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v!r}")
    return f


LATENCY_KINDS = ["analytic", "table", "measured", "hybrid"]


def _add_latency_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latency", default="analytic", choices=LATENCY_KINDS,
                   help="latency predictor: the device profile's roofline (default), a per-layer table measured on "
                        "the device (--latency-table), measured here on demand (cpu-ort only), or hybrid "
                        "(table/analytic + learned correction, --latency-hybrid)")
    p.add_argument("--latency-table", metavar="PATH", help="per-layer latency table (JSON/CSV)")
    p.add_argument("--latency-hybrid", metavar="PATH", help="fitted hybrid correction (JSON) for --latency hybrid")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", choices=["digits", "imagefolder", "cifar10", "npz"],
                   help="data set kind (default: the bundled digits)")
    p.add_argument("--data-path", help="path for imagefolder / cifar10 / npz data")
    p.add_argument("--space", metavar="YAML", help="search-space config (default: the embedded digits space)")
    p.add_argument("--device", default="cpu-ort", help="target latency profile (`qnas latency show NAME`)")
    _add_latency_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--force", action="store_true", help="overwrite a non-empty output directory")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def cmd_demo(a: argparse.Namespace) -> int:
    from qnas.pipeline import DemoConfig, demo, demo_search_config, format_report

    search = demo_search_config(data=a.data, data_path=a.data_path, device=a.device, latency_kind=a.latency,
                                latency_table=a.latency_table, latency_hybrid=a.latency_hybrid,
                                n_candidates=a.candidates, strategy=a.strategy, accuracy=a.accuracy,
                                supernet_epochs=a.supernet_epochs, epochs=a.search_epochs,
                                batch_size=a.batch_size, latency_budget_ms=a.budget_ms, seed=a.seed)
    cfg = DemoConfig(search, finish_epochs=a.finish_epochs, out=a.out or "")
    report = demo(cfg, space=_space(a.space), progress=not a.no_progress, overwrite=a.force)
    print(format_report(report))
    return 0


def cmd_search(a: argparse.Namespace) -> int:
    from qnas.pipeline import default_out
    from qnas.searching import resume_search, search

    if a.resume:
        result = resume_search(a.resume, progress=not a.no_progress)
        out = a.resume
    else:
        out = a.out or default_out("search")
        options = json.loads(a.strategy_options) if a.strategy_options else {}
        if not isinstance(options, dict):
            raise QnasError("--strategy-options must be a JSON object, e.g. '{\"pop_size\": 16}'")
        result = search(data=a.data, data_path=a.data_path, space=_space(a.space), device=a.device,
                        strategy=a.strategy, n_candidates=a.candidates, epochs=a.epochs, batch_size=a.batch_size,
                        seed=a.seed, out=out, overwrite=a.force, progress=not a.no_progress, latency_kind=a.latency,
                        latency_table=a.latency_table, latency_hybrid=a.latency_hybrid, executor=a.executor,
                        latency_budget_ms=a.budget_ms, size_budget_kb=a.size_kb, memory_budget_kb=a.memory_kb,
                        batch=a.batch, strategy_options=options, accuracy=a.accuracy,
                        accuracy_path=a.accuracy_path, proxy=a.proxy, supernet_epochs=a.supernet_epochs)
    print(f"evaluated {len(result.records)} archs; Pareto front ({len(result.front)}):")
    for r in result.front:
        mark = "" if result.budget.ok(r) else "  (over budget)"
        print(f"  {r['latency_ms']:9.4g} ms  {100 * r['val_acc']:6.2f} %  {r['size_kb']:7.1f} KB  {r['describe']}{mark}")
    print(f"run directory: {out}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from qnas.exporting import export_model

    options = {k: v for k, v in (("opset", getattr(a, "opset", None)), ("int8_io", getattr(a, "int8_io", None)))
               if v is not None}
    result = export_model(a.model, a.backend, a.out, target_profile=a.target_profile, allow_upcast=a.allow_upcast,
                          verify=a.verify, overwrite=a.force, min_agreement=a.min_agreement, options=options)
    print("\n".join(result.lines()))
    if a.report:
        from qnas.quant.checkpoint import atomic_write

        atomic_write(a.report, lambda tmp: tmp.write_text(json.dumps(result.to_dict(), indent=2)), overwrite=a.force)
        print(f"report: {a.report}")
    return 0


def _load_arch(text_or_path: str, space_path: str | None):
    """An arch from a JSON file, a run directory (arch.json / model.pt) or inline JSON."""
    from qnas.arch import Arch
    from qnas.model_io import load_model
    from qnas.space import SearchSpace

    space = SearchSpace.from_yaml(space_path) if space_path else SearchSpace()
    if text_or_path.lstrip().startswith("{"):
        return space, space.validate(Arch.from_json(text_or_path))
    p = Path(text_or_path)
    if p.is_dir() and (p / "arch.json").is_file():
        p = p / "arch.json"
    if p.is_file() and p.suffix == ".pt":
        loaded = load_model(p)
        return loaded.space, loaded.arch
    if not p.is_file():
        raise QnasError(f"arch {text_or_path!r} is neither a file, a run directory nor inline JSON")
    return space, space.validate(Arch.from_json(p.read_text()))


def cmd_latency_show(a: argparse.Namespace) -> int:
    from qnas.latency import load_profile
    from qnas.latency.report import format_profile

    print(format_profile(load_profile(a.profile)))
    return 0


def cmd_latency_predict(a: argparse.Namespace) -> int:
    from qnas.costs import count_costs
    from qnas.searching import make_latency_model

    space, arch = _load_arch(a.arch, a.space)
    model = make_latency_model(a.device, a.latency, a.latency_table, a.latency_hybrid, space)
    plan = space.plan(arch)
    if a.breakdown and hasattr(model, "describe"):
        print(model.describe(plan))
    costs = count_costs(plan)
    print(f"{arch.describe()}")
    print(f"predicted latency on {a.device} ({a.latency}): {model.predict(plan):.4g} ms   "
          f"({costs.mmacs:.3g} M MACs, {costs.size_kb:.1f} KB, peak activations {costs.peak_activation_bytes / 1024:.1f} KB)")
    return 0


def cmd_latency_measure(a: argparse.Namespace) -> int:
    import numpy as np

    from qnas.latency.layer_measure import measure_layers
    from qnas.latency.measured import check_measurable
    from qnas.latency.table import space_layer_keys
    from qnas.space import SearchSpace

    check_measurable(a.device)
    out = Path(a.out)
    if out.suffix.lower() not in (".json", ".csv"):
        raise QnasError(f"--out must end in .json or .csv, got {out.name}")
    if out.exists() and not a.force:
        raise QnasError(f"{out} already exists; choose another --out or pass --force to overwrite it")
    space = SearchSpace.from_yaml(a.space) if a.space else SearchSpace()
    archs = None
    if a.archs:
        rng = np.random.default_rng(a.seed)
        archs = [space.sample(rng) for _ in range(a.archs)]
    layers = space_layer_keys(space, archs)
    print(f"measuring {len(layers)} distinct layers in onnxruntime ({a.threads} thread(s), "
          f"warm-up {a.warmup}, median of {a.repeats})")
    table = measure_layers(layers, threads=a.threads, warmup=a.warmup, repeats=a.repeats,
                           progress=not a.no_progress, device=a.device, passes=a.passes)
    table.save(out, overwrite=a.force)
    print(f"wrote {out} ({len(table)} entries)")
    return 0


def cmd_latency_eval(a: argparse.Namespace) -> int:
    import numpy as np

    from qnas.latency import AnalyticLatencyModel, load_profile
    from qnas.latency.hybrid import HybridLatencyModel
    from qnas.latency.measured import check_measurable
    from qnas.latency.metrics import fidelity
    from qnas.latency.model_measure import measure_archs
    from qnas.latency.table import TableLatencyModel
    from qnas.space import SearchSpace

    check_measurable(a.device)
    if a.n < 2:
        raise QnasError(f"--n must be at least 2 archs to rank, got {a.n}")
    if a.save_hybrid and a.n_fit < 10:
        raise QnasError("--save-hybrid needs --n-fit of at least 10 archs to fit the correction")
    if a.save_hybrid and Path(a.save_hybrid).exists() and not a.force:
        raise QnasError(f"{a.save_hybrid} already exists; choose another path or pass --force")
    space = SearchSpace.from_yaml(a.space) if a.space else SearchSpace()
    rng = np.random.default_rng(a.seed)
    archs: list = []
    seen: set = set()
    while len(archs) < a.n + (a.n_fit if a.save_hybrid else 0):
        arch = space.sample(rng)
        if arch not in seen:
            seen.add(arch)
            archs.append(arch)
    print(f"measuring {len(archs)} exported models in onnxruntime (1 thread, batch 1) ...")
    measured = np.asarray(measure_archs(space, archs, threads=1, progress=not a.no_progress, passes=a.passes))
    fit_archs, fit_ms = archs[a.n:], measured[a.n:]
    eval_archs, eval_ms = archs[:a.n], measured[:a.n]
    plans = [space.plan(x) for x in eval_archs]
    models: dict = {"analytic": AnalyticLatencyModel(load_profile(a.device))}
    if a.latency_table:
        models["table"] = TableLatencyModel.from_file(a.latency_table)
    base = models.get("table", models["analytic"])
    if a.latency_hybrid:
        models["hybrid"] = HybridLatencyModel.load(a.latency_hybrid, base, space)
    if a.save_hybrid:
        fitted = HybridLatencyModel(base, space).fit(fit_archs, fit_ms)
        fitted.save(a.save_hybrid)
        models[f"hybrid (fitted on {len(fit_archs)})"] = fitted
        print(f"wrote {a.save_hybrid}")
    print(f"{'predictor':<26} {'Kendall tau':>11} {'MAPE':>8} {'within 10%':>11}   (on {a.n} archs)")
    results = {}
    for name, m in models.items():
        f = fidelity([m.predict(p) for p in plans], eval_ms)
        results[name] = f
        print(f"{name:<26} {f['kendall_tau']:11.3f} {100 * f['mape']:7.1f}% {100 * f['within_10pct']:10.1f}%")
    if a.out:
        from qnas.quant.checkpoint import atomic_write

        text = json.dumps({"n": a.n, "seed": a.seed, "results": results}, indent=2)
        atomic_write(a.out, lambda p: p.write_text(text), overwrite=a.force)
    return 0


def cmd_supernet_train(a: argparse.Namespace) -> int:
    from qnas.searching import prepare_data, space_for
    from qnas.supernet import Supernet, SupernetTrainConfig, progressive_phases, train_supernet

    out = Path(a.out)
    if (out / "supernet.pt").exists() and not (a.resume or a.force):
        raise QnasError(f"{out / 'supernet.pt'} exists; pass --resume to continue it or --force to start over")
    splits = prepare_data(a.data, a.data_path, a.seed)
    space = space_for(splits, _space(a.space))
    supernet = Supernet(space)
    history = train_supernet(supernet, splits, SupernetTrainConfig(
        phases=progressive_phases(a.epochs), batch_size=a.batch_size, seed=a.seed, checkpoint_dir=str(out),
        resume=a.resume, progress=not a.no_progress))
    for h in history:
        print(f"epoch {h['epoch']:3d} [{h['phase']}] loss {h['loss']:.3f}  largest {h.get('val_acc_largest', float('nan')):.3f}"
              f"  smallest {h.get('val_acc_smallest', float('nan')):.3f}  ({h['seconds']:.0f} s)")
    print(f"wrote {out / 'supernet.pt'}; search it with: qnas search --accuracy supernet --accuracy-path {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qnas", description="Quantization-aware, hardware-aware NAS: "
                                "search -> finish -> export -> verify.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="search -> QAT finish -> ONNX export -> verify on the bundled digits (CPU)",
                       description="Run the whole pipeline on the embedded default and print a report.")
    _add_data_args(d)
    d.add_argument("--out", help="run directory (default: runs/demo-TIMESTAMP)")
    d.add_argument("--strategy", default="nsga2", help="search strategy (default nsga2)")
    d.add_argument("--accuracy", default="supernet", choices=["train", "supernet", "zero-cost"],
                   help="accuracy source during search (default: supernet-inherited weights)")
    d.add_argument("--supernet-epochs", type=int, default=1, help="supernet epochs per shrinking phase (default 1)")
    d.add_argument("--candidates", type=int, default=24, help="archs to evaluate (default 24)")
    d.add_argument("--search-epochs", type=int, default=3, help="training epochs per candidate with --accuracy train")
    d.add_argument("--finish-epochs", type=int, default=20, help="QAT epochs for the chosen arch (default 20)")
    d.add_argument("--budget-ms", type=_positive_float, help="latency budget (default: median of the candidates)")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("search", help="search a space and write the Pareto front",
                       description="Sample, train briefly and price archs; write history, front and plot.")
    _add_data_args(s)
    s.add_argument("--strategy", default="random", help="random, nsga2, nsga3, ofa, differentiable (default: random)")
    s.add_argument("--strategy-options", metavar="JSON", help="strategy options as a JSON object")
    s.add_argument("--candidates", type=int, default=8, help="archs to evaluate (default 8)")
    s.add_argument("--batch", type=int, default=4, help="archs asked and evaluated together (default 4)")
    s.add_argument("--epochs", type=int, default=3, help="training epochs per candidate")
    s.add_argument("--budget-ms", type=_positive_float, help="hard latency budget")
    s.add_argument("--size-kb", type=_positive_float, help="hard model-size budget")
    s.add_argument("--memory-kb", type=_positive_float, help="hard peak-activation-memory budget")
    s.add_argument("--executor", default="local", choices=["local", "ray"], help="where evaluations run")
    s.add_argument("--accuracy", default="train", choices=["train", "supernet", "predictor", "zero-cost"],
                   help="accuracy source: brief QAT per arch (default), supernet-inherited weights + BN "
                        "re-calibration, an accuracy predictor, or a zero-cost proxy")
    s.add_argument("--accuracy-path", metavar="PATH",
                   help="trained supernet (supernet.pt or its directory) or accuracy predictor file; without it "
                        "--accuracy supernet trains a supernet in the run directory")
    s.add_argument("--proxy", default="naswot", choices=["naswot", "synflow"], help="zero-cost proxy")
    s.add_argument("--supernet-epochs", type=int, default=2, help="epochs per progressive-shrinking phase")
    s.add_argument("--out", help="run directory (default: runs/search-TIMESTAMP)")
    s.add_argument("--resume", metavar="RUN", help="continue a killed search in RUN (other options are read from it)")
    s.set_defaults(func=cmd_search)

    e = sub.add_parser("export", help="export a finished model for a target runtime",
                       description="Export a qnas checkpoint (model.pt or a run directory).")
    esub = e.add_subparsers(dest="backend", required=True, metavar="BACKEND")
    for backend, help_text, desc in (
        ("onnx", "ONNX QCDQ (Brevitas), verified in onnxruntime",
         "Export to ONNX QCDQ (any bit width: sub-8-bit as int8 Q -> Clip -> DQ) and check predictions against "
         "the PyTorch model in onnxruntime."),
        ("tensorrt", "ONNX in TensorRT's explicit-quantization form (int8 Q/DQ), verified in onnxruntime",
         "Export to TensorRT's Q/DQ form (signed int8, zero point 0, per-channel weights on axis 0, "
         "sub-8-bit activations as int8 behind a float clip), check conformance and predictions. "
         "Build an engine from the file on a machine with tensorrt and a CUDA GPU (pip install \"qnas[tensorrt]\")."),
        ("coreml", "CoreML mlprogram (.mlpackage) with the learned int8/int4/2-bit-palettized weights",
         "Export to a CoreML mlprogram (iOS18 target) carrying the learned integer codes and scales. "
         "Needs pip install \"qnas[coreml]\". Prediction runs only on macOS; elsewhere the codes and scales "
         "stored in the file are compared with the model's."),
        ("tflite", "full-integer int8 TFLite via litert-torch, verified with LiteRT's interpreter",
         "Export to a full-integer int8 .tflite (what Edge TPU needs) carrying the learned codes and scales, "
         "and check predictions with ai-edge-litert's interpreter. Needs pip install \"qnas[tflite]\"."),
    ):
        eo = esub.add_parser(backend, help=help_text, description=desc)
        eo.add_argument("model", metavar="MODEL_OR_RUN", help="model.pt or a run directory containing it")
        eo.add_argument("--out", required=True, help="path to write (.onnx / .mlpackage / .tflite)")
        eo.add_argument("--force", action="store_true", help="overwrite --out (and --report) if they exist")
        default_target = {"onnx": "none", "tensorrt": "tensorrt-orin", "coreml": "coreml-ane", "tflite": "edgetpu"}[backend]
        eo.add_argument("--target-profile", default=default_target, metavar="PROFILE",
                        help=f"device profile whose precisions the file must run as searched (default: {default_target}; "
                             "'none' skips the check; `qnas latency show NAME`)")
        eo.add_argument("--allow-upcast", action="store_true",
                        help="export even where the target runs a layer at other bits than searched (or on the host); "
                             "the per-layer mapping is printed")
        eo.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="compare predictions with PyTorch on the test split, or the stored codes where no "
                             "runtime exists here (default: on)")
        eo.add_argument("--min-agreement", type=float, default=0.995,
                        help="fail below this share of identical predictions (default 0.995)")
        eo.add_argument("--report", metavar="JSON", help="also write the export report as JSON")
        if backend in ("onnx", "tensorrt"):
            eo.add_argument("--opset", type=int, help="ONNX opset (default 13)")
        if backend == "tflite":
            eo.add_argument("--int8-io", action="store_true",
                            help="int8 input and output tensors (Edge TPU) instead of float with quantize/dequantize")
        eo.set_defaults(func=cmd_export)

    sn = sub.add_parser("supernet", help="train the weight-sharing supernet",
                        description="Train the supernet (sandwich rule, progressive shrinking, in-place distillation).")
    snsub = sn.add_subparsers(dest="supernet_command", required=True, metavar="ACTION")
    snt = snsub.add_parser("train", help="train (or --resume) a supernet into --out",
                           description="Train a supernet over the search space; checkpoints every epoch.")
    snt.add_argument("--data", default="digits", choices=["digits", "imagefolder", "cifar10", "npz"])
    snt.add_argument("--data-path")
    snt.add_argument("--space", metavar="YAML")
    snt.add_argument("--out", required=True, help="directory for supernet.pt")
    snt.add_argument("--epochs", type=int, default=2, help="epochs per phase (kernel, depth, width, bits)")
    snt.add_argument("--batch-size", type=int, default=64)
    snt.add_argument("--seed", type=int, default=0)
    snt.add_argument("--resume", action="store_true", help="continue from --out/supernet.pt")
    snt.add_argument("--force", action="store_true", help="start over even if --out/supernet.pt exists")
    snt.add_argument("--no-progress", action="store_true")
    snt.set_defaults(func=cmd_supernet_train)

    from qnas.calib_data.build_calib import add_calib_parser
    from qnas.finishing_cli import add_finish_parser

    add_finish_parser(sub)  # qnas finish {qat,ptq}
    add_calib_parser(sub)  # qnas calib {build,show}

    lat = sub.add_parser("latency", help="device profiles and latency predictors",
                         description="Inspect device profiles and predict, measure and evaluate latency.")
    lsub = lat.add_subparsers(dest="latency_command", required=True, metavar="ACTION")
    ls = lsub.add_parser("show", help="print a device profile with its sources",
                         description="Print what a device profile says the target executes, and where each fact comes from.")
    ls.add_argument("profile", help="profile name (e.g. edgetpu) or path of a profile JSON")
    ls.set_defaults(func=cmd_latency_show)
    lp = lsub.add_parser("predict", help="predict the latency of an arch on a target",
                         description="Predict the batch-1 latency of ARCH (arch JSON file, run directory, "
                                     "model.pt or inline JSON).")
    lp.add_argument("arch", metavar="ARCH")
    lp.add_argument("--device", default="cpu-ort", help="target profile (default cpu-ort)")
    lp.add_argument("--space", metavar="YAML", help="search-space config the arch belongs to")
    lp.add_argument("--breakdown", action="store_true", help="print the per-layer breakdown")
    _add_latency_args(lp)
    lp.set_defaults(func=cmd_latency_predict)
    lm = lsub.add_parser("measure", help="build a per-layer latency table by timing layers here",
                         description="Time every distinct layer of the search space (or of --archs sampled archs) "
                                     "in onnxruntime on this machine, in the float/QDQ form its bits dictate.")
    lm.add_argument("--device", default="cpu-ort", help="only cpu-ort (this machine) can be measured here")
    lm.add_argument("--out", required=True, help="table file to write (.json or .csv)")
    lm.add_argument("--space", metavar="YAML", help="search-space config (default: the embedded digits space)")
    lm.add_argument("--archs", type=int, default=0, help="measure only the layers of N sampled archs (default: all)")
    lm.add_argument("--seed", type=int, default=0)
    lm.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    lm.add_argument("--warmup", type=int, default=5)
    lm.add_argument("--repeats", type=int, default=20)
    lm.add_argument("--passes", type=int, default=1, help="sweeps over all layers; each keeps its fastest median")
    lm.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    lm.add_argument("--no-progress", action="store_true")
    lm.set_defaults(func=cmd_latency_measure)
    le = lsub.add_parser("eval", help="measure fresh archs here and report each predictor's fidelity",
                         description="Export and time --n archs sampled with --seed in onnxruntime on this machine, "
                                     "and report Kendall tau, MAPE and the share within +-10%% for the analytic "
                                     "model, a table (--latency-table) and a hybrid (--latency-hybrid); "
                                     "--save-hybrid fits a hybrid on --n-fit other archs first.")
    le.add_argument("--device", default="cpu-ort", help="only cpu-ort (this machine) can be measured here")
    le.add_argument("--n", type=int, default=30, help="archs to evaluate on (default 30)")
    le.add_argument("--n-fit", type=int, default=60, help="archs to fit --save-hybrid on (default 60)")
    le.add_argument("--save-hybrid", metavar="PATH", help="fit a hybrid correction and write it here (JSON)")
    le.add_argument("--latency-table", metavar="PATH", help="per-layer table to evaluate (and use as hybrid base)")
    le.add_argument("--latency-hybrid", metavar="PATH", help="fitted hybrid correction to evaluate")
    le.add_argument("--space", metavar="YAML")
    le.add_argument("--seed", type=int, default=1, help="arch sampling seed (default 1)")
    le.add_argument("--passes", type=int, default=3, help="timing passes per model; the fastest is kept")
    le.add_argument("--out", help="write the figures as JSON")
    le.add_argument("--force", action="store_true")
    le.add_argument("--no-progress", action="store_true")
    le.set_defaults(func=cmd_latency_eval)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_parsed(build_parser().parse_args(argv))


def run_parsed(args: argparse.Namespace) -> int:
    """Run a parsed command; a user error prints one line and exits 2."""
    warnings.filterwarnings("ignore", message=".*fast_hadamard_transform.*")
    try:
        return int(args.func(args) or 0)
    except QnasError as e:
        print(f"qnas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
