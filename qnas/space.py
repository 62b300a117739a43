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
from qnas.genes import GeneLayout, skip_allowed
from qnas.quant.naming import block_path
from qnas.quant.plan import BlockPlan, LayerSpec, NetworkPlan

SUPPORTED_W_BITS = (2, 4, 8)
SUPPORTED_A_BITS = (4, 8)
SUPPORTED_KERNELS = (3, 5, 7)

RngLike = "np.random.Generator | int | None"


@dataclass(frozen=True)
class StageConfig:
    """A stage of MBConv blocks: output channels at width 1.0, allowed depths, stride of its first block."""

    channels: int
    depths: tuple[int, ...]
    stride: int = 1


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
    w_bits: tuple[int, ...] = SUPPORTED_W_BITS
    a_bits: tuple[int, ...] = SUPPORTED_A_BITS
    # First and last layer stay 8-bit unless the space widens these.
    stem_head_w_bits: tuple[int, ...] = (8,)
    stem_head_a_bits: tuple[int, ...] = (8,)


_FIELDS = {f for f in SpaceConfig.__dataclass_fields__}


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
        self.ops: tuple[tuple[int, int], ...] = tuple((k, e) for k in c.kernels for e in c.expands)
        #: the gene vector's layout (:class:`~qnas.genes.GeneLayout`): which integer means what
        self.genes = GeneLayout(c, self.ops)
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
                stages = []
                for i, s in enumerate(v):
                    if not isinstance(s, dict) or set(s) - {"channels", "depths", "stride"} or "channels" not in s or "depths" not in s:
                        raise ConfigError(f"stages[{i}] must be a mapping with channels, depths and optional stride, got {s!r}")
                    stages.append(StageConfig(s["channels"], _tuple(s["depths"], f"stages[{i}].depths"), s.get("stride", 1)))
                kw[k] = tuple(stages)
            elif isinstance(SpaceConfig.__dataclass_fields__[k].default, tuple):
                kw[k] = _tuple(v, k)
            else:
                kw[k] = v
        return cls(SpaceConfig(**kw))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SearchSpace":
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"search-space file not found: {p}")
        try:
            d = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
        return cls.from_dict(d or {})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self.config)
        d["stages"] = [{"channels": s["channels"], "depths": list(s["depths"]), "stride": s["stride"]} for s in d["stages"]]
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    # ---- genotype operations -----------------------------------------
    def channels(self, width: float) -> tuple[int, list[int]]:
        """Stem and per-stage output channels at a width multiplier."""
        return make_divisible(self.config.stem_channels * width), [make_divisible(s.channels * width) for s in self.config.stages]

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
                _check(f"{where}.kernel", b.kernel, c.kernels)
                _check(f"{where}.expand", b.expand, c.expands)
                if len(b.w_bits) != 3 or len(b.a_bits) != 3:
                    raise ArchError(f"{where} needs 3 weight and 3 activation bit widths (expand, depthwise, project)")
                for n, w in enumerate(b.w_bits):
                    _check(f"{where}.w_bits[{n}]", w, c.w_bits)
                for n, a in enumerate(b.a_bits):
                    _check(f"{where}.a_bits[{n}]", a, c.a_bits)
        return arch

    def uniform(self, w_bits: int = 8, a_bits: int = 8, largest: bool = True, resolution: int | None = None) -> Arch:
        """The largest (or smallest) arch with every searchable layer at one bit width."""
        c = self.config
        pick = max if largest else min
        k, e = pick(c.kernels), pick(c.expands)
        stages = tuple(tuple(Block(k, e, (w_bits,) * 3, (a_bits,) * 3) for _ in range(pick(s.depths))) for s in c.stages)
        sh = (max(c.stem_head_w_bits), max(c.stem_head_a_bits))
        arch = Arch(resolution or pick(c.resolutions), pick(c.widths), stages, sh, sh)
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
                         _out(resolution, c.stem_stride), 3, c.stem_stride, 1, *bits)

    def head_layer(self, cin: int, bits: tuple[int, int]) -> LayerSpec:
        return LayerSpec("head", "fc", cin, self.config.num_classes, 1, 1, 1, 1, 1, *bits)

    @staticmethod
    def block_layers(geo: BlockGeometry, block: Block) -> BlockPlan:
        """The three layers of a (non-skipped) MBConv ``block`` at position ``geo``:
        expand 1x1 -> depthwise kxk -> project 1x1, each with its own bits."""
        mid = geo.cin * block.expand
        n, (we, wd, wp), (ae, ad, ap) = geo.name, block.w_bits, block.a_bits
        return BlockPlan(
            LayerSpec(f"{n}.expand", "pwconv", geo.cin, mid, geo.hw_in, geo.hw_in, 1, 1, 1, we, ae),
            LayerSpec(f"{n}.dw", "dwconv", mid, mid, geo.hw_in, geo.hw_out, block.kernel, geo.stride, mid, wd, ad),
            LayerSpec(f"{n}.project", "pwconv", mid, geo.cout, geo.hw_out, geo.hw_out, 1, 1, 1, wp, ap),
            residual=geo.residual,
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
        head = self.head_layer(blocks[-1].project.cout if blocks else stem.cout, arch.head_bits)
        return NetworkPlan(c.in_channels, arch.resolution, c.num_classes, stem, tuple(blocks), head)

    def size(self) -> float:
        """Number of distinct archs (log10), for reports."""
        c = self.config
        per_block = len(self.ops) * len(c.w_bits) ** 3 * len(c.a_bits) ** 3
        total = math.log10(len(c.resolutions) * len(c.widths) * (len(c.stem_head_w_bits) * len(c.stem_head_a_bits)) ** 2)
        for si, s in enumerate(c.stages):
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


def _validate_config(c: SpaceConfig) -> None:
    def ints(name: str, vals: Sequence[Any], lo: int = 1) -> None:
        if not vals or any(isinstance(x, bool) or not isinstance(x, int) or x < lo for x in vals):
            raise ConfigError(f"{name} must be a non-empty list of integers >= {lo}, got {list(vals)}")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"{name} has duplicates: {list(vals)}")

    for name, supported in (("w_bits", SUPPORTED_W_BITS), ("a_bits", SUPPORTED_A_BITS),
                            ("stem_head_w_bits", SUPPORTED_W_BITS), ("stem_head_a_bits", SUPPORTED_A_BITS)):
        vals = getattr(c, name)
        ints(name, vals)
        bad = [b for b in vals if b not in supported]
        if bad:
            raise ConfigError(f"{name} contains unsupported bit width(s) {bad}; supported: {list(supported)}")
    ints("kernels", c.kernels)
    bad = [k for k in c.kernels if k not in SUPPORTED_KERNELS]
    if bad:
        raise ConfigError(f"kernels contains {bad}; supported depthwise kernels: {list(SUPPORTED_KERNELS)}")
    ints("expands", c.expands)
    ints("resolutions", c.resolutions, lo=8)
    if not c.widths or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 4 for w in c.widths):
        raise ConfigError(f"widths must be a non-empty list of numbers in (0, 4], got {list(c.widths)}")
    for name in ("in_channels", "num_classes", "stem_channels"):
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if c.num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {c.num_classes}")
    if c.stem_stride not in (1, 2):
        raise ConfigError(f"stem_stride must be 1 or 2, got {c.stem_stride!r}")
    if not isinstance(c.allow_skip, bool):
        raise ConfigError(f"allow_skip must be true or false, got {c.allow_skip!r}")
    if not c.stages:
        raise ConfigError("stages must list at least one stage")
    for i, s in enumerate(c.stages):
        if isinstance(s.channels, bool) or not isinstance(s.channels, int) or s.channels < 1:
            raise ConfigError(f"stages[{i}].channels must be a positive integer, got {s.channels!r}")
        ints(f"stages[{i}].depths", s.depths)
        if s.stride not in (1, 2):
            raise ConfigError(f"stages[{i}].stride must be 1 or 2, got {s.stride!r}")
