"""Plain-data description of a quantized network, the contract between the
search space (``qnas``) and the model builder (``qnas.quant``).

``qnas`` turns an ``Arch`` into a :class:`NetworkPlan`; ``quant`` builds
Brevitas modules from it; cost counters and latency models read its flat
layer list. Keeping it dependency-free lets ``quant`` stay below ``qnas``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

OpKind = Literal["conv", "dwconv", "pwconv", "fc", "add", "pool"]


@dataclass(frozen=True)
class LayerSpec:
    """One layer as the hardware sees it.

    ``a_bits`` is the bit width of the activations the layer *consumes*
    (its input quantizer), so ``w_bits x a_bits`` is its integer MAC precision.
    ``hw_in``/``hw_out`` are spatial sizes (square feature maps).
    """

    name: str
    op: OpKind
    cin: int
    cout: int
    hw_in: int
    hw_out: int
    k: int = 1
    stride: int = 1
    groups: int = 1
    w_bits: int = 32
    a_bits: int = 32

    @property
    def macs(self) -> int:
        if self.op in ("conv", "dwconv", "pwconv"):
            return self.hw_out * self.hw_out * self.cout * (self.cin // self.groups) * self.k * self.k
        if self.op == "fc":
            return self.cin * self.cout
        return 0

    @property
    def params(self) -> int:
        if self.op in ("conv", "dwconv", "pwconv"):
            return self.cout * (self.cin // self.groups) * self.k * self.k
        if self.op == "fc":
            return self.cin * self.cout + self.cout  # float bias
        return 0

    @property
    def in_elems(self) -> int:
        return self.cin * self.hw_in * self.hw_in

    @property
    def out_elems(self) -> int:
        return self.cout * self.hw_out * self.hw_out

    def key(self) -> tuple:
        """Latency-table key: (op, cin, cout, hw, k, stride, groups, w_bits, a_bits)."""
        return (self.op, self.cin, self.cout, self.hw_in, self.k, self.stride, self.groups, self.w_bits, self.a_bits)


@dataclass(frozen=True)
class BlockPlan:
    """An inverted-residual (MBConv) block: expand 1x1 -> depthwise kxk -> project 1x1."""

    expand: LayerSpec
    depthwise: LayerSpec
    project: LayerSpec
    residual: bool

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        return (self.expand, self.depthwise, self.project)


@dataclass(frozen=True)
class NetworkPlan:
    """stem conv -> MBConv blocks -> global pool -> fc."""

    in_channels: int
    resolution: int
    num_classes: int
    stem: LayerSpec
    blocks: tuple[BlockPlan, ...]
    head: LayerSpec
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def layers(self) -> list[LayerSpec]:
        """Flat list of every layer including residual adds and the pool, in execution order."""
        out: list[LayerSpec] = [self.stem]
        for block in self.blocks:
            out.extend(block.layers)
            if block.residual:
                p = block.project
                out.append(LayerSpec(p.name.rsplit(".", 1)[0] + ".add", "add", p.cout, p.cout, p.hw_out, p.hw_out))
        last = self.blocks[-1].project if self.blocks else self.stem
        out.append(LayerSpec("pool", "pool", last.cout, last.cout, last.hw_out, 1))
        out.append(self.head)
        return out

    def quantized_layers(self) -> list[LayerSpec]:
        return [l for l in self.layers() if l.op in ("conv", "dwconv", "pwconv", "fc")]
