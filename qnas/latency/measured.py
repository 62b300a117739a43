"""The measured predictor: a lookup table built on the machine qnas runs on,
filled on demand by timing each missing layer in onnxruntime."""
from __future__ import annotations

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

    def keep_copy(self, path: str | Path) -> None:
        """Write the table to ``path`` now and again whenever it grows (what a run's latencies came from)."""
        self.copy_to = Path(path)
        self.table.save(self.copy_to, overwrite=True)

    def _save(self) -> None:
        if self.cache is not None:
            merged = self.table
            if self.cache.is_file():  # another process may have added entries since we read it
                try:
                    merged = load_table(self.cache).merge(self.table)
                except LatencyTableError:
                    pass  # a damaged cache is replaced by what we hold
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            merged.save(self.cache, overwrite=True)
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
            self.table = self.table.merge(new)
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

    def breakdown(self, plan: Any) -> list:
        from qnas.latency.base import as_layers

        self.ensure(as_layers(plan))
        return super().breakdown(plan)

    def layer_ms(self, layer: Any) -> float:
        if layer not in self.table:
            self.ensure([layer])
        return super().layer_ms(layer)

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
