"""Latency of a quantized network on a target, aware of the bit widths the
target really executes (DESIGN.md section 3).

    >>> from qnas.latency import create_latency_model
    >>> model = create_latency_model("edgetpu")
    >>> model.predict(plan)          # ms, batch 1
"""
from qnas.latency.analytic import AnalyticLatencyModel
from qnas.latency.base import LatencyModel, LayerCost
from qnas.latency.factory import create_latency_model, latency_model_kinds, register_latency_model
from qnas.latency.profile import DeviceProfile, ExecPrecision, known_profiles, load_profile
from qnas.latency.table import LatencyTable, TableLatencyModel, load_table
from qnas.latency.measured import MeasuredLatencyModel
from qnas.latency.hybrid import HybridLatencyModel
from qnas.latency.metrics import fidelity

__all__ = [
    "AnalyticLatencyModel",
    "HybridLatencyModel",
    "LatencyTable",
    "MeasuredLatencyModel",
    "TableLatencyModel",
    "fidelity",
    "load_table",
    "DeviceProfile",
    "ExecPrecision",
    "LatencyModel",
    "LayerCost",
    "create_latency_model",
    "known_profiles",
    "latency_model_kinds",
    "load_profile",
    "register_latency_model",
]
