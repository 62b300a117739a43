#!/usr/bin/env python
"""Stand-alone ground truth for ``bench/supernet_ranking.py``, cached per (arch, seed, settings).

    .venv/bin/python bench/ranking_ground_truth.py [--archs 30] [--epochs 5] [--seeds 2] [--jobs 1]
        [--source-resolution PX] [--train-images N]

Each entry is one arch of the default digits :class:`~qnas.space.SearchSpace` trained
stand-alone (QAT from scratch with :class:`~qnas.evaluators.TrainingEvaluator`: ``epochs``
epochs, BN re-calibrated on 10 training batches) with one training seed (initial weights
and batch order), then evaluated on the validation split (269 images) and the test split
(359 images) -- top-1 accuracy and mean cross-entropy of each. Neither split is ever
trained on, by the stand-alone models or by the supernet.

A harder task, for archs that differ by more than training noise: ``--source-resolution 4``
shrinks every image (all splits, anti-aliased bilinear) to 4x4 pixels first -- the archs still see their own 12-20 px
input, upsampled from less detail; ``--train-images N`` trains on a seeded random N of the
training images. ``bench/supernet_ranking.py`` takes the same options and trains its supernet
on the same data.

Results go to a JSON file (default ``bench/results/ranking_ground_truth.json``), written
atomically after every training, keyed by a hash of the arch dict and every setting that
changes the result (seed, epochs, batch size, learning rate, BN batches, torch threads,
data split). A rerun -- with another supernet, or with more archs (the arch sample is
prefix-stable: the first 10 of ``--archs 30`` are ``--archs 10``) -- trains only what is
missing; ``--jobs 2`` trains in two processes (one torch thread each).

Each entry also records a fingerprint of the stand-alone training code (``quant/*.py``,
``qnas/evaluators.py``); entries made with other code are reused with a warning
(``--refresh`` retrains them).

Run as a script it only fills the cache (and prints the seed-to-seed Kendall tau), so the
slow part can run ahead of ``bench/supernet_ranking.py``.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATH = ROOT / "bench" / "results" / "ranking_ground_truth.json"
#: bump when the meaning of an entry changes (invalidates every cached entry)
FORMAT = 1
#: the splits evaluated (the "eval set" is their union)
PARTS = ("val", "test")


@dataclass(frozen=True)
class Settings:
    """Everything besides the arch and the seed that changes a stand-alone result."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 3e-3
    bn_batches: int = 10
    threads: int = 1  # results depend on the torch thread count at float rounding
    dataset: str = "digits"
    split_seed: int = 0
    val_frac: float = 0.15
    test_frac: float = 0.2
    # a harder task (0: off): images shrunk to this many pixels a side before the space's own
    # resizing (digits are 8x8), and only the first N training images (val/test unchanged)
    source_resolution: int = 0
    train_images: int = 0

    def key(self, arch: dict[str, Any], seed: int) -> str:
        fields = {k: v for k, v in asdict(self).items() if k not in HARDER or v}  # old keys stay valid
        blob = json.dumps({"format": FORMAT, "arch": arch, "seed": int(seed), **fields},
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @property
    def task(self) -> str:
        """The task in words, e.g. ``digits`` or ``digits at 4x4 px, 300 training images``."""
        bits = [f"at {self.source_resolution}x{self.source_resolution} px"] if self.source_resolution else []
        bits += [f"{self.train_images} training images"] if self.train_images else []
        return self.dataset + (" " + ", ".join(bits) if bits else "")


#: Settings fields that make the task harder; left out of the cache key while 0
HARDER = ("source_resolution", "train_images")


# ---- shared helpers (also used by bench/supernet_ranking.py) -------------------------------
def load_splits(settings: Settings):
    from qnas.data import Splits, load_dataset, split

    splits = split(load_dataset(settings.dataset), seed=settings.split_seed,
                   val_frac=settings.val_frac, test_frac=settings.test_frac)
    if settings.source_resolution:  # less detail in every split; the archs still see their own resolution
        r = settings.source_resolution
        splits = Splits(*(s.at_resolution(r) for s in (splits.train, splits.val, splits.test)))
    if settings.train_images:  # a seeded random subset (the split keeps the data set's order)
        if settings.train_images > len(splits.train):
            raise SystemExit(f"--train-images {settings.train_images}: the training split has only "
                             f"{len(splits.train)} images")
        keep = np.random.default_rng(settings.split_seed).permutation(len(splits.train))[:settings.train_images]
        splits = Splits(splits.train.subset(np.sort(keep)), splits.val, splits.test)
    return splits


def add_task_args(p: argparse.ArgumentParser) -> None:
    """The harder-task options shared by the ranking benches (see :class:`Settings`)."""
    from qnas.cli._args import non_negative_int

    p.add_argument("--source-resolution", type=non_negative_int, default=0, metavar="PX",
                   help="shrink every image to PX x PX before the space resizes it (a harder task; 0: as is)")
    p.add_argument("--train-images", type=non_negative_int, default=0, metavar="N",
                   help="train (stand-alone and supernet) on only the first N training images (0: all)")


def task_settings(a: argparse.Namespace, epochs: int) -> Settings:
    return Settings(epochs=epochs, source_resolution=a.source_resolution, train_images=a.train_images)


def sample_archs(space, n: int, seed: int) -> list:
    """``n`` distinct random archs (``space.sample``) from one seeded generator: prefix-stable in ``n``."""
    rng = np.random.default_rng(seed)
    archs: dict[str, Any] = {}
    for _ in range(1000 * max(1, n)):
        if len(archs) >= n:
            break
        a = space.sample(rng)
        archs.setdefault(a.uid, a)
    if len(archs) < n:
        raise SystemExit(f"the space gave only {len(archs)} distinct archs, {n} asked for")
    return list(archs.values())


def w8a8(arch):
    """The same arch with every block at 8-bit weights and activations (stem/head as they are)."""
    from dataclasses import replace

    stages = tuple(tuple(b if b.is_skip else replace(b, w_bits=(8,) * len(b.w_bits), a_bits=(8,) * len(b.a_bits))
                         for b in stage) for stage in arch.stages)
    return replace(arch, stages=stages)


def evaluate_parts(model, data, resolution: int, parts: Sequence[str] = PARTS) -> dict[str, dict[str, float]]:
    """Top-1 accuracy, mean cross-entropy and size of each split (``data``: a ResizedSplits)."""
    import torch
    import torch.nn.functional as F

    from qnas.quant.train import predict

    out = {}
    with torch.no_grad():
        for part in parts:
            logits, labels = predict(model, data(part, resolution).loader(512, False))
            out[part] = {"acc": float((logits.argmax(1) == labels).float().mean()),
                         "loss": float(F.cross_entropy(logits.float(), labels)), "n": int(len(labels))}
    return out


def combined(metrics: dict[str, dict[str, float]], parts: Sequence[str] = PARTS) -> dict[str, float]:
    """The size-weighted union of ``parts`` (accuracy and mean loss over all their images)."""
    n = sum(metrics[p]["n"] for p in parts)
    return {"acc": sum(metrics[p]["acc"] * metrics[p]["n"] for p in parts) / n,
            "loss": sum(metrics[p]["loss"] * metrics[p]["n"] for p in parts) / n, "n": n}


def code_fingerprint() -> str:
    """Hash of the code that trains and evaluates a stand-alone model."""
    h = hashlib.sha1()
    for p in sorted((ROOT / "quant").glob("*.py")) + [ROOT / "qnas" / "evaluators.py"]:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


# ---- one training (runs in the main process or a worker) ------------------------------------
_WORKER: dict[str, Any] = {}


def train_one(arch_dict: dict[str, Any], seed: int, settings: Settings) -> dict[str, Any]:
    """Train ``arch_dict`` stand-alone with ``seed``; the cache entry (without its key)."""
    import torch

    from qnas._torch_utils import torch_threads
    from qnas.arch import Arch
    from qnas.data import ResizedSplits
    from qnas.evaluators import TrainingEvaluator
    from qnas.quant.build import build_model
    from qnas.space import SearchSpace

    if _WORKER.get("settings") != settings:  # data loaded once per process
        splits = load_splits(settings)
        _WORKER.update(settings=settings, splits=splits, data=ResizedSplits(splits), space=SearchSpace())
    space, data = _WORKER["space"], _WORKER["data"]
    arch = Arch.from_dict(arch_dict)
    t0 = time.perf_counter()
    ev = TrainingEvaluator(space, _WORKER["splits"], epochs=settings.epochs, batch_size=settings.batch_size,
                           lr=settings.lr, seed=seed, progress=False, threads=settings.threads,
                           bn_batches=settings.bn_batches)
    res = ev(arch)
    with torch_threads(settings.threads):
        model = build_model(space, arch)
        model.load_state_dict(ev.states.pop(arch.uid))
        model.eval()
        metrics = evaluate_parts(model, data, arch.resolution)
    if abs(metrics["val"]["acc"] - res["val_acc"]) > 1e-6:
        raise RuntimeError(f"re-evaluated val accuracy {metrics['val']['acc']:.4f} != the evaluator's "
                           f"{res['val_acc']:.4f} for {arch.describe()}")
    return {"arch": arch_dict, "uid": arch.uid, "seed": int(seed), "settings": asdict(settings), **metrics,
            "train_seconds": round(time.perf_counter() - t0, 2), "code": code_fingerprint(),
            "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _train_job(job: tuple[str, dict[str, Any], int, Settings]) -> tuple[str, dict[str, Any]]:
    key, arch_dict, seed, settings = job
    return key, train_one(arch_dict, seed, settings)


# ---- the cache -----------------------------------------------------------------------------
class Cache:
    """``{"format": 1, "entries": {key: entry}}`` in one JSON file; every write merges with
    what is on disk (another run may have added entries) and replaces the file atomically."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        try:
            d = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"{self.path} is not a readable ground-truth cache ({e}); move it away") from None
        return dict(d.get("entries", {})) if d.get("format") == FORMAT else {}

    def put(self, key: str, entry: dict[str, Any]) -> None:
        from qnas.quant.checkpoint import atomic_write

        self.entries = {**self._read(), **self.entries, key: entry}
        text = json.dumps({"format": FORMAT, "entries": self.entries}, indent=1, sort_keys=True)
        atomic_write(self.path, lambda p: Path(p).write_text(text))


def ground_truth(archs: Sequence, seeds: Sequence[int], settings: Settings, path: str | Path = DEFAULT_PATH,
                 jobs: int = 1, refresh: bool = False,
                 log: Callable[[str], None] = lambda s: print(s, flush=True)) -> dict[str, Any]:
    """Stand-alone results of every arch x seed, from the cache or trained now.

    Returns ``{"entries": [[entry per seed] per arch], "trained": n, "cached": n, "seconds": s,
    "stale": n}`` (stale: cached entries made with other stand-alone code)."""
    cache = Cache(path)
    code = code_fingerprint()
    keys = [[settings.key(a.to_dict(), s) for s in seeds] for a in archs]
    todo, stale = [], 0
    for a, row in zip(archs, keys):
        for s, k in zip(seeds, row):
            e = cache.entries.get(k)
            if e is None or (refresh and e.get("code") != code):
                todo.append((k, a.to_dict(), int(s), settings))
            elif e.get("code") != code:
                stale += 1
    if stale:
        log(f"warning: {stale} cached stand-alone results were made with other stand-alone code "
            f"(quant/, qnas/evaluators.py); pass --refresh-ground-truth to retrain them")
    n_cached = len(archs) * len(seeds) - len(todo)
    t0 = time.perf_counter()
    if todo:
        log(f"ground truth: {n_cached} cached, training {len(todo)} stand-alone "
            f"({settings.epochs} epochs, {jobs} process{'es' if jobs > 1 else ''}) -> {cache.path}")

    def done(i: int, key: str, entry: dict[str, Any]) -> None:
        cache.put(key, entry)
        ev = combined(entry)
        log(f"  [{i:3d}/{len(todo)}] seed {entry['seed']}  val+test acc {ev['acc']:.3f} loss {ev['loss']:.3f}  "
            f"({entry['train_seconds']:.0f} s)  {entry['uid']}")

    if jobs <= 1 or len(todo) <= 1:
        for i, job in enumerate(todo, 1):
            done(i, *_train_job(job))
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_train_job, job) for job in todo]
            for i, f in enumerate(as_completed(futures), 1):
                done(i, *f.result())
    return {"entries": [[cache.entries[k] for k in row] for row in keys], "trained": len(todo),
            "cached": n_cached, "seconds": round(time.perf_counter() - t0, 1), "stale": stale}


# ---- statistics ----------------------------------------------------------------------------
def rank_corr(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(Kendall tau-b, Spearman rho); NaN where one side is constant."""
    from scipy.stats import kendalltau, spearmanr

    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan"), float("nan")
    return float(kendalltau(x, y).statistic), float(spearmanr(x, y).statistic)


def runs_per_seed(rows: Sequence[Sequence[dict]], get: Callable[[dict], float]) -> list[list[float]]:
    """``get`` of every arch, one list per training seed (``rows``: [entry per seed] per arch)."""
    return [[get(row[s]) for row in rows] for s in range(len(rows[0]))]


def corr_vs_single_runs(x: Sequence[float], rows: Sequence[Sequence[dict]],
                        get: Callable[[dict], float]) -> tuple[float, float]:
    """Mean (tau, rho) of ``x`` against one stand-alone run at a time: like for like with
    :func:`seed_ceiling` (the mean of the seeds is less noisy than one run, so a correlation with it
    may exceed a ceiling measured between single runs)."""
    pairs = [rank_corr(x, run) for run in runs_per_seed(rows, get)]
    return float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs]))


def seed_ceiling(per_seed: Sequence[Sequence[float]]) -> tuple[float, float]:
    """Mean (tau, rho) over every pair of seeds: how well one stand-alone run ranks like another."""
    pairs = [rank_corr(a, b) for a, b in itertools.combinations(per_seed, 2)]
    if not pairs:
        return float("nan"), float("nan")
    return float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs]))


def bootstrap_tau(x: Sequence[float], y: Sequence[float], n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of Kendall tau over archs resampled with replacement."""
    from scipy.stats import kendalltau

    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    taus = []
    for _ in range(n):
        i = rng.integers(0, len(x), len(x))
        if len(set(x[i])) > 1 and len(set(y[i])) > 1:
            taus.append(kendalltau(x[i], y[i]).statistic)
    if not taus:
        return float("nan"), float("nan")
    lo, hi = np.percentile(taus, [2.5, 97.5])
    return float(lo), float(hi)


def finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", type=int, default=30)
    p.add_argument("--epochs", type=int, default=5, help="stand-alone QAT epochs")
    p.add_argument("--seeds", type=int, default=2, help="training seeds per arch (0..N-1)")
    p.add_argument("--seed", type=int, default=1, help="arch sampling seed")
    p.add_argument("--w8a8", type=int, default=0, help="also the W8A8 version of the first N archs")
    p.add_argument("--jobs", type=int, default=1, help="training processes (one torch thread each)")
    p.add_argument("--ground-truth", default=str(DEFAULT_PATH), help="cache file")
    p.add_argument("--refresh-ground-truth", action="store_true",
                   help="retrain entries made with other stand-alone code")
    add_task_args(p)
    a = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from qnas.space import SearchSpace

    settings = task_settings(a, a.epochs)
    archs = sample_archs(SearchSpace(), a.archs, a.seed)
    archs += [w8a8(x) for x in archs[:a.w8a8]]
    gt = ground_truth(archs, list(range(a.seeds)), settings, a.ground_truth, a.jobs, a.refresh_ground_truth)
    rows = gt["entries"][:a.archs]
    secs = [e["train_seconds"] for r in gt["entries"] for e in r]
    for name, get in (("val top-1", lambda e: e["val"]["acc"]), ("val+test top-1", lambda e: combined(e)["acc"]),
                      ("val+test -loss", lambda e: -combined(e)["loss"])):
        tau, rho = seed_ceiling(runs_per_seed(rows, get))
        print(f"seed-to-seed {name:15s} tau {tau:.3f}  rho {rho:.3f}")
    print(f"{len(archs)} archs x {a.seeds} seeds: {gt['trained']} trained in {gt['seconds']:.0f} s, "
          f"{gt['cached']} cached; {np.median(secs):.1f} s per training (median) -> {a.ground_truth}")


if __name__ == "__main__":
    main()
