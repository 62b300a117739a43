"""Throughput of the standard spaces: build time, float vs quantized forward and train step, peak memory.

For each preset's reference arch (MobileNetV2-1.0, MobileNetV3-Large; the
largest arch for the others) at a resolution: the Brevitas model's build
time, then forward and train-step (forward + backward + SGD step) time on a
batch, with every quantizer off (:func:`qnas.quant.ptq.float_mode`: the same
network in float) and on: in the first 300 training steps, when every
activation quantizer also takes a percentile of its input, and after them;
and the same quantized model built with stock Brevitas internals (what
:mod:`qnas.quant.fused` replaces). The ratio quantized / float is what issue
11 asks to bring to at most 2.5x on CPU; figures are medians of ``--reps``
steps after one warm-up, measured in one run (compare ratios, not seconds).
Peak RSS of the process at the end.

Then DDP on the CPU, 1 vs 2 processes (``--ddp-procs``): ``python -m torch.distributed.run
--standalone --nproc_per_node N`` runs this script as a worker (``--ddp-worker``) that QAT-trains
the ``--ddp-case`` preset's reference arch with :func:`qnas.quant.train.train` on synthetic
in-memory images, global batch ``--ddp-batch`` (each rank reads its slice of it), one torch thread
per process (gloo; under 2 processes the ranks need 2 free cores to show a speed-up). One warm-up
epoch of ``--ddp-steps`` steps, then the median epoch of ``--ddp-reps``: seconds per step, images
per second and the ratio to the 1-process run. ``--skip-ddp`` leaves it out, ``--ddp-only`` runs
only it.

    .venv/bin/python bench/scale.py                  # cifar-small@32, mobilenetv2@224, mobilenetv3-large@224, DDP 1 vs 2
    .venv/bin/python bench/scale.py --cases cifar-small:32 --batch 32 --torch-device cuda --skip-ddp
    .venv/bin/python bench/scale.py --ddp-only --ddp-case cifar-small:32 --ddp-batch 32 --ddp-steps 5
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
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


@contextlib.contextmanager
def stock_brevitas():
    """Models built inside use Brevitas' own IntQuant and AbsPercentile (what qnas.quant.fused replaces)."""
    from brevitas.core.quant import IntQuant
    from brevitas.core.stats.stats_op import AbsPercentile

    import qnas.quant.build as build
    from qnas.quant.quantizers import SignedActPerTensor, SignedWeightPerChannel

    class StockAct(SignedActPerTensor):
        int_quant = IntQuant
        scaling_stats_impl = AbsPercentile

    class StockWeight(SignedWeightPerChannel):
        int_quant = IntQuant

    saved = build.SignedActPerTensor, build.SignedWeightPerChannel
    build.SignedActPerTensor, build.SignedWeightPerChannel = StockAct, StockWeight
    try:
        yield
    finally:
        build.SignedActPerTensor, build.SignedWeightPerChannel = saved


def end_statistics_phase(model: torch.nn.Module) -> None:
    """Skip the first ``collect_stats_steps`` (300) steps in which every activation quantizer takes the
    percentile of its input: from then on (most of a training run) the learned scale is used."""
    for m in model.modules():
        if hasattr(m, "init_scale") and hasattr(m, "collect_stats_steps"):
            m.init_scale()


def measure(preset: str, resolution: int, batch: int, reps: int, device: torch.device) -> dict:
    """One row: build time, then forward and train-step seconds of the float model, the quantized model
    in its first 300 steps (activation statistics) and after them, and the same with stock Brevitas."""
    from qnas.costs import count_costs
    from qnas.presets import preset_space, reference_arch
    from qnas.quant.build import build_model
    from qnas.quant.ptq import float_mode

    space = preset_space(preset)
    arch = reference_arch(preset, resolution=resolution)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build_model(space, arch).to(device)
    build_s = time.perf_counter() - t0
    with stock_brevitas():
        torch.manual_seed(0)
        stock = build_model(space, arch).to(device)
    costs = count_costs(space.plan(arch))
    x = torch.randn(batch, space.config.in_channels, resolution, resolution, device=device)
    y = torch.randint(0, space.config.num_classes, (batch,), device=device)

    def forward(net: torch.nn.Module):
        def run() -> None:
            with torch.no_grad():
                net(x)
        return run

    def step(net: torch.nn.Module):
        opt = torch.optim.SGD(net.parameters(), lr=1e-4)

        def run() -> None:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        return run

    row: dict = {"preset": preset, "resolution": resolution, "batch": batch, "mmacs": round(costs.macs / 1e6, 1),
                 "params_m": round(costs.params / 1e6, 3), "build_s": round(build_s, 3)}
    model.eval()
    with float_mode(model):
        row["float_forward_s"] = timed(forward(model), reps)
        model.train()
        row["float_step_s"] = timed(step(model), reps)
    for name, net in (("quant", model), ("stock", stock)):
        net.eval()
        row[f"{name}_forward_s"] = timed(forward(net), reps)
        net.train()
        row[f"{name}_first_steps_s"] = timed(step(net), reps)  # within the 300-step statistics phase
        end_statistics_phase(net)
        row[f"{name}_step_s"] = timed(step(net), reps)
    for key in list(row):
        if key.endswith("_s") and key != "build_s":
            row[key] = round(row[key], 4)
    row["quant_train_images_per_s"] = round(batch / row["quant_step_s"], 1)
    row["forward_ratio"] = round(row["quant_forward_s"] / row["float_forward_s"], 2)
    row["step_ratio"] = round(row["quant_step_s"] / row["float_step_s"], 2)
    row["first_steps_ratio"] = round(row["quant_first_steps_s"] / row["float_step_s"], 2)
    row["stock_step_ratio"] = round(row["stock_step_s"] / row["float_step_s"], 2)
    row["stock_first_steps_ratio"] = round(row["stock_first_steps_s"] / row["float_step_s"], 2)
    return row


def ddp_worker(a: argparse.Namespace) -> None:
    """One process of the DDP rows (run by torch.distributed.run): QAT train steps, rank 0 writes the timings."""
    torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore")
    from qnas.data import ImageDataset
    from qnas.presets import preset_space, reference_arch
    from qnas.quant import distributed as qdist
    from qnas.quant.build import build_model
    from qnas.quant.train import TrainConfig, train

    ctx = qdist.init_distributed()
    preset, res = a.ddp_case.split(":")
    r = int(res)
    space = preset_space(preset)
    c, k = space.config.in_channels, space.config.num_classes
    torch.manual_seed(0)
    model = build_model(space, reference_arch(preset, resolution=r))
    gen = torch.Generator().manual_seed(0)
    n = a.ddp_steps * a.ddp_batch
    data = ImageDataset(torch.randn(n, c, r, r, generator=gen), torch.randint(0, k, (n,), generator=gen), k,
                        "synthetic", (0.0,) * c, (1.0,) * c)
    hist = train(model, data.loader(a.ddp_batch, True, 0), None,
                 TrainConfig(epochs=1 + a.ddp_reps, lr=1e-3, progress=False))
    if ctx.is_main:
        Path(a.ddp_worker).write_text(json.dumps({"world_size": ctx.world_size,
                                                  "epoch_seconds": [e.seconds for e in hist.epochs]}))
    qdist.barrier()


def measure_ddp(a: argparse.Namespace) -> dict:
    """DDP rows: the same QAT steps under 1, 2, ... processes (``a.ddp_procs``), one torch thread each."""
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    preset, res = a.ddp_case.split(":")
    for procs in a.ddp_procs:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ddp.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
                   str(Path(__file__).resolve()), "--ddp-worker", str(out), "--ddp-case", a.ddp_case,
                   "--ddp-batch", str(a.ddp_batch), "--ddp-steps", str(a.ddp_steps), "--ddp-reps", str(a.ddp_reps)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"DDP run with {procs} process(es) failed:\n{proc.stderr[-3000:]}")
            got = json.loads(out.read_text())
        timed_epochs = got["epoch_seconds"][1:]  # the first epoch is the warm-up
        step_s = statistics.median(timed_epochs) / a.ddp_steps
        rows.append({"processes": procs, "world_size": got["world_size"], "preset": preset, "resolution": int(res),
                     "global_batch": a.ddp_batch, "local_batch": -(-a.ddp_batch // procs), "steps": a.ddp_steps,
                     "step_s": round(step_s, 4), "images_per_s": round(a.ddp_batch / step_s, 1),
                     "warmup_epoch_s": round(got["epoch_seconds"][0], 3), "launch_wall_s": round(wall, 1)})
    base = rows[0]
    for row in rows:
        row["speedup_vs_first"] = round(base["step_s"] / row["step_s"], 2)
    return {"rows": rows, "threads_per_process": 1, "backend": "gloo", "cpu_count": os.cpu_count(),
            "what": "QAT train steps (qnas.quant.train.train) of the preset's reference arch, synthetic "
                    "in-memory data; median epoch after one warm-up epoch"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["cifar-small:32", "mobilenetv2:224", "mobilenetv3-large:224"],
                   help="PRESET:RESOLUTION ...")
    p.add_argument("--skip-ddp", action="store_true", help="leave out the DDP 1 vs 2 processes rows")
    p.add_argument("--ddp-only", action="store_true", help="only the DDP rows (no --cases)")
    p.add_argument("--ddp-case", default="cifar-small:32", help="PRESET:RESOLUTION of the DDP rows")
    p.add_argument("--ddp-batch", type=int, default=32, help="global batch of the DDP rows")
    p.add_argument("--ddp-steps", type=int, default=5, help="train steps per epoch of the DDP rows")
    p.add_argument("--ddp-reps", type=int, default=2, help="timed epochs after the warm-up epoch")
    p.add_argument("--ddp-procs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--torch-device", default="cpu")
    p.add_argument("--out", default="bench/results/scale.json")
    a = p.parse_args()
    if a.ddp_worker:
        ddp_worker(a)
        return
    if a.skip_ddp and a.ddp_only:
        p.error("--skip-ddp and --ddp-only exclude each other")
    if a.ddp_batch < 2 * max(a.ddp_procs) or a.ddp_steps < 1 or a.ddp_reps < 1:
        p.error("--ddp-batch must give every process 2 images; --ddp-steps and --ddp-reps must be >= 1")
    from qnas.quant.torch_device import resolve_torch_device

    torch.set_num_threads(a.threads)
    device = resolve_torch_device(a.torch_device)
    rows = []
    for case in ([] if a.ddp_only else a.cases):
        preset, res = case.split(":")
        r = measure(preset, int(res), a.batch, a.reps, device)
        rows.append(r)
        print(f"{preset}@{res} ({r['mmacs']} M MACs, {r['params_m']} M params): build {r['build_s']} s; forward float "
              f"{r['float_forward_s']} s quant {r['quant_forward_s']} s ({r['forward_ratio']}x); train step float "
              f"{r['float_step_s']} s, quant {r['quant_step_s']} s ({r['step_ratio']}x; first 300 steps "
              f"{r['first_steps_ratio']}x), stock Brevitas {r['stock_step_ratio']}x (first 300 steps "
              f"{r['stock_first_steps_ratio']}x); {r['quant_train_images_per_s']} img/s quantized", flush=True)
    kb = 1024 if sys.platform != "darwin" else 1
    result = {"rows": rows, "device": str(device), "threads": a.threads, "torch": torch.__version__,
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kb / 2**20, 1),
              "goal_step_ratio_le_2_5": all(r["step_ratio"] <= 2.5 for r in rows) if rows else None}
    if not a.skip_ddp:
        result["ddp"] = measure_ddp(a)
        for r in result["ddp"]["rows"]:
            print(f"DDP {r['processes']} process(es), {r['preset']}@{r['resolution']}, global batch "
                  f"{r['global_batch']} ({r['local_batch']} per process), 1 thread each: {r['step_s']} s/step, {r['images_per_s']} img/s, "
                  f"{r['speedup_vs_first']}x vs {result['ddp']['rows'][0]['processes']} process(es)", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"peak RSS {result['peak_rss_mb']} MB; wrote {a.out}")


if __name__ == "__main__":
    main()
