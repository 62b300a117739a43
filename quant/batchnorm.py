"""Batch-norm statistics: re-estimate, freeze, preserve.

One home for what every training path needs after its weights change: the
supernet accuracy source (per arch, channel slices only), brief stand-alone
training, PTQ (in float mode) and the finishing pass all call
:func:`recalibrate_bn`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm.auto import tqdm

from qnas.quant.errors import QnasError
from qnas.quant.torch_device import module_device, to_device

_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def active_batchnorms(model: nn.Module) -> list[tuple[_BatchNorm, int]]:
    """(BN layer, channels in use) of what ``model`` runs: a supernet reports its active
    arch's layers and channel slices (``model.active_batchnorms()``), any other model
    every BN layer it holds, whole."""
    if hasattr(model, "active_batchnorms"):
        return list(model.active_batchnorms())
    return [(m, m.num_features) for m in model.modules() if isinstance(m, _BatchNorm)]


def _inputs(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable[Any], batches: int | None = 10,
                   progress: bool = False, desc: str = "BN statistics") -> int:
    """Re-estimate the running statistics of the BN layers ``model`` uses as the plain
    average over the first ``batches`` batches of ``loader`` (``None``: all of them). A batch
    is a tensor or an ``(inputs, labels, ...)`` tuple; batches of one sample are skipped
    (train-mode BN needs two).

    Everything else runs in eval mode, so quantizers are left as they are (a Brevitas
    activation quantizer in train mode would collect statistics); wrap the call in
    :func:`qnas.quant.ptq.float_mode` for float statistics. The model's train/eval mode
    and each BN's momentum are restored. Batches run on the model's device. Returns the number of
    batches used."""
    if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int) or batches < 1):
        raise QnasError(f"batches must be a positive integer or None, got {batches!r}")
    entries = active_batchnorms(model)
    if not entries:
        return 0
    was_training = model.training
    device = module_device(model)
    saved = [(bn, bn.momentum) for bn, _ in entries]
    used = 0
    try:
        model.eval()
        for bn, k in entries:
            bn.running_mean[:k].zero_()
            bn.running_var[:k].fill_(1.0)
            bn.num_batches_tracked.zero_()
            bn.momentum = None  # cumulative average: the exact mean over the batches
            bn.train()
        # wrap only to show progress: a tqdm around a DataLoader draws its shuffle order differently
        for batch in (tqdm(loader, desc=desc, leave=False) if progress else loader):
            if batches is not None and used >= batches:
                break
            x = _inputs(batch)
            if len(x) < 2:
                continue
            model(to_device(x, device))
            used += 1
    finally:
        for bn, momentum in saved:
            bn.momentum = momentum
        model.train(was_training)
    return used


def freeze_batchnorm(model: nn.Module) -> int:
    """Put every BN layer of ``model`` in eval mode: it normalises with its running
    statistics and no longer updates them (affine weights still train). Returns how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.eval()
            n += 1
    return n


@contextlib.contextmanager
def preserved_bn_state(model: nn.Module) -> Iterator[None]:
    """Restore every BN buffer of ``model`` on exit (recalibration for one arch must not change others)."""
    saved = {name: buf.clone() for name, buf in model.named_buffers() if name.rsplit(".", 1)[-1] in _BN_STATS}
    try:
        yield
    finally:
        bufs = dict(model.named_buffers())
        with torch.no_grad():
            for name, value in saved.items():
                bufs[name].copy_(value)
