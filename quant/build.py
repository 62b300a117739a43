"""Build Brevitas models from a :class:`~qnas.quant.plan.NetworkPlan`."""
from __future__ import annotations

from typing import Any

import brevitas.nn as qnn
import torch
from torch import nn

from qnas.quant.layer_view import ActQuantizer, QuantLayer, ResidualAdd, StreamKind
from qnas.quant.naming import block_path_of, legacy_quantnet_key, rename_legacy_keys, split_block_path
from qnas.quant.plan import BlockPlan, LayerSpec, NetworkPlan
from qnas.quant.quantizers import SignedActPerTensor, SignedWeightPerChannel


def act_quant(bits: int, relu: bool = False) -> nn.Module:
    """The activation quantizer feeding a layer with ``a_bits == bits``."""
    cls = qnn.QuantReLU if relu else qnn.QuantIdentity
    return cls(act_quant=SignedActPerTensor, bit_width=bits, return_quant_tensor=True)


def quant_conv(spec: LayerSpec) -> qnn.QuantConv2d:
    return qnn.QuantConv2d(
        spec.cin, spec.cout, spec.k, stride=spec.stride, padding=spec.k // 2, groups=spec.groups,
        bias=False, weight_quant=SignedWeightPerChannel, weight_bit_width=spec.w_bits,
    )


def _value(x: Any) -> torch.Tensor:
    return x.value if hasattr(x, "value") else x


# Tensors that are not the input of a conv (the residual stream, the pooled
# features, the logits) are quantized too, at 8 bits: a full-integer target
# (TFLite / Edge TPU) must give every tensor an int8 scale, and only a scale the
# model learned keeps the exported file computing what the model computes.
STREAM_BITS = 8


class MBConv(nn.Module):
    """Inverted residual: expand 1x1 -> depthwise kxk -> project 1x1 (linear), each conv
    fed by an activation quantizer at that conv's ``a_bits``. A residual block adds
    its quantized input to its 8-bit quantized output (``out_quant``), so the sum is
    an add of two integer tensors."""

    def __init__(self, plan: BlockPlan):
        super().__init__()
        e, d, p = plan.layers
        self.residual = plan.residual
        self.in_quant = act_quant(e.a_bits)
        self.expand = quant_conv(e)
        self.bn1 = nn.BatchNorm2d(e.cout)
        self.act1 = act_quant(d.a_bits, relu=True)
        self.dw = quant_conv(d)
        self.bn2 = nn.BatchNorm2d(d.cout)
        self.act2 = act_quant(p.a_bits, relu=True)
        self.project = quant_conv(p)
        self.bn3 = nn.BatchNorm2d(p.cout)
        if self.residual:
            self.out_quant = act_quant(STREAM_BITS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = self.in_quant(x)
        h = self.act1(self.bn1(self.expand(xq)))
        h = self.act2(self.bn2(self.dw(h)))
        h = self.bn3(self.project(h))
        return _value(xq) + _value(self.out_quant(h)) if self.residual else h

    def quant_layers(self, path: str, plan: BlockPlan, consumer: ActQuantizer) -> list[QuantLayer]:
        """Views of this block's three layers; ``path`` is the block's module path and
        ``consumer`` the quantizer that reads the block's output."""
        def q(name: str, kind: StreamKind | None = None) -> ActQuantizer:
            return ActQuantizer(f"{path}.{name}", getattr(self, name), kind)

        e, d, p = plan.layers
        residual = ResidualAdd(f"{path}.add", q("in_quant"), q("out_quant", "residual")) if self.residual else None
        return [
            QuantLayer(e, self.expand, q("in_quant"), q("act1"), self.bn1, f"{path}.bn1", f"{path}.act1", block=path),
            QuantLayer(d, self.dw, q("act1"), q("act2"), self.bn2, f"{path}.bn2", f"{path}.act2", block=path),
            QuantLayer(p, self.project, q("act2"), consumer, self.bn3, f"{path}.bn3", None, residual, block=path),
        ]


class QuantNet(nn.Module):
    """quantized input -> stem conv -> MBConv blocks -> 8-bit quantized global average pool
    -> quantized fc -> 8-bit quantized logits.

    Every quantized layer's module path is its plan name: ``stem``, then one module
    per stage (``s0``, ``s1``, ...) holding its blocks by position (``s1.b0``, ``s1.b2``
    when ``b1`` is skipped), each with ``expand``, ``dw`` and ``project``, and ``head``;
    so ``model.get_submodule(spec.name)`` is the layer ``spec`` describes.
    :meth:`quant_layers` gives a typed view of each of them.

    Checkpoints of the older layout (``blocks.{i}.*`` keys) load with a DeprecationWarning."""

    def __init__(self, plan: NetworkPlan):
        super().__init__()
        self.plan = plan
        self.input_quant = act_quant(plan.stem.a_bits)
        self.stem = quant_conv(plan.stem)
        self.stem_bn = nn.BatchNorm2d(plan.stem.cout)
        self.stem_act = nn.ReLU()
        # Registered here, between stem and pool: the state dict keeps execution order.
        self._block_paths = [block_path_of(b) for b in plan.blocks]
        self._stage_names: list[str] = []
        for path, block in zip(self._block_paths, plan.blocks):
            stage, name = split_block_path(path)
            if not self._stage_names or self._stage_names[-1] != stage:
                if stage in self._stage_names:
                    raise ValueError(f"the plan's blocks of stage {stage!r} are not contiguous")
                self.add_module(stage, nn.Sequential())
                self._stage_names.append(stage)
            getattr(self, stage).add_module(name, MBConv(block))
        self.pool_quant = act_quant(STREAM_BITS)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_quant = act_quant(plan.head.a_bits)
        self.head = qnn.QuantLinear(plan.head.cin, plan.head.cout, bias=True,
                                    weight_quant=SignedWeightPerChannel, weight_bit_width=plan.head.w_bits)
        self.logit_quant = act_quant(STREAM_BITS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(self.input_quant(x))))
        for stage in self._stage_names:
            x = getattr(self, stage)(x)
        x = torch.flatten(self.pool(_value(self.pool_quant(x))), 1)
        return _value(self.logit_quant(_value(self.head(self.head_quant(x)))))

    # ---- named views ---------------------------------------------------------------
    def named_blocks(self) -> list[tuple[str, MBConv]]:
        """``(module path, block)`` of every MBConv block, in execution order."""
        return [(path, self.get_submodule(path)) for path in self._block_paths]

    @property
    def blocks(self) -> tuple[MBConv, ...]:
        """The MBConv blocks in execution order (their module paths: :meth:`named_blocks`)."""
        return tuple(block for _, block in self.named_blocks())

    def quant_layers(self) -> list[QuantLayer]:
        """A typed view of every quantized layer (stem, expand/dw/project of each block, head),
        in execution order; ``layer.name`` is both its plan name and its module path."""
        blocks = self.named_blocks()
        pool = ActQuantizer("pool_quant", self.pool_quant, "pool")
        # the quantizer reading each block's output: the next block's input, or the pool's
        inputs = [ActQuantizer(f"{path}.in_quant", blk.in_quant) for path, blk in blocks]
        consumers = inputs[1:] + [pool]
        out = [QuantLayer(self.plan.stem, self.stem, ActQuantizer("input_quant", self.input_quant),
                          inputs[0] if inputs else pool, self.stem_bn, "stem_bn", "stem_act")]
        for (path, blk), plan, consumer in zip(blocks, self.plan.blocks, consumers):
            out += blk.quant_layers(path, plan, consumer)
        out.append(QuantLayer(self.plan.head, self.head, ActQuantizer("head_quant", self.head_quant),
                              ActQuantizer("logit_quant", self.logit_quant, "logits")))
        return out

    def stream_quants(self) -> list[ActQuantizer]:
        """The 8-bit quantizers that feed no weight layer, in execution order: each residual
        block's ``out_quant`` (kind ``"residual"``), ``pool_quant`` and ``logit_quant``."""
        layers = self.quant_layers()
        return ([l.residual.quant for l in layers if l.residual is not None]
                + [ActQuantizer("pool_quant", self.pool_quant, "pool"), layers[-1].output_quant])

    def upgrade_state_dict(self, state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """``state`` with old-layout keys (``blocks.{i}.*``) renamed to this model's module
        paths (in place; a DeprecationWarning when any was renamed). Loading does this itself;
        call it for code that reads a state dict by key."""
        rename_legacy_keys(state, prefix, legacy_quantnet_key(self._block_paths), "a QuantNet state dict")
        return state

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # runs before the children load from the same dict: the one place old keys are converted
        self.upgrade_state_dict(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)


def build_network(plan: NetworkPlan) -> QuantNet:
    """A freshly initialised Brevitas model for ``plan``."""
    return QuantNet(plan)


def build_model(space: Any, arch: Any) -> QuantNet:
    """``build_network(space.plan(arch))``: the Brevitas model of ``arch`` in ``space``.

    ``space`` is anything with a ``plan(arch) -> NetworkPlan`` method (a
    :class:`qnas.SearchSpace`); taking it by duck type keeps ``quant`` free of
    imports from the search side."""
    return build_network(space.plan(arch))
