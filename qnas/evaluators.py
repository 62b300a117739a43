"""Accuracy sources: callables ``evaluator(arch) -> {"val_acc": ..., ...}``.

Here: brief stand-alone QAT training (the slow, honest one). The supernet
(:mod:`qnas.supernet`), the accuracy predictor (:mod:`qnas.predictors`) and
zero-cost proxies (:mod:`qnas.zero_cost`) provide the others.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from qnas.arch import Arch
from qnas.errors import QnasError
from qnas._torch_utils import torch_threads
from qnas.data import ResizedSplits, Splits
from qnas.quant.build import build_model
from qnas.quant.checkpoint import load_checkpoint, save_checkpoint
from qnas.quant.train import TrainConfig, evaluate, train
from qnas.space import SearchSpace
from qnas.quant.batchnorm import recalibrate_bn


class TrainingEvaluator:
    """Scores an arch by briefly training it (QAT) and measuring validation accuracy.

    Deterministic for a seed and thread count. With ``state_dir`` each trained
    state is saved as ``state_dir/UID.pt`` so a chosen candidate can be
    finished from it later, also after a resume or from a remote worker.
    ``torch_device``/``amp``: where (and in which mixed precision) each arch trains
    and is evaluated; the kept states are CPU tensors."""

    def __init__(self, space: SearchSpace, splits: Splits, epochs: int = 3, batch_size: int = 64,
                 lr: float = 3e-3, seed: int = 0, progress: bool = True, threads: int | None = None,
                 state_dir: str | Path | None = None, bn_batches: int = 10, torch_device: str = "cpu",
                 amp: str = "off"):
        self.space = space
        self.data = ResizedSplits(splits)
        self.epochs, self.batch_size, self.lr, self.seed = epochs, batch_size, lr, seed
        self.progress, self.threads, self.bn_batches = progress, threads, bn_batches
        self.state_dir = Path(state_dir) if state_dir else None
        self.torch_device, self.amp = torch_device, amp
        self.states: dict[str, dict[str, torch.Tensor]] = {}

    def _settings(self) -> dict[str, Any]:
        """What a kept state's accuracy depends on besides the arch (a state made otherwise is not reused)."""
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed,
                "bn_batches": self.bn_batches, "threads": self.threads, "amp": self.amp}

    def _kept(self, arch: Arch) -> dict[str, Any] | None:
        """The result of an earlier run's training of ``arch`` with these settings (its state in
        ``state_dir``): a search killed after training but before recording does not train it again."""
        path = self.state_dir / f"{arch.uid}.pt" if self.state_dir is not None else None
        if path is None or not path.is_file():
            return None
        try:
            state, meta = load_checkpoint(path)
        except QnasError:
            return None  # damaged: train again (and overwrite it)
        if meta.get("arch") != arch.to_dict() or meta.get("settings") != self._settings() \
                or not isinstance(meta.get("val_acc"), float):
            return None
        self.states[arch.uid] = state
        return {"val_acc": meta["val_acc"], "train_seconds": meta.get("train_seconds", 0.0)}  # as first recorded

    def __call__(self, arch: Arch) -> dict[str, Any]:
        kept = self._kept(arch)
        if kept is not None:
            return kept
        with torch_threads(self.threads):
            torch.manual_seed(self.seed)
            model = build_model(self.space, arch)
            t0 = time.perf_counter()
            train(model, self.data("train", arch.resolution).loader(self.batch_size, True, self.seed), None,
                  TrainConfig(epochs=self.epochs, lr=self.lr, seed=self.seed, progress=self.progress,
                              desc=f"train {arch.uid}", torch_device=self.torch_device, amp=self.amp))
            # brief training leaves BN running statistics stale: re-estimate them first
            recalibrate_bn(model, self.data("train", arch.resolution).loader(self.batch_size, True, self.seed),
                           batches=self.bn_batches)
            acc = evaluate(model, self.data("val", arch.resolution).loader(512, False))
        self.states[arch.uid] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if self.state_dir is not None:
            save_checkpoint(self.state_dir / f"{arch.uid}.pt", model, {
                "arch": arch.to_dict(), "val_acc": acc, "settings": self._settings(),
                "train_seconds": round(time.perf_counter() - t0, 3)})
        return {"val_acc": acc, "train_seconds": round(time.perf_counter() - t0, 3)}

    def state(self, arch: Arch) -> dict[str, torch.Tensor] | None:
        """The trained state of ``arch`` if this evaluator (or an earlier run into ``state_dir``) made one."""
        if arch.uid in self.states:
            return self.states[arch.uid]
        if self.state_dir is not None and (self.state_dir / f"{arch.uid}.pt").is_file():
            return load_checkpoint(self.state_dir / f"{arch.uid}.pt")[0]
        return None
