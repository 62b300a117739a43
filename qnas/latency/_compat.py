"""The deprecated names of :mod:`qnas.latency`, kept for one release with a DeprecationWarning.

The latency *target* (a target profile such as ``edgetpu``, ``--target``) used to be called
``device`` here, which read like the torch device (``--torch-device``) a search trains on.
Public keywords, attributes, functions and constants named ``device`` were renamed to
``target``; these helpers let the old spellings keep working.

File fields are not renamed here: see :data:`qnas.latency.table.TARGET_META_KEY`.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

_TORCH_HINT = "the torch device is torch_device"


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(f"{old} is deprecated; use {new} (the latency target; {_TORCH_HINT})",
                  DeprecationWarning, stacklevel=stacklevel)


def target_or_device(where: str, target: Any, device: Any, default: Any = None) -> Any:
    """``target``, or the value given as its deprecated keyword ``device`` (with a DeprecationWarning);
    ``default`` when neither is given. Both at once is a :class:`~qnas.errors.ConfigError`."""
    if device is not None:
        warn_renamed(f"{where}(device=...)", f"{where}(target=...)", stacklevel=4)
        if target is not None and target != device:
            from qnas.errors import ConfigError

            raise ConfigError(f"give {where} either target or its deprecated name device, not both")
        return device
    return default if target is None else target


def deprecated_function(old: str, new: Callable[..., Any]) -> Callable[..., Any]:
    """A thin alias of ``new`` under its former name ``old`` that warns on each call."""

    @functools.wraps(new)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warn_renamed(f"{old}()", f"{new.__name__}()")
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated name of :func:`{new.__module__}.{new.__name__}`."
    return alias


def deprecated_device_property(doc: str = "Deprecated name of ``target``.") -> property:
    """A read-only ``.device`` that returns ``.target`` with a DeprecationWarning."""

    def device(self: Any) -> Any:
        warn_renamed(f"{type(self).__name__}.device", ".target")
        return self.target

    return property(device, doc=doc)


def module_getattr(module: str, renamed: dict[str, tuple[str, Callable[[], Any]]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving each former name in ``renamed`` (old name -> (new name, getter))
    with a DeprecationWarning."""

    def __getattr__(name: str) -> Any:
        if name in renamed:
            new, get = renamed[name]
            warn_renamed(f"{module}.{name}", f"{module}.{new}")
            return get()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
