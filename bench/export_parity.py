#!/usr/bin/env python
"""Does every exported file compute what the PyTorch model does? (issue 5)

    python bench/export_parity.py [--epochs 4] [--out bench/results/export_parity.json]

For a few archs (uniform W8A8, mixed W4/W8, mixed with 2-bit layers), QAT-train
on digits and export with every backend through ``qnas.exporting.export_model``
(the path ``qnas export`` takes; each backend's default target profile, with
``allow_upcast``). Where a runtime exists here (onnxruntime for onnx and the
TensorRT-form onnx, LiteRT for tflite) the file runs on the digits test split:
agreement with PyTorch, max |dlogit|; where none does (CoreML off macOS) the
stored integer codes and scales are compared with the model's. Also: file size,
layers the target maps to other bits, latency measured here (1 thread, batch 1)
next to the latency predicted on the target profile and on cpu-ort.
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
    from qnas.exporting import export_model
    from qnas.model_io import LoadedModel
    from qnas.latency import create_latency_model
    from qnas.quant.build import build_model
    from qnas.quant.integer_grid import snap_biases
    from qnas.quant.checkpoint import atomic_write
    from qnas.quant.train import TrainConfig, train
    from qnas.space import SearchSpace
    from qnas.quant.batchnorm import recalibrate_bn

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
            train(model, tr.loader(64, True), None, TrainConfig(epochs=a.epochs, progress=False))
            recalibrate_bn(model, tr.loader(64, True), batches=10)
            model.eval()
            snap_biases(model)  # as the finishing pass does
            loaded = LoadedModel(model, space, ar, {"data": {"data": "digits", "split_seed": 0}})
            predicted = latency.predict(space.plan(ar))
            for backend in available_exporters():
                t0 = time.perf_counter()
                suffix = create_exporter(backend).suffix
                res = export_model(loaded, backend, Path(tmp) / f"{backend}-{len(rows)}{suffix}", allow_upcast=True,
                                   min_agreement=0.0)
                rep, codes = res.parity, res.codes
                row = {"arch": name, "backend": backend,
                       "target": res.precision.target if res.precision else None,
                       "mapped_layers": len(res.precision.mapped) if res.precision else 0,
                       "torch_acc": rep.torch_acc if rep else None, "export_acc": rep.export_acc if rep else None,
                       "agreement": rep.agreement if rep else None,
                       "max_abs_logit_diff": rep.max_abs_logit_diff if rep else None,
                       "codes_equal": codes.ok if codes else None, "code_tensors": codes.tensors if codes else None,
                       "file_kb": res.size_bytes / 1024, "measured_ms": res.latency_ms,
                       "predicted_target_ms": res.predicted_latency_ms, "predicted_cpu_ort_ms": predicted,
                       "seconds": time.perf_counter() - t0}
                rows.append(row)
                check = (f"agree {100 * rep.agreement:6.2f} %  max|dlogit| {rep.max_abs_logit_diff:.3g}" if rep
                         else "no runtime here      ")
                if codes:
                    check += f"  codes {'equal' if codes.ok else 'DIFFER'} ({codes.tensors})"
                measured = f"{res.latency_ms:.3f} ms" if res.latency_ms is not None else "   -    "
                target = (f"pred {row['target']} {res.predicted_latency_ms:.3f} ms ({row['mapped_layers']} mapped)"
                          if res.precision else "")
                print(f"{name:<18} {backend:<9} {check}  {row['file_kb']:6.1f} KB  here {measured}  "
                      f"pred cpu-ort {predicted:.3f} ms  {target}", flush=True)
    out = Path(a.out)
    atomic_write(out, lambda f: f.write_text(json.dumps({"rows": rows, "epochs": a.epochs}, indent=2)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
