"""Whole-model latency measured on this machine: build the Brevitas model of
an arch, export it with qnas' ONNX (QCDQ) exporter and time it in
onnxruntime (batch 1, one intra-op thread by default, median of ``repeats``
runs after ``warmup``; the smallest median of a few such rounds, because on a
shared machine other processes only ever add time).

These are the ground truth every latency predictor is judged against
(DESIGN.md §3), and the targets the hybrid model's correction is fitted on.
A :class:`MeasurementSet` keeps them in a JSON file so a benchmark can reuse
them; a measurement is reused only on the same CPU, onnxruntime version and
thread count, and under the same timing protocol.

    >>> ms = measure_arch_ms(space, arch)                 # one arch, ~2 s on 2 busy cores
    >>> many = measure_archs(space, archs, passes=8)      # export all, then 8 timing passes
    >>> cache = MeasurementSet.load_or_new("m.json")
    >>> cache.add(arch, ms); cache.save("m.json")
"""
from __future__ import annotations

import json
import math
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qnas._torch_utils import torch_threads
from qnas.arch import Arch
from qnas.errors import ArchError, LatencyTableError, QnasError

FORMAT = "qnas-latency-measurements"
VERSION = 1

#: random batches run in train mode before export, so BatchNorm running stats
#: and the activation quantizers' statistics-initialised scales are not degenerate
_CALIB_BATCHES = 2
_CALIB_BATCH_SIZE = 8
#: timing rounds per arch (min of their medians); ~0.1-0.3 s in all for these small nets
DEFAULT_ROUNDS = 3


def cpu_name() -> str:
    """The CPU model string (``/proc/cpuinfo``'s model name on Linux), for measurement metadata."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def measurement_meta(threads: int = 1, warmup: int = 10, repeats: int = 30,
                     rounds: int = DEFAULT_ROUNDS, passes: int = 1) -> dict[str, Any]:
    """What a measurement depends on: threads, onnxruntime version, CPU, and the timing protocol."""
    return {"threads": int(threads), "ort_version": ort_version(), "cpu": cpu_name(),
            "warmup": int(warmup), "repeats": int(repeats), "rounds": int(rounds), "passes": int(passes),
            "batch": 1, "exporter": "onnx-qcdq", "stat": "min over passes x rounds of the median of repeats"}


def build_calibrated_model(space: Any, arch: Arch, seed: int = 0) -> Any:
    """The Brevitas model of ``arch`` with seeded weights, after a few random
    batches in train mode (BatchNorm stats, activation scales), in eval mode."""
    import torch

    from qnas.quant.build import build_model

    cfg = space.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(space, arch)
        model.train()
        with torch.no_grad():
            for _ in range(_CALIB_BATCHES):
                model(torch.randn(_CALIB_BATCH_SIZE, cfg.in_channels, arch.resolution, arch.resolution))
    model.eval()
    return model


def export_arch_onnx(space: Any, arch: Arch, out: str | Path, seed: int = 0) -> Path:
    """Write the QCDQ ONNX file of ``arch`` (seeded weights) to ``out``."""
    import torch

    from qnas.exporters import create_exporter

    with torch_threads(1):
        model = build_calibrated_model(space, arch, seed)
        example = torch.zeros(1, space.config.in_channels, arch.resolution, arch.resolution)
        return create_exporter("onnx").export(model, example, out, overwrite=True)


def _check_protocol(threads: int, warmup: int, repeats: int, rounds: int, passes: int = 1) -> None:
    if threads < 1 or warmup < 0 or repeats < 1 or rounds < 1 or passes < 1:
        raise QnasError(f"need threads >= 1, warmup >= 0, repeats >= 1, rounds >= 1, passes >= 1; "
                        f"got {threads}, {warmup}, {repeats}, {rounds}, {passes}")


def time_onnx_ms(path: str | Path, input_shape: tuple[int, ...], threads: int = 1, warmup: int = 10,
                 repeats: int = 30, rounds: int = DEFAULT_ROUNDS, pause_s: float = 0.0) -> float:
    """Smallest of ``rounds`` :func:`~qnas.exporters.onnx_qcdq.measure_latency_ms`
    medians (each a fresh session, ``warmup`` runs, median of ``repeats``), with ``pause_s``
    seconds between rounds: on a shared virtual machine a core can run ~2x slower for seconds
    at a time, so rounds spread over a few seconds find an undisturbed one."""
    from qnas.exporters.onnx_qcdq import measure_latency_ms

    if pause_s < 0:
        raise QnasError(f"pause_s must be >= 0, got {pause_s}")
    medians = []
    for i in range(rounds):
        if i and pause_s:
            time.sleep(pause_s)
        medians.append(float(measure_latency_ms(path, input_shape, threads=threads, warmup=warmup, repeats=repeats)))
    ms = min(medians)
    if not (math.isfinite(ms) and ms > 0):
        raise QnasError(f"onnxruntime returned a non-positive latency {ms} ms for {path}")
    return ms


def _input_shape(space: Any, arch: Arch) -> tuple[int, int, int, int]:
    return (1, space.config.in_channels, arch.resolution, arch.resolution)


def measure_arch_ms(space: Any, arch: Arch, threads: int = 1, warmup: int = 10, repeats: int = 30,
                    workdir: str | Path | None = None, seed: int = 0, rounds: int = DEFAULT_ROUNDS) -> float:
    """Median onnxruntime latency (ms, batch 1) of ``arch``'s exported model.

    :func:`~qnas.exporters.onnx_qcdq.measure_latency_ms` (fresh session,
    ``warmup`` runs, median of ``repeats``) is run ``rounds`` times and the
    smallest median is returned: other processes on a shared machine only
    ever add time, so the least-disturbed round is the best estimate. The
    ONNX file goes to a temporary directory (inside ``workdir`` if given)
    that is removed afterwards. For many archs prefer :func:`measure_archs`,
    which spreads the rounds of each arch over the whole run."""
    return measure_archs(space, [arch], threads, warmup, repeats, workdir, seed, progress=False,
                         rounds=rounds, passes=1)[0]


def measure_archs(space: Any, archs: Sequence[Arch], threads: int = 1, warmup: int = 10, repeats: int = 30,
                  workdir: str | Path | None = None, seed: int = 0, progress: bool = True,
                  rounds: int = DEFAULT_ROUNDS, passes: int = 1) -> list[float]:
    """Latency (ms) of each arch, in order.

    Every arch is exported first (the slow part, ~1-3 s each); then
    ``passes`` timing passes go over all the files, each timing every model
    with :func:`time_onnx_ms`, and each arch keeps its smallest result. On
    a shared machine interference comes in bursts of seconds; passes spread
    an arch's timings over the whole run instead of one burst-sized window."""
    from tqdm.auto import tqdm

    _check_protocol(threads, warmup, repeats, rounds, passes)
    for a in archs:
        space.validate(a)
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    best = np.full(len(archs), np.inf)
    with tempfile.TemporaryDirectory(prefix="qnas-measure-", dir=workdir) as tmp:
        files = [export_arch_onnx(space, a, Path(tmp) / f"{i}-{a.uid}.onnx", seed=seed)
                 for i, a in enumerate(tqdm(archs, desc="export (onnx)", unit="arch",
                                            disable=not progress or len(archs) < 2))]
        bar = tqdm(total=passes * len(archs), desc="time (ort)", unit="run",
                   disable=not progress or len(archs) < 2)
        for _ in range(passes):
            for i, (a, f) in enumerate(zip(archs, files)):
                best[i] = min(best[i], time_onnx_ms(f, _input_shape(space, a), threads, warmup, repeats, rounds))
                bar.update()
        bar.close()
    return [float(x) for x in best]


# -- cache ----------------------------------------------------------------------------
@dataclass
class Measurement:
    arch: Arch
    ms: float
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict(), "ms": self.ms, "meta": dict(self.meta)}


#: meta that must agree for a cached measurement to be reused
_MATCH_KEYS = ("threads", "ort_version", "cpu", "batch", "exporter", "warmup", "repeats", "rounds", "passes")


@dataclass
class MeasurementSet:
    """Whole-model measurements, stored as JSON (never pickle).

    File layout: ``{"format": "qnas-latency-measurements", "version": 1,
    "records": [{"arch": {...}, "ms": 1.23, "meta": {"threads": 1,
    "ort_version": "1.x", "cpu": "...", ...}}, ...]}``."""

    records: list[Measurement] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def add(self, arch: Arch, ms: float, meta: dict[str, Any] | None = None) -> Measurement:
        """Record (or replace: same arch and matching meta) one measurement."""
        ms = float(ms)
        if not (math.isfinite(ms) and ms > 0):
            raise QnasError(f"a measured latency must be a positive finite number of ms, got {ms}")
        meta = dict(meta if meta is not None else measurement_meta())
        rec = Measurement(arch, ms, meta)
        for i, r in enumerate(self.records):
            if r.arch == arch and _meta_matches(r.meta, meta):
                self.records[i] = rec
                return rec
        self.records.append(rec)
        return rec

    def get(self, arch: Arch, meta: dict[str, Any] | None = None) -> float | None:
        """The stored ms of ``arch`` measured under matching ``meta`` (threads, ORT, CPU), else None."""
        meta = meta if meta is not None else measurement_meta()
        for r in reversed(self.records):
            if r.arch == arch and _meta_matches(r.meta, meta):
                return r.ms
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "records": [r.to_dict() for r in self.records]}

    def save(self, path: str | Path) -> Path:
        """Write atomically (a crash never leaves a half-written cache)."""
        from qnas.quant.checkpoint import atomic_write

        text = json.dumps(self.to_dict(), indent=1)
        return atomic_write(path, lambda p: Path(p).write_text(text), overwrite=True)

    @classmethod
    def from_dict(cls, d: Any, source: str = "measurement set") -> "MeasurementSet":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise LatencyTableError(f"{source} is not a qnas measurement file (no '{FORMAT}' marker); "
                                    "delete it or pass another --cache path")
        if d.get("version") != VERSION:
            raise LatencyTableError(f"{source} has measurement-file version {d.get('version')}, this qnas reads {VERSION}")
        recs = d.get("records")
        if not isinstance(recs, list):
            raise LatencyTableError(f"{source}: 'records' must be a list")
        out = cls()
        for i, r in enumerate(recs):
            try:
                arch = Arch.from_dict(r["arch"])
                ms = float(r["ms"])
                meta = r["meta"]
                if not isinstance(meta, dict) or not (math.isfinite(ms) and ms > 0):
                    raise ValueError
            except (KeyError, TypeError, ValueError, ArchError):
                raise LatencyTableError(f"{source}: record {i} is damaged (needs arch, positive ms, meta); "
                                        "delete the file to re-measure") from None
            out.records.append(Measurement(arch, ms, meta))
        return out

    @classmethod
    def load(cls, path: str | Path) -> "MeasurementSet":
        from qnas.jsonfile import read_json

        return cls.from_dict(read_json(path, "measurement file", "delete it to re-measure", LatencyTableError), str(path))

    @classmethod
    def load_or_new(cls, path: str | Path | None) -> "MeasurementSet":
        """:meth:`load` if ``path`` exists, else an empty set."""
        if path is None or not Path(path).exists():
            return cls()
        return cls.load(path)


def _meta_matches(stored: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(stored.get(k) == wanted.get(k) for k in _MATCH_KEYS if k in wanted)


def measure_with_cache(space: Any, archs: Sequence[Arch], cache: MeasurementSet, threads: int = 1,
                       warmup: int = 10, repeats: int = 30, cache_path: str | Path | None = None,
                       chunk: int = 60, seed: int = 0, progress: bool = True,
                       rounds: int = DEFAULT_ROUNDS, passes: int = 1) -> np.ndarray:
    """Latency of each arch, reusing ``cache`` entries measured under the same
    CPU/ORT/threads and measuring the rest with :func:`measure_archs`, ``chunk``
    archs at a time; each chunk is added to ``cache`` and saved to ``cache_path``."""
    meta = measurement_meta(threads, warmup, repeats, rounds, passes)
    out = np.empty(len(archs), dtype=np.float64)
    todo = []
    for i, a in enumerate(archs):
        ms = cache.get(a, meta)
        if ms is None:
            todo.append(i)
        else:
            out[i] = ms
    for c0 in range(0, len(todo), max(1, chunk)):
        idx = todo[c0:c0 + max(1, chunk)]
        if progress and len(todo) > len(idx):
            print(f"  chunk {c0 // max(1, chunk) + 1}/{math.ceil(len(todo) / max(1, chunk))}: {len(idx)} archs", flush=True)
        got = measure_archs(space, [archs[i] for i in idx], threads, warmup, repeats, seed=seed,
                            progress=progress, rounds=rounds, passes=passes)
        for i, ms in zip(idx, got):
            out[i] = ms
            cache.add(archs[i], ms, meta)
        if cache_path is not None:
            cache.save(cache_path)
    return out
