"""Exporters: one backend per target behind one contract (``create_exporter``).

Imported lazily: ``import qnas.exporters.targets`` loads neither torch nor a
vendor SDK; the backends register themselves when the registry is first used
(``available_exporters()`` / ``create_exporter()``), and vendor SDKs are
imported inside each backend only when it runs."""
from __future__ import annotations

import importlib
from typing import Any

_API = {
    "Capabilities": "qnas.exporters.base",
    "CodeCheck": "qnas.exporters.base",
    "Exporter": "qnas.exporters.base",
    "LayerReport": "qnas.exporters.base",
    "ParityReport": "qnas.exporters.base",
    "available_exporters": "qnas.exporters.base",
    "create_exporter": "qnas.exporters.base",
    "register": "qnas.exporters.base",
    "Violation": "qnas.exporters.conformance",
    "assert_conformant": "qnas.exporters.conformance",
    "check_tensorrt_qdq": "qnas.exporters.conformance",
    "DEFAULT_TARGET_PROFILES": "qnas.exporters.targets",
}
_SUBMODULES = ("base", "conformance", "coreml_mlprogram", "onnx_qcdq", "targets", "tensorrt_onnx", "tflite_litert")

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
