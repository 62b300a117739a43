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
from typing import Iterator

import torch
from torch import nn


@dataclass(frozen=True)
class GridOffset:
    """How far one layer's bias is from its accumulator grid (in steps, at most 0.5)."""

    layer: str
    max_offset_steps: float


def _act_scale(act: nn.Module) -> float:
    return float(torch.as_tensor(act.act_quant.scale()).detach().reshape(()))


def _weight_scale(layer: nn.Module) -> torch.Tensor:
    return layer.quant_weight().scale.detach().reshape(-1)


def _conv_bn_pairs(model: nn.Module) -> Iterator[tuple[str, nn.Module, nn.BatchNorm2d, nn.Module]]:
    """(name, conv, its BatchNorm, the activation quantizer feeding the conv) of a QuantNet."""
    yield "stem", model.stem, model.stem_bn, model.input_quant
    for i, b in enumerate(model.blocks):
        yield f"blocks.{i}.expand", b.expand, b.bn1, b.in_quant
        yield f"blocks.{i}.dw", b.dw, b.bn2, b.act1
        yield f"blocks.{i}.project", b.project, b.bn3, b.act2


def _bn_fold(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(gamma / sigma, folded bias) of a BatchNorm in eval mode."""
    inv = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return inv, bn.bias.detach() - bn.running_mean * inv


@torch.no_grad()
def _visit(model: nn.Module, snap: bool) -> list[GridOffset]:
    out: list[GridOffset] = []
    for name, conv, bn, act in _conv_bn_pairs(model):
        if getattr(conv, "bias", None) is not None:
            raise ValueError(f"{name} has a conv bias; fold it into its BatchNorm before snapping")
        inv, b_fold = _bn_fold(bn)
        step = (_act_scale(act) * _weight_scale(conv) * inv.abs()).double()
        ok = step > 0  # a channel with gamma = 0 has no accumulator to add to
        n = torch.where(ok, torch.round(b_fold.double() / step.clamp_min(1e-30)), torch.zeros_like(step))
        offset = torch.where(ok, (b_fold.double() - n * step) / step.clamp_min(1e-30), torch.zeros_like(step))
        out.append(GridOffset(name, float(offset.abs().max()) if offset.numel() else 0.0))
        if snap:
            bn.bias.add_(torch.where(ok, n * step - b_fold.double(), torch.zeros_like(step)).to(bn.bias.dtype))
    head = model.head
    if head.bias is not None:
        step = (_act_scale(model.head_quant) * _weight_scale(head)).double()
        n = torch.round(head.bias.double() / step)
        out.append(GridOffset("head", float(((head.bias.double() - n * step) / step).abs().max())))
        if snap:
            head.bias.copy_((n * step).to(head.bias.dtype))
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
