#!/usr/bin/env python
"""How good is each finishing method? (issue 6)

    python bench/finish_quality.py [--float-epochs 15] [--qat-epochs 8] [--cifar10 PATH]
                                   [--out bench/results/finish_quality.json]

For one network structure (the arch the demo chooses on digits, stored below) at
several precisions -- uniform W8A8, W4A8, W4A4, W2A4 in the middle (2-bit
weights and 4-bit activations in every block but the first and the last, which
stay W8A8) and the demo's own mixed precision --:

* float accuracy: the structure trained with every quantizer off
  (``qnas.quant.ptq.float_mode``); the same float model serves every precision;
* PTQ from those float weights on a 512-image class-balanced calibration set
  (``build_calibration_set``): min-max, + bias correction, + GPTQ;
* QAT from the min-max PTQ model with knowledge distillation from the float
  model (``qnas.quant.qat.qat``: cosine schedule, BN frozen for the last 30 %);

test-split accuracy and the seconds each took (1 torch thread). On digits, and
on CIFAR-10 when a local copy is given with ``--cifar10``. Goals: W8A8 PTQ
within 0.5 points of float, mixed-precision QAT within 1 point of float.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

# The arch `qnas demo` (seed 0) chooses on digits (structure and mixed precision), as `qnas demo` wrote it.
DEMO_ARCH_JSON = Path(__file__).parent / "results" / "finish_quality_arch.json"


def precisions(space, demo):
    """name -> Arch: the demo's structure at each precision."""
    from qnas.arch import Arch, Block

    blocks = [(si, j) for si, st in enumerate(demo.stages) for j, b in enumerate(st) if not b.is_skip]
    first, last = blocks[0], blocks[-1]

    def with_bits(fn) -> Arch:
        stages = tuple(tuple(b if b.is_skip else Block(b.kernel, b.expand, *fn((si, j)))
                             for j, b in enumerate(st)) for si, st in enumerate(demo.stages))
        return space.validate(Arch(demo.resolution, demo.width, stages, demo.stem_bits, demo.head_bits))

    return {
        "W8A8": with_bits(lambda _: ((8, 8, 8), (8, 8, 8))),
        "W4A8": with_bits(lambda _: ((4, 4, 4), (8, 8, 8))),
        "W4A4": with_bits(lambda _: ((4, 4, 4), (4, 4, 4))),
        "W2A4 middle": with_bits(lambda pos: ((8, 8, 8), (8, 8, 8)) if pos in (first, last) else ((2, 2, 2), (4, 4, 4))),
        "demo mixed": space.validate(demo),
    }


def run_dataset(name, splits, space, demo, a, rows, log):
    from qnas.calib_data.build import build_calibration_set
    from qnas.finishing import FloatTeacher, ArchData, float_accuracy, train_float
    from qnas.quant.build import build_model
    from qnas.quant.integer_grid import snap_biases
    from qnas.quant.ptq import PTQConfig, load_float_weights, ptq
    from qnas.quant.qat import QATConfig, qat
    from qnas.quant.train import evaluate

    archs = precisions(space, demo)
    d = ArchData(splits, demo)
    test = d.part("test").loader(512, False)
    val = d.part("val").loader(512, False)
    torch.manual_seed(0)
    float_model = build_model(space, archs["W8A8"])
    t0 = time.perf_counter()
    train_float(float_model, d, a.float_epochs, 0, 64, a.progress)
    t_float = time.perf_counter() - t0
    float_acc = float_accuracy(float_model, test)
    log(f"[{name}] float model: test acc {100 * float_acc:.2f} % ({t_float:.0f} s, {a.float_epochs} epochs)")
    float_state = {k: v.clone() for k, v in float_model.state_dict().items()}
    kind, path = (("digits", None) if name == "digits" else ("cifar10", a.cifar10))
    calib = build_calibration_set(kind, path, n=512, resolution=demo.resolution, seed=0, split_seed=0,
                                  mean=splits.train.mean, std=splits.train.std)
    for pname, arch in archs.items():
        row = {"data": name, "precision": pname, "arch": arch.describe(), "float_acc": float_acc,
               "float_seconds": round(t_float, 1)}
        for method in ("minmax", "bias_correction", "gptq"):
            model = load_float_weights(build_model(space, arch), float_state)
            t0 = time.perf_counter()
            ptq(model, calib.images, PTQConfig(method=method, progress=a.progress))
            row[f"ptq_{method}_seconds"] = round(time.perf_counter() - t0, 1)
            if method == "minmax":
                qat_init = copy.deepcopy(model)  # QAT starts from min-max PTQ, before snapping
            snap_biases(model)  # the finishing pass's last step
            row[f"ptq_{method}_acc"] = evaluate(model, test)
        t0 = time.perf_counter()
        hist = qat(qat_init, d.part("train").loader(64, True, 0), None,
                   QATConfig(epochs=a.qat_epochs, lr=a.qat_lr, kd_weight=a.kd_weight, progress=a.progress),
                   teacher=FloatTeacher(float_model))
        row["qat_seconds"] = round(time.perf_counter() - t0, 1)
        qat_init.eval()
        snap_biases(qat_init)
        row["qat_acc"] = evaluate(qat_init, test)
        row["qat_val_acc"] = evaluate(qat_init, val)
        row["qat_epochs"] = len(hist.epochs)
        rows.append(row)
        log(f"[{name}] {pname:<12} PTQ min-max {100 * row['ptq_minmax_acc']:.2f}  +BC "
            f"{100 * row['ptq_bias_correction_acc']:.2f}  +GPTQ {100 * row['ptq_gptq_acc']:.2f}  "
            f"QAT {100 * row['qat_acc']:.2f}  (float {100 * float_acc:.2f})")


def table(rows):
    head = ("| data | precision | float | PTQ min-max | PTQ +bias corr. | PTQ +GPTQ | QAT (KD) | "
            "seconds: float / min-max / +BC / +GPTQ / QAT |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['precision']} | {100 * r['float_acc']:.2f} | {100 * r['ptq_minmax_acc']:.2f} | "
            f"{100 * r['ptq_bias_correction_acc']:.2f} | {100 * r['ptq_gptq_acc']:.2f} | {100 * r['qat_acc']:.2f} | "
            f"{r['float_seconds']} / {r['ptq_minmax_seconds']} / {r['ptq_bias_correction_seconds']} / "
            f"{r['ptq_gptq_seconds']} / {r['qat_seconds']} |")
    return "\n".join(lines)


def goals(rows):
    out = {}
    for data in sorted({r["data"] for r in rows}):
        rs = {r["precision"]: r for r in rows if r["data"] == data}
        w8 = rs["W8A8"]
        best_ptq = max(w8[f"ptq_{m}_acc"] for m in ("minmax", "bias_correction", "gptq"))
        mixed = rs["demo mixed"]
        out[data] = {
            "w8a8_ptq_gap_points": round(100 * (w8["float_acc"] - best_ptq), 2),
            "w8a8_ptq_within_0.5": 100 * (w8["float_acc"] - best_ptq) <= 0.5,
            "mixed_qat_gap_points": round(100 * (mixed["float_acc"] - mixed["qat_acc"]), 2),
            "mixed_qat_within_1": 100 * (mixed["float_acc"] - mixed["qat_acc"]) <= 1.0,
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--float-epochs", type=int, default=15)
    p.add_argument("--qat-epochs", type=int, default=8)
    p.add_argument("--qat-lr", type=float, default=1e-3)
    p.add_argument("--kd-weight", type=float, default=0.5)
    p.add_argument("--arch", default=str(DEMO_ARCH_JSON), help="arch JSON giving the structure and the mixed precision")
    p.add_argument("--cifar10", metavar="PATH", help="local CIFAR-10 (python batches) to run on as well")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", default="bench/results/finish_quality.json")
    a = p.parse_args()

    from qnas.arch import Arch
    from qnas.quant.checkpoint import atomic_write
    from qnas.searching import prepare_data, space_for

    torch.set_num_threads(a.threads)
    demo = Arch.from_json(Path(a.arch).read_text())
    rows: list[dict] = []
    datasets = [("digits", None)] + ([("cifar10", a.cifar10)] if a.cifar10 else [])
    t_all = time.perf_counter()
    for name, path in datasets:
        splits = prepare_data(name, path, 0)
        space = space_for(splits, None)
        run_dataset(name, splits, space, space.validate(demo), a, rows, lambda s: print(s, flush=True))
    g = goals(rows)
    print()
    print(table(rows))
    for data, v in g.items():
        print(f"{data}: best W8A8 PTQ {-v['w8a8_ptq_gap_points']:+.2f} points vs float "
              f"({'meets' if v['w8a8_ptq_within_0.5'] else 'misses'} the within-0.5 goal); demo-mixed QAT "
              f"{-v['mixed_qat_gap_points']:+.2f} points vs float "
              f"({'meets' if v['mixed_qat_within_1'] else 'misses'} the within-1 goal)")
    payload = {"settings": {k: v for k, v in vars(a).items() if k not in ("out", "progress")},
               "demo_arch": demo.to_dict(), "rows": rows, "goals": g,
               "total_seconds": round(time.perf_counter() - t_all, 1), "torch": torch.__version__}
    atomic_write(a.out, lambda f: f.write_text(json.dumps(payload, indent=2) + "\n"))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
