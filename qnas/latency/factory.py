"""Registry of latency-model kinds and the ``create_latency_model`` factory."""
from __future__ import annotations

from typing import Callable

from qnas.errors import ConfigError
from qnas.latency.base import LatencyModel
from qnas.latency._compat import target_or_device
from qnas.latency.profile import TargetProfile, load_profile

#: kind -> factory(profile, **kwargs) -> LatencyModel
_REGISTRY: dict[str, Callable[..., LatencyModel]] = {}


def register_latency_model(kind: str, factory: Callable[..., LatencyModel]) -> None:
    """Make ``create_latency_model(target, kind=kind)`` call ``factory(profile, **kwargs)``
    (``profile``: the :class:`~qnas.latency.profile.TargetProfile` of ``target``)."""
    _REGISTRY[kind] = factory


def latency_model_kinds() -> list[str]:
    return sorted(["auto", *_REGISTRY])


def create_latency_model(target: "str | TargetProfile | None" = None, kind: str = "analytic", *,
                         device: "str | TargetProfile | None" = None, **kwargs) -> LatencyModel:
    """A latency model of ``kind`` for the latency ``target`` (a profile name, a profile JSON path or a
    :class:`~qnas.latency.profile.TargetProfile`; default ``cpu-ort``). ``kind="auto"``: see
    :func:`~qnas.latency.machine_cache.resolve_latency_kind` (``measured`` on ``cpu-ort``, with this
    machine's cached table). ``device`` is the deprecated name of ``target``."""
    from qnas.latency.machine_cache import resolve_latency_kind

    target = target_or_device("create_latency_model", target, device, default="cpu-ort")
    if kind not in latency_model_kinds():
        raise ConfigError(f"unknown latency model kind {kind!r}; valid kinds: {', '.join(latency_model_kinds())}")
    profile = load_profile(target)
    kind = resolve_latency_kind(kind, profile.name, kwargs.get("table"), kwargs.get("hybrid"))
    return _REGISTRY[kind](profile, **kwargs)


def _table_model(profile: TargetProfile, table: "str | None" = None, **_: object) -> LatencyModel:
    from qnas.latency.table import TableLatencyModel

    if not table:
        raise ConfigError(f"the 'table' latency model needs a table measured on the latency target {profile.name}; "
                          "pass --latency-table PATH (build one with `qnas latency measure`)")
    return TableLatencyModel.from_file(table)


def _measured_model(profile: TargetProfile, table: "str | None" = None, cache: "str | None" = None,
                    threads: int = 1, progress: bool = False, **options: object) -> LatencyModel:
    """Without a ``table`` to start from, the table grows in this machine's cache (``machine_table_path``)."""
    from qnas.latency.machine_cache import machine_table_path
    from qnas.latency.measured import MeasuredLatencyModel, check_measurable

    check_measurable(profile.name)
    if cache is None and table is None:
        cache = machine_table_path(threads)
    timing = {k: v for k, v in options.items() if k in ("warmup", "repeats", "passes")}
    return MeasuredLatencyModel(table, cache=cache, threads=threads, progress=progress, **timing)


def _hybrid_model(profile: TargetProfile, table: "str | None" = None, hybrid: "str | None" = None,
                  space: object = None, **_: object) -> LatencyModel:
    from qnas.latency.analytic import AnalyticLatencyModel
    from qnas.latency.hybrid import HybridLatencyModel

    if not hybrid:
        raise ConfigError("the 'hybrid' latency model needs a fitted correction; pass --latency-hybrid PATH "
                          "(fit one with `qnas latency eval --save-hybrid PATH`)")
    base = _table_model(profile, table) if table else AnalyticLatencyModel(profile)
    return HybridLatencyModel.load(hybrid, base, space)


def _register_builtins() -> None:
    from qnas.latency.analytic import AnalyticLatencyModel

    register_latency_model("analytic", lambda profile, **_: AnalyticLatencyModel(profile))
    register_latency_model("table", _table_model)
    register_latency_model("measured", _measured_model)
    register_latency_model("hybrid", _hybrid_model)


_register_builtins()
