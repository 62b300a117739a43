"""Where this machine's measured ``cpu-ort`` latency table is kept between runs, and what the latency
kind ``auto`` (the default) resolves to.

The table is keyed by what changes the timings: the CPU model, the onnxruntime version and the number of
intra-op threads, so a table is never reused on a machine it does not describe. It lives in
``$QNAS_CACHE_DIR/latency/`` (default ``$XDG_CACHE_HOME/qnas`` or ``~/.cache/qnas``); deleting the file
makes qnas time the layers again."""
from __future__ import annotations

import os
import re
from pathlib import Path

from qnas.errors import ConfigError

CACHE_ENV = "QNAS_CACHE_DIR"
#: ``analytic`` makes ``auto`` pick the target profile's analytic model even on ``cpu-ort`` (results that do
#: not depend on this machine's timings, as the tests want); ``measured`` (or unset) keeps the default.
AUTO_ENV = "QNAS_AUTO_LATENCY"


def cache_dir() -> Path:
    """qnas' cache folder: ``$QNAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/qnas``, else ``~/.cache/qnas``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qnas"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "cpu"


def machine_table_path(threads: int = 1) -> Path:
    """The cached measured table of this machine for ``threads`` onnxruntime threads."""
    import onnxruntime as ort

    from qnas.latency.layer_measure import cpu_name

    return cache_dir() / "latency" / f"{_slug(cpu_name())}-ort{ort.__version__}-t{threads}.json"


def resolve_latency_kind(kind: str, target: str, table: str | None = None, hybrid: str | None = None) -> str:
    """The latency model kind ``kind`` means for ``target``: ``auto`` is ``hybrid`` when a correction is
    given, ``table`` when a table is, ``measured`` on a target this machine can time (``cpu-ort``: the number
    a search optimizes is then what the exported file takes here), else ``analytic``."""
    if kind != "auto":
        return kind
    if hybrid:
        return "hybrid"
    if table:
        return "table"
    from qnas.latency.measured import MEASURABLE_TARGETS

    choice = os.environ.get(AUTO_ENV, "measured").strip().lower() or "measured"
    if choice not in ("measured", "analytic"):
        raise ConfigError(f"{AUTO_ENV}={os.environ[AUTO_ENV]!r} is not valid; set it to 'measured' or 'analytic' "
                          "(or unset it)")
    return "measured" if target in MEASURABLE_TARGETS and choice == "measured" else "analytic"
