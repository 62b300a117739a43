"""Inherited accuracy: the supernet accuracy source (BN recalibration per arch, :mod:`qnas.quant.batchnorm`)."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

import torch
from torch import nn

from qnas._torch_utils import torch_threads
from qnas.arch import Arch
from qnas.data import ResizedSplits, Splits
from qnas.errors import ConfigError
from qnas.quant.batchnorm import preserved_bn_state, recalibrate_bn
from qnas.quant.build import QuantNet
from qnas.quant.train import evaluate
from qnas.supernet.quantize import ActQuantizers, calibrating_ranges

__all__ = ["SupernetEvaluator", "preserved_act_ranges", "preserved_bn_state", "recalibrate_bn"]


@contextlib.contextmanager
def preserved_act_ranges(model: nn.Module) -> Iterator[None]:
    """Restore every supernet activation quantizer's thresholds on exit (calibrating one arch's ranges
    must not change another's)."""
    quants = [m for m in model.modules() if isinstance(m, ActQuantizers)]
    saved = [({k: p.detach().clone() for k, p in q.scaling.items()}, q.initialized.clone()) for q in quants]
    try:
        yield
    finally:
        with torch.no_grad():
            for q, (values, flags) in zip(quants, saved):
                for k, v in values.items():
                    q.scaling[k].copy_(v)
                q.initialized.copy_(flags)


class SupernetEvaluator:
    """Accuracy source ``evaluator(arch) -> {"val_acc", "eval_seconds"}`` from inherited
    supernet weights: activate the arch, recalibrate its BN (and, with batch-statistic
    ranges, its activation ranges) on ``bn_batches`` training batches (fixed order from
    ``seed``), measure validation accuracy.

    The supernet's BN state and activation ranges are restored afterwards, so results do
    not depend on the order archs are evaluated in. ``threads`` sets torch's intra-op threads
    while evaluating (None: leave as is)."""

    def __init__(self, supernet: nn.Module, splits: Splits, bn_batches: int = 10, batch_size: int = 64,
                 seed: int = 0, threads: int | None = None):
        if isinstance(bn_batches, bool) or not isinstance(bn_batches, int) or bn_batches < 0:
            raise ConfigError(f"bn_batches must be an integer >= 0, got {bn_batches!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
            raise ConfigError(f"batch_size must be an integer >= 2, got {batch_size!r}")
        self.supernet, self.bn_batches, self.batch_size, self.seed, self.threads = (
            supernet, bn_batches, batch_size, seed, threads)
        self.space = supernet.space
        self.data = ResizedSplits(splits)

    @contextlib.contextmanager
    def _activated(self, arch: Arch) -> Iterator[None]:
        net = self.supernet
        previous, was_training = (net.active_arch, net.quantize), net.training
        try:
            with torch_threads(self.threads), preserved_bn_state(net), preserved_act_ranges(net):
                net.set_active(arch, quantize=True)
                if self.bn_batches:
                    # the arch's activation ranges (batch-statistic mode) are re-estimated with its BN
                    with calibrating_ranges(net):
                        recalibrate_bn(net, self.data("train", arch.resolution).loader(self.batch_size, True,
                                                                                      self.seed), self.bn_batches)
                yield
        finally:
            net.set_active(*previous)
            net.train(was_training)

    def __call__(self, arch: Arch) -> dict[str, Any]:
        t0 = time.perf_counter()
        with self._activated(arch):
            acc = evaluate(self.supernet, self.data("val", arch.resolution).loader(512, False))
        return {"val_acc": acc, "eval_seconds": round(time.perf_counter() - t0, 4)}

    def extract(self, arch: Arch) -> QuantNet:
        """The standalone Brevitas model of ``arch`` with BN recalibrated as :meth:`__call__` does."""
        with self._activated(arch):
            model = self.supernet.extract()
        model.eval()
        return model
