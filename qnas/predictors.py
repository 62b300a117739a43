"""Accuracy predictors: cheap stand-ins for training a candidate (DESIGN.md §4).

:class:`AccuracyPredictor` is a small torch MLP fitted on ``(arch, accuracy)``
pairs -- typically supernet-inherited accuracies (with BN re-calibration),
as in once-for-all -- and then ranks thousands of archs per millisecond for an
evolution finder (:mod:`qnas.strategies.ofa`) or a search loop
(:class:`PredictorEvaluator`).

Features (:class:`ArchFeaturizer`): the one-hot code of every gene of
:meth:`SearchSpace.encode` (one block of ``bounds[i] + 1`` columns per gene),
with the block of an *inactive* gene left all-zero: a block position beyond
its stage's depth, and the bit genes of a skipped block, have no one-hot at
all, so "absent" is never confused with "choice 0". The dimension is
``sum(bounds) + len(bounds)`` (265 for the default digits space).

Model: ``Linear(d, h) -> ReLU -> ... -> Linear(h, 1)`` on standardised
targets, Adam with weight decay, mini-batches, a fixed number of epochs. Every
random choice (init, shuffling) comes from ``seed``, and the global torch RNG
is left as it was. Weights are saved as JSON (``.json``) or as a torch file
of plain tensors loaded with ``weights_only=True`` (``.pt``) -- never pickle.

:class:`SyntheticAccuracy` is *not* a predictor: it is a documented,
deterministic, plausible-looking accuracy function for benchmarks and tests,
where training every candidate would be too slow.
"""
from __future__ import annotations

import hashlib
import json
import math
import pickle
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from qnas.arch import Arch
from qnas.errors import ConfigError, QnasError
from qnas.space import SearchSpace

SCHEMA = "qnas-accuracy-predictor"
VERSION = 1


# ---- features -------------------------------------------------------------------
class ArchFeaturizer:
    """Gene vectors (or archs) of ``space`` -> masked one-hot feature matrix (see module doc)."""

    def __init__(self, space: SearchSpace):
        self.space = space
        self.layout = space.genes
        self.bounds = np.asarray(space.bounds(), dtype=np.int64)
        self.n_genes = len(self.bounds)
        self.offsets = np.concatenate([[0], np.cumsum(self.bounds + 1)[:-1]]).astype(np.int64)
        self.dim = int((self.bounds + 1).sum())

    def genes(self, archs: "Sequence[Arch] | np.ndarray") -> np.ndarray:
        """``[N, n_genes]`` int matrix: ``encode`` of each arch, or a gene matrix passed through."""
        if isinstance(archs, np.ndarray):
            X = np.atleast_2d(archs).astype(np.int64)
        else:
            archs = list(archs)
            X = np.asarray([self.space.encode(a) for a in archs], dtype=np.int64).reshape(len(archs), self.n_genes)
        if X.shape[1] != self.n_genes:
            raise QnasError(f"gene matrix has {X.shape[1]} columns, this space needs {self.n_genes}")
        if X.size and ((X < 0).any() or (X > self.bounds).any()):
            raise QnasError("gene matrix has values outside the space's bounds")
        return X

    def active(self, X: np.ndarray) -> np.ndarray:
        """``[N, n_genes]`` bool: which genes change the decoded arch."""
        return self.layout.active(X)

    def __call__(self, archs: "Sequence[Arch] | np.ndarray") -> np.ndarray:
        X = self.genes(archs)
        act = self.active(X)
        out = np.zeros((len(X), self.dim), dtype=np.float32)
        rows = np.repeat(np.arange(len(X)), self.n_genes)
        cols = (self.offsets[None, :] + X).ravel()
        out[rows, cols] = act.ravel()
        return out


# ---- the predictor ----------------------------------------------------------------
class AccuracyPredictor:
    """MLP regressor ``arch -> accuracy`` over masked one-hot genes.

    >>> pred = AccuracyPredictor(space, seed=0).fit(archs, accs)
    >>> pred.predict(candidates)                 # np.ndarray of accuracies
    >>> pred.score(held_out, accs_held_out)      # {"kendall_tau": ..., "rmse": ..., "n": ...}
    """

    def __init__(self, space: SearchSpace, hidden: Sequence[int] = (128, 128), epochs: int = 200,
                 lr: float = 2e-3, weight_decay: float = 1e-4, batch_size: int = 64, seed: int = 0):
        hidden = tuple(int(h) for h in hidden)
        if not hidden or any(h < 1 for h in hidden):
            raise ConfigError(f"hidden must be a non-empty list of positive layer widths, got {list(hidden)}")
        for name, v in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not lr > 0 or weight_decay < 0:
            raise ConfigError(f"lr must be > 0 and weight_decay >= 0, got lr={lr!r}, weight_decay={weight_decay!r}")
        self.space = space
        self.featurizer = ArchFeaturizer(space)
        self.hidden, self.epochs, self.lr, self.weight_decay = hidden, epochs, lr, weight_decay
        self.batch_size, self.seed = batch_size, seed
        self.y_mean, self.y_std = 0.0, 1.0
        self.model: nn.Sequential | None = None
        self.data: tuple[np.ndarray, np.ndarray] | None = None  # the genes/targets of the last fit
        self.loss_history: list[float] = []

    def _build(self) -> nn.Sequential:
        layers: list[nn.Module] = []
        d = self.featurizer.dim
        for h in self.hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, 1))
        return nn.Sequential(*layers)

    @property
    def fitted(self) -> bool:
        return self.model is not None

    # ---- fitting ---------------------------------------------------------------
    def fit(self, archs: "Sequence[Arch] | np.ndarray", accs: Sequence[float]) -> "AccuracyPredictor":
        """Fit from scratch on ``(archs[i], accs[i])`` (archs may be a gene matrix)."""
        X = self.featurizer.genes(archs)
        y = np.asarray(accs, dtype=np.float64).ravel()
        if len(y) != len(X):
            raise QnasError(f"fit got {len(X)} archs but {len(y)} accuracies")
        if len(y) < 2:
            raise QnasError(f"fit needs at least 2 (arch, accuracy) pairs, got {len(y)}")
        if not np.all(np.isfinite(y)):
            raise QnasError("accuracies must be finite numbers")
        self.data = (X, y)
        self.y_mean = float(y.mean())
        self.y_std = float(y.std()) or 1.0
        feats = torch.from_numpy(self.featurizer(X))
        target = torch.from_numpy(((y - self.y_mean) / self.y_std).astype(np.float32))[:, None]
        rng = np.random.default_rng(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self._build()
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs)
        n = len(y)
        self.loss_history = []
        model.train()
        for _ in range(self.epochs):
            perm = torch.from_numpy(rng.permutation(n))
            total = 0.0
            for i in range(0, n, self.batch_size):
                idx = perm[i:i + self.batch_size]
                loss = nn.functional.mse_loss(model(feats[idx]), target[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            sched.step()
            self.loss_history.append(total / n)
        model.eval()
        self.model = model
        return self

    def update(self, archs: "Sequence[Arch] | np.ndarray", accs: Sequence[float]) -> "AccuracyPredictor":
        """Refit on the previous data plus these pairs (a new pair for a known arch replaces the old one)."""
        X = self.featurizer.genes(archs)
        y = np.asarray(accs, dtype=np.float64).ravel()
        if self.data is not None:
            new = {tuple(x) for x in X}
            keep = [i for i, x in enumerate(self.data[0]) if tuple(x) not in new]
            X = np.concatenate([self.data[0][keep], X])
            y = np.concatenate([self.data[1][keep], y])
        return self.fit(X, y)

    # ---- prediction ---------------------------------------------------------------
    def predict(self, archs: "Sequence[Arch] | np.ndarray") -> np.ndarray:
        """Predicted accuracy of each arch (or row of a gene matrix), float64."""
        if self.model is None:
            raise QnasError("the accuracy predictor is not fitted; call fit(archs, accs) or load a saved one")
        X = self.featurizer.genes(archs)
        out = np.empty(len(X), dtype=np.float64)
        with torch.no_grad():
            for i in range(0, len(X), 65536):
                f = torch.from_numpy(self.featurizer(X[i:i + 65536]))
                out[i:i + 65536] = self.model(f)[:, 0].double().numpy()
        return out * self.y_std + self.y_mean

    def __call__(self, arch: Arch) -> float:
        return float(self.predict([arch])[0])

    def score(self, archs: "Sequence[Arch] | np.ndarray", accs: Sequence[float]) -> dict[str, Any]:
        """Kendall tau-b, RMSE and mean absolute error against held-out accuracies."""
        from scipy.stats import kendalltau

        y = np.asarray(accs, dtype=np.float64).ravel()
        p = self.predict(archs)
        return {"kendall_tau": round(float(kendalltau(p, y).statistic), 4),
                "rmse": round(float(np.sqrt(np.mean((p - y) ** 2))), 6),
                "mae": round(float(np.mean(np.abs(p - y))), 6), "n": int(len(y))}

    # ---- files ------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": VERSION, "space": self.space.to_dict(), "hidden": list(self.hidden),
                "epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay,
                "batch_size": self.batch_size, "seed": self.seed, "y_mean": self.y_mean, "y_std": self.y_std,
                "feature_dim": self.featurizer.dim}

    def save(self, path: str | Path) -> Path:
        """Write the fitted predictor: ``.json`` (weights as lists) or ``.pt`` (plain tensors, no pickle)."""
        if self.model is None:
            raise QnasError("cannot save an unfitted accuracy predictor; call fit first")
        from qnas.quant.checkpoint import atomic_write

        p = Path(path)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        if p.suffix == ".pt":
            return atomic_write(p, lambda tmp: torch.save({"meta": json.dumps(self._meta()), "state": state}, tmp))
        d = self._meta()
        d["state"] = {k: {"shape": list(v.shape), "data": v.double().ravel().tolist()} for k, v in state.items()}
        text = json.dumps(d)
        return atomic_write(p, lambda tmp: tmp.write_text(text))

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace | None = None) -> "AccuracyPredictor":
        """Read a predictor written by :meth:`save` (``space`` must equal the saved one if given)."""
        p = Path(path)
        if not p.is_file():
            raise QnasError(f"accuracy predictor file not found: {p}")
        try:
            if p.suffix == ".pt":
                raw = torch.load(p, map_location="cpu", weights_only=True)
                meta, state = json.loads(raw["meta"]), raw["state"]
            else:
                meta = json.loads(p.read_text())
                state = {k: torch.tensor(v["data"], dtype=torch.float32).reshape(v["shape"])
                         for k, v in meta.pop("state").items()}
        except (KeyError, TypeError, ValueError, RuntimeError, EOFError, AttributeError, pickle.UnpicklingError) as e:
            first = ("it holds Python objects, which qnas never unpickles" if isinstance(e, pickle.UnpicklingError)
                     else (str(e).strip().splitlines() or [""])[0][:160])  # torch's messages span many lines
            raise QnasError(f"{p} is not a saved accuracy predictor ({type(e).__name__}: {first}); "
                            "give a file written by AccuracyPredictor.save") from None
        if meta.get("schema") != SCHEMA or meta.get("version") != VERSION:
            raise QnasError(f"{p} is not a {SCHEMA} version {VERSION} file")
        saved_space = SearchSpace.from_dict(meta["space"])
        if space is not None and space.to_dict() != saved_space.to_dict():
            raise QnasError(f"{p} was fitted on a different search space; refit it on this one")
        pred = cls(space or saved_space, hidden=meta["hidden"], epochs=meta["epochs"], lr=meta["lr"],
                   weight_decay=meta["weight_decay"], batch_size=meta["batch_size"], seed=meta["seed"])
        if pred.featurizer.dim != meta["feature_dim"]:
            raise QnasError(f"{p}: feature dimension {meta['feature_dim']} does not match the space's {pred.featurizer.dim}")
        pred.y_mean, pred.y_std = float(meta["y_mean"]), float(meta["y_std"])
        model = pred._build()
        model.load_state_dict(state)
        model.eval()
        pred.model = model
        return pred


class PredictorEvaluator:
    """The accuracy-source interface (``arch -> record fields``) backed by a predictor.

    ``val_acc`` is a *predicted* accuracy; ``acc_source`` says so in the record."""

    def __init__(self, predictor: Any):
        if not (hasattr(predictor, "predict") or callable(predictor)):
            raise ConfigError("PredictorEvaluator needs an object with predict(archs) or a callable arch -> accuracy")
        self.predictor = predictor

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        if hasattr(self.predictor, "predict"):
            return np.asarray(self.predictor.predict(list(archs)), dtype=np.float64)
        return np.asarray([float(self.predictor(a)) for a in archs], dtype=np.float64)

    def __call__(self, arch: Arch) -> dict[str, Any]:
        return {"val_acc": float(self.predict([arch])[0]), "acc_source": "predictor"}

    def many(self, archs: Sequence[Arch]) -> list[dict[str, Any]]:
        """``self(arch)`` for each arch, in one batched prediction."""
        return [{"val_acc": float(v), "acc_source": "predictor"} for v in self.predict(archs)]


# ---- a synthetic accuracy for benchmarks and tests ----------------------------------
class SyntheticAccuracy:
    """A deterministic, plausible accuracy function of an arch (NOT a real accuracy).

    It stands in for training when benchmarking search strategies::

        acc = 0.78 + 0.19 * capacity + 0.01 * r  - quant_penalty + kernel_bonus + noise

    * ``capacity = 1 - exp(-(MMACs / m0) ** 0.6)``: diminishing returns in
      compute (``m0`` = the median MMACs of ``n_ref`` random archs), MACs from
      :func:`qnas.costs.count_costs`;
    * ``r``: the resolution's index in the space, scaled to [0, 1];
    * ``quant_penalty``: for every conv, ``sens * (wpen[w_bits] + apen[a_bits])``
      with ``wpen = {8: 0, 4: 0.0012, 2: 0.007}``, ``apen = {8: 0, 4: 0.0035}``,
      ``sens`` 1.6 for depthwise, 1.0 for expand, 1.2 for project, 3.0 for the
      stem and head, all times ``1 + (1 - width)`` (narrow nets suffer more);
    * ``kernel_bonus``: 0.002 per block with a 5x5 and 0.003 with a 7x7 kernel,
      over ``sqrt(#blocks)``;
    * ``noise``: N(0, ``noise``) seeded by the arch's uid and ``seed``
      (the same arch always gets the same value).

    Clipped to [0.1, 0.995].
    """

    WPEN = {8: 0.0, 4: 0.0012, 2: 0.007}
    APEN = {8: 0.0, 4: 0.0035}
    SENS = {"expand": 1.0, "dw": 1.6, "project": 1.2}

    def __init__(self, space: SearchSpace, seed: int = 0, noise: float = 0.003, n_ref: int = 256):
        from qnas.costs import count_costs

        self.space, self.seed, self.noise = space, seed, noise
        self._count_costs = count_costs
        rng = np.random.default_rng(12345)
        self.m0 = float(np.median([count_costs(space.plan(space.sample(rng))).mmacs for _ in range(n_ref)]))

    def __call__(self, arch: Arch) -> float:
        s = self.space
        c = s.config
        costs = self._count_costs(s.plan(arch))
        capacity = 1.0 - math.exp(-((costs.mmacs / self.m0) ** 0.6))
        r = c.resolutions.index(arch.resolution) / max(1, len(c.resolutions) - 1)
        narrow = 1.0 + (1.0 - arch.width)
        pen = 0.0
        blocks = [b for b in arch.blocks() if not b.is_skip]
        for b in blocks:
            for name, w, a in zip(("expand", "dw", "project"), b.w_bits, b.a_bits):
                pen += self.SENS[name] * (self.WPEN[w] + self.APEN[a])
        for w, a in (arch.stem_bits, arch.head_bits):
            pen += 3.0 * (self.WPEN[w] + self.APEN[a])
        pen *= narrow
        kbonus = sum(0.002 if b.kernel == 5 else 0.003 if b.kernel == 7 else 0.0 for b in blocks)
        kbonus /= math.sqrt(max(1, len(blocks)))
        h = int.from_bytes(hashlib.sha1(f"{arch.uid}:{self.seed}".encode()).digest()[:8], "little")
        eps = float(np.random.default_rng(h).normal(0.0, self.noise)) if self.noise else 0.0
        acc = 0.78 + 0.19 * capacity + 0.01 * r - pen + kbonus + eps
        return float(min(0.995, max(0.1, acc)))

    def many(self, archs: Iterable[Arch]) -> np.ndarray:
        return np.asarray([self(a) for a in archs], dtype=np.float64)
