"""How good a latency predictor is, nn-Meter style (DESIGN.md §3): against
measurements it was not fitted on, report Kendall τ (ranking), MAPE and the
share of predictions within ±10% of the measurement.

Proxies that are not in ms (MACs, BitOps) are first mapped to ms with
:func:`fit_scale` on the fit set, then judged on the held-out set like any
predictor; Kendall τ is unaffected by that (monotone) mapping.

    >>> fidelity([1.0, 2.1, 2.9], [1.0, 2.0, 3.0])
    {'kendall_tau': 1.0, 'mape': 0.0278, 'within_10pct': 1.0, 'rmspe': 0.0347, 'n': 3}  (rounded)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from qnas.errors import QnasError

#: relative-error threshold of the "within ±10%" share
TOLERANCE = 0.10


def _pair(pred: Any, meas: Any, min_n: int = 1) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64).ravel()
    m = np.asarray(meas, dtype=np.float64).ravel()
    if p.shape != m.shape:
        raise QnasError(f"predictions and measurements differ in length ({p.size} vs {m.size})")
    if p.size < min_n:
        raise QnasError(f"need at least {min_n} prediction/measurement pairs, got {p.size}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(m))):
        raise QnasError("predictions and measurements must be finite numbers")
    return p, m


def relative_errors(pred: Sequence[float], meas: Sequence[float]) -> np.ndarray:
    """``|pred - meas| / meas`` per pair (measurements must be positive)."""
    p, m = _pair(pred, meas)
    if np.any(m <= 0):
        raise QnasError("measured latencies must be positive to compute relative errors")
    return np.abs(p - m) / m


def kendall_tau(pred: Sequence[float], meas: Sequence[float]) -> float:
    """Kendall τ-b between predicted and measured values (nan when either is constant)."""
    from scipy.stats import kendalltau

    p, m = _pair(pred, meas, min_n=2)
    tau = kendalltau(p, m).statistic
    return float(tau)


def fidelity(pred: Sequence[float], meas: Sequence[float], tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Kendall τ, MAPE, share within ±``tolerance`` and RMSPE of ``pred`` against ``meas``.

    ``mape``, ``within_10pct`` and ``rmspe`` are fractions (0.05 = 5%);
    a prediction exactly ``tolerance`` off counts as within."""
    rel = relative_errors(pred, meas)
    return {
        "kendall_tau": kendall_tau(pred, meas) if rel.size >= 2 else math.nan,
        "mape": float(rel.mean()),
        "within_10pct": float(np.mean(rel <= tolerance + 1e-12)),
        "rmspe": float(math.sqrt(np.mean(rel ** 2))),
        "n": int(rel.size),
    }


@dataclass(frozen=True)
class ScaleFit:
    """``ms ≈ a * proxy + b``, fitted by least squares on a fit set."""

    a: float
    b: float
    relative: bool = False

    def __call__(self, proxy: Sequence[float] | float) -> np.ndarray:
        return self.a * np.asarray(proxy, dtype=np.float64) + self.b

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "relative": self.relative}


def fit_scale(proxy: Sequence[float], meas: Sequence[float], relative: bool = False) -> ScaleFit:
    """Least-squares ``meas ≈ a * proxy + b`` (fit it on the FIT set, apply it to held-out data).

    With ``relative=True`` each squared residual is divided by ``meas²``, so
    the fit minimises squared *relative* error (what MAPE/±10% reward) instead
    of being dominated by the slowest networks."""
    x, y = _pair(proxy, meas, min_n=2)
    if np.ptp(x) == 0:
        raise QnasError("cannot fit a scale to a constant proxy; the fit set needs networks of different cost")
    w = 1.0 / y if relative else np.ones_like(y)
    if relative and np.any(y <= 0):
        raise QnasError("measured latencies must be positive for a relative fit")
    A = np.stack([x, np.ones_like(x)], axis=1) * w[:, None]
    (a, b), *_ = np.linalg.lstsq(A, y * w, rcond=None)
    return ScaleFit(float(a), float(b), relative)
