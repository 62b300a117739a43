"""The genotype every stage shares: a frozen, hashable, JSON round-trippable
description of one network in a :class:`~qnas.space.SearchSpace`."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from qnas.errors import ArchError

SKIP = "skip"


@dataclass(frozen=True)
class Block:
    """One MBConv block: depthwise ``kernel``, ``expand`` ratio, and the
    (weight, activation) bits of its three convs (expand 1x1, depthwise, project 1x1).

    A skipped block (identity) has ``kernel == expand == 0`` and no bits."""

    kernel: int
    expand: int | float
    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...]

    @property
    def is_skip(self) -> bool:
        return self.kernel == 0

    @classmethod
    def skip(cls) -> "Block":
        return cls(0, 0, (), ())

    @property
    def op(self) -> str:
        return SKIP if self.is_skip else f"k{self.kernel}_e{self.expand}"

    def to_dict(self) -> dict[str, Any]:
        if self.is_skip:
            return {"op": SKIP}
        return {"k": self.kernel, "e": self.expand, "w": list(self.w_bits), "a": list(self.a_bits)}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Block":
        if not isinstance(d, dict):
            raise ArchError(f"{where} must be an object like {{'k': 3, 'e': 6, 'w': [8, 8, 8], 'a': [8, 8, 8]}}, got {d!r}")
        if d.get("op") == SKIP:
            return cls.skip()
        unknown = sorted(set(d) - {"k", "e", "w", "a", "op"})
        if unknown:  # a misspelt field would otherwise be ignored silently
            raise ArchError(f"{where} has unknown field(s) {unknown}; a block has k, e, w, a (or op: skip)")
        missing = [k for k in ("k", "e", "w", "a") if k not in d]
        if missing:
            raise ArchError(f"{where} lacks field(s) {missing}; a block needs k, e, w, a (or op: skip)")
        return cls(_int(d["k"], f"{where}.k"), _expand(d["e"], f"{where}.e"),
                   _ints(d["w"], f"{where}.w"), _ints(d["a"], f"{where}.a"))


@dataclass(frozen=True)
class Arch:
    """A candidate network: input resolution, width multiplier, blocks per
    stage (the stage depth is the number of blocks) and stem/head bits."""

    resolution: int
    width: float
    stages: tuple[tuple[Block, ...], ...]
    stem_bits: tuple[int, int] = (8, 8)
    head_bits: tuple[int, int] = (8, 8)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.stages)

    def blocks(self) -> list[Block]:
        return [b for stage in self.stages for b in stage]

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "width": self.width,
            "stem": list(self.stem_bits),
            "head": list(self.head_bits),
            "stages": [[b.to_dict() for b in stage] for stage in self.stages],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def uid(self) -> str:
        """Short stable id (hash of the canonical JSON), for file names and logs."""
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: Any) -> "Arch":
        if not isinstance(d, dict):
            raise ArchError(f"an arch must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("resolution", "width", "stages") if k not in d]
        if missing:
            raise ArchError(f"arch lacks field(s) {missing}; expected resolution, width, stages, stem, head")
        unknown = sorted(set(d) - {"resolution", "width", "stages", "stem", "head"})
        if unknown:
            raise ArchError(f"arch has unknown field(s) {unknown}; expected resolution, width, stages, stem, head")
        stages = d["stages"]
        if not isinstance(stages, list):
            raise ArchError("arch.stages must be a list of stages, each a list of blocks")
        parsed = []
        for i, stage in enumerate(stages):
            if not isinstance(stage, list):
                raise ArchError(f"arch.stages[{i}] must be a list of blocks")
            parsed.append(tuple(Block.from_dict(b, f"stages[{i}][{j}]") for j, b in enumerate(stage)))
        stem = _ints(d.get("stem", [8, 8]), "stem")
        head = _ints(d.get("head", [8, 8]), "head")
        if len(stem) != 2 or len(head) != 2:
            raise ArchError("arch.stem and arch.head must be [w_bits, a_bits]")
        width = d["width"]
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 4:
            raise ArchError(f"arch.width must be a number in (0, 4], got {width!r}")
        from qnas.space import MAX_RESOLUTION

        resolution = _int(d["resolution"], "resolution")
        if not 8 <= resolution <= MAX_RESOLUTION:  # every image is resized to it: 100000 px would need terabytes
            raise ArchError(f"arch.resolution must be from 8 to {MAX_RESOLUTION} px, got {resolution}")
        return cls(resolution, float(width), tuple(parsed), (stem[0], stem[1]), (head[0], head[1]))

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ArchError(f"arch is not valid JSON ({e.msg} at line {e.lineno}); pass an arch JSON object") from None
        return cls.from_dict(d)

    def describe(self) -> str:
        """Compact human-readable string, e.g. ``r32 w1.0 | k3e6 w884 a888 ...``."""
        parts = [f"r{self.resolution} x{self.width:g}"]
        for stage in self.stages:
            parts.append(" ".join(
                "skip" if b.is_skip else
                f"k{b.kernel}e{b.expand}:w{''.join(map(str, b.w_bits))}a{''.join(map(str, b.a_bits))}"
                for b in stage))
        return " | ".join(parts)


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ArchError(f"arch.{where} must be an integer, got {v!r}")
    return v


def _expand(v: Any, where: str) -> int | float:
    """An expand ratio: an integer, or a fractional number like MobileNetV3's 2.5 (an integral
    float such as ``4.0`` is refused, as before: write ``4``)."""
    if isinstance(v, float) and not v.is_integer() and v >= 1:
        return v
    return _int(v, where)


def _ints(v: Any, where: str) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)):
        raise ArchError(f"arch.{where} must be a list of integers, got {v!r}")
    return tuple(_int(x, f"{where}[{i}]") for i, x in enumerate(v))
