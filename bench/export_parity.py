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

Parity is counted in the model's logit quantization steps too (issue 14): the share of
logits within one step, the largest difference, and the images a rounding tie explains.
``--cifar-like N`` adds N random mixed-precision archs of a 3x32x32, 10-class space,
QAT-trained briefly on synthetic images and checked on 500 more (the case where top-1
agreed on every image while logits differed by tens of steps).
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
    p.add_argument("--cifar-like", type=int, default=3, metavar="N", help="3x32x32 archs to add (0: none)")
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
                                   min_agreement=0.0, min_within_step=0.0)
                rep, codes = res.parity, res.codes
                row = {"arch": name, "backend": backend,
                       "target": res.precision.target if res.precision else None,
                       "mapped_layers": len(res.precision.mapped) if res.precision else 0,
                       "torch_acc": rep.torch_acc if rep else None, "export_acc": rep.export_acc if rep else None,
                       "agreement": rep.agreement if rep else None,
                       "max_abs_logit_diff": rep.max_abs_logit_diff if rep else None,
                       **step_fields(rep),
                       "codes_equal": codes.ok if codes else None, "code_tensors": codes.tensors if codes else None,
                       "file_kb": res.size_bytes / 1024, "measured_ms": res.latency_ms,
                       "predicted_target_ms": res.predicted_latency_ms, "predicted_cpu_ort_ms": predicted,
                       "seconds": time.perf_counter() - t0}
                rows.append(row)
                check = (f"agree {100 * rep.agreement:6.2f} %  {steps_text(rep)}" if rep
                         else "no runtime here      ")
                if codes:
                    check += f"  codes {'equal' if codes.ok else 'DIFFER'} ({codes.tensors})"
                measured = f"{res.latency_ms:.3f} ms" if res.latency_ms is not None else "   -    "
                target = (f"pred {row['target']} {res.predicted_latency_ms:.3f} ms ({row['mapped_layers']} mapped)"
                          if res.precision else "")
                print(f"{name:<18} {backend:<9} {check}  {row['file_kb']:6.1f} KB  here {measured}  "
                      f"pred cpu-ort {predicted:.3f} ms  {target}", flush=True)
    cifar = cifar_like_rows(a.cifar_like) if a.cifar_like else []
    out = Path(a.out)
    atomic_write(out, lambda f: f.write_text(json.dumps({"rows": rows, "cifar_like": cifar, "epochs": a.epochs},
                                                        indent=2)))
    print(f"wrote {out}")


def step_fields(rep) -> dict:
    if rep is None:
        return {}
    return {"within_one_step": rep.within_one_step, "max_step_diff": rep.max_step_diff,
            "tie_images": rep.tie_images, "faithful_share": rep.faithful_share}


def steps_text(rep) -> str:
    if rep.within_one_step is None:
        return f"max|dlogit| {rep.max_abs_logit_diff:.3g}"
    ties = f", {rep.tie_images} tie img" if rep.tie_images else ""
    return (f"within 1 step {100 * rep.within_one_step:6.2f} % (max {rep.max_step_diff:3.0f}{ties}) "
            f"faithful {100 * rep.faithful_share:6.2f} %")


def cifar_like_rows(n_archs: int) -> list[dict]:
    """Random mixed archs on 3x32x32 inputs: QAT on 512 synthetic images (3 epochs), parity on 500 more,
    for every backend with a runtime here, plus onnxruntime's fused session."""
    import numpy as np

    from qnas.exporters import available_exporters, create_exporter
    from qnas.exporters.onnx_qcdq import ort_session, run_ort
    from qnas.exporters.parity import model_reference
    from qnas.quant.build import build_model
    from qnas.quant.integer_grid import snap_biases
    from qnas.space import SearchSpace, SpaceConfig

    space = SearchSpace(SpaceConfig(in_channels=3, resolutions=(32,)))
    g = np.random.default_rng(1)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(n_archs):
            arch = space.sample(g)
            model = build_model(space, arch)
            x, y = torch.randn(512, 3, 32, 32), torch.randint(0, 10, (512,))
            opt = torch.optim.Adam(model.parameters(), 3e-3)
            model.train()
            for _ in range(3):
                for i in range(0, len(x), 32):
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32]).backward()
                    opt.step()
            model.eval()
            snap_biases(model)
            images, labels = torch.randn(500, 3, 32, 32), torch.randint(0, 10, (500,))
            bits = sorted({b for layer in space.plan(arch).layers() for b in (layer.w_bits, layer.a_bits)})
            for backend in available_exporters():
                exporter = create_exporter(backend)
                if not exporter.runtime_available():
                    continue
                path = exporter.export(model, images[:1], Path(tmp) / f"c{k}-{backend}{exporter.suffix}")
                rep = exporter.verify(path, model, images, labels)
                rows.append({"arch": k, "bits": bits, "backend": backend, "agreement": rep.agreement, **step_fields(rep)})
                print(f"cifar-like {k} bits {bits} {backend:<9} agree {100 * rep.agreement:6.2f} %  {steps_text(rep)}",
                      flush=True)
                if backend == "onnx":
                    fused = model_reference(model, images).compare("onnx-fused", run_ort(ort_session(path), images),
                                                                   labels)
                    rows.append({"arch": k, "bits": bits, "backend": "onnx-fused", "agreement": fused.agreement,
                                 **step_fields(fused)})
                    print(f"cifar-like {k} bits {bits} {'ort-fused':<9} agree {100 * fused.agreement:6.2f} %  "
                          f"{steps_text(fused)}", flush=True)
    return rows


if __name__ == "__main__":
    main()
