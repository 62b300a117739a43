"""Exporters: one backend per target behind one contract (``create_exporter``).

Vendor SDKs are imported lazily inside each backend."""
from qnas.exporters.base import CodeCheck, Exporter, ParityReport, available_exporters, create_exporter, register
from qnas.exporters import onnx_qcdq as _onnx_qcdq  # noqa: F401  (registers "onnx")
from qnas.exporters import tensorrt_onnx as _tensorrt_onnx  # noqa: F401  (registers "tensorrt")
from qnas.exporters import coreml_mlprogram as _coreml_mlprogram  # noqa: F401  (registers "coreml")
from qnas.exporters import tflite_litert as _tflite_litert  # noqa: F401  (registers "tflite")
from qnas.exporters.conformance import Violation, assert_conformant, check_tensorrt_qdq

__all__ = ["CodeCheck", "Exporter", "ParityReport", "Violation", "assert_conformant", "available_exporters",
           "check_tensorrt_qdq", "create_exporter", "register"]
