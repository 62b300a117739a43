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
OpKind = Literal["conv", "dwconv", "pwconv", "fc", "add", "pool", "mul"]
OP_KINDS: tuple[str, ...] = ("conv", "dwconv", "pwconv", "fc", "add", "pool", "mul")
#: Kinds with quantized weights (a conv or a linear layer, fed by an activation quantizer).
WEIGHTED_OPS: tuple[str, ...] = ("conv", "dwconv", "pwconv", "fc")
#: Kinds without weights; they run at the bits of the tensors they read.
#: ``mul`` is the elementwise product of a squeeze-excite gate with its feature map.
WEIGHTLESS_OPS: tuple[str, ...] = ("add", "pool", "mul")
CONV_OPS: tuple[str, ...] = ("conv", "dwconv", "pwconv")
#: Activation functions a plan names (after a conv's BatchNorm, or a linear layer).
ACTIVATIONS: tuple[str, ...] = ("relu", "relu6", "hswish")


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
    bias: bool = field(default=False, repr=False)
    """a conv with a float bias (the squeeze-excite convs); ``fc`` always has one"""

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
            return self.cout * (self.cin // self.groups) * self.k * self.k + (self.cout if self.bias else 0)
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
class SEPlan:
    """Squeeze-excite inside a block (torchvision MobileNetV3): global pool -> 1x1 ``reduce`` conv
    -> ReLU -> 1x1 ``expand`` conv -> hard-sigmoid -> ``mul`` with the feature map it pooled."""

    pool: LayerSpec
    reduce: LayerSpec
    expand: LayerSpec
    mul: LayerSpec

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        """Its weight layers (``reduce``, ``expand``)."""
        return (self.reduce, self.expand)

    @property
    def all_layers(self) -> tuple[LayerSpec, ...]:
        """Every layer in execution order, the weightless pool and mul included."""
        return (self.pool, self.reduce, self.expand, self.mul)


@dataclass(frozen=True)
class BlockPlan:
    """An inverted-residual (MBConv) block: expand 1x1 -> depthwise kxk [-> squeeze-excite]
    -> project 1x1. ``expand`` is None in a block without expand conv (MobileNetV2's first
    block, expand ratio 1 when the space says so); ``act`` is the activation after the
    expand and depthwise BatchNorms."""

    expand: LayerSpec | None
    depthwise: LayerSpec
    project: LayerSpec
    residual: bool
    act: str = "relu"
    se: SEPlan | None = None

    @property
    def name(self) -> str:
        """The block's name (``s1.b0``), the prefix of its layers' names."""
        return self.depthwise.name.rsplit(".", 1)[0]

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        """The block's weight layers in execution order: expand (if any), dw, the SE convs
        (if any), project."""
        out = (() if self.expand is None else (self.expand,)) + (self.depthwise,)
        if self.se is not None:
            out += self.se.layers
        return out + (self.project,)

    @property
    def all_layers(self) -> tuple[LayerSpec, ...]:
        """Every layer in execution order, the SE pool and mul included (not the residual add)."""
        out = (() if self.expand is None else (self.expand,)) + (self.depthwise,)
        if self.se is not None:
            out += self.se.all_layers
        return out + (self.project,)

    @property
    def first(self) -> LayerSpec:
        """The layer that reads the block's input."""
        return self.depthwise if self.expand is None else self.expand


@dataclass(frozen=True)
class NetworkPlan:
    """stem conv -> MBConv blocks -> [feature-mix 1x1 conv] -> global pool -> [pre-classifier
    linear] -> fc. ``stem_act``/``mix_act``/``pre_head_act`` are the activations after the stem,
    the mix conv and the pre-classifier linear."""

    in_channels: int
    resolution: int
    num_classes: int
    stem: LayerSpec
    blocks: tuple[BlockPlan, ...]
    head: LayerSpec
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    mix: LayerSpec | None = None
    pre_head: LayerSpec | None = None
    stem_act: str = "relu"
    mix_act: str = "relu"
    pre_head_act: str = "relu"

    def layers(self) -> list[LayerSpec]:
        """Flat list of every layer including residual adds, SE pools/muls and the pool, in execution order."""
        out: list[LayerSpec] = [self.stem]
        for block in self.blocks:
            out.extend(block.all_layers)
            if block.residual:
                p = block.project
                out.append(add_layer(block.name, p.cout, p.hw_out))
        last = self.blocks[-1].project if self.blocks else self.stem
        if self.mix is not None:
            out.append(self.mix)
            last = self.mix
        out.append(pool_layer(last.cout, last.hw_out))
        if self.pre_head is not None:
            out.append(self.pre_head)
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
