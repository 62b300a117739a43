#!/usr/bin/env python
"""Does every exported file compute what the PyTorch model does? (issue 5)

    python bench/export_parity.py [--epochs 4] [--out bench/results/export_parity.json]

For a few archs (uniform W8A8, mixed W4/W8, mixed with 2-bit layers), QAT-train
on digits, export with every backend that runs here (onnx, tensorrt-form onnx),
run the file in onnxruntime on the digits test split, and report agreement with
PyTorch, max |dlogit|, file size, measured onnxruntime latency (1 thread,
batch 1) next to the cpu-ort predicted latency.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--out", default="bench/results/export_parity.json")
    a = p.parse_args()

    from qnas.arch import Arch, Block
    from qnas.data import load_digits, split
    from qnas.exporters import available_exporters, create_exporter
    from qnas.exporters.onnx_qcdq import measure_latency_ms
    from qnas.latency import create_latency_model
    from qnas.quant.build import build_model
    from qnas.quant.checkpoint import atomic_write
    from qnas.quant.train import TrainConfig, train
    from qnas.space import SearchSpace
    from qnas.supernet import recalibrate_bn

    torch.set_num_threads(1)
    space = SearchSpace()
    splits = split(load_digits(), seed=0)
    latency = create_latency_model("cpu-ort")

    def arch(w: tuple, a_: tuple) -> Arch:
        stages = tuple(tuple(Block(5, 4, w, a_) for _ in range(2)) for _ in space.config.stages)
        return space.validate(Arch(16, 1.0, stages))

    archs = {"W8A8": space.uniform(8, 8, largest=False, resolution=16),
             "mixed W4/W8": arch((8, 4, 4), (8, 8, 8)),
             "mixed with W2, A4": arch((4, 2, 8), (8, 4, 4))}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, ar in archs.items():
            torch.manual_seed(0)
            model = build_model(space, ar)
            tr = splits.train.at_resolution(ar.resolution)
            te = splits.test.at_resolution(ar.resolution)
            train(model, tr.loader(64, True), None, TrainConfig(epochs=a.epochs, progress=False))
            recalibrate_bn(model, tr.loader(64, True), batches=10)
            model.eval()
            predicted = latency.predict(space.plan(ar))
            for backend in available_exporters():
                t0 = time.perf_counter()
                ex = create_exporter(backend)
                path = ex.export(model, te.images[:1], Path(tmp) / f"{backend}-{len(rows)}.onnx")
                rep = ex.verify(path, model, te.images, te.labels)
                row = {"arch": name, "backend": backend, "torch_acc": rep.torch_acc, "export_acc": rep.export_acc,
                       "agreement": rep.agreement, "max_abs_logit_diff": rep.max_abs_logit_diff,
                       "file_kb": path.stat().st_size / 1024,
                       "measured_ort_ms": measure_latency_ms(path, (1, 1, ar.resolution, ar.resolution)),
                       "predicted_cpu_ort_ms": predicted, "seconds": time.perf_counter() - t0}
                rows.append(row)
                print(f"{name:<18} {backend:<9} acc {100 * rep.torch_acc:5.1f} % -> {100 * rep.export_acc:5.1f} %  "
                      f"agree {100 * rep.agreement:6.2f} %  max|dlogit| {rep.max_abs_logit_diff:.3g}  "
                      f"{row['file_kb']:6.1f} KB  ORT {row['measured_ort_ms']:.3f} ms  "
                      f"pred {predicted:.3f} ms", flush=True)
    out = Path(a.out)
    atomic_write(out, lambda f: f.write_text(json.dumps({"rows": rows, "epochs": a.epochs}, indent=2)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
