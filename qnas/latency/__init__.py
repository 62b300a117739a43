"""Latency of a quantized network on a latency target, aware of the bit widths
the target really executes (DESIGN.md section 3).

A latency target (``--target``, ``target=``) is the hardware/runtime a latency
is predicted for, named by its :class:`TargetProfile` (``edgetpu``, ``cpu-ort``
...); it is not the torch device a search trains on (``torch_device``). The
former ``device`` spellings here still work, with a DeprecationWarning.

    >>> from qnas.latency import create_latency_model
    >>> model = create_latency_model("edgetpu")
    >>> model.predict(plan)          # ms, batch 1
"""
from qnas.latency._compat import module_getattr
from qnas.latency.analytic import AnalyticLatencyModel
from qnas.latency.base import LatencyModel, LayerCost
from qnas.latency.factory import create_latency_model, latency_model_kinds, register_latency_model
from qnas.latency.profile import ExecPrecision, TargetProfile, known_profiles, load_profile
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
    "TargetProfile",
    "ExecPrecision",
    "LatencyModel",
    "LayerCost",
    "create_latency_model",
    "known_profiles",
    "latency_model_kinds",
    "load_profile",
    "register_latency_model",
]

# deprecated: the profile is a latency target's, not a torch device's
__getattr__ = module_getattr(__name__, {"DeviceProfile": ("TargetProfile", lambda: TargetProfile)})
