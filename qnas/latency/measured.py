"""The measured predictor: a lookup table built on the machine qnas runs on,
filled on demand by timing each missing layer in onnxruntime."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from qnas.errors import UnknownDeviceError
from qnas.latency.table import LatencyTable, TableLatencyModel, load_table

#: Profiles that describe the machine qnas itself runs on, so they can be measured here.
MEASURABLE_DEVICES = ("cpu-ort",)


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

            table = LatencyTable({}, meta=default_meta(device="cpu-ort", runtime="onnxruntime", threads=threads,
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
                                 progress=self.progress, device="cpu-ort")
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


def check_measurable(device: str) -> None:
    if device not in MEASURABLE_DEVICES:
        raise UnknownDeviceError(
            f"cannot measure {device!r} here: qnas measures only the machine it runs on ({', '.join(MEASURABLE_DEVICES)}); "
            f"measure on the {device} device and import the table with --table")
