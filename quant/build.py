"""Build Brevitas models from a :class:`~qnas.quant.plan.NetworkPlan`."""
from __future__ import annotations

from typing import Any

import brevitas.nn as qnn
from brevitas.nn.quant_layer import QuantNonLinearActLayer as QuantNLAL
import torch
from torch import nn

from qnas.quant.layer_view import ActQuantizer, QuantLayer, ResidualAdd, StreamKind
from qnas.quant.naming import block_path_of, legacy_quantnet_key, rename_legacy_keys, split_block_path
from qnas.quant.plan import BlockPlan, LayerSpec, NetworkPlan, SEPlan
from qnas.quant.quantizers import SignedActPerTensor, SignedWeightPerChannel

#: the float activation modules of the plan's activation names (``act_fn``)
_ACT_FNS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish,
                                        "hsigmoid": nn.Hardsigmoid}


def act_fn(kind: str) -> nn.Module:
    """The float activation ``kind`` (relu, relu6, hswish, hsigmoid) as a module."""
    return _ACT_FNS[kind]()


def act_quant(bits: int, relu: bool = False, act: str | None = None) -> nn.Module:
    """The activation quantizer feeding a layer with ``a_bits == bits``; ``relu`` (or ``act="relu"``)
    applies a ReLU first (``QuantReLU``), ``act`` another activation (relu6, hswish, hsigmoid) first."""
    if act is None or act == "relu":
        cls = qnn.QuantReLU if (relu or act == "relu") else qnn.QuantIdentity
        return cls(act_quant=SignedActPerTensor, bit_width=bits, return_quant_tensor=True)
    layer = QuantNLAL(act_impl=_ACT_FNS[act], passthrough_act=False, input_quant=None,
                      act_quant=SignedActPerTensor, bit_width=bits, return_quant_tensor=True)
    if act == "relu6":
        # Brevitas leaves out a Hardtanh (ReLU6 is one) before a quantizer, counting on the quantizer's
        # clamp; a signed quantizer does not clamp at 0 and 6, so the ReLU6 goes back in -- also after
        # each load_state_dict, which rebuilds the quantizer
        _restore_relu6(layer)
        layer.register_load_state_dict_post_hook(_restore_relu6)
    return layer


def _restore_relu6(layer: nn.Module, incompatible_keys: Any = None) -> None:
    layer.act_quant.fused_activation_quant_proxy.activation_impl = nn.ReLU6()


def quant_conv(spec: LayerSpec) -> qnn.QuantConv2d:
    return qnn.QuantConv2d(
        spec.cin, spec.cout, spec.k, stride=spec.stride, padding=spec.k // 2, groups=spec.groups,
        bias=spec.bias, weight_quant=SignedWeightPerChannel, weight_bit_width=spec.w_bits,
    )


def quant_linear(spec: LayerSpec) -> qnn.QuantLinear:
    """A linear layer (``fc``) with a float bias and per-channel weights at ``spec.w_bits``."""
    return qnn.QuantLinear(spec.cin, spec.cout, bias=True, weight_quant=SignedWeightPerChannel,
                           weight_bit_width=spec.w_bits)


def _value(x: Any) -> torch.Tensor:
    return x.value if hasattr(x, "value") else x


# Tensors that are not the input of a conv (the residual stream, the pooled
# features, the logits) are quantized too, at 8 bits: a full-integer target
# (TFLite / Edge TPU) must give every tensor an int8 scale, and only a scale the
# model learned keeps the exported file computing what the model computes.
STREAM_BITS = 8


class SqueezeExcite(nn.Module):
    """Squeeze-excite with its own quantizers (torchvision MobileNetV3's order): global average
    pool -> ``in_quant`` -> 1x1 ``reduce`` conv (bias) -> ReLU + ``act`` -> 1x1 ``expand`` conv
    (bias) -> hard-sigmoid + ``gate`` -> multiply with the feature map -> ``out_quant`` (the
    quantizer feeding the block's project conv, at its ``a_bits``)."""

    def __init__(self, plan: SEPlan, out_bits: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.in_quant = act_quant(plan.reduce.a_bits)
        self.reduce = quant_conv(plan.reduce)
        self.act = act_quant(plan.expand.a_bits, relu=True)
        self.expand = quant_conv(plan.expand)
        self.gate = act_quant(STREAM_BITS, act="hsigmoid")
        self.out_quant = act_quant(out_bits)

    def forward(self, h: torch.Tensor) -> Any:
        s = self.act(self.reduce(self.in_quant(self.pool(h))))
        g = self.gate(_value(self.expand(s)))
        return self.out_quant(h * _value(g))


class MBConv(nn.Module):
    """Inverted residual: expand 1x1 -> depthwise kxk [-> squeeze-excite] -> project 1x1
    (linear), each conv fed by an activation quantizer at that conv's ``a_bits``. A residual
    block adds its quantized input to its 8-bit quantized output (``out_quant``), so the sum
    is an add of two integer tensors. Without expand conv (``plan.expand`` None) the depthwise
    conv reads ``in_quant``; ``plan.act`` is the activation of ``act1``/``act2``."""

    def __init__(self, plan: BlockPlan):
        super().__init__()
        e, d, p = plan.expand, plan.depthwise, plan.project
        act = None if plan.act == "relu" else plan.act
        self.residual = plan.residual
        self.in_quant = act_quant(e.a_bits if e is not None else d.a_bits)
        if e is not None:
            self.expand = quant_conv(e)
            self.bn1 = nn.BatchNorm2d(e.cout)
            self.act1 = act_quant(d.a_bits, relu=True, act=act)
        self.dw = quant_conv(d)
        self.bn2 = nn.BatchNorm2d(d.cout)
        self.act2 = act_quant(p.a_bits, relu=True, act=act)
        if plan.se is not None:
            self.se = SqueezeExcite(plan.se, p.a_bits)
        self.project = quant_conv(p)
        self.bn3 = nn.BatchNorm2d(p.cout)
        if self.residual:
            self.out_quant = act_quant(STREAM_BITS)

    @property
    def has_expand(self) -> bool:
        return hasattr(self, "expand")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = self.in_quant(x)
        h = self.act1(self.bn1(self.expand(xq))) if self.has_expand else xq
        h = self.act2(self.bn2(self.dw(h)))
        if hasattr(self, "se"):
            h = self.se(_value(h))
        h = self.bn3(self.project(h))
        return _value(xq) + _value(self.out_quant(h)) if self.residual else h

    def quant_layers(self, path: str, plan: BlockPlan, consumer: ActQuantizer) -> list[QuantLayer]:
        """Views of this block's weight layers; ``path`` is the block's module path and
        ``consumer`` the quantizer that reads the block's output."""
        def q(name: str, kind: StreamKind | None = None) -> ActQuantizer:
            return ActQuantizer(f"{path}.{name}", self.get_submodule(name), kind)

        e, d, p, act = plan.expand, plan.depthwise, plan.project, plan.act
        residual = ResidualAdd(f"{path}.add", q("in_quant"), q("out_quant", "residual")) if self.residual else None
        out: list[QuantLayer] = []
        if e is not None:
            out.append(QuantLayer(e, self.expand, q("in_quant"), q("act1"), self.bn1, f"{path}.bn1", f"{path}.act1",
                                  block=path, act=act))
        out.append(QuantLayer(d, self.dw, q("act1") if e is not None else q("in_quant"), q("act2"), self.bn2,
                              f"{path}.bn2", f"{path}.act2", block=path, act=act))
        project_in = q("act2")
        if plan.se is not None:
            se = plan.se
            out.append(QuantLayer(se.reduce, self.se.reduce, q("se.in_quant"), q("se.act"), None, None,
                                  f"{path}.se.act", block=path))
            out.append(QuantLayer(se.expand, self.se.expand, q("se.act"), q("se.gate"), None, None,
                                  f"{path}.se.gate", block=path, act="hsigmoid"))
            project_in = q("se.out_quant")
        out.append(QuantLayer(p, self.project, project_in, consumer, self.bn3, f"{path}.bn3", None, residual,
                              block=path))
        return out


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
        self.stem_act = act_fn(plan.stem_act)
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
        if plan.mix is not None:  # feature-mix 1x1 conv before the pool
            self.mix_quant = act_quant(plan.mix.a_bits)
            self.mix = quant_conv(plan.mix)
            self.mix_bn = nn.BatchNorm2d(plan.mix.cout)
            self.mix_act = act_fn(plan.mix_act)
        self.pool_quant = act_quant(STREAM_BITS)
        self.pool = nn.AdaptiveAvgPool2d(1)
        if plan.pre_head is not None:  # linear between the pool and the classifier
            self.pre_head_quant = act_quant(plan.pre_head.a_bits)
            self.pre_head = quant_linear(plan.pre_head)
            self.pre_head_act = act_fn(plan.pre_head_act)
        self.head_quant = act_quant(plan.head.a_bits)
        self.head = quant_linear(plan.head)
        self.logit_quant = act_quant(STREAM_BITS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(self.input_quant(x))))
        for stage in self._stage_names:
            x = getattr(self, stage)(x)
        if self.plan.mix is not None:
            x = self.mix_act(self.mix_bn(self.mix(self.mix_quant(x))))
        x = torch.flatten(self.pool(_value(self.pool_quant(x))), 1)
        if self.plan.pre_head is not None:
            x = self.pre_head_act(_value(self.pre_head(self.pre_head_quant(x))))
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
        plan = self.plan
        after = ActQuantizer("mix_quant", self.mix_quant) if plan.mix is not None else pool
        # the quantizer reading each block's output: the next block's input, or the mix conv's / the pool's
        inputs = [ActQuantizer(f"{path}.in_quant", blk.in_quant) for path, blk in blocks]
        consumers = inputs[1:] + [after]
        out = [QuantLayer(plan.stem, self.stem, ActQuantizer("input_quant", self.input_quant),
                          inputs[0] if inputs else after, self.stem_bn, "stem_bn", "stem_act", act=plan.stem_act)]
        for (path, blk), bplan, consumer in zip(blocks, plan.blocks, consumers):
            out += blk.quant_layers(path, bplan, consumer)
        if plan.mix is not None:
            out.append(QuantLayer(plan.mix, self.mix, after, pool, self.mix_bn, "mix_bn", "mix_act", act=plan.mix_act))
        head_in = ActQuantizer("head_quant", self.head_quant)
        if plan.pre_head is not None:
            out.append(QuantLayer(plan.pre_head, self.pre_head, ActQuantizer("pre_head_quant", self.pre_head_quant),
                                  head_in, relu="pre_head_act", act=plan.pre_head_act))
        out.append(QuantLayer(plan.head, self.head, head_in, ActQuantizer("logit_quant", self.logit_quant, "logits")))
        return out

    def stream_quants(self) -> list[ActQuantizer]:
        """The quantizers that feed no weight layer, in execution order: in a squeeze-excite block
        the depthwise output the SE pools and multiplies (``act2``, kind ``"se"``) and the SE gate
        (kind ``"gate"``, 8-bit); each residual block's ``out_quant`` (kind ``"residual"``, 8-bit),
        ``pool_quant`` and ``logit_quant`` (8-bit)."""
        layers = self.quant_layers()
        se_blocks = {b.name for b in self.plan.blocks if b.se is not None}
        out: list[ActQuantizer] = []
        for l in layers:
            if l.block in se_blocks and l.spec.op == "dwconv":
                out.append(ActQuantizer(l.output_quant.name, l.output_quant.module, "se"))
            elif l.block in se_blocks and l.spec.name.endswith(".se.expand"):
                out.append(ActQuantizer(l.output_quant.name, l.output_quant.module, "gate"))
            elif l.residual is not None:
                out.append(l.residual.quant)
        return out + [ActQuantizer("pool_quant", self.pool_quant, "pool"), layers[-1].output_quant]

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
