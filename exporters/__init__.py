"""Exporters: one backend per target behind one contract (``create_exporter``).

Imported lazily: ``import qnas.exporters.targets`` loads neither torch nor a
vendor SDK; the backends register themselves when the registry is first used
(``available_exporters()`` / ``create_exporter()``), and vendor SDKs are
imported inside each backend only when it runs."""
from __future__ import annotations

from typing import Any

from qnas.quant.lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _API, _SUBMODULES)
