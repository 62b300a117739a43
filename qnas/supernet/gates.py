"""Differentiable gates over the supernet's active arch, for the differentiable search.

The search samples a path (depth per stage, op per block position: hard,
straight-through) and soft (or hard) mixtures over the bit widths of every
conv. The supernet runs the sampled path as its active arch
(``set_active``) and, with :class:`PathGates` set (``set_gates``):

* each weight layer's effective weight is the gate-weighted sum of its
  fake-quantized versions at every weight bit width of the space (``w``);
* each activation quantizer feeding a weight layer outputs the gate-weighted
  sum of its quantizations at every activation bit width (``a``);
* each block position's output is multiplied by its op gate (value 1 on the
  sampled path, so the forward pass is the path's; its gradient reaches the op
  logits), a skipped position passes its input scaled by its gate;
* a position past its stage's minimum depth is mixed with its input by the
  depth gate ``P(depth > j)``: ``g * out + (1 - g) * x``.

Op indices are per stage (``space.stage_ops``: the mobile presets give each stage
its own kernel/expand lists); an op without expand conv (expand 1 in a space
with ``expand1_no_conv``) has no ``expand`` gates, and a stage's skip value is
its own op count (``space.genes.skip_index(stage)``).

Names are the plan's layer and block names (``stem``, ``s1.b0.dw``, ``head``;
``s1.b0``), which are also module paths of the supernet.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PathGates:
    """Gates of one sampled path (see the module docstring)."""

    w: dict[str, torch.Tensor] = field(default_factory=dict)
    """weight layer name -> weights over that layer's weight bit widths"""
    a: dict[str, torch.Tensor] = field(default_factory=dict)
    """weight layer name -> weights over the bit widths of the activation quantizer feeding it"""
    op: dict[str, torch.Tensor] = field(default_factory=dict)
    """block position name -> scalar op gate"""
    depth: dict[str, torch.Tensor] = field(default_factory=dict)
    """block position name -> scalar depth gate (positions past the stage's minimum depth)"""
    skips: frozenset[str] = frozenset()
    """block positions whose sampled op is a skip (identity)"""
