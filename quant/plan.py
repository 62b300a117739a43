"""Plain-data description of a quantized network, the contract between the
search space (``qnas``) and the model builder (``qnas.quant``).

``qnas`` turns an ``Arch`` into a :class:`NetworkPlan`; ``quant`` builds
Brevitas modules from it; cost counters and latency models read its flat
layer list. Keeping it dependency-free lets ``quant`` stay below ``qnas``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: Every layer kind a plan can hold; latency profiles, tables and cost counters key on these names.
OpKind = Literal["conv", "dwconv", "pwconv", "fc", "add", "pool"]
OP_KINDS: tuple[str, ...] = ("conv", "dwconv", "pwconv", "fc", "add", "pool")
#: Kinds with quantized weights (a conv or a linear layer, fed by an activation quantizer).
WEIGHTED_OPS: tuple[str, ...] = ("conv", "dwconv", "pwconv", "fc")
#: Kinds without weights; they run at the bits of the tensors they read.
WEIGHTLESS_OPS: tuple[str, ...] = ("add", "pool")
CONV_OPS: tuple[str, ...] = ("conv", "dwconv", "pwconv")


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
    def weighted(self) -> bool:
        return self.op in WEIGHTED_OPS

    @property
    def macs(self) -> int:
        if self.op in CONV_OPS:
            return self.hw_out * self.hw_out * self.cout * (self.cin // self.groups) * self.k * self.k
        if self.op == "fc":
            return self.cin * self.cout
        return 0

    @property
    def params(self) -> int:
        if self.op in CONV_OPS:
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
    def name(self) -> str:
        """The block's name (``s1.b0``), the prefix of its layers' names."""
        return self.expand.name.rsplit(".", 1)[0]

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
                out.append(add_layer(block.name, p.cout, p.hw_out))
        last = self.blocks[-1].project if self.blocks else self.stem
        out.append(pool_layer(last.cout, last.hw_out))
        out.append(self.head)
        return out

    def quantized_layers(self) -> list[LayerSpec]:
        return [l for l in self.layers() if l.weighted]


def add_layer(block: str, channels: int, hw: int, bits: int = 32) -> LayerSpec:
    """The residual add of block ``block`` (``s1.b1`` -> ``s1.b1.add``); ``bits`` 32 until
    the bits of the tensors it adds are known (``inherit_weightless_bits``)."""
    return LayerSpec(f"{block}.add", "add", channels, channels, hw, hw, w_bits=bits, a_bits=bits)


def pool_layer(channels: int, hw: int, bits: int = 32) -> LayerSpec:
    """The global average pool over an ``hw x hw`` map of ``channels``."""
    return LayerSpec("pool", "pool", channels, channels, hw, 1, w_bits=bits, a_bits=bits)
