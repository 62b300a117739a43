"""The end-to-end slice: search -> finish (QAT, :mod:`qnas.finishing`) -> export ONNX -> verify -> report."""
from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Any

from qnas.arch import Arch
from qnas.exporters import create_exporter
from qnas.exporting import check_parity
from qnas.finishing import finish_qat, resolve_source
from qnas.latency.model_measure import time_onnx_ms
from qnas.options import DemoConfig, QATFinishOptions, default_out, demo_search_config
from qnas.rundir import RunDir
from qnas.searching import (SearchResult, check_energy_use, keep_latency_table, make_latency_model, prepare_data,
                            record_low_bit_policy, run_search, space_for)
from qnas.space import SearchSpace

__all__ = ["DemoConfig", "default_out", "demo", "demo_search_config", "format_report"]


def demo(cfg: DemoConfig | None = None, space: SearchSpace | None = None, progress: bool = True,
         overwrite: bool = False) -> dict[str, Any]:
    """Run search -> finish -> export -> verify and return the report (also in ``run/report.json``)."""
    from qnas.quant.torch_device import resolve_torch_device, validate_amp

    cfg = (cfg or DemoConfig()).validate()
    cfg.out = cfg.out or default_out("demo")
    sc = cfg.search
    validate_amp(sc.amp, resolve_torch_device(sc.torch_device))  # before the run directory is written
    latency = make_latency_model(sc.target, sc.latency_kind, sc.latency_table, sc.latency_hybrid)
    t_start = time.perf_counter()
    splits = prepare_data(sc.data, sc.data_path, sc.seed, sc.stream, space)
    space = space_for(splits, space)
    sc.space = space.to_dict()
    check_energy_use(sc, latency)
    policy = record_low_bit_policy(sc, latency, space)
    run = RunDir(cfg.out, overwrite=overwrite)
    if policy and progress:
        print(policy, file=sys.stderr)
    # locked while it writes; a demo that fails before its first evaluation leaves nothing
    with run.locked(), run.removed_on_early_failure():
        keep_latency_table(latency, run)
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
        kd = cfg.finish_kd and resolve_source(run.path).supernet_path is not None
        finished = finish_qat(run.path, QATFinishOptions(
            out=run.file("model.pt"), epochs=cfg.finish_epochs, lr=cfg.finish_lr, teacher="supernet" if kd else None,
            init="auto", kd_weight=cfg.finish_kd_weight, overwrite=True, progress=progress,
            torch_device=sc.torch_device, amp=sc.amp), splits=splits)
        model = finished.model
        t_finish = finished.seconds
        test_ds = splits.test.at_resolution(arch.resolution)

        # 3. export + verify
        exporter = create_exporter("onnx")
        onnx_path = exporter.export(model, test_ds.images[:1], run.file("model.onnx"), overwrite=True)
        parity = exporter.verify(onnx_path, model, test_ds.images, test_ds.labels)
        check_parity(parity, onnx_path)
        # the smallest of 10 medians of 100 runs, spread over ~5 s: a shared machine's interference only adds
        # time; fewer rounds moved by ~10 % between two runs of the same file, and back-to-back rounds all
        # landed in a seconds-long spell of a 2x slower core on a shared VM (0.80 vs 0.44 ms)
        measured = time_onnx_ms(onnx_path, (1, space.config.in_channels, arch.resolution, arch.resolution),
                                repeats=100, rounds=10, pause_s=0.5)

        report = {
            "run_dir": str(run.path),
            "target": result.target,
            "torch_device": sc.torch_device,
            "latency_kind": sc.latency_kind,
            "strategy": sc.strategy,
            "accuracy_source": sc.accuracy,
            "latency_budget_ms": round(budget, 6),
            "candidates": len(result.records),
            "front_size": len(result.front),
            "arch": arch.describe(),
            "arch_uid": arch.uid,
            # what the search chose by: the refined accuracy when it refined its best candidates
            "search_val_acc": chosen.get("refined_val_acc", chosen["val_acc"]),
            "inherited_val_acc": chosen["val_acc"],  # the accuracy source's own score
            "refine_epochs": sc.refine_epochs if "refined_val_acc" in chosen else 0,
            "started_from_val_acc": finished.started_from_val_acc,
            "finish_val_acc": finished.val_acc,
            "finish_teacher": finished.details.get("teacher"),
            "finish_kept_epoch": finished.details.get("kept_epoch"),  # the best QAT epoch on validation
            "test_acc_torch": parity.torch_acc,
            "test_acc_onnx": parity.export_acc,
            "identical_predictions": parity.agreement,
            "max_abs_logit_diff": parity.max_abs_logit_diff,
            "logits_within_one_step": parity.within_one_step,
            "max_logit_step_diff": parity.max_step_diff,
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


def _target(r: dict[str, Any]) -> str:
    return r.get("target", r.get("device", "?"))  # reports written before the rename say "device"


def _step_line(r: dict[str, Any]) -> list[str]:
    if r.get("logits_within_one_step") is None:  # a report written before logit steps were counted
        return []
    return [f"  logits within 1 step   {100 * r['logits_within_one_step']:.2f} %  "
            f"(max {r['max_logit_step_diff']:.0f} steps)"]


def _search_acc(r: dict[str, Any]) -> str:
    text = f"search {100 * r['search_val_acc']:.2f} %"
    if r.get("refine_epochs"):
        source = r.get("accuracy_source", "train")
        text += f" ({source} {100 * r['inherited_val_acc']:.2f} %, then {r['refine_epochs']} QAT epochs)"
    return text


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"qnas demo: {r['candidates']} candidates ({r.get('strategy', 'random')}, accuracy from "
        f"{r.get('accuracy_source', 'train')}) on {_target(r)}, budget {r['latency_budget_ms']:.4g} ms "
        f"(front of {r['front_size']})",
        f"  chosen arch            {r['arch']}",
        f"  size / MACs / peak act {r['size_kb']:.1f} KB / {r['mmacs']:.2f} M / {r['peak_act_kb']:.1f} KB",
        f"  val acc                {_search_acc(r)} -> finished {100 * r['finish_val_acc']:.2f} %",
        f"  test acc (PyTorch)     {100 * r['test_acc_torch']:.2f} %",
        f"  test acc (ONNX, ORT)   {100 * r['test_acc_onnx']:.2f} %",
        f"  identical predictions  {100 * r['identical_predictions']:.2f} %  (max |dlogit| {r['max_abs_logit_diff']:.2g})",
        *_step_line(r),
        f"  predicted latency      {r['predicted_latency_ms']:.4g} ms ({_target(r)}, {r.get('latency_kind', 'analytic')} model)",
        f"  measured ORT latency   {r['measured_ort_latency_ms']:.4g} ms (1 thread, batch 1, best of 10 medians over ~5 s; "
        f"predicted / measured {r['predicted_latency_ms'] / r['measured_ort_latency_ms']:.2f})",
        f"  time                   search {r['seconds']['search']} s, finish {r['seconds']['finish']} s, "
        f"total {r['seconds']['total']} s",
        f"  run directory          {r['run_dir']}",
    ]
    return "\n".join(lines)
