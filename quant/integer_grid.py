"""Put every bias on its integer accumulator grid, so integer runtimes add it exactly.

An integer runtime (TFLite full-int8, Edge TPU, ...) folds each BatchNorm into
its conv (per-channel weight scale ``s_w * |gamma/sigma|`` and bias
``beta - mu * gamma/sigma``) and stores the bias as int32 in units of
``s_in * s_w_folded``. The rounding of that bias shifts a whole output channel
by a constant of up to half an accumulator step, which flips codes that lie
near a rounding boundary; behind a 4-bit layer one flipped code moves the
logits visibly. :func:`snap_biases` moves each BN ``beta`` (and the fc bias) by
less than half a step so the bias already lies on the grid: the model changes
by a fraction of one accumulator step, and the exported integer file then
computes what the PyTorch model computes. The finishing pass (QAT and PTQ)
does this as its last step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qnas.quant.bn_fold import bn_fold


@dataclass(frozen=True)
class GridOffset:
    """How far one layer's bias is from its accumulator grid (in steps, at most 0.5)."""

    layer: str
    max_offset_steps: float


@torch.no_grad()
def _visit(model: nn.Module, snap: bool) -> list[GridOffset]:
    out: list[GridOffset] = []
    layers = model.quant_layers()
    for layer in layers:  # conv + BatchNorm: the folded bias is BN's shift
        if layer.bn is None:
            continue
        if layer.bias is not None:
            raise ValueError(f"{layer.name} has a conv bias; fold it into its BatchNorm before snapping")
        bn = layer.bn
        g, b_fold = bn_fold(bn)
        step = (layer.input_act().scale_value * layer.weight().scale * g.abs()).double()
        ok = step > 0  # a channel with gamma = 0 has no accumulator to add to
        n = torch.where(ok, torch.round(b_fold.double() / step.clamp_min(1e-30)), torch.zeros_like(step))
        offset = torch.where(ok, (b_fold.double() - n * step) / step.clamp_min(1e-30), torch.zeros_like(step))
        out.append(GridOffset(layer.name, float(offset.abs().max()) if offset.numel() else 0.0))
        if snap:
            bn.bias.add_(torch.where(ok, n * step - b_fold.double(), torch.zeros_like(step)).to(bn.bias.dtype))
    for layer in layers:  # a layer without BatchNorm (the fc head) snaps its own bias
        bias = layer.bias
        if layer.bn is not None or bias is None:
            continue
        step = (layer.input_act().scale_value * layer.weight().scale).double()
        n = torch.round(bias.double() / step)
        out.append(GridOffset(layer.name, float(((bias.double() - n * step) / step).abs().max())))
        if snap:
            bias.copy_((n * step).to(bias.dtype))
    return out


def grid_offsets(model: nn.Module) -> list[GridOffset]:
    """How far each bias of a :class:`~qnas.quant.build.QuantNet` is from its accumulator grid."""
    return _visit(model, snap=False)


def snap_biases(model: nn.Module) -> list[GridOffset]:
    """Move every folded bias of a QuantNet onto its int32 accumulator grid (in place).

    Returns the offsets removed (in accumulator steps, each at most 0.5). Call it
    after the last weight update: training on moves the biases off the grid again."""
    was_training = model.training
    model.eval()
    try:
        return _visit(model, snap=True)
    finally:
        model.train(was_training)
