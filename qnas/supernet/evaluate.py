"""Inherited accuracy: BN recalibration and the supernet accuracy source."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from qnas.arch import Arch
from qnas.data import ResizedSplits, Splits
from qnas.errors import ConfigError
from qnas.quant.build import QuantNet
from qnas.quant.train import evaluate


def _active_batchnorms(model: nn.Module) -> list[tuple[_BatchNorm, int]]:
    if hasattr(model, "active_batchnorms"):
        return list(model.active_batchnorms())
    return [(m, m.num_features) for m in model.modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, batches: int = 10) -> int:
    """Re-estimate the running statistics of the BN layers ``model`` uses (for a
    :class:`~qnas.supernet.Supernet`: those of its active arch, channel slices
    only) as the plain average over ``batches`` batches of ``loader``.

    Everything else runs in eval mode, so quantizers are left as they are (a
    Brevitas activation quantizer in train mode would collect statistics).
    Returns the number of batches used."""
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ConfigError(f"batches must be a positive integer, got {batches!r}")
    entries = _active_batchnorms(model)
    if not entries:
        return 0
    was_training = model.training
    saved = [(bn, bn.momentum) for bn, _ in entries]
    used = 0
    try:
        model.eval()
        for bn, k in entries:
            bn.running_mean[:k].zero_()
            bn.running_var[:k].fill_(1.0)
            bn.num_batches_tracked.zero_()
            bn.momentum = None  # cumulative average
            bn.train()
        for x, *_ in loader:
            if used >= batches:
                break
            if len(x) < 2:
                continue
            model(x)
            used += 1
    finally:
        for bn, momentum in saved:
            bn.momentum = momentum
        model.train(was_training)
    return used


@contextlib.contextmanager
def preserved_bn_state(model: nn.Module) -> Iterator[None]:
    """Restore every BN buffer of ``model`` on exit (recalibration for one arch must not change others)."""
    saved = {name: buf.clone() for name, buf in model.named_buffers()
             if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}
    try:
        yield
    finally:
        bufs = dict(model.named_buffers())
        with torch.no_grad():
            for name, value in saved.items():
                bufs[name].copy_(value)


class SupernetEvaluator:
    """Accuracy source ``evaluator(arch) -> {"val_acc", "eval_seconds"}`` from inherited
    supernet weights: activate the arch, recalibrate its BN on ``bn_batches``
    training batches (fixed order from ``seed``), measure validation accuracy.

    The supernet's BN state is restored afterwards, so results do not depend on
    the order archs are evaluated in. ``threads`` sets torch's intra-op threads
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
        old_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with preserved_bn_state(net):
                net.set_active(arch, quantize=True)
                if self.bn_batches:
                    recalibrate_bn(net, self.data("train", arch.resolution).loader(self.batch_size, True, self.seed),
                                   self.bn_batches)
                yield
        finally:
            net.set_active(*previous)
            net.train(was_training)
            torch.set_num_threads(old_threads)

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
