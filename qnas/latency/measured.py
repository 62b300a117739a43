"""The measured predictor: a lookup table built on the machine qnas runs on,
filled on demand by timing each missing layer in onnxruntime."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from qnas.errors import UnknownTargetError
from qnas.latency._compat import module_getattr
from qnas.latency.table import LatencyTable, TableLatencyModel, load_table

#: Latency targets that describe the machine qnas itself runs on (onnxruntime on its CPU), so they can be
#: measured here. (Formerly ``MEASURABLE_DEVICES``.)
MEASURABLE_TARGETS = ("cpu-ort",)


class MeasuredLatencyModel(TableLatencyModel):
    """A :class:`TableLatencyModel` that times missing layers in onnxruntime
    (``threads`` intra-op threads, warm-up, median of ``repeats``) instead of failing,
    and optionally keeps the grown table in ``cache`` (JSON, written atomically)."""

    kind = "measured"

    def __init__(self, table: LatencyTable | str | Path | None = None, cache: str | Path | None = None,
                 threads: int = 1, warmup: int = 5, repeats: int = 20, progress: bool = False):
        self.cache = Path(cache) if cache else None
        if table is None and self.cache is not None and self.cache.is_file():
            table = self.cache
        if table is None:
            from qnas.latency.layer_measure import cpu_name
            from qnas.latency.table import default_meta

            table = LatencyTable({}, meta=default_meta(target="cpu-ort", runtime="onnxruntime", threads=threads,
                                                       cpu=cpu_name()))
        super().__init__(table if isinstance(table, LatencyTable) else load_table(table))
        self.threads, self.warmup, self.repeats, self.progress = threads, warmup, repeats, progress

    def ensure(self, layers: Iterable[Any]) -> int:
        """Measure every layer not yet in the table; returns how many were measured."""
        from qnas.latency.base import as_layers, inherit_weightless_bits
        from qnas.latency.layer_measure import measure_layers

        missing = self.table.missing(inherit_weightless_bits(as_layers(list(layers))))
        if missing:
            new = measure_layers(missing, threads=self.threads, warmup=self.warmup, repeats=self.repeats,
                                 progress=self.progress, target="cpu-ort")
            self.table = self.table.merge(new)
            if self.cache is not None:
                self.table.save(self.cache, overwrite=True)
        return len(missing)

    def breakdown(self, plan: Any) -> list:
        from qnas.latency.base import as_layers

        self.ensure(as_layers(plan))
        return super().breakdown(plan)

    def layer_ms(self, layer: Any) -> float:
        if layer not in self.table:
            self.ensure([layer])
        return super().layer_ms(layer)


def check_measurable(target: str) -> None:
    """Refuse a latency ``target`` that is not the machine qnas runs on (only those can be timed here)."""
    if target not in MEASURABLE_TARGETS:
        raise UnknownTargetError(
            f"cannot measure latency target {target!r} here: qnas measures only the machine it runs on "
            f"({', '.join(MEASURABLE_TARGETS)}); time the layers on the {target} hardware itself and "
            "import the table with --latency-table")


__getattr__ = module_getattr(__name__, {"MEASURABLE_DEVICES": ("MEASURABLE_TARGETS", lambda: MEASURABLE_TARGETS)})
