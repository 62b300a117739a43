"""The weight-sharing supernet of a :class:`~qnas.space.SearchSpace`.

Elastic kernel, expand ratio, width (first-k channels), depth (first-d blocks
of a stage) and input resolution (the net is resolution-agnostic; feed it the
arch's resolution), plus switchable precision: float weights are shared, each
weight bit width has its own learned per-channel scales, each activation bit
width its own learned per-tensor scale, and batch norm is switchable per
(block position, expand ratio, weight bits of the conv before it), with a
separate one for float mode (the distillation teacher).

The standard mobile spaces (:mod:`qnas.presets`) build too: each stage's own
kernel/expand choices (fractional expand ratios slice ``mid_channels(cin, e)``
channels), blocks without expand conv (``expand1_no_conv``), squeeze-excite
as OFA's dynamic SE (its reduce/expand convs sliced with the block's mid
channels, 8-bit, its own quantizers), relu6/h-swish, the stem kernel, the
feature-mix conv and the pre-classifier linear (both elastic in width, at the
head's bits). A smaller depthwise kernel is the centre of the largest one,
through OFA's learned kernel transform matrices (``kernel_transform=True``,
the default) or as a plain centre crop (``kernel_transform=False``).

``extract(arch)`` returns the standalone Brevitas model that
:func:`qnas.quant.build.build_model` makes for the arch, loaded with the
sliced weights, the learned scales and the BN state of that configuration;
in eval mode it computes the same outputs as the supernet.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from qnas.arch import Arch
from qnas.errors import ArchError, ConfigError
from qnas.quant.build import STREAM_BITS, QuantNet, act_fn, build_model
from qnas.quant.naming import block_path, legacy_supernet_key, rename_legacy_keys, split_block_path
from qnas.quant.plan import BlockPlan, NetworkPlan
from qnas.quant.torch_device import training_layout
from qnas.space import SE_BITS, SearchSpace, make_divisible, mid_channels, se_channels
from qnas.supernet.layers import (
    DynamicQConv2d,
    DynamicQDepthwise,
    DynamicQLinear,
    DynamicSqueezeExcite,
    SwitchableBN,
)
from qnas.supernet.gates import PathGates
from qnas.supernet.quantize import RANGE_MODES, ActQuantizers
from qnas.supernet.sampling import kernels_and_expands


def _expand_key(expand: float) -> str:
    """An expand ratio as a module key: ``3`` -> ``3``, ``2.5`` -> ``2p5`` (keys cannot hold dots)."""
    if isinstance(expand, float) and expand.is_integer():
        expand = int(expand)
    return str(expand).replace(".", "p")


def _bn_key(expand: float | None, w_bits: int, quantize: bool, per_bits: bool) -> str:
    tail = ("w%d" % w_bits if per_bits else "q") if quantize else "f"
    return tail if expand is None else f"e{_expand_key(expand)}_{tail}"


class SuperMBConv(nn.Module):
    """One block position (stage ``stage``) of the supernet: elastic kernel and expand ratio
    over that stage's own ops (``space.stage_ops[stage]``), an expand conv only when one of
    them has one (``expand1_no_conv``), the stage's activation, and -- in a squeeze-excite
    stage -- a :class:`DynamicSqueezeExcite` on the block's mid channels.

    ``max_mid``: the most mid channels any (width, op) gives this position (default
    ``max_in x`` the largest expand ratio)."""

    def __init__(self, max_in: int, max_out: int, stride: int, space: SearchSpace, bn_per_bits: bool,
                 kernel_transform: bool, stage: int = 0, max_mid: int | None = None):
        super().__init__()
        c = space.config
        st = c.stages[stage]
        ops = space.stage_ops[stage]
        kernels, expands = kernels_and_expands(ops)
        with_conv = [e for e in expands if space.has_expand_conv(e)]
        max_mid = max_mid if max_mid is not None else max_in * max(expands)
        self.max_in, self.max_out, self.stride = max_in, max_out, stride
        act = None if st.act == "relu" else st.act
        w_tail = [f"w{b}" for b in c.w_bits] if bn_per_bits else ["q"]
        bn_keys = [f"e{_expand_key(e)}_{t}" for e in expands for t in w_tail + ["f"]]
        self.in_quant = ActQuantizers(c.a_bits)
        if with_conv:  # a stage whose every op is expand-less (MobileNetV2's first) has no expand conv
            self.expand = DynamicQConv2d(max_in, max_mid, 1, 1, c.w_bits)
            self.bn1 = SwitchableBN(max_mid, [f"e{_expand_key(e)}_{t}" for e in with_conv for t in w_tail + ["f"]])
            self.act1 = ActQuantizers(c.a_bits, relu=True, act=act)
        self.dw = DynamicQDepthwise(max_mid, kernels, stride, c.w_bits, kernel_transform)
        self.bn2 = SwitchableBN(max_mid, bn_keys)
        self.act2 = ActQuantizers(c.a_bits, relu=True, act=act)
        if st.se:
            self.se = DynamicSqueezeExcite(max_mid, se_channels(max_mid), SE_BITS, c.a_bits, STREAM_BITS)
        self.project = DynamicQConv2d(max_mid, max_out, 1, 1, c.w_bits)
        self.bn3 = SwitchableBN(max_out, bn_keys)
        self.out_quant = ActQuantizers([STREAM_BITS])  # used when the active block is residual
        self.plan: BlockPlan | None = None

    @property
    def has_se(self) -> bool:
        return hasattr(self, "se")

    def set_active(self, plan: BlockPlan | None, expand: float, quantize: bool, bn_per_bits: bool) -> None:
        self.plan = plan
        if plan is None:
            return
        e, d, p = plan.expand, plan.depthwise, plan.project
        quants = [(self.in_quant, (e or d).a_bits), (self.act2, p.a_bits), (self.out_quant, STREAM_BITS)]
        convs, bns = [(self.dw, d), (self.project, p)], [(self.bn2, d), (self.bn3, p)]
        if e is not None:
            quants.append((self.act1, d.a_bits))
            convs.append((self.expand, e))
            bns.append((self.bn1, e))
        for q, bits in quants:
            q.active_bits = bits if quantize else None
        for conv, spec in convs:
            conv.spec, conv.quantize = spec, quantize
        for bn, spec in bns:
            bn.key = _bn_key(expand, spec.w_bits, quantize, bn_per_bits)
        if plan.se is not None:
            self.se.set_active(plan.se, p.a_bits, STREAM_BITS, quantize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = self.in_quant(x)
        h = self.act1(self.bn1(self.expand(xq))) if self.plan.expand is not None else xq
        h = self.act2(self.bn2(self.dw(h)))
        if self.plan.se is not None:
            h = self.se(h)
        h = self.bn3(self.project(h))
        return xq + self.out_quant(h) if self.plan.residual else h

    def active_state(self) -> dict[str, torch.Tensor]:
        """State entries of :class:`qnas.quant.build.MBConv` for the active configuration: this
        block's children have the MBConv's names, so each child's state goes under its own name."""
        plan = self.plan
        e, d, p = plan.expand, plan.depthwise, plan.project
        channels = {self.bn2: d.cout, self.bn3: p.cout}
        skip = set()
        if e is not None:
            channels[self.bn1] = e.cout
        elif hasattr(self, "expand"):
            skip |= {self.expand, self.bn1, self.act1}
        if not plan.residual:
            skip.add(self.out_quant)
        out: dict[str, torch.Tensor] = {}
        for name, child in self.named_children():
            if child in skip:
                continue
            state = child.active_state(channels[child]) if child in channels else child.active_state()
            out.update((f"{name}.{k}", v) for k, v in state.items())
        return out

    def active_batchnorms(self) -> list[tuple[nn.BatchNorm2d, int]]:
        e, d, p = self.plan.expand, self.plan.depthwise, self.plan.project
        first = [] if e is None else [(self.bn1.active_bn, e.cout)]
        return first + [(self.bn2.active_bn, d.cout), (self.bn3.active_bn, p.cout)]

    def weight_layers(self) -> list[tuple[str, nn.Module | None, ActQuantizers]]:
        """(layer name in the block, weight layer, the activation quantizer feeding it), in execution
        order, for the active configuration. In a squeeze-excite block the project conv's input is
        quantized twice at its bits (``act2`` before the SE, ``se.out_quant`` after it): the second
        comes as an entry without weight layer. The SE convs (fixed bits) are not listed."""
        if self.plan.expand is not None:
            out = [("expand", self.expand, self.in_quant), ("dw", self.dw, self.act1)]
        else:
            out = [("dw", self.dw, self.in_quant)]
        out.append(("project", self.project, self.act2))
        if self.plan.se is not None:
            out.append(("project", None, self.se.out_quant))
        return out


@dataclass(frozen=True)
class ActiveConfig:
    arch: Arch
    quantize: bool
    plan: NetworkPlan


class Supernet(nn.Module):
    """One network holding every arch of ``space``; ``set_active(arch)`` selects one.

    >>> net = Supernet(SearchSpace())
    >>> logits = net.set_active(net.space.uniform(4, 4, largest=False))(torch.randn(2, 1, 12, 12))
    >>> model = net.extract(net.space.uniform(8, 8))   # a qnas.quant.build.QuantNet

    ``bn_per_bits``: switchable BN also per weight bit width (AdaBits-style);
    ``kernel_transform``: OFA's kernel transform matrices for smaller kernels;
    ``act_ranges``: how activation quantizers get their ranges in training --
    ``"batch"`` (default) from each batch's statistics, re-estimated per
    sub-network with its BN (:func:`~qnas.supernet.quantize.calibrating_ranges`),
    or ``"learned"`` thresholds (supernets trained before this option).
    The first ``set_active`` default is the largest 8-bit arch."""

    def __init__(self, space: SearchSpace | None = None, bn_per_bits: bool = True, kernel_transform: bool = True,
                 act_ranges: str = "batch"):
        super().__init__()
        if act_ranges not in RANGE_MODES:
            raise ConfigError(f"act_ranges must be one of {list(RANGE_MODES)}, got {act_ranges!r}")
        self.space = space or SearchSpace()
        self.bn_per_bits, self.kernel_transform, self.act_ranges = bn_per_bits, kernel_transform, act_ranges
        c = self.space.config
        maxes = [self.space.channels(w) for w in c.widths]
        max_stem = max(m[0] for m in maxes)
        max_stage = [max(m[1][i] for m in maxes) for i in range(len(c.stages))]
        # each block position's input channels at every width (its mid channels depend on them)
        geometry = [self.space.block_geometry(min(c.resolutions), w) for w in c.widths]
        self.input_quant = ActQuantizers(c.stem_head_a_bits)
        self.stem = DynamicQConv2d(c.in_channels, max_stem, c.stem_kernel, c.stem_stride, c.stem_head_w_bits)
        stem_keys = [f"w{b}" for b in c.stem_head_w_bits] if bn_per_bits else ["q"]
        self.stem_bn = SwitchableBN(max_stem, stem_keys + ["f"])
        self.stem_act = act_fn(c.stem_act)
        # one module per stage holding its block positions: s{si}.b{j}, the extracted QuantNet's names
        cin, n = max_stem, 0
        for si, s in enumerate(c.stages):
            stage = nn.ModuleDict()
            for j in range(max(s.depths)):
                stage_name, block_name = split_block_path(block_path(si, j))
                max_mid = max(mid_channels(g[n].cin, e) if self.space.has_expand_conv(e) else g[n].cin
                              for g in geometry for _, e in self.space.stage_ops[si])
                stage[block_name] = SuperMBConv(cin, max_stage[si], s.stride if j == 0 else 1, self.space,
                                                bn_per_bits, kernel_transform, si, max_mid)
                cin, n = max_stage[si], n + 1
            self.add_module(stage_name, stage)
        # The layers after the blocks read the last stage's output, or the stem's when every block can be skipped.
        features = max(max_stage[-1], max_stem)
        if c.mix_channels:  # 1x1 feature-mix conv before the pool, at the head's bits
            max_mix = max(make_divisible(c.mix_channels * w) for w in c.widths)
            self.mix_quant = ActQuantizers(c.stem_head_a_bits)
            self.mix = DynamicQConv2d(features, max_mix, 1, 1, c.stem_head_w_bits)
            self.mix_bn = SwitchableBN(max_mix, stem_keys + ["f"])
            self.mix_act = act_fn(c.mix_act)
            features = max_mix
        self.pool_quant = ActQuantizers([STREAM_BITS])
        self.pool = nn.AdaptiveAvgPool2d(1)
        if c.pre_head_channels:  # linear between the pool and the classifier, at the head's bits
            max_pre = max(make_divisible(c.pre_head_channels * w) for w in c.widths)
            self.pre_head_quant = ActQuantizers(c.stem_head_a_bits)
            self.pre_head = DynamicQLinear(features, max_pre, c.stem_head_w_bits)
            self.pre_head_act = act_fn(c.pre_head_act)
            features = max_pre
        self.head_quant = ActQuantizers(c.stem_head_a_bits)
        self.head = DynamicQLinear(features, c.num_classes, c.stem_head_w_bits)
        self.logit_quant = ActQuantizers([STREAM_BITS])
        self._active: ActiveConfig | None = None
        self._order: list[SuperMBConv] = []
        self._positions: list[tuple[str, SuperMBConv | None]] = []  # active positions, a skip as None
        self._gates: PathGates | None = None
        for m in self.modules():
            if isinstance(m, ActQuantizers):
                m.ranges = act_ranges
        self.set_active(self.space.uniform(max(c.w_bits), max(c.a_bits)))

    @classmethod
    def from_seed(cls, space: SearchSpace, seed: int, **options: Any) -> "Supernet":
        """A supernet whose initial weights depend only on ``seed``, in any process (the global
        random state is left as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(space, **options)

    # ---- configuration -------------------------------------------------
    @property
    def active_arch(self) -> Arch:
        return self._active.arch

    @property
    def quantize(self) -> bool:
        return self._active.quantize

    def set_active(self, arch: Arch, quantize: bool = True) -> "Supernet":
        """Run ``arch`` from now on; ``quantize=False`` runs it in float (weights and activations)."""
        plan = self.space.plan(arch)  # validates
        for _, blk in self.named_blocks():
            blk.plan = None
        order: list[SuperMBConv] = []
        positions: list[tuple[str, SuperMBConv | None]] = []
        plans = iter(plan.blocks)
        for si, genes in enumerate(arch.stages):
            for j, b in enumerate(genes):
                if b.is_skip:
                    positions.append((block_path(si, j), None))
                    continue
                blk = self.block(si, j)
                blk.set_active(next(plans), b.expand, quantize, self.bn_per_bits)
                order.append(blk)
                positions.append((block_path(si, j), blk))
        self.input_quant.active_bits = plan.stem.a_bits if quantize else None
        self.stem.spec, self.stem.quantize = plan.stem, quantize
        self.stem_bn.key = _bn_key(None, plan.stem.w_bits, quantize, self.bn_per_bits)
        self.head_quant.active_bits = plan.head.a_bits if quantize else None
        self.pool_quant.active_bits = self.logit_quant.active_bits = STREAM_BITS if quantize else None
        self.head.spec, self.head.quantize = plan.head, quantize
        if plan.mix is not None:
            self.mix_quant.active_bits = plan.mix.a_bits if quantize else None
            self.mix.spec, self.mix.quantize = plan.mix, quantize
            self.mix_bn.key = _bn_key(None, plan.mix.w_bits, quantize, self.bn_per_bits)
        if plan.pre_head is not None:
            self.pre_head_quant.active_bits = plan.pre_head.a_bits if quantize else None
            self.pre_head.spec, self.pre_head.quantize = plan.pre_head, quantize
        self._order, self._positions = order, positions
        self._active = ActiveConfig(arch, quantize, plan)
        return self

    @contextlib.contextmanager
    def gated(self, gates: PathGates) -> Iterator["Supernet"]:
        """Run the active arch through differentiable ``gates`` (:mod:`qnas.supernet.gates`): mixed
        bit widths per layer, op and depth gates per block position. Quantized mode only.

        The feature-mix conv and the pre-classifier linear run at the head's bits, so they mix
        with the head's gates; the squeeze-excite convs have fixed bits and are not gated."""
        if not self.quantize:
            raise ArchError("gates mix quantized bit widths; set_active(arch, quantize=True) first")
        layers: list[tuple[str, nn.Module | None, ActQuantizers]] = [
            ("stem", self.stem, self.input_quant), ("head", self.head, self.head_quant)]
        plan = self._active.plan
        if plan.mix is not None:
            layers.append(("head", self.mix, self.mix_quant))
        if plan.pre_head is not None:
            layers.append(("head", self.pre_head, self.pre_head_quant))
        layers += [(f"{path}.{name}", conv, q) for path, blk in self._positions if blk is not None
                   for name, conv, q in blk.weight_layers()]
        try:
            for name, conv, q in layers:
                if conv is not None:
                    conv.mix = gates.w.get(name)
                q.mix = gates.a.get(name)
            self._gates = gates
            yield self
        finally:
            self._gates = None
            for _, conv, q in layers:
                if conv is not None:
                    conv.mix = None
                q.mix = None

    def block(self, stage: int, index: int) -> SuperMBConv:
        """The block at position ``index`` of stage ``stage`` (module path ``s{stage}.b{index}``)."""
        return self.get_submodule(block_path(stage, index))

    def named_blocks(self) -> list[tuple[str, SuperMBConv]]:
        """``(module path, block)`` of every block position, active or not, stage by stage."""
        return [(f"{stage_name}.{name}", blk) for stage_name, stage in self.named_children()
                if isinstance(stage, nn.ModuleDict) for name, blk in stage.items()]

    @property
    def blocks(self) -> dict[str, SuperMBConv]:
        """Deprecated: the block positions by their old names (``s0_b1``); use :meth:`block`."""
        warnings.warn("Supernet.blocks is deprecated; use supernet.block(stage, index) or named_blocks() "
                      "(module paths s{stage}.b{index})", DeprecationWarning, stacklevel=2)
        return {path.replace(".", "_"): blk for path, blk in self.named_blocks()}

    # ---- computation ---------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(self.input_quant(x))))
        if self.training:  # channels-last from here (a 1-channel input cannot carry it through the stem)
            x = training_layout(x)
        if self._gates is None:
            for blk in self._order:
                x = blk(x)
        else:
            x = self._gated_blocks(x, self._gates)
        plan = self._active.plan
        if plan.mix is not None:
            x = self.mix_act(self.mix_bn(self.mix(self.mix_quant(x))))
        x = torch.flatten(self.pool(self.pool_quant(x)), 1)
        if plan.pre_head is not None:
            x = self.pre_head_act(self.pre_head(self.pre_head_quant(x)))
        return self.logit_quant(self.head(self.head_quant(x)))

    def _gated_blocks(self, x: torch.Tensor, gates: PathGates) -> torch.Tensor:
        for path, blk in self._positions:
            out = x if blk is None else blk(x)  # a skip passes its input
            if path in gates.op:
                out = gates.op[path] * out
            if path in gates.depth:  # the path vs. the identity, by P(depth > position)
                g = gates.depth[path]
                out = g * out + (1 - g) * x
            x = out
        return x

    # ---- extraction ----------------------------------------------------
    def active_state(self) -> dict[str, torch.Tensor]:
        """The state dict of the active arch's :class:`QuantNet` (quantized mode only)."""
        if not self.quantize:
            raise ArchError("the supernet is in float mode; set_active(arch, quantize=True) before extracting")
        plan = self._active.plan
        # The supernet's module tree is the QuantNet's: each active module's state goes under its own path.
        parts: list[tuple[str, dict[str, torch.Tensor]]] = []
        for name, child in self.named_children():
            if isinstance(child, nn.ModuleDict):  # a stage: its active block positions
                parts += [(f"{name}.{b}", blk.active_state()) for b, blk in child.items() if blk.plan is not None]
            elif child is self.stem_bn:
                parts.append((name, child.active_state(plan.stem.cout)))
            elif plan.mix is not None and child is self.mix_bn:
                parts.append((name, child.active_state(plan.mix.cout)))
            elif hasattr(child, "active_state"):
                parts.append((name, child.active_state()))
        return {f"{m}.{k}": v for m, sd in parts for k, v in sd.items()}

    def extract(self, arch: Arch | None = None) -> QuantNet:
        """The standalone Brevitas model of ``arch`` (default: the active one) with inherited
        weights, scales and BN state; its activation quantizers are past their
        stats-collection phase, so further QAT starts from the supernet's scales."""
        previous = self._active
        try:
            if arch is not None:
                self.set_active(arch, quantize=True)
            model = build_model(self.space, self.active_arch)
            model.load_state_dict(self.active_state(), strict=True)
        finally:
            self.set_active(previous.arch, previous.quantize)
        model.train(self.training)
        return model

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # checkpoints written before the s{si}.b{j} layout (keys blocks.s{si}_b{j}.*) still load
        rename_legacy_keys(state_dict, prefix, legacy_supernet_key, "a supernet state dict")
        super()._load_from_state_dict(state_dict, prefix, *args)

    def get_active_subnet(self) -> QuantNet:
        """OFA's name for :meth:`extract` of the active arch."""
        return self.extract()

    def active_batchnorms(self) -> list[tuple[nn.BatchNorm2d, int]]:
        """(BatchNorm2d, active channels) of the active configuration, in execution order."""
        plan = self._active.plan
        out = [(self.stem_bn.active_bn, plan.stem.cout)]
        for blk in self._order:
            out.extend(blk.active_batchnorms())
        if plan.mix is not None:
            out.append((self.mix_bn.active_bn, plan.mix.cout))
        return out

    def active_param_count(self) -> int:
        """Parameters of the active arch as its standalone model counts them (quantizer scales included)."""
        stats = ("running_mean", "running_var", "num_batches_tracked")
        return sum(v.numel() for k, v in self.active_state().items() if not k.endswith(stats))

    def reset_weight_scales(self) -> None:
        """Re-initialise every weight quantizer's scales from the current weights (after loading float weights)."""
        for m in self.modules():
            if isinstance(m, (DynamicQConv2d, DynamicQDepthwise, DynamicQLinear)):
                m.reset_weight_scales()

    @property
    def config(self) -> dict[str, Any]:
        return {"space": self.space.to_dict(), "bn_per_bits": self.bn_per_bits,
                "kernel_transform": self.kernel_transform, "act_ranges": self.act_ranges}

    def extra_repr(self) -> str:
        return f"active={self.active_arch.describe()!r}, quantize={self.quantize}"
