"""Throughput of the standard spaces: build time, float vs quantized forward and train step, peak memory.

For each preset's reference arch (MobileNetV2-1.0, MobileNetV3-Large; the
largest arch for the others) at a resolution: the Brevitas model's build
time, then forward and train-step (forward + backward + SGD step) time on a
batch, with every quantizer off (:func:`qnas.quant.ptq.float_mode`: the same
network in float) and on. The ratio quantized / float is what issue 11 asks
to bring to at most 2.5x on CPU; figures are medians of ``--reps`` steps after
one warm-up, measured in one run (compare ratios, not seconds). Peak RSS of
the process at the end.

    .venv/bin/python bench/scale.py                                  # cifar-small@32, mobilenetv2@224, mobilenetv3-large@224
    .venv/bin/python bench/scale.py --cases cifar-small:32 --batch 32 --torch-device cuda
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch


def timed(fn, reps: int) -> float:
    fn()  # warm-up (quantizer statistics, allocator)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def measure(preset: str, resolution: int, batch: int, reps: int, device: torch.device) -> dict:
    from qnas.costs import count_costs
    from qnas.presets import preset_space, reference_arch
    from qnas.quant.build import build_model
    from qnas.quant.ptq import float_mode

    space = preset_space(preset)
    arch = reference_arch(preset, resolution=resolution)
    t0 = time.perf_counter()
    model = build_model(space, arch).to(device)
    build_s = time.perf_counter() - t0
    costs = count_costs(space.plan(arch))
    x = torch.randn(batch, space.config.in_channels, resolution, resolution, device=device)
    y = torch.randint(0, space.config.num_classes, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    row: dict = {"preset": preset, "resolution": resolution, "batch": batch, "mmacs": round(costs.macs / 1e6, 1),
                 "params_m": round(costs.params / 1e6, 3), "build_s": round(build_s, 3)}
    for mode in ("float", "quant"):
        model.eval()
        if mode == "float":
            with float_mode(model):
                fwd = timed(forward, reps)
                model.train()
                stp = timed(step, reps)
        else:
            fwd = timed(forward, reps)
            model.train()
            stp = timed(step, reps)
        row[f"{mode}_forward_s"] = round(fwd, 4)
        row[f"{mode}_step_s"] = round(stp, 4)
        row[f"{mode}_train_images_per_s"] = round(batch / stp, 1)
    row["forward_ratio"] = round(row["quant_forward_s"] / row["float_forward_s"], 2)
    row["step_ratio"] = round(row["quant_step_s"] / row["float_step_s"], 2)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["cifar-small:32", "mobilenetv2:224", "mobilenetv3-large:224"],
                   help="PRESET:RESOLUTION ...")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--torch-device", default="cpu")
    p.add_argument("--out", default="bench/results/scale.json")
    a = p.parse_args()
    from qnas.quant.torch_device import resolve_torch_device

    torch.set_num_threads(a.threads)
    device = resolve_torch_device(a.torch_device)
    rows = []
    for case in a.cases:
        preset, res = case.split(":")
        r = measure(preset, int(res), a.batch, a.reps, device)
        rows.append(r)
        print(f"{preset}@{res} ({r['mmacs']} M MACs, {r['params_m']} M params): build {r['build_s']} s; forward float "
              f"{r['float_forward_s']} s quant {r['quant_forward_s']} s ({r['forward_ratio']}x); train step float "
              f"{r['float_step_s']} s quant {r['quant_step_s']} s ({r['step_ratio']}x), "
              f"{r['quant_train_images_per_s']} img/s quantized", flush=True)
    kb = 1024 if sys.platform != "darwin" else 1
    result = {"rows": rows, "device": str(device), "threads": a.threads, "torch": torch.__version__,
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kb / 2**20, 1),
              "goal_step_ratio_le_2_5": all(r["step_ratio"] <= 2.5 for r in rows)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"peak RSS {result['peak_rss_mb']} MB; wrote {a.out}")


if __name__ == "__main__":
    main()
