"""Lazy public names for a package ``__init__`` (PEP 562): import heavy modules on first use."""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Iterable, Mapping


def lazy_exports(package: str, api: Mapping[str, str], submodules: Iterable[str] = ()) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports each name of ``api`` (name -> home
    module) when first asked for, and caches it; ``submodules`` are imported by attribute access."""
    subs = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in api:
            value = getattr(importlib.import_module(api[name]), name)
            setattr(sys.modules[package], name, value)
            return value
        if name in subs:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
