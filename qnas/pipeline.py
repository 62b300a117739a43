"""The end-to-end slice: search -> finish (QAT, :mod:`qnas.finishing`) -> export ONNX -> verify -> report."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qnas.arch import Arch
from qnas.errors import ConfigError
from qnas.exporters import create_exporter
from qnas.exporters.onnx_qcdq import measure_latency_ms
from qnas.finishing import finish_qat
from qnas.rundir import RunDir
from qnas.searching import SearchConfig, SearchResult, make_latency_model, prepare_data, run_search, space_for
from qnas.space import SearchSpace


def demo_search_config(**overrides: Any) -> SearchConfig:
    """The demo's search: NSGA-II over a briefly trained supernet, sized for 2 CPU cores."""
    defaults: dict[str, Any] = dict(strategy="nsga2", accuracy="supernet", supernet_epochs=1, n_candidates=24,
                                    batch=8, strategy_options={"pop_size": 8})
    defaults.update(overrides)
    if defaults["strategy"] not in ("nsga2", "nsga3") and "strategy_options" not in overrides:
        defaults["strategy_options"] = {}
    return SearchConfig(**defaults)


@dataclass
class DemoConfig:
    """The search (a :class:`SearchConfig`) plus the finishing pass and the run directory."""

    search: SearchConfig = field(default_factory=demo_search_config)
    finish_epochs: int = 20  # the supernet is trained briefly: the chosen arch needs a full QAT
    finish_lr: float = 2e-3
    # distil from the supernet's largest float subnet (when the run has a supernet); off by default: after the
    # demo's short supernet training it costs ~30 % more finish time and did not raise test accuracy
    finish_kd: bool = False
    finish_kd_weight: float = 0.5
    out: str = ""

    def validate(self) -> "DemoConfig":
        self.search.validate()
        if self.finish_epochs < 0:
            raise ConfigError(f"finish_epochs must be >= 0, got {self.finish_epochs}")
        if not self.finish_lr > 0:
            raise ConfigError(f"finish_lr must be a positive number, got {self.finish_lr}")
        if not 0 <= self.finish_kd_weight <= 1:
            raise ConfigError(f"finish_kd_weight must be in [0, 1], got {self.finish_kd_weight}")
        return self


def default_out(prefix: str) -> str:
    return str(Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")


def demo(cfg: DemoConfig | None = None, space: SearchSpace | None = None, progress: bool = True,
         overwrite: bool = False) -> dict[str, Any]:
    """Run search -> finish -> export -> verify and return the report (also in ``run/report.json``)."""
    cfg = (cfg or DemoConfig()).validate()
    cfg.out = cfg.out or default_out("demo")
    sc = cfg.search
    latency = make_latency_model(sc.device, sc.latency_kind, sc.latency_table, sc.latency_hybrid)
    t_start = time.perf_counter()
    splits = prepare_data(sc.data, sc.data_path, sc.seed)
    space = space_for(splits, space)
    sc.space = space.to_dict()
    run = RunDir(cfg.out, overwrite=overwrite)
    if sc.latency_kind == "measured":
        latency.cache = run.file("latency_table.json")
    run.write_json("demo.json", asdict(cfg))

    # 1. search
    run.write_json("config.json", sc.to_dict())  # `qnas search --resume RUN` continues the search part
    result: SearchResult = run_search(sc, space, splits, run, progress, latency)
    budget = result.default_budget()  # the search's latency budget, else the candidates' median
    chosen = result.best(budget)
    arch = Arch.from_dict(chosen["arch"])
    result.plot(run.file("pareto.png"), budget, chosen)
    run.write_json("arch.json", arch.to_dict())
    t_search = time.perf_counter() - t_start

    # 2. finish: QAT from the supernet's (or the candidate's) weights, distilling from the supernet's
    #    largest float subnet when there is a supernet (qnas.finishing.finish_qat, as `qnas finish qat RUN`)
    has_supernet = (run.file("supernet") / "supernet.pt").is_file() or bool(sc.accuracy == "supernet" and sc.accuracy_path)
    finished = finish_qat(run.path, out=run.file("model.pt"), epochs=cfg.finish_epochs, lr=cfg.finish_lr,
                          teacher="supernet" if (cfg.finish_kd and has_supernet) else None, init="auto",
                          kd_weight=cfg.finish_kd_weight, overwrite=True, progress=progress, splits=splits)
    model = finished.model
    t_finish = finished.seconds
    test_ds = splits.test.at_resolution(arch.resolution)

    # 3. export + verify
    exporter = create_exporter("onnx")
    onnx_path = exporter.export(model, test_ds.images[:1], run.file("model.onnx"), overwrite=True)
    parity = exporter.verify(onnx_path, model, test_ds.images, test_ds.labels)
    measured = measure_latency_ms(onnx_path, (1, space.config.in_channels, arch.resolution, arch.resolution))

    report = {
        "run_dir": str(run.path),
        "device": sc.device,
        "latency_kind": sc.latency_kind,
        "strategy": sc.strategy,
        "accuracy_source": sc.accuracy,
        "latency_budget_ms": round(budget, 6),
        "candidates": len(result.records),
        "front_size": len(result.front),
        "arch": arch.describe(),
        "search_val_acc": chosen["val_acc"],
        "started_from_val_acc": finished.started_from_val_acc,
        "finish_val_acc": finished.val_acc,
        "finish_teacher": finished.details.get("teacher"),
        "test_acc_torch": parity.torch_acc,
        "test_acc_onnx": parity.export_acc,
        "identical_predictions": parity.agreement,
        "max_abs_logit_diff": parity.max_abs_logit_diff,
        "predicted_latency_ms": round(float(latency.predict(space.plan(arch))), 6),
        "measured_ort_latency_ms": round(measured, 4),
        "mmacs": chosen["mmacs"],
        "size_kb": chosen["size_kb"],
        "peak_act_kb": chosen["peak_act_kb"],
        "seconds": {"search": round(t_search, 1), "finish": round(t_finish, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
    }
    run.write_json("report.json", report)
    return report


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"qnas demo: {r['candidates']} candidates ({r.get('strategy', 'random')}, accuracy from "
        f"{r.get('accuracy_source', 'train')}) on {r['device']}, budget {r['latency_budget_ms']:.4g} ms "
        f"(front of {r['front_size']})",
        f"  chosen arch            {r['arch']}",
        f"  size / MACs / peak act {r['size_kb']:.1f} KB / {r['mmacs']:.2f} M / {r['peak_act_kb']:.1f} KB",
        f"  test acc (PyTorch)     {100 * r['test_acc_torch']:.2f} %",
        f"  test acc (ONNX, ORT)   {100 * r['test_acc_onnx']:.2f} %",
        f"  identical predictions  {100 * r['identical_predictions']:.2f} %  (max |dlogit| {r['max_abs_logit_diff']:.2g})",
        f"  predicted latency      {r['predicted_latency_ms']:.4g} ms ({r['device']}, {r.get('latency_kind', 'analytic')} model)",
        f"  measured ORT latency   {r['measured_ort_latency_ms']:.4g} ms (1 thread, batch 1, median)",
        f"  time                   search {r['seconds']['search']} s, finish {r['seconds']['finish']} s, "
        f"total {r['seconds']['total']} s",
        f"  run directory          {r['run_dir']}",
    ]
    return "\n".join(lines)
