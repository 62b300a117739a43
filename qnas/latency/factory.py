"""Registry of latency-model kinds and the ``create_latency_model`` factory."""
from __future__ import annotations

from typing import Callable

from qnas.errors import ConfigError
from qnas.latency.base import LatencyModel
from qnas.latency.profile import DeviceProfile, load_profile

#: kind -> factory(profile, **kwargs) -> LatencyModel
_REGISTRY: dict[str, Callable[..., LatencyModel]] = {}


def register_latency_model(kind: str, factory: Callable[..., LatencyModel]) -> None:
    """Make ``create_latency_model(device, kind=kind)`` call ``factory(profile, **kwargs)``."""
    _REGISTRY[kind] = factory


def latency_model_kinds() -> list[str]:
    return sorted(_REGISTRY)


def create_latency_model(device: "str | DeviceProfile", kind: str = "analytic", **kwargs) -> LatencyModel:
    """A latency model of ``kind`` for ``device`` (a profile name or a profile JSON path)."""
    if kind not in _REGISTRY:
        raise ConfigError(f"unknown latency model kind {kind!r}; valid kinds: {', '.join(latency_model_kinds())}")
    return _REGISTRY[kind](load_profile(device), **kwargs)


def _register_builtins() -> None:
    from qnas.latency.analytic import AnalyticLatencyModel

    register_latency_model("analytic", AnalyticLatencyModel)


_register_builtins()
