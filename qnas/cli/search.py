"""``qnas search`` and ``qnas demo``: fill a :class:`~qnas.options.SearchConfig` (and a
:class:`~qnas.options.DemoConfig`) from the flags and call :mod:`qnas.searching` / :mod:`qnas.pipeline`."""
from __future__ import annotations

import argparse
from typing import Any

from qnas.accuracy_sources import accuracy_source_names
from qnas.cli._args import (add_data_args, add_force_progress, add_latency_args, add_target_args,
                            add_torch_device_args, batch_size_int, json_object, load_space, non_negative_float,
                            non_negative_int, option_fields, phase_epochs, positive_float, positive_int, seed_int)
from qnas.errors import ConfigError
from qnas.options import DemoConfig, SearchConfig, default_out, demo_search_config
from qnas.pareto import OBJECTIVES

_POP_SIZE_EXAMPLE = '{"pop_size": 16}'


def cmd_search(a: argparse.Namespace) -> int:
    from qnas.searching import resume_search, search_from_config

    if a.resume:
        result = resume_search(a.resume, progress=a.progress)
        out = a.resume
    else:
        out = a.out or default_out("search")
        options = json_object(a.strategy_options, "--strategy-options", _POP_SIZE_EXAMPLE)
        if a.objectives:
            if "objectives" in options and list(options["objectives"]) != list(a.objectives):
                raise ConfigError("--objectives and --strategy-options' \"objectives\" disagree; give one of them")
            options = {**options, "objectives": list(a.objectives)}
        cfg = SearchConfig(**{**option_fields(SearchConfig, a), "strategy_options": options})
        result = search_from_config(cfg, load_space(a.space_yaml), out, overwrite=a.overwrite, progress=a.progress)
    print(f"evaluated {len(result.records)} archs; Pareto front ({len(result.front)}):")
    proxy = cfg_accuracy(result) == "zero-cost"  # a proxy's score is no accuracy: printed as the score it is
    for r in result.front:
        mark = "" if result.budget.ok(r) else "  (over budget)"
        score = f"score {r['val_acc']:9.4g}" if proxy else f"{100 * r['val_acc']:6.2f} %"
        energy = f"  {r['energy_mj']:8.4g} mJ" if "energy_mj" in r else ""
        print(f"  {r['latency_ms']:9.4g} ms  {score}  {r['size_kb']:7.1f} KB{energy}  {r['describe']}{mark}")
    if result.refined:
        best = result.best(result.default_budget())
        print(f"refined within {result.default_budget():.4g} ms ({next(iter(result.refined.values()))['epochs']} QAT epochs "
              "each; chosen *):")
        for e in sorted(result.refined.values(), key=lambda e: -e["refined_val_acc"]):
            mark = " *" if e["uid"] == best["uid"] else ""
            print(f"  {e['uid']}  {100 * e['val_acc']:6.2f} % -> {100 * e['refined_val_acc']:6.2f} %{mark}")
    print(f"run directory: {out}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from qnas.pipeline import demo, format_report

    cfg = DemoConfig(demo_search_config(**option_fields(SearchConfig, a)), finish_epochs=a.finish_epochs,
                     out=a.out or "")
    report = demo(cfg, space=load_space(a.space_yaml), progress=a.progress, overwrite=a.overwrite)
    print(format_report(report))
    return 0


def _add_run_args(p: argparse.ArgumentParser, defaults: SearchConfig) -> None:
    """The flags search and demo share (data, space, target, latency predictor, seed, batch size, output)."""
    add_data_args(p, defaults.data, "default: the bundled digits")
    p.add_argument("--space", dest="space_yaml", metavar="YAML",
                   help="search-space config (default: the embedded digits space)")
    add_target_args(p, defaults.target)
    add_torch_device_args(p)
    add_latency_args(p, defaults.latency_kind)
    p.add_argument("--seed", type=seed_int, default=defaults.seed)
    p.add_argument("--batch-size", type=batch_size_int, default=defaults.batch_size)
    p.add_argument("--refine-top", type=non_negative_int, default=defaults.refine_top, metavar="N",
                   help="after the search, train the N most accurate archs within budget a few more QAT epochs "
                        "and choose among them by that accuracy (default %(default)s; 0: off)")
    p.add_argument("--refine-epochs", type=positive_int, default=defaults.refine_epochs, metavar="N",
                   help="QAT epochs per refined arch (default %(default)s)")
    add_force_progress(p, "overwrite a non-empty output directory")


def add_demo_parser(sub: Any) -> argparse.ArgumentParser:
    defaults = demo_search_config()
    d = sub.add_parser("demo", help="search -> QAT finish -> ONNX export -> verify on the bundled digits (CPU)",
                       description="Run the whole pipeline on the embedded default and print a report.")
    _add_run_args(d, defaults)
    d.add_argument("--out", help="run directory (default: runs/demo-TIMESTAMP)")
    d.add_argument("--strategy", default=defaults.strategy, help="search strategy (default %(default)s)")
    d.add_argument("--accuracy", default=defaults.accuracy, choices=accuracy_source_names(without_path=True),
                   help="accuracy source during search (default: supernet-inherited weights)")
    d.add_argument("--supernet-epochs", type=phase_epochs, default=defaults.supernet_epochs, metavar="N|K,D,W,B",
                   help="supernet epochs per shrinking phase, or per phase: kernel,depth,width,bits (default %(default)s)")
    d.add_argument("--supernet-lr", type=positive_float, default=None,
                   help="the supernet's Adam learning rate (default 3e-3)")
    d.add_argument("--candidates", dest="n_candidates", metavar="CANDIDATES", type=positive_int,
                   default=defaults.n_candidates,
                   help="archs to evaluate (default %(default)s)")
    d.add_argument("--search-epochs", dest="epochs", metavar="SEARCH_EPOCHS", type=positive_int,
                   default=defaults.epochs,
                   help="training epochs per candidate with --accuracy train")
    d.add_argument("--finish-epochs", type=non_negative_int, default=DemoConfig.finish_epochs,
                   help="QAT epochs for the chosen arch (default %(default)s)")
    d.add_argument("--budget-ms", dest="latency_budget_ms", metavar="BUDGET_MS", type=positive_float,
                   help="latency budget (default: median of the candidates)")
    d.set_defaults(func=cmd_demo)
    return d


def objective_list(text: str) -> list[str]:
    """``accuracy,latency,energy`` -> a list of known, distinct objective names (2 or more)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in OBJECTIVES]
    if bad or len(names) < 2 or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected 2 or more distinct names of {','.join(OBJECTIVES)}, got {text!r}")
    return names


def cfg_accuracy(result: Any) -> str | None:
    """The accuracy source a finished search used, from its run's config (None without a run)."""
    if result.run_dir is None:
        return None
    from qnas.jsonfile import read_json

    return read_json(result.run_dir / "config.json", "run config", "").get("accuracy")


def add_search_parser(sub: Any) -> argparse.ArgumentParser:
    defaults = SearchConfig()
    s = sub.add_parser("search", help="search a space and write the Pareto front",
                       description="Sample, train briefly and price archs; write history, front and plot.")
    _add_run_args(s, defaults)
    s.add_argument("--strategy", default=defaults.strategy,
                   help="random, nsga2, nsga3, ofa, differentiable (default: %(default)s)")
    s.add_argument("--strategy-options", metavar="JSON", help="strategy options as a JSON object")
    s.add_argument("--candidates", dest="n_candidates", metavar="CANDIDATES", type=positive_int,
                   default=defaults.n_candidates,
                   help="archs to evaluate (default %(default)s)")
    s.add_argument("--batch", type=positive_int, default=defaults.batch,
                   help="archs asked and evaluated together (default %(default)s)")
    s.add_argument("--epochs", type=positive_int, default=defaults.epochs, help="training epochs per candidate")
    s.add_argument("--budget-ms", dest="latency_budget_ms", metavar="BUDGET_MS", type=positive_float, help="hard latency budget")
    s.add_argument("--size-kb", dest="size_budget_kb", metavar="SIZE_KB", type=positive_float, help="hard model-size budget")
    s.add_argument("--memory-kb", dest="memory_budget_kb", metavar="MEMORY_KB", type=positive_float,
                   help="hard peak-activation-memory budget")
    s.add_argument("--energy-mj", dest="energy_budget_mj", metavar="MJ", type=positive_float,
                   help="hard energy budget per inference, on a target whose profile gives energy (e.g. bitfusion)")
    s.add_argument("--objectives", type=objective_list, metavar="A,B[,C]",
                   help=f"what nsga2/nsga3 optimise and the front is non-dominated in, 2 or more of "
                        f"{','.join(OBJECTIVES)} (default accuracy,latency)")
    s.add_argument("--executor", default=defaults.executor, choices=["local", "ray"],
                   help="where evaluations run: this process, or Ray tasks (a local Ray runtime, or the cluster "
                        "at --ray-address)")
    s.add_argument("--ray-address", metavar="ADDRESS",
                   help="Ray cluster to run --executor ray on, e.g. 127.0.0.1:6379 (`ray start --head`) or auto")
    s.add_argument("--ray-gpus-per-task", type=non_negative_float, metavar="N",
                   help="GPUs each Ray evaluation task requests (default: 1 with --torch-device cuda, else 0; "
                        "a fraction such as 0.5 lets tasks share a GPU)")
    s.add_argument("--ray-cpus-per-task", type=positive_float, metavar="N",
                   help="CPUs each Ray evaluation task requests (default 1)")
    s.add_argument("--accuracy", default=defaults.accuracy, choices=accuracy_source_names(),
                   help="accuracy source: brief QAT per arch (default), supernet-inherited weights + BN "
                        "re-calibration, an accuracy predictor, or a zero-cost proxy")
    s.add_argument("--accuracy-path", metavar="PATH",
                   help="trained supernet (supernet.pt or its directory) or accuracy predictor file; without it "
                        "--accuracy supernet trains a supernet in the run directory")
    s.add_argument("--proxy", default=defaults.proxy, choices=["naswot", "synflow"], help="zero-cost proxy")
    s.add_argument("--supernet-epochs", type=phase_epochs, default=defaults.supernet_epochs, metavar="N|K,D,W,B",
                   help="epochs per progressive-shrinking phase, or per phase: kernel,depth,width,bits "
                        "(bench/README.md: 3,3,6,12 with --supernet-lr 0.006 gives the best-trained subnets in 5 min)")
    s.add_argument("--supernet-lr", type=positive_float, default=None,
                   help="the supernet's Adam learning rate (default 3e-3)")
    s.add_argument("--out", help="run directory (default: runs/search-TIMESTAMP)")
    s.add_argument("--resume", metavar="RUN", help="continue a killed search in RUN (other options are read from it)")
    s.set_defaults(func=cmd_search)
    return s
