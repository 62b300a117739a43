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
        self._bounds = self._gene_bounds()

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

    def _skip_allowed(self, stage: int, index: int) -> bool:
        return self.config.allow_skip and index > 0

    def sample(self, rng: Any = None) -> Arch:
        """A uniformly random arch (each gene drawn independently)."""
        g = _rng(rng)
        return self.decode([int(g.integers(0, hi + 1)) for hi in self._bounds])

    def mutate(self, arch: Arch, rng: Any = None, prob: float | None = None) -> Arch:
        """Resample each gene with probability ``prob`` (default 1/#genes); never returns ``arch`` itself."""
        g = _rng(rng)
        vec = self.encode(arch)
        p = prob if prob is not None else 1.0 / len(vec)
        for _ in range(100):
            new = [int(g.integers(0, hi + 1)) if g.random() < p else v for v, hi in zip(vec, self._bounds)]
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
        return list(self._bounds)

    def _op_choices(self) -> int:
        return len(self.ops) + (1 if self.config.allow_skip else 0)

    def _gene_bounds(self) -> list[int]:
        c = self.config
        b = [len(c.resolutions) - 1, len(c.widths) - 1,
             len(c.stem_head_w_bits) - 1, len(c.stem_head_a_bits) - 1,
             len(c.stem_head_w_bits) - 1, len(c.stem_head_a_bits) - 1]
        for s in c.stages:
            b.append(len(s.depths) - 1)
            for _ in range(max(s.depths)):
                b.append(self._op_choices() - 1)
                b.extend([len(c.w_bits) - 1] * 3)
                b.extend([len(c.a_bits) - 1] * 3)
        return b

    def encode(self, arch: Arch) -> list[int]:
        """Fixed-length integer vector (indices into the choice lists); inactive blocks encode as 0."""
        self.validate(arch)
        c = self.config
        v = [c.resolutions.index(arch.resolution), _index(c.widths, arch.width),
             c.stem_head_w_bits.index(arch.stem_bits[0]), c.stem_head_a_bits.index(arch.stem_bits[1]),
             c.stem_head_w_bits.index(arch.head_bits[0]), c.stem_head_a_bits.index(arch.head_bits[1])]
        for s, blocks in zip(c.stages, arch.stages):
            v.append(s.depths.index(len(blocks)))
            for j in range(max(s.depths)):
                if j >= len(blocks):
                    v.extend([0] * 7)
                    continue
                blk = blocks[j]
                if blk.is_skip:
                    v.append(len(self.ops))
                    v.extend([0] * 6)
                else:
                    v.append(self.ops.index((blk.kernel, blk.expand)))
                    v.extend(c.w_bits.index(w) for w in blk.w_bits)
                    v.extend(c.a_bits.index(a) for a in blk.a_bits)
        return v

    def decode(self, vec: Sequence[int]) -> Arch:
        """Inverse of :meth:`encode`; raises :class:`ArchError` on a wrong length or out-of-range gene."""
        vec = [int(x) for x in vec]
        if len(vec) != len(self._bounds):
            raise ArchError(f"gene vector has length {len(vec)}, this space needs {len(self._bounds)}")
        for i, (x, hi) in enumerate(zip(vec, self._bounds)):
            if not 0 <= x <= hi:
                raise ArchError(f"gene {i} is {x}, allowed 0..{hi}")
        c = self.config
        it = iter(vec)
        res, wid = c.resolutions[next(it)], c.widths[next(it)]
        stem = (c.stem_head_w_bits[next(it)], c.stem_head_a_bits[next(it)])
        head = (c.stem_head_w_bits[next(it)], c.stem_head_a_bits[next(it)])
        stages = []
        for si, s in enumerate(c.stages):
            depth = s.depths[next(it)]
            blocks = []
            for j in range(max(s.depths)):
                op = next(it)
                wb = tuple(c.w_bits[next(it)] for _ in range(3))
                ab = tuple(c.a_bits[next(it)] for _ in range(3))
                if j >= depth:
                    continue
                if op == len(self.ops):
                    blocks.append(Block.skip() if self._skip_allowed(si, j) else Block(*self.ops[0], wb, ab))
                else:
                    blocks.append(Block(*self.ops[op], wb, ab))
            stages.append(tuple(blocks))
        return Arch(res, wid, tuple(stages), stem, head)

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
                    if not self._skip_allowed(i, j):
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
    def plan(self, arch: Arch) -> NetworkPlan:
        """The layer-by-layer plan (shapes and bits) that builders, cost counters and latency models read."""
        self.validate(arch)
        c = self.config
        stem_c, stage_c = self.channels(arch.width)
        hw = arch.resolution
        hw_out = _out(hw, c.stem_stride)
        stem = LayerSpec("stem", "conv", c.in_channels, stem_c, hw, hw_out, 3, c.stem_stride, 1, *arch.stem_bits)
        hw, cin = hw_out, stem_c
        blocks: list[BlockPlan] = []
        for si, (s, genes) in enumerate(zip(c.stages, arch.stages)):
            cout = stage_c[si]
            for j, b in enumerate(genes):
                if b.is_skip:
                    continue
                stride = s.stride if j == 0 else 1
                mid = cin * b.expand
                ho = _out(hw, stride)
                name = f"s{si}.b{j}"
                blocks.append(BlockPlan(
                    LayerSpec(f"{name}.expand", "pwconv", cin, mid, hw, hw, 1, 1, 1, b.w_bits[0], b.a_bits[0]),
                    LayerSpec(f"{name}.dw", "dwconv", mid, mid, hw, ho, b.kernel, stride, mid, b.w_bits[1], b.a_bits[1]),
                    LayerSpec(f"{name}.project", "pwconv", mid, cout, ho, ho, 1, 1, 1, b.w_bits[2], b.a_bits[2]),
                    residual=(stride == 1 and cin == cout),
                ))
                hw, cin = ho, cout
        head = LayerSpec("head", "fc", cin, c.num_classes, 1, 1, 1, 1, 1, *arch.head_bits)
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
                    n *= per_block + (1 if self._skip_allowed(si, j) else 0)
                count += n
            total += math.log10(count)
        return total

    def __repr__(self) -> str:
        return f"SearchSpace(~10^{self.size():.1f} archs, {len(self.config.stages)} stages)"


def _out(hw: int, stride: int) -> int:
    return (hw + stride - 1) // stride


def _index(choices: Sequence[float], v: float) -> int:
    for i, c in enumerate(choices):
        if math.isclose(c, v):
            return i
    raise ArchError(f"width={v} is not allowed; choose one of {list(choices)}")


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
