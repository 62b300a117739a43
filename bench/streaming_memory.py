"""Peak memory of one training epoch over 1,000 vs 50,000 images: streamed vs loaded whole.

Writes synthetic 32x32 RGB images in CIFAR-10's binary format (the same bytes
an npz or image folder would hold), then, in a fresh process per case, opens
them with :func:`qnas.streaming.open_stream` (or :func:`qnas.data.load_dataset`
for the in-memory comparison), splits them and runs one epoch of a small conv
net's training steps through the DataLoader (2 workers, CIFAR augmentation,
resolution drawn per batch from 24/28/32). Peak RSS of the main process and of
the largest worker comes from ``getrusage``; each case runs in 3 fresh processes
and reports the median.

Goal (issue 11): streamed peak RSS at 50,000 images within 1.2x of 1,000.

    .venv/bin/python bench/streaming_memory.py          # ~5 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RECORD = 1 + 3 * 32 * 32

CHILD = r"""
import json, resource, sys, time, torch
from qnas.data import split, load_dataset
from qnas.streaming import open_stream
torch.set_num_threads(1)
mode, path, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
ds = open_stream("cifar10", path) if mode == "stream" else load_dataset("cifar10", path)
opened = time.perf_counter() - t0
train = split(ds, seed=0).train
net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
if mode == "stream":
    batches = train.loader(128, True, seed=0, augment=True, workers=workers, resolutions=[24, 28, 32])
else:
    batches = train.loader(128, True, seed=0)
n = 0
t1 = time.perf_counter()
for x, y in batches:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    n += len(y)
epoch = time.perf_counter() - t1
kb = 1024 if sys.platform != "darwin" else 1
print(json.dumps({"images_trained": n, "open_s": round(opened, 2), "epoch_s": round(epoch, 2),
                  "images_per_s": round(n / epoch, 1),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kb / 2**20,
                  "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kb / 2**20}))
"""


def write_cifar_like(folder: Path, n: int, seed: int = 0, chunk: int = 5000) -> None:
    """``n`` random images with random labels as ``data_batch_1.bin`` (written in chunks)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(folder / "data_batch_1.bin", "wb") as fh:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            rec = np.empty((m, RECORD), dtype=np.uint8)
            rec[:, 0] = rng.integers(0, 10, m)
            rec[:, 1:] = rng.integers(0, 256, (m, RECORD - 1), dtype=np.uint8)
            fh.write(rec.tobytes())


def run_case(mode: str, folder: Path, repeats: int, workers: int) -> dict:
    """The case in ``repeats`` fresh processes; the run with the median peak RSS (the allocator's
    high-water mark moves by tens of MB from run to run)."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder), str(workers)], capture_output=True,
                             text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    runs.sort(key=lambda r: r["peak_rss_mb"])
    return {**runs[len(runs) // 2], "peak_rss_mb_runs": [round(r["peak_rss_mb"], 1) for r in runs]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs=2, default=[1000, 50000])
    p.add_argument("--repeats", type=int, default=3, help="processes per case (median peak RSS)")
    p.add_argument("--workers", type=int, nargs="+", default=[2, 0], help="DataLoader workers of the streamed runs")
    p.add_argument("--out", default="bench/results/streaming_memory.json")
    args = p.parse_args()
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            folder = Path(tmp) / f"n{n}"
            write_cifar_like(folder, n)
            cases = [("stream", w) for w in args.workers] + [("memory", 0)]
            for mode, workers in cases:
                r = {"images": n, "mode": mode, "workers": workers, **run_case(mode, folder, args.repeats, workers)}
                rows.append(r)
                print(f"{mode:>6} {n:>6} images, {workers} workers: peak RSS {r['peak_rss_mb']:7.1f} MB "
                      f"(runs {r['peak_rss_mb_runs']}; largest worker {r['peak_worker_rss_mb']:6.1f} MB), "
                      f"open {r['open_s']} s, epoch {r['epoch_s']} s, {r['images_per_s']} img/s", flush=True)
    small, large = args.sizes

    def peak(mode: str, workers: int, n: int) -> float:
        return next(r["peak_rss_mb"] for r in rows if (r["mode"], r["workers"], r["images"]) == (mode, workers, n))

    ratios = {f"stream_{w}_workers": peak("stream", w, large) / peak("stream", w, small) for w in args.workers}
    ratios["memory"] = peak("memory", 0, large) / peak("memory", 0, small)
    print(f"peak RSS {large} / {small} images (goal <= 1.2 streamed): "
          + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    result = {"rows": rows, "rss_ratio": ratios,
              "goal_met": {k: v <= 1.2 for k, v in ratios.items() if k.startswith("stream")},
              "seconds": round(time.perf_counter() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
