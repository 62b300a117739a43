"""qnas: quantization-aware, mixed-precision, hardware-aware neural architecture search.

The public API is imported lazily so that ``import qnas`` (and ``qnas --help``)
stays fast::

    import qnas
    space = qnas.SearchSpace()
    arch = space.sample(0)
    model = qnas.build_model(space, arch)
    result = qnas.search(n_candidates=4, epochs=1)
"""
from __future__ import annotations

from typing import Any

from qnas.quant.lazy import lazy_exports

__version__ = "0.1.0"

_API = {
    "SearchSpace": "qnas.space",
    "SpaceConfig": "qnas.space",
    "StageConfig": "qnas.space",
    "Arch": "qnas.arch",
    "Block": "qnas.arch",
    "build_model": "qnas.quant.build",
    "count_costs": "qnas.costs",
    "search": "qnas.searching",
    "resume_search": "qnas.searching",
    "SearchConfig": "qnas.searching",
    "SearchResult": "qnas.searching",
    "demo": "qnas.pipeline",
    "DemoConfig": "qnas.pipeline",
    "load_model": "qnas.model_io",
    "save_model": "qnas.model_io",
    "load_dataset": "qnas.data",
    "create_latency_model": "qnas.latency",
    "create_exporter": "qnas.exporters",
    "export_model": "qnas.exporting",
    "precision_map": "qnas.precision_map",
    "finish_qat": "qnas.finishing",
    "finish_ptq": "qnas.finishing",
    "QnasError": "qnas.errors",
}

__all__ = sorted(_API)


__getattr__ = lazy_exports(__name__, _API)
