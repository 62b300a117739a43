"""BatchNorm folding: what an integer runtime does to a conv followed by its BatchNorm.

In eval mode ``BN(y + b) = g * y + shift`` per output channel with
``g = gamma / sqrt(var + eps)`` and ``shift = beta + (b - mean) * g``. An integer
runtime multiplies each channel's weight scale by ``|g|`` (a negative ``g``
negates that channel's codes, exact for a symmetric narrow range) and stores
``shift`` as the bias. The TFLite exporter writes exactly that, and
:mod:`qnas.quant.integer_grid` puts ``shift`` on the grid the runtime rounds it to.
"""
from __future__ import annotations

import torch
from torch import nn


def bn_fold(bn: nn.BatchNorm2d, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, shift)`` of ``bn`` in eval mode, for a preceding layer with ``bias`` (or none).

    Raises ValueError when ``bn`` has no running statistics (nothing to fold)."""
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None or bn.running_mean is None:
        raise ValueError("BatchNorm without running statistics cannot be folded")
    var, mean = bn.running_var.detach().float(), bn.running_mean.detach().float()
    gamma = bn.weight.detach().float() if bn.affine else torch.ones_like(var)
    beta = bn.bias.detach().float() if bn.affine else torch.zeros_like(var)
    g = gamma / torch.sqrt(var + bn.eps)
    if bias is None:
        return g, beta - mean * g
    return g, beta + (bias.detach().float() - mean) * g
