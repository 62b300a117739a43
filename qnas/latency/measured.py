"""The measured predictor: a lookup table built on the machine qnas runs on,
filled on demand by timing each missing layer in onnxruntime, plus a whole-model offset.

A network run as one onnxruntime session costs a near-constant amount more than the sum of its
layers timed one by one (on 150 digits archs: whole = 1.00 x sum + 0.06 ms; the graph's
residual-stream, pool and logit quantizers and the session's own work that one-layer graphs do not
show). :meth:`MeasuredLatencyModel.calibrate` measures it once per space and machine on a few whole
exported models and charges it to the network's pool layer (every network has exactly one), so the
per-layer breakdown, the vectorised predictor and the whole-model prediction all include it."""
from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path
from typing import Any, Iterable

from qnas.errors import LatencyTableError, UnknownTargetError
from qnas.latency._compat import module_getattr
from qnas.latency.table import LatencyTable, TableLatencyModel, load_table

#: Latency targets that describe the machine qnas itself runs on (onnxruntime on its CPU), so they can be
#: measured here. (Formerly ``MEASURABLE_DEVICES``.)
MEASURABLE_TARGETS = ("cpu-ort",)

#: :meth:`MeasuredLatencyModel.prepare` times a whole space up front when it lacks at most this many
#: layer keys (the default digits space has about 2,600: ~25 s on one core, 3 passes); larger spaces are timed
#: as their archs are priced.
PREPARE_MAX_KEYS = 6000
#: whole exported models timed to calibrate a space's offset (:meth:`MeasuredLatencyModel.calibrate`)
CALIBRATION_ARCHS = 16
#: the table meta field holding the calibrated offsets: ``{space fingerprint: {"ms", "archs", ...}}``
OFFSETS_META = "whole_model_offsets_ms"


def space_fingerprint(space: Any) -> str:
    """A short stable id of a search space's definition (what a calibrated offset belongs to)."""
    return hashlib.sha256(json.dumps(space.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_cache(path: Path) -> LatencyTable:
    try:
        return load_table(path)
    except LatencyTableError as e:
        raise LatencyTableError(f"the cached latency table {path} is unreadable ({e}); delete it and qnas "
                                "measures the layers again") from None


class MeasuredLatencyModel(TableLatencyModel):
    """A :class:`TableLatencyModel` that times missing layers in onnxruntime
    (``threads`` intra-op threads, warm-up, median of ``repeats``; ``passes`` sweeps, each layer keeping
    its fastest median, since a shared machine's interference only adds time) instead of failing,
    and optionally keeps the grown table in ``cache`` (JSON, written atomically; entries another
    process added meanwhile are kept). ``copy_to``: a second file that always holds the table used
    (a run directory's ``latency_table.json``), see :meth:`keep_copy`."""

    kind = "measured"

    def __init__(self, table: LatencyTable | str | Path | None = None, cache: str | Path | None = None,
                 threads: int = 1, warmup: int = 5, repeats: int = 20, passes: int = 3, progress: bool = False):
        self.cache = Path(cache) if cache else None
        self.copy_to: Path | None = None
        if table is None and self.cache is not None and self.cache.is_file():
            table = _read_cache(self.cache)
        if table is None:
            from qnas.latency.layer_measure import cpu_name
            from qnas.latency.table import default_meta

            table = LatencyTable({}, meta=default_meta(target="cpu-ort", runtime="onnxruntime", threads=threads,
                                                       cpu=cpu_name()))
        super().__init__(table if isinstance(table, LatencyTable) else load_table(table))
        self.threads, self.warmup, self.repeats, self.passes = threads, warmup, repeats, passes
        self.progress = progress
        #: added to the pool layer of every network (see the module doc); 0 until :meth:`calibrate`
        self.offset_ms = 0.0

    def keep_copy(self, path: str | Path) -> None:
        """Write the table to ``path`` now and again whenever it grows (what a run's latencies came from)."""
        self.copy_to = Path(path)
        self.table.save(self.copy_to, overwrite=True)

    def _offsets(self) -> dict[str, Any]:
        offsets = self.table.meta.get(OFFSETS_META)
        return dict(offsets) if isinstance(offsets, dict) else {}

    def _save(self) -> None:
        if self.cache is not None:
            merged = self.table
            if self.cache.is_file():  # another process may have added entries (or offsets) since we read it
                try:
                    disk = load_table(self.cache)
                except LatencyTableError:
                    pass  # a damaged cache is replaced by what we hold
                else:
                    merged = disk.with_entries(dict(self.table))
                    disk_offsets = disk.meta.get(OFFSETS_META)
                    merged.meta = {**self.table.meta, OFFSETS_META: {
                        **(disk_offsets if isinstance(disk_offsets, dict) else {}), **self._offsets()}}
            try:
                self.cache.parent.mkdir(parents=True, exist_ok=True)
                merged.save(self.cache, overwrite=True)
            except OSError as e:  # a read-only home must not stop a search: keep the timings in memory
                import warnings

                warnings.warn(f"cannot write the latency cache {self.cache} ({type(e).__name__}: {e}); the timings "
                              "are kept for this run only; set QNAS_CACHE_DIR to a writable folder", stacklevel=2)
                self.cache = None
        if self.copy_to is not None:
            self.table.save(self.copy_to, overwrite=True)

    def ensure(self, layers: Iterable[Any], progress: bool | None = None) -> int:
        """Measure every layer not yet in the table; returns how many were measured."""
        from qnas.latency.base import as_layers, inherit_weightless_bits
        from qnas.latency.layer_measure import measure_layers

        missing = self.table.missing(inherit_weightless_bits(as_layers(list(layers))))
        if missing:
            new = measure_layers(missing, threads=self.threads, warmup=self.warmup, repeats=self.repeats,
                                 passes=self.passes, progress=self.progress if progress is None else progress,
                                 target="cpu-ort")
            self.table = self.table.with_entries(dict(new))  # keeps this table's meta (and its offsets)
            self._save()
        return len(missing)

    def prepare(self, space: Any, log: Any = None, max_keys: int = PREPARE_MAX_KEYS) -> int:
        """Before a search: time every layer key of ``space`` the table lacks (with a progress bar when
        ``log`` is given), if there are at most ``max_keys`` of them; returns how many were timed."""
        from qnas.latency.table import space_layer_keys

        missing = self.table.missing(space_layer_keys(space))
        if not missing or len(missing) > max_keys:
            return 0
        if log is not None:
            where = f", kept in {self.cache}" if self.cache is not None else ""
            log(f"timing {len(missing)} layers of the search space in onnxruntime on this CPU "
                f"({self.threads} thread{'s' if self.threads > 1 else ''}; once per machine{where})")
        return self.ensure(missing, progress=log is not None)

    def calibrate(self, space: Any, log: Any = None, n: int = CALIBRATION_ARCHS, seed: int = 0) -> float:
        """Set :attr:`offset_ms` for ``space``: the median of (whole exported model - sum of its layers) over
        ``n`` sampled archs, timed here once per space and machine (kept in the table's meta, so in the
        cache); returns it."""
        from qnas.latency.evaluation import sample_archs
        from qnas.latency.model_measure import measure_archs
        from qnas.latency.table import plan_layer_keys

        key = space_fingerprint(space)
        known = self._offsets().get(key)
        if isinstance(known, dict) and isinstance(known.get("ms"), (int, float)):
            self.offset_ms = float(known["ms"])
            return self.offset_ms
        archs = sample_archs(space, n, seed, unique=True)
        plans = [space.plan(a) for a in archs]
        self.ensure(plan_layer_keys(plans), progress=log is not None)
        if log is not None:
            log(f"timing {len(archs)} whole exported models of the search space to calibrate the per-network "
                "offset (once per space and machine)")
        whole = measure_archs(space, archs, threads=self.threads, progress=log is not None, rounds=3, passes=2)
        self.offset_ms = 0.0
        sums = [TableLatencyModel.predict(self, p) for p in plans]
        self.offset_ms = float(statistics.median(w - s for w, s in zip(whole, sums)))
        self.table.meta = {**self.table.meta, OFFSETS_META: {**self._offsets(), key: {
            "ms": self.offset_ms, "archs": len(archs), "input": [space.config.in_channels, *space.config.resolutions],
            "classes": space.config.num_classes}}}
        self._save()
        return self.offset_ms

    def breakdown(self, plan: Any) -> list:
        from dataclasses import replace

        from qnas.latency.base import as_layers

        self.ensure(as_layers(plan))
        costs = super().breakdown(plan)
        if self.offset_ms:
            costs = [replace(c, ms=max(c.ms + self.offset_ms, 0.0), note=(c.note + "; " if c.note else "")
                             + f"whole-model offset {self.offset_ms:+.4f} ms (calibrated)")
                     if c.layer.op == "pool" else c for c in costs]
        return costs

    def layer_ms(self, layer: Any) -> float:
        if layer not in self.table:
            self.ensure([layer])
        ms = super().layer_ms(layer)
        return max(ms + self.offset_ms, 0.0) if layer.op == "pool" else ms  # as breakdown() charges it

    def vectorized(self, space: Any):
        from qnas.latency.table import space_layer_keys

        self.ensure(space_layer_keys(space))  # the vectorised predictor needs every key of the space
        return super().vectorized(space)


def check_measurable(target: str) -> None:
    """Refuse a latency ``target`` that is not the machine qnas runs on (only those can be timed here)."""
    if target not in MEASURABLE_TARGETS:
        raise UnknownTargetError(
            f"cannot measure latency target {target!r} here: qnas measures only the machine it runs on "
            f"({', '.join(MEASURABLE_TARGETS)}); time the layers on the {target} hardware itself and "
            "import the table with --latency-table")


__getattr__ = module_getattr(__name__, {"MEASURABLE_DEVICES": ("MEASURABLE_TARGETS", lambda: MEASURABLE_TARGETS)})
