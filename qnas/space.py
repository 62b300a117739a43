"""The search space: defined once, validated, and the only place that knows
how an :class:`~qnas.arch.Arch` maps to layers."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qnas.arch import Arch, Block
from qnas.errors import ArchError, ConfigError
from qnas.genes import BLOCK_CONVS, GeneLayout, skip_allowed
from qnas.quant.naming import block_path
from qnas.quant.plan import ACTIVATIONS, BlockPlan, LayerSpec, NetworkPlan, SEPlan

#: the bit widths a space offers unless it says otherwise
DEFAULT_W_BITS = (2, 4, 8)
DEFAULT_A_BITS = (4, 8)
#: what a space may offer: weights any of 2-8 bits, activations any of 4-8 (every exporter stores a width in
#: the nearest container its format has, int8/int4/2-bit LUT, with the exact grid of the width; below 4-bit
#: activations the accuracy of these small networks collapses and no target runs them)
ALLOWED_W_BITS = tuple(range(2, 9))
ALLOWED_A_BITS = tuple(range(4, 9))
SUPPORTED_KERNELS = (3, 5, 7)
#: the largest input resolution a space may list (mobile spaces use 128-320)
MAX_RESOLUTION = 1024
#: the most channels of a layer and blocks of a stage a space may hold (the largest standard spaces use
#: 1,280 channels and 8 blocks): beyond that a model would not fit in memory, and 10**8 channels hung the search
MAX_CHANNELS = 16384
MAX_DEPTH = 100
#: as many classes as a data set may have (:data:`qnas.data.MAX_CLASSES`)
MAX_CLASSES = 100_000
SUPPORTED_STEM_KERNELS = (1, 3, 5, 7)
#: Bits of the squeeze-excite convs and of the quantizers inside it (not searched).
SE_BITS = 8

RngLike = "np.random.Generator | int | None"


@dataclass(frozen=True)
class StageConfig:
    """A stage of MBConv blocks: output channels at width 1.0, allowed depths, stride of its first block.

    ``kernels``/``expands`` (None: the space's lists) override the space-wide choices for this
    stage; ``act`` is the activation after its expand and depthwise convs (relu, relu6, hswish);
    ``se`` puts a squeeze-excite after the depthwise conv of each of its blocks."""

    channels: int
    depths: tuple[int, ...]
    stride: int = 1
    kernels: tuple[int, ...] | None = None
    expands: tuple[float, ...] | None = None
    act: str = "relu"
    se: bool = False


@dataclass(frozen=True)
class ExcludeRule:
    """A combination the space leaves out.

    Without bit fields it excludes every (kernel, expand) op matching all the given fields
    (None: any), in ``stage`` (None: every stage). With ``w_bits`` and/or ``a_bits`` it keeps the
    ops and excludes those bit widths instead, for the convs named by ``layer`` (``expand``,
    ``dw`` or ``project``; None: all three) of the matching blocks -- e.g. a latency table
    without 2-bit 7x7 depthwise entries: ``{kernel: 7, layer: dw, w_bits: 2}``. A gene vector
    that lands on an excluded width decodes to the nearest allowed one, preferring wider
    (:meth:`~qnas.genes.GeneLayout.decode`)."""

    stage: int | None = None
    kernel: int | None = None
    expand: float | None = None
    layer: str | None = None
    w_bits: int | None = None
    a_bits: int | None = None

    @property
    def on_bits(self) -> bool:
        """Whether the rule excludes bit widths (else whole ops)."""
        return self.w_bits is not None or self.a_bits is not None

    def matches(self, stage: int, kernel: int, expand: float) -> bool:
        """Whether the rule's stage/kernel/expand fields match a block."""
        return ((self.stage is None or self.stage == stage) and (self.kernel is None or self.kernel == kernel)
                and (self.expand is None or math.isclose(self.expand, expand)))

    def excludes_op(self, stage: int, kernel: int, expand: float) -> bool:
        return not self.on_bits and self.matches(stage, kernel, expand)

    def excludes_bits(self, stage: int, kernel: int, expand: float, layer: str, w_bits: int, a_bits: int) -> bool:
        """Whether conv ``layer`` of such a block may not run at ``(w_bits, a_bits)``."""
        return (self.on_bits and self.matches(stage, kernel, expand) and self.layer in (None, layer)
                and self.w_bits in (None, w_bits) and self.a_bits in (None, a_bits))

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _EXCLUDE_KEYS if getattr(self, k) is not None}

    def describe(self) -> str:
        return "{" + ", ".join(f"{k}: {v}" for k, v in self.to_dict().items()) + "}"


@dataclass(frozen=True)
class SpaceConfig:
    in_channels: int = 1
    num_classes: int = 10
    resolutions: tuple[int, ...] = (12, 16, 20)
    widths: tuple[float, ...] = (0.5, 0.75, 1.0)
    stem_channels: int = 16
    stem_stride: int = 2
    stages: tuple[StageConfig, ...] = (
        StageConfig(16, (1, 2), 1),
        StageConfig(24, (1, 2, 3), 2),
        StageConfig(32, (1, 2, 3), 2),
        StageConfig(64, (1, 2), 2),
    )
    kernels: tuple[int, ...] = SUPPORTED_KERNELS
    expands: tuple[int, ...] = (3, 4, 6)
    allow_skip: bool = False
    w_bits: tuple[int, ...] = DEFAULT_W_BITS
    a_bits: tuple[int, ...] = DEFAULT_A_BITS
    # First and last layer stay 8-bit unless the space widens these.
    stem_head_w_bits: tuple[int, ...] = (8,)
    stem_head_a_bits: tuple[int, ...] = (8,)
    # ---- standard mobile spaces (all off by default) ----
    stem_kernel: int = 3
    stem_act: str = "relu"
    #: an expand ratio of 1 has no expand conv (MobileNetV2's first block); else it builds a 1x1 conv
    expand1_no_conv: bool = False
    #: channels (at width 1.0) of a 1x1 feature-mix conv before the pool (MobileNetV2's 1280); 0: none
    mix_channels: int = 0
    mix_act: str = "relu"
    #: features (at width 1.0) of a linear layer between the pool and the classifier (MobileNetV3's 1280); 0: none
    pre_head_channels: int = 0
    pre_head_act: str = "hswish"
    #: (kernel, expand) ops, or bit widths of some blocks' convs, the space leaves out
    exclude: tuple[ExcludeRule, ...] = ()


_FIELDS = {f for f in SpaceConfig.__dataclass_fields__}
#: fields written by :meth:`SearchSpace.to_dict` only when they differ from the default
_OPTIONAL_FIELDS = ("stem_kernel", "stem_act", "expand1_no_conv", "mix_channels", "mix_act",
                    "pre_head_channels", "pre_head_act", "exclude")
_STAGE_KEYS = ("channels", "depths", "stride", "kernels", "expands", "act", "se")
_EXCLUDE_KEYS = ("stage", "kernel", "expand", "layer", "w_bits", "a_bits")


@dataclass(frozen=True)
class BlockGeometry:
    """Where block position ``pos`` of stage ``stage`` sits at one (resolution, width).

    It is the same in every arch of the space: a stage's first block is never
    skipped, so a block's input channels depend only on the width and its
    position, and its spatial size only on the resolution and the strides of
    the stage-first blocks."""

    stage: int
    pos: int
    cin: int
    cout: int
    hw_in: int
    hw_out: int
    stride: int

    @property
    def name(self) -> str:
        """The block's name, also its module path in models (``s1.b0``)."""
        return block_path(self.stage, self.pos)

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout


def make_divisible(v: float, divisor: int = 8) -> int:
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


def make_divisible_tv(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: :func:`make_divisible` that never rounds down by more than 10 %."""
    new = make_divisible(v, divisor)
    return new + divisor if new < 0.9 * v else new


def mid_channels(cin: int, expand: float) -> int:
    """Channels inside a block: ``cin * expand`` for an integer ratio (exact, as before), else rounded
    to a multiple of 8 (MobileNetV3's 2.5 and 2.3 of 80 channels: 200 and 184)."""
    if isinstance(expand, int):
        return cin * expand
    return make_divisible(cin * expand)


def se_channels(mid: int) -> int:
    """Squeeze channels of a squeeze-excite on ``mid`` channels (torchvision MobileNetV3, OFA)."""
    return make_divisible_tv(mid // 4)


def _rng(rng: Any) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


class SearchSpace:
    """MobileNetV2/ProxylessNAS-style space of MBConv stages with per-layer bit widths.

    >>> space = SearchSpace()                 # the embedded digits default
    >>> arch = space.sample(0)
    >>> space.decode(space.encode(arch)) == arch
    True
    """

    def __init__(self, config: SpaceConfig | None = None):
        self.config = config or SpaceConfig()
        _validate_config(self.config)
        c = self.config
        #: the space-wide (kernel, expand) pairs
        self.ops: tuple[tuple[int, Any], ...] = tuple((k, e) for k in c.kernels for e in c.expands)
        #: each stage's (kernel, expand) pairs: its own kernel/expand lists (else the space's), minus exclusions
        self.stage_ops: tuple[tuple[tuple[int, Any], ...], ...] = tuple(
            tuple((k, e) for k in (s.kernels or c.kernels) for e in (s.expands or c.expands)
                  if not any(r.excludes_op(si, k, e) for r in c.exclude))
            for si, s in enumerate(c.stages))
        for si, ops in enumerate(self.stage_ops):
            if not ops:
                raise ConfigError(f"stage {si} has no (kernel, expand) op left after the exclude rules; relax them")
        #: the gene vector's layout (:class:`~qnas.genes.GeneLayout`): which integer means what
        self.genes = GeneLayout(c, self.ops, self.stage_ops)
        self._geometry: dict[tuple[int, float], list[BlockGeometry]] = {}

    # ---- construction -------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchSpace":
        if not isinstance(d, dict):
            raise ConfigError(f"a search-space config must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - _FIELDS)
        if unknown:
            raise ConfigError(f"unknown search-space key(s) {unknown}; valid keys: {sorted(_FIELDS)}")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k == "stages":
                if not isinstance(v, list) or not v:
                    raise ConfigError("stages must be a non-empty list of {channels, depths, stride}")
                kw[k] = tuple(_stage_from_dict(s, i) for i, s in enumerate(v))
            elif k == "exclude":
                if not isinstance(v, list):
                    raise ConfigError(f"exclude must be a list of {{stage, kernel, expand, layer, w_bits, a_bits}} mappings, got {v!r}")
                kw[k] = tuple(_exclude_from_dict(r, i) for i, r in enumerate(v))
            elif k == "expands":
                kw[k] = tuple(_number(x) for x in _tuple(v, k))
            elif isinstance(SpaceConfig.__dataclass_fields__[k].default, tuple):
                kw[k] = _tuple(v, k)
            else:
                kw[k] = v
        return cls(SpaceConfig(**kw))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SearchSpace":
        """The space of a YAML file, or of a preset name (:mod:`qnas.presets`: ``mobilenetv2``,
        ``mobilenetv3-large``, ``ofa-mbv3``, ``proxyless-mobile``, ``cifar-small``) where no such
        file exists."""
        import yaml

        from qnas import presets

        p = Path(path)
        if not p.is_file() and presets.is_preset_name(str(path)):
            return presets.preset_space(str(path))
        if not p.is_file():
            raise ConfigError(f"search-space file not found: {p} (nor a preset: {', '.join(presets.PRESETS)})")
        try:
            d = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{p} is not a text file (not UTF-8); give a search-space YAML") from None
        except RecursionError:
            raise ConfigError(f"{p} is nested too deeply for a search-space YAML") from None
        return cls.from_dict(d or {})

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON/YAML data; the options of the standard mobile spaces appear only
        when they differ from their defaults (so the default space's dict is what it always was)."""
        c = self.config
        default = SpaceConfig()
        d = asdict(c)
        d["stages"] = [_stage_to_dict(s) for s in c.stages]
        d["exclude"] = [r.to_dict() for r in c.exclude]
        for k in _OPTIONAL_FIELDS:
            if getattr(c, k) == getattr(default, k):
                del d[k]
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    # ---- genotype operations -----------------------------------------
    def channels(self, width: float) -> tuple[int, list[int]]:
        """Stem and per-stage output channels at a width multiplier."""
        return make_divisible(self.config.stem_channels * width), [make_divisible(s.channels * width) for s in self.config.stages]

    def _check_bit_rules(self, where: str, stage: int, b: Block) -> None:
        for name, w, a in zip(BLOCK_CONVS, b.w_bits, b.a_bits):
            if name == "expand" and not self.has_expand_conv(b.expand):
                continue
            for r in self.config.exclude:
                if r.excludes_bits(stage, b.kernel, b.expand, name, w, a):
                    raise ArchError(f"{where} (k{b.kernel}e{b.expand}) runs its {name} conv at W{w}A{a}, which the "
                                    f"space excludes ({r.describe()}); choose other bits for that conv")

    def skip_allowed(self, stage: int, pos: int) -> bool:
        """Whether block ``pos`` of ``stage`` may be a skip (never a stage's first block)."""
        return skip_allowed(self.config, stage, pos)

    def sample(self, rng: Any = None) -> Arch:
        """A uniformly random arch (each gene drawn independently)."""
        g = _rng(rng)
        return self.decode(self.genes.fill(lambda gene: g.integers(0, gene.n_choices)))

    def mutate(self, arch: Arch, rng: Any = None, prob: float | None = None) -> Arch:
        """Resample each gene with probability ``prob`` (default 1/#genes); never returns ``arch`` itself."""
        g = _rng(rng)
        vec = self.encode(arch)
        p = prob if prob is not None else 1.0 / len(vec)
        for _ in range(100):
            new = [int(g.integers(0, gene.n_choices)) if g.random() < p else v for v, gene in zip(vec, self.genes.genes)]
            child = self.decode(new)
            if child != arch:
                return child
            p = max(p, 2.0 / len(vec))
        return self.sample(g)

    def crossover(self, a: Arch, b: Arch, rng: Any = None) -> Arch:
        """Uniform crossover of the two parents' gene vectors."""
        g = _rng(rng)
        va, vb = self.encode(a), self.encode(b)
        return self.decode([x if g.random() < 0.5 else y for x, y in zip(va, vb)])

    def bounds(self) -> list[int]:
        """Inclusive upper bound of each position of :meth:`encode`'s vector (lower bounds are 0)."""
        return self.genes.bounds()

    def encode(self, arch: Arch) -> list[int]:
        """Fixed-length integer vector (indices into the choice lists, :attr:`genes` layout);
        inactive blocks encode as 0."""
        self.validate(arch)
        return self.genes.encode(arch)

    def decode(self, vec: Sequence[int]) -> Arch:
        """Inverse of :meth:`encode`; raises :class:`ArchError` on a wrong length or out-of-range gene."""
        return self.genes.decode(vec)

    def canonical(self, vec: Sequence[int]) -> list[int]:
        """``encode(decode(vec))``: genes that do not change the arch set to 0."""
        return self.genes.canonical(vec)

    def validate(self, arch: Arch) -> Arch:
        """Raise :class:`ArchError` naming the first field this space does not allow."""
        c = self.config
        if not isinstance(arch, Arch):
            raise ArchError(f"expected an Arch, got {type(arch).__name__}")
        _check("resolution", arch.resolution, c.resolutions)
        if not any(math.isclose(arch.width, w) for w in c.widths):
            raise ArchError(f"width={arch.width} is not allowed; choose one of {list(c.widths)}")
        _check("stem.w_bits", arch.stem_bits[0], c.stem_head_w_bits)
        _check("stem.a_bits", arch.stem_bits[1], c.stem_head_a_bits)
        _check("head.w_bits", arch.head_bits[0], c.stem_head_w_bits)
        _check("head.a_bits", arch.head_bits[1], c.stem_head_a_bits)
        if len(arch.stages) != len(c.stages):
            raise ArchError(f"arch has {len(arch.stages)} stages, the space has {len(c.stages)}")
        for i, (s, blocks) in enumerate(zip(c.stages, arch.stages)):
            _check(f"stages[{i}].depth", len(blocks), s.depths)
            for j, b in enumerate(blocks):
                where = f"stages[{i}][{j}]"
                if b.is_skip:
                    if not self.skip_allowed(i, j):
                        raise ArchError(f"{where} is a skip, allowed only when allow_skip is set and not on a stage's first block")
                    continue
                _check(f"{where}.kernel", b.kernel, s.kernels or c.kernels)
                _check(f"{where}.expand", b.expand, s.expands or c.expands)
                if (b.kernel, b.expand) not in self.stage_ops[i]:
                    raise ArchError(f"{where} is k{b.kernel}e{b.expand}, a combination the space excludes; "
                                    f"choose one of {['k%se%s' % op for op in self.stage_ops[i]]}")
                if len(b.w_bits) != 3 or len(b.a_bits) != 3:
                    raise ArchError(f"{where} needs 3 weight and 3 activation bit widths (expand, depthwise, project)")
                for n, w in enumerate(b.w_bits):
                    _check(f"{where}.w_bits[{n}]", w, c.w_bits)
                for n, a in enumerate(b.a_bits):
                    _check(f"{where}.a_bits[{n}]", a, c.a_bits)
                if self.genes.has_bit_rules:
                    self._check_bit_rules(where, i, b)
        return arch

    def uniform(self, w_bits: int = 8, a_bits: int = 8, largest: bool = True, resolution: int | None = None) -> Arch:
        """The largest (or smallest) arch with every searchable layer at one bit width (a conv whose
        width the exclude rules leave out: the nearest allowed one, as a gene vector decodes)."""
        c = self.config
        pick = max if largest else min
        ops = [pick(o, key=lambda ke: (ke[1], ke[0])) for o in self.stage_ops]  # largest expand, then kernel
        stages = tuple(tuple(Block(*ops[si], (w_bits,) * 3, (a_bits,) * 3) for _ in range(pick(s.depths)))
                       for si, s in enumerate(c.stages))
        sh = (max(c.stem_head_w_bits), max(c.stem_head_a_bits))
        arch = Arch(resolution or pick(c.resolutions), pick(c.widths), stages, sh, sh)
        if self.genes.has_bit_rules:
            arch = self.genes.decode(self.genes.encode(arch))
        return self.validate(arch)

    # ---- arch -> layers ----------------------------------------------
    def block_geometry(self, resolution: int, width: float) -> list[BlockGeometry]:
        """Every block position (in gene order) at ``resolution`` and ``width``."""
        key = (resolution, float(width))
        if key not in self._geometry:
            c = self.config
            stem_c, stage_c = self.channels(width)
            hw, cin = _out(resolution, c.stem_stride), stem_c
            out = []
            for si, s in enumerate(c.stages):
                for j in range(max(s.depths)):
                    stride = s.stride if j == 0 else 1
                    ho = _out(hw, stride)
                    out.append(BlockGeometry(si, j, cin, stage_c[si], hw, ho, stride))
                    hw, cin = ho, stage_c[si]
            self._geometry[key] = out
        return self._geometry[key]

    def stem_layer(self, resolution: int, width: float, bits: tuple[int, int]) -> LayerSpec:
        c = self.config
        return LayerSpec("stem", "conv", c.in_channels, self.channels(width)[0], resolution,
                         _out(resolution, c.stem_stride), c.stem_kernel, c.stem_stride, 1, *bits)

    def head_layer(self, cin: int, bits: tuple[int, int]) -> LayerSpec:
        return LayerSpec("head", "fc", cin, self.config.num_classes, 1, 1, 1, 1, 1, *bits)

    def mix_layer(self, cin: int, hw: int, width: float, bits: tuple[int, int]) -> LayerSpec | None:
        """The 1x1 feature-mix conv before the pool (``mix``), at the head's bits; None when the space has none."""
        c = self.config
        if not c.mix_channels:
            return None
        return LayerSpec("mix", "pwconv", cin, make_divisible(c.mix_channels * width), hw, hw, 1, 1, 1, *bits)

    def pre_head_layer(self, cin: int, width: float, bits: tuple[int, int]) -> LayerSpec | None:
        """The linear layer between the pool and the classifier (``pre_head``), at the head's bits; None
        when the space has none."""
        c = self.config
        if not c.pre_head_channels:
            return None
        return LayerSpec("pre_head", "fc", cin, make_divisible(c.pre_head_channels * width), 1, 1, 1, 1, 1, *bits)

    def has_expand_conv(self, expand: float) -> bool:
        """Whether a block of this expand ratio has an expand conv (not at ratio 1 with ``expand1_no_conv``)."""
        return not (self.config.expand1_no_conv and expand == 1)

    def block_layers(self, geo: BlockGeometry, block: Block) -> BlockPlan:
        """The layers of a (non-skipped) MBConv ``block`` at position ``geo``: expand 1x1 (none at
        expand ratio 1 when the space says ``expand1_no_conv``) -> depthwise kxk -> squeeze-excite
        (in an ``se`` stage; 8-bit) -> project 1x1, each with its own bits."""
        stage = self.config.stages[geo.stage]
        mid = mid_channels(geo.cin, block.expand)
        n, (we, wd, wp), (ae, ad, ap) = geo.name, block.w_bits, block.a_bits
        if self.has_expand_conv(block.expand):
            expand: LayerSpec | None = LayerSpec(f"{n}.expand", "pwconv", geo.cin, mid, geo.hw_in, geo.hw_in, 1, 1, 1, we, ae)
        else:
            expand, mid = None, geo.cin
        se = None
        if stage.se:
            sq, hw = se_channels(mid), geo.hw_out
            se = SEPlan(
                LayerSpec(f"{n}.se.pool", "pool", mid, mid, hw, 1, w_bits=ap, a_bits=ap),
                LayerSpec(f"{n}.se.reduce", "pwconv", mid, sq, 1, 1, 1, 1, 1, SE_BITS, SE_BITS, bias=True),
                LayerSpec(f"{n}.se.expand", "pwconv", sq, mid, 1, 1, 1, 1, 1, SE_BITS, SE_BITS, bias=True),
                LayerSpec(f"{n}.se.mul", "mul", mid, mid, hw, hw, w_bits=ap, a_bits=ap),
            )
        return BlockPlan(
            expand,
            LayerSpec(f"{n}.dw", "dwconv", mid, mid, geo.hw_in, geo.hw_out, block.kernel, geo.stride, mid, wd, ad),
            LayerSpec(f"{n}.project", "pwconv", mid, geo.cout, geo.hw_out, geo.hw_out, 1, 1, 1, wp, ap),
            residual=geo.residual, act=stage.act, se=se,
        )

    def plan(self, arch: Arch) -> NetworkPlan:
        """The layer-by-layer plan (shapes and bits) that builders, cost counters and latency models read."""
        self.validate(arch)
        c = self.config
        stem = self.stem_layer(arch.resolution, arch.width, arch.stem_bits)
        blocks: list[BlockPlan] = []
        for geo in self.block_geometry(arch.resolution, arch.width):
            genes = arch.stages[geo.stage]
            if geo.pos < len(genes) and not genes[geo.pos].is_skip:
                blocks.append(self.block_layers(geo, genes[geo.pos]))
        last = blocks[-1].project if blocks else stem
        mix = self.mix_layer(last.cout, last.hw_out, arch.width, arch.head_bits)
        pre = self.pre_head_layer((mix or last).cout, arch.width, arch.head_bits)
        head = self.head_layer((pre or mix or last).cout, arch.head_bits)
        return NetworkPlan(c.in_channels, arch.resolution, c.num_classes, stem, tuple(blocks), head,
                           mix=mix, pre_head=pre, stem_act=c.stem_act, mix_act=c.mix_act, pre_head_act=c.pre_head_act)

    def size(self) -> float:
        """Number of distinct archs (log10), for reports."""
        c = self.config
        total = math.log10(len(c.resolutions) * len(c.widths) * (len(c.stem_head_w_bits) * len(c.stem_head_a_bits)) ** 2)
        for si, s in enumerate(c.stages):
            # an op without expand conv has two bit genes fewer that matter
            per_block = sum(len(c.w_bits) ** (3 if self.has_expand_conv(e) else 2)
                            * len(c.a_bits) ** (3 if self.has_expand_conv(e) else 2) for _, e in self.stage_ops[si])
            count = 0
            for d in s.depths:
                n = 1
                for j in range(d):  # a skip is one more choice, bit-free, and never a stage's first block
                    n *= per_block + (1 if self.skip_allowed(si, j) else 0)
                count += n
            total += math.log10(count)
        return total

    def __repr__(self) -> str:
        return f"SearchSpace(~10^{self.size():.1f} archs, {len(self.config.stages)} stages)"


def _out(hw: int, stride: int) -> int:
    return (hw + stride - 1) // stride


def _check(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ArchError(f"{name}={value} is not allowed; choose one of {list(allowed)}")


def _tuple(v: Any, name: str) -> tuple:
    if not isinstance(v, (list, tuple)) or not v:
        raise ConfigError(f"{name} must be a non-empty list, got {v!r}")
    return tuple(v)


def _number(v: Any) -> Any:
    """An integral float (``6.0``) as an int, so that ``6.0`` and ``6`` are the same expand ratio."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _stage_from_dict(s: Any, i: int) -> StageConfig:
    if not isinstance(s, dict) or set(s) - set(_STAGE_KEYS) or "channels" not in s or "depths" not in s:
        raise ConfigError(f"stages[{i}] must be a mapping with channels, depths and optional "
                          f"{', '.join(_STAGE_KEYS[2:])}, got {s!r}")
    kernels = _tuple(s["kernels"], f"stages[{i}].kernels") if s.get("kernels") is not None else None
    expands = (tuple(_number(x) for x in _tuple(s["expands"], f"stages[{i}].expands"))
               if s.get("expands") is not None else None)
    return StageConfig(s["channels"], _tuple(s["depths"], f"stages[{i}].depths"), s.get("stride", 1),
                       kernels, expands, s.get("act", "relu"), s.get("se", False))


def _stage_to_dict(s: StageConfig) -> dict[str, Any]:
    d: dict[str, Any] = {"channels": s.channels, "depths": list(s.depths), "stride": s.stride}
    if s.kernels is not None:
        d["kernels"] = list(s.kernels)
    if s.expands is not None:
        d["expands"] = list(s.expands)
    if s.act != "relu":
        d["act"] = s.act
    if s.se:
        d["se"] = True
    return d


def _exclude_from_dict(r: Any, i: int) -> ExcludeRule:
    if not isinstance(r, dict) or not r or set(r) - set(_EXCLUDE_KEYS):
        raise ConfigError(f"exclude[{i}] must be a mapping of some of {list(_EXCLUDE_KEYS)}, got {r!r}")
    return ExcludeRule(r.get("stage"), r.get("kernel"), _number(r["expand"]) if "expand" in r else None,
                       r.get("layer"), r.get("w_bits"), r.get("a_bits"))


def _validate_config(c: SpaceConfig) -> None:
    def expand_list(name: str, vals: Sequence[Any]) -> None:
        if all(isinstance(x, int) for x in vals):
            ints(name, vals)
        elif not vals or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x < 1 for x in vals):
            raise ConfigError(f"{name} must be a non-empty list of numbers >= 1, got {list(vals)}")
        elif len(set(vals)) != len(vals):
            raise ConfigError(f"{name} has duplicates: {list(vals)}")

    def act(name: str, v: Any) -> None:
        if v not in ACTIVATIONS:
            raise ConfigError(f"{name} must be one of {list(ACTIVATIONS)}, got {v!r}")

    def ints(name: str, vals: Sequence[Any], lo: int = 1) -> None:
        if not vals or any(isinstance(x, bool) or not isinstance(x, int) or x < lo for x in vals):
            raise ConfigError(f"{name} must be a non-empty list of integers >= {lo}, got {list(vals)}")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"{name} has duplicates: {list(vals)}")

    for name, allowed in (("w_bits", ALLOWED_W_BITS), ("a_bits", ALLOWED_A_BITS),
                          ("stem_head_w_bits", ALLOWED_W_BITS), ("stem_head_a_bits", ALLOWED_A_BITS)):
        vals = getattr(c, name)
        ints(name, vals)
        bad = [b for b in vals if b not in allowed]
        if bad:
            raise ConfigError(f"{name} contains unsupported bit width(s) {bad}; a space may offer any of "
                              f"{allowed[0]}-{allowed[-1]} bits")
    ints("kernels", c.kernels)
    bad = [k for k in c.kernels if k not in SUPPORTED_KERNELS]
    if bad:
        raise ConfigError(f"kernels contains {bad}; supported depthwise kernels: {list(SUPPORTED_KERNELS)}")
    expand_list("expands", c.expands)
    ints("resolutions", c.resolutions, lo=8)
    if max(c.resolutions) > MAX_RESOLUTION:  # every image is resized to it: 100000 px would need terabytes
        raise ConfigError(f"resolutions must be at most {MAX_RESOLUTION} px, got {max(c.resolutions)}")
    if not c.widths or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 4 for w in c.widths):
        raise ConfigError(f"widths must be a non-empty list of numbers in (0, 4], got {list(c.widths)}")
    for name, most in (("in_channels", MAX_CHANNELS), ("num_classes", MAX_CLASSES), ("stem_channels", MAX_CHANNELS)):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= most:
            raise ConfigError(f"{name} must be an integer from 1 to {most}, got {v!r}")
    if c.num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {c.num_classes}")
    if c.stem_stride not in (1, 2):
        raise ConfigError(f"stem_stride must be 1 or 2, got {c.stem_stride!r}")
    if not isinstance(c.allow_skip, bool):
        raise ConfigError(f"allow_skip must be true or false, got {c.allow_skip!r}")
    if not c.stages:
        raise ConfigError("stages must list at least one stage")
    for i, s in enumerate(c.stages):
        if isinstance(s.channels, bool) or not isinstance(s.channels, int) or not 1 <= s.channels <= MAX_CHANNELS:
            raise ConfigError(f"stages[{i}].channels must be an integer from 1 to {MAX_CHANNELS}, got {s.channels!r}")
        ints(f"stages[{i}].depths", s.depths)
        if max(s.depths) > MAX_DEPTH:
            raise ConfigError(f"stages[{i}].depths must be at most {MAX_DEPTH} blocks, got {max(s.depths)}")
        if s.stride not in (1, 2):
            raise ConfigError(f"stages[{i}].stride must be 1 or 2, got {s.stride!r}")
        if s.kernels is not None:
            ints(f"stages[{i}].kernels", s.kernels)
            bad = [k for k in s.kernels if k not in SUPPORTED_KERNELS]
            if bad:
                raise ConfigError(f"stages[{i}].kernels contains {bad}; supported depthwise kernels: {list(SUPPORTED_KERNELS)}")
        if s.expands is not None:
            expand_list(f"stages[{i}].expands", s.expands)
        act(f"stages[{i}].act", s.act)
        if not isinstance(s.se, bool):
            raise ConfigError(f"stages[{i}].se must be true or false, got {s.se!r}")
    if c.stem_kernel not in SUPPORTED_STEM_KERNELS:
        raise ConfigError(f"stem_kernel must be one of {list(SUPPORTED_STEM_KERNELS)}, got {c.stem_kernel!r}")
    for name in ("stem_act", "mix_act", "pre_head_act"):
        act(name, getattr(c, name))
    for name in ("mix_channels", "pre_head_channels"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_CHANNELS:
            raise ConfigError(f"{name} must be an integer from 0 (none) to {MAX_CHANNELS}, got {v!r}")
    if not isinstance(c.expand1_no_conv, bool):
        raise ConfigError(f"expand1_no_conv must be true or false, got {c.expand1_no_conv!r}")
    for i, r in enumerate(c.exclude):
        if r.stage is not None and not (isinstance(r.stage, int) and 0 <= r.stage < len(c.stages)):
            raise ConfigError(f"exclude[{i}].stage must be a stage index 0..{len(c.stages) - 1}, got {r.stage!r}")
        if r.layer is not None and r.layer not in BLOCK_CONVS:
            raise ConfigError(f"exclude[{i}].layer must be one of {list(BLOCK_CONVS)}, got {r.layer!r}")
        if r.layer is not None and not r.on_bits:
            raise ConfigError(f"exclude[{i}] names a layer but no w_bits/a_bits; a layer rule excludes bit widths, "
                              "e.g. {kernel: 7, layer: dw, w_bits: 2}")
        if r.w_bits is not None and r.w_bits not in c.w_bits:
            raise ConfigError(f"exclude[{i}].w_bits={r.w_bits!r} is not one of the space's w_bits {list(c.w_bits)}")
        if r.a_bits is not None and r.a_bits not in c.a_bits:
            raise ConfigError(f"exclude[{i}].a_bits={r.a_bits!r} is not one of the space's a_bits {list(c.a_bits)}")
