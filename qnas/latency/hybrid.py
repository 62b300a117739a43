"""Learned/hybrid latency predictor (DESIGN.md §3): a base predictor (usually
the per-layer lookup table) plus a correction fitted on whole-model
measurements, for what a sum of isolated layers cannot see: operator fusion,
cache reuse between layers, the per-inference overhead, the cost of the extra
Q/Clip/DQ nodes around sub-8-bit layers.

    prediction = max(base(plan) + correction(features(plan)), floor_ms)

The correction is a ridge regression on standardised, cheap, general
features (:data:`FEATURES`): the base prediction and its per-op-type sums,
layer counts by op type and by quantized form, MACs, weight and activation
bytes. It is fitted on the residual ``measured - base`` with weights
``1/measured²``, i.e. it minimises squared *relative* error, and the ridge
penalty (chosen by k-fold cross-validated MAPE on the fit set) shrinks it
towards "trust the base". A linear model keeps the
persisted form plain JSON (coefficients, feature means/scales); nothing is
pickled.

    >>> hybrid = HybridLatencyModel(TableLatencyModel.from_file("t.json"), space)
    >>> hybrid.fit(archs, measured_ms)
    >>> hybrid.predict(arch)                     # ms
    >>> hybrid.save("hybrid.json")
    >>> HybridLatencyModel.load("hybrid.json", base, space)
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from qnas.arch import Arch
from qnas.errors import LatencyTableError, QnasError
from qnas.latency.analytic import activation_bytes, weight_count
from qnas.latency.base import LatencyModel, LayerCost, as_layers
from qnas.quant.plan import OP_KINDS

if TYPE_CHECKING:
    from qnas.latency.base import PlanLike
    from qnas.quant.plan import LayerSpec

FORMAT = "qnas-hybrid-latency"
VERSION = 1

OP_TYPES = OP_KINDS  # one count / base-latency feature per layer kind

#: the correction's inputs, in order (saved in the JSON and checked on load)
FEATURES: tuple[str, ...] = (
    ("base_ms",)
    + tuple(f"base_ms_{op}" for op in OP_TYPES)
    + tuple(f"n_{op}" for op in OP_TYPES)
    + ("n_quant", "n_float", "n_w_sub8", "n_a_sub8",
       "mmacs", "weight_kbytes", "act_kbytes", "act_kelems", "resolution")
)

#: ridge penalties tried (k-fold cross-validated MAPE picks one)
ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))


def plan_features(costs: Sequence[LayerCost], resolution: float = 0.0) -> np.ndarray:
    """The :data:`FEATURES` vector of one network from its base ``breakdown``."""
    f = dict.fromkeys(FEATURES, 0.0)
    for c in costs:
        l = c.layer
        op = l.op if l.op in OP_TYPES else "conv"
        f["base_ms"] += c.ms
        f[f"base_ms_{op}"] += c.ms
        f[f"n_{op}"] += 1
        f["act_kelems"] += (l.in_elems * (2 if l.op == "add" else 1) + l.out_elems) / 1e3
        f["act_kbytes"] += activation_bytes(l, min(l.a_bits, 32)) / 1024
        if l.weighted:
            if l.w_bits >= 16 or l.a_bits >= 16:
                f["n_float"] += 1
            else:
                f["n_quant"] += 1
            f["n_w_sub8"] += l.w_bits < 8
            f["n_a_sub8"] += l.a_bits < 8
            f["mmacs"] += l.macs / 1e6
            f["weight_kbytes"] += weight_count(l) * l.w_bits / 8 / 1024
    f["resolution"] = float(resolution)
    return np.fromiter((f[k] for k in FEATURES), dtype=np.float64, count=len(FEATURES))


def _weighted_ridge(Z: np.ndarray, r: np.ndarray, w: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """argmin_c,b  sum w (r - Z c - b)^2 + alpha |c|^2  (intercept not penalised)."""
    w = w / w.sum()
    zm = w @ Z
    rm = float(w @ r)
    Zc, rc = Z - zm, r - rm
    A = Zc.T @ (Zc * w[:, None]) * len(r) + alpha * np.eye(Z.shape[1])
    coef = np.linalg.solve(A, Zc.T @ (rc * w) * len(r))
    return coef, rm - float(zm @ coef)


class HybridLatencyModel(LatencyModel):
    """``base`` prediction plus a learned, model-level correction.

    ``base`` is any :class:`LatencyModel` (table, analytic, ...); ``space``
    (a :class:`~qnas.space.SearchSpace`) lets :meth:`predict` and :meth:`fit`
    take :class:`~qnas.arch.Arch` objects as well as plans. Until
    :meth:`fit` or :meth:`load`, predicting raises."""

    kind = "hybrid"

    def __init__(self, base: LatencyModel, space: Any = None, alphas: Sequence[float] = ALPHAS):
        if not isinstance(base, LatencyModel):
            raise QnasError(f"the hybrid model needs a LatencyModel as its base, got {type(base).__name__}")
        self.base = base
        self.space = space
        self.alphas = tuple(float(a) for a in alphas)
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.coef: np.ndarray | None = None
        self.intercept = 0.0
        self.alpha = math.nan
        self.floor_ms = 0.0
        self.fit_info: dict[str, Any] = {}
        self._ref_layers: list = []

    # -- LatencyModel ---------------------------------------------------------------
    @property
    def target(self) -> str:
        return self.base.target

    @property
    def fitted(self) -> bool:
        return self.coef is not None

    def layer_ms(self, layer: "LayerSpec") -> float:
        """The base's cost of one layer: the correction is model-level, it has no per-layer form."""
        return float(self.base.layer_ms(layer))

    def breakdown(self, plan: "PlanLike | Arch") -> list[LayerCost]:
        """The base's per-layer costs, each scaled by ``predict / base`` so they
        sum to :meth:`predict`. The correction is model-level: how it is spread
        over layers is a convention, not a measurement."""
        plan = self._plan(plan)
        costs = self.base.breakdown(plan)
        total = self._predict_costs(costs, self._resolution(plan))
        base_total = sum(c.ms for c in costs)
        if base_total > 0:
            f = total / base_total
            return [replace(c, ms=c.ms * f, io_ms=c.io_ms * f) for c in costs]
        if costs:  # a base that prices everything at 0: charge the whole prediction to the first layer
            costs[0] = replace(costs[0], ms=total, io_ms=costs[0].io_ms + total)
        return costs

    def predict(self, plan: "PlanLike | Arch") -> float:
        plan = self._plan(plan)
        return self._predict_costs(self.base.breakdown(plan), self._resolution(plan))

    def predict_many(self, plans: Iterable["PlanLike | Arch"]) -> np.ndarray:
        X = self.features(plans)
        return self._predict_features(X)

    def base_predict(self, plan: "PlanLike | Arch") -> float:
        """The uncorrected base prediction."""
        return float(self.base.predict(self._plan(plan)))

    # -- features and fitting ---------------------------------------------------------
    def features(self, plans: Iterable["PlanLike | Arch"]) -> np.ndarray:
        """``(n, len(FEATURES))`` matrix of the networks' features."""
        rows = []
        for p in plans:
            plan = self._plan(p)
            rows.append(plan_features(self.base.breakdown(plan), self._resolution(plan)))
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))

    def fit(self, archs: Sequence["PlanLike | Arch"], measured_ms: Sequence[float]) -> "HybridLatencyModel":
        """Fit the correction on whole-model measurements (archs or plans, ms)."""
        y = np.asarray(measured_ms, dtype=np.float64).ravel()
        if len(archs) != y.size:
            raise QnasError(f"fit needs one measurement per arch; got {len(archs)} archs and {y.size} measurements")
        if y.size < 5:
            raise QnasError(f"fit the hybrid latency model on at least 5 measured networks, got {y.size}")
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise QnasError("measured latencies must be positive finite numbers of ms")
        X = self.features(archs)
        self._ref_layers = as_layers(self._plan(archs[0]))
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale[scale < 1e-12] = 1.0  # constant feature: coefficient stays at ~0
        Z = (X - mean) / scale
        base = X[:, 0]
        alpha, cv_mape = self._select_alpha(Z, y, base)
        coef, intercept = _weighted_ridge(Z, y - base, 1.0 / y ** 2, alpha)
        self.mean, self.scale = mean, scale
        self.coef, self.intercept, self.alpha = coef, intercept, alpha
        self.floor_ms = float(0.1 * y.min())
        pred = self._predict_features(X)
        rel_h = np.abs(pred - y) / y
        rel_b = np.abs(base - y) / y
        self.fit_info = {"n": int(y.size), "alpha": self.alpha, "cv_mape": cv_mape,
                         "mape_fit": float(rel_h.mean()), "mape_fit_base": float(rel_b.mean()),
                         "measured_ms_range": [float(y.min()), float(y.max())]}
        return self

    def _select_alpha(self, Z: np.ndarray, y: np.ndarray, base: np.ndarray) -> tuple[float, float]:
        """The ridge penalty with the smallest k-fold (k <= 5) cross-validated MAPE."""
        n = y.size
        folds = np.array_split(np.random.default_rng(0).permutation(n), min(5, n))
        best = (math.inf, math.nan)
        for alpha in self.alphas:
            err = np.empty(n)
            for test in folds:
                train = np.setdiff1d(np.arange(n), test)
                coef, b0 = _weighted_ridge(Z[train], y[train] - base[train], 1.0 / y[train] ** 2, alpha)
                pred = np.maximum(base[test] + Z[test] @ coef + b0, 0.1 * y[train].min())
                err[test] = np.abs(pred - y[test]) / y[test]
            if err.mean() < best[0]:
                best = (float(err.mean()), alpha)
        return best[1], best[0]

    def _predict_costs(self, costs: Sequence[LayerCost], resolution: float) -> float:
        return float(self._predict_features(plan_features(costs, resolution)[None, :])[0])

    def _predict_features(self, X: np.ndarray) -> np.ndarray:
        if not self.fitted:
            raise LatencyTableError("the hybrid latency model is not fitted; call fit(archs, measured_ms) or load a saved one")
        corr = ((X - self.mean) / self.scale) @ self.coef + self.intercept
        return np.maximum(X[:, 0] + corr, self.floor_ms)

    def _plan(self, x: Any) -> Any:
        if isinstance(x, Arch):
            if self.space is None:
                raise QnasError("pass a NetworkPlan, or give HybridLatencyModel a search space to price an Arch")
            return self.space.plan(x)
        return x

    @staticmethod
    def _resolution(plan: Any) -> float:
        if hasattr(plan, "resolution"):
            return float(plan.resolution)
        layers = as_layers(plan)
        return float(layers[0].hw_in) if layers else 0.0

    # -- persistence (JSON, never pickle) ----------------------------------------------
    def _reference(self) -> dict[str, Any] | None:
        """The first fitted network's layers and the base's price of them, so
        :meth:`load` can tell a base that differs from the one the correction
        was fitted on (another table, another profile)."""
        if not self._ref_layers:
            return None
        # ``bias`` only where set: files of the default space stay as they were
        return {"layers": [{k: v for k, v in asdict(l).items() if k != "bias" or v} for l in self._ref_layers],
                "base_ms": float(self.base.predict(self._ref_layers))}

    def to_dict(self) -> dict[str, Any]:
        if not self.fitted:
            raise LatencyTableError("nothing to save: the hybrid latency model is not fitted")
        return {
            "format": FORMAT, "version": VERSION,
            # the base's latency target; files written before the rename call it "device" (read as well)
            "base": {"kind": getattr(self.base, "kind", type(self.base).__name__), "target": self.base.target},
            "space": self.space.to_dict() if self.space is not None and hasattr(self.space, "to_dict") else None,
            "reference": self._reference(),
            "model": "ridge on standardised features; target measured-base; weights 1/measured^2",
            "features": list(FEATURES),
            "mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
            "intercept": self.intercept, "alpha": self.alpha, "floor_ms": self.floor_ms,
            "fit": self.fit_info,
        }

    def save(self, path: str | Path) -> Path:
        """Write the correction as JSON, atomically."""
        from qnas.quant.checkpoint import atomic_write

        text = json.dumps(self.to_dict(), indent=1)
        return atomic_write(path, lambda p: Path(p).write_text(text), overwrite=True)

    @classmethod
    def from_dict(cls, d: Any, base: LatencyModel, space: Any = None, source: str = "hybrid model",
                  strict: bool = True) -> "HybridLatencyModel":
        """Rebuild from :meth:`to_dict`. With ``strict``, refuse a ``base`` whose
        kind, latency target or reference prediction differs from the one fitted on."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise LatencyTableError(f"{source} is not a qnas hybrid latency model (no '{FORMAT}' marker)")
        if d.get("version") != VERSION:
            raise LatencyTableError(f"{source} has hybrid-model version {d.get('version')}, this qnas reads {VERSION}")
        if d.get("features") != list(FEATURES):
            raise LatencyTableError(f"{source} was fitted on other features than this qnas computes; re-fit it")
        m = cls(base, space)
        try:
            n = len(FEATURES)
            arrs = [np.asarray(d[k], dtype=np.float64) for k in ("mean", "scale", "coef")]
            if any(a.shape != (n,) or not np.all(np.isfinite(a)) for a in arrs) or np.any(arrs[1] <= 0):
                raise ValueError
            intercept, floor = float(d["intercept"]), float(d["floor_ms"])
            if not (math.isfinite(intercept) and math.isfinite(floor)):
                raise ValueError
            alpha = float(d.get("alpha", math.nan))
            info = d.get("fit") or {}
        except (KeyError, TypeError, ValueError):
            raise LatencyTableError(f"{source} has a damaged coefficient block; re-fit the hybrid model") from None
        m.mean, m.scale, m.coef = arrs
        m.intercept, m.floor_ms, m.alpha, m.fit_info = intercept, floor, alpha, dict(info)
        ref = d.get("reference")
        if ref is not None:
            from qnas.quant.plan import LayerSpec

            try:
                m._ref_layers = [LayerSpec(**l) for l in ref["layers"]]
                want = float(ref["base_ms"])
            except (KeyError, TypeError, ValueError):
                raise LatencyTableError(f"{source} has a damaged reference block; re-fit the hybrid model") from None
        if strict:
            b = d.get("base") or {}
            kind = getattr(base, "kind", type(base).__name__)
            fitted_on = b.get("target", b.get("device"))  # "device": a file written before the rename
            if b.get("kind") != kind or fitted_on != base.target:
                raise LatencyTableError(
                    f"{source} corrects a {b.get('kind')!r} model of latency target {fitted_on!r}, but the base "
                    f"given is a {kind!r} model of {base.target!r}; pass the base it was fitted on or re-fit")
            if ref is not None:
                try:
                    got = float(base.predict(m._ref_layers))
                except QnasError as e:
                    raise LatencyTableError(f"the base given cannot price the network {source} was fitted on "
                                            f"({str(e)[:200]}); pass the base it was fitted on or re-fit") from None
                if not math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
                    raise LatencyTableError(
                        f"{source} was fitted on a base that priced its reference network at {want:.6g} ms, "
                        f"the base given prices it at {got:.6g} ms; pass the base it was fitted on or re-fit")
        return m

    @classmethod
    def load(cls, path: str | Path, base: LatencyModel, space: Any = None, strict: bool = True) -> "HybridLatencyModel":
        """Read a model written by :meth:`save` (plain JSON; corrupt files raise :class:`LatencyTableError`)."""
        from qnas.jsonfile import read_json

        d = read_json(path, "hybrid latency model", "re-fit and save it (qnas latency eval --save-hybrid)",
                      LatencyTableError)
        return cls.from_dict(d, base, space, str(path), strict)

    def __repr__(self) -> str:
        state = f"fitted on {self.fit_info.get('n')}" if self.fitted else "unfitted"
        return f"HybridLatencyModel(base={self.base!r}, {state})"
