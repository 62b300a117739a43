"""Exporters: one backend per target behind one contract (``create_exporter``).

Vendor SDKs are imported lazily inside each backend."""
from qnas.exporters.base import Exporter, ParityReport, available_exporters, create_exporter, register
from qnas.exporters import onnx_qcdq as _onnx_qcdq  # noqa: F401  (registers "onnx")

__all__ = ["Exporter", "ParityReport", "available_exporters", "create_exporter", "register"]
