"""Progressive-shrinking phases: which dimensions of the space are elastic,
and the largest / smallest / random arch within them.

A phase is plain data; the training loop walks a list of them. Dimensions
that are not elastic in a phase stay at their largest choice (bits: the
highest bit width)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from qnas.arch import Arch
from qnas.errors import ConfigError
from qnas.genes import Gene
from qnas.space import SearchSpace

#: The elastic dimensions a phase can open, in OFA's progressive-shrinking order.
DIMENSIONS: tuple[str, ...] = ("resolution", "kernel", "depth", "expand", "width", "bits")


@dataclass(frozen=True)
class Phase:
    """``epochs`` epochs in which the dimensions in ``elastic`` are sampled; the
    learning rate follows its own cosine from ``lr_scale`` x the base rate."""

    name: str
    elastic: frozenset[str]
    epochs: int = 1
    lr_scale: float = 1.0

    def validate(self) -> "Phase":
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a phase needs a non-empty name, got {self.name!r}")
        unknown = sorted(set(self.elastic) - set(DIMENSIONS))
        if unknown:
            raise ConfigError(f"phase {self.name!r} has unknown elastic dimension(s) {unknown}; valid: {list(DIMENSIONS)}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"phase {self.name!r} epochs must be an integer >= 0, got {self.epochs!r}")
        if isinstance(self.lr_scale, bool) or not isinstance(self.lr_scale, (int, float)) \
                or not (self.lr_scale > 0 and math.isfinite(self.lr_scale)):
            raise ConfigError(f"phase {self.name!r} lr_scale must be a positive number, got {self.lr_scale!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "elastic": sorted(self.elastic), "epochs": self.epochs, "lr_scale": self.lr_scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Phase":
        if not isinstance(d, dict) or set(d) - {"name", "elastic", "epochs", "lr_scale"} or "name" not in d:
            raise ConfigError(f"a phase must be a mapping with name, elastic, epochs, lr_scale; got {d!r}")
        return cls(d["name"], frozenset(d.get("elastic", ())), d.get("epochs", 1), d.get("lr_scale", 1.0)).validate()

    # ---- archs within the phase ----------------------------------------
    def largest(self, space: SearchSpace) -> Arch:
        return _arch(space, lambda dim, choices: _argmax(choices))

    def smallest(self, space: SearchSpace) -> Arch:
        return _arch(space, lambda dim, choices: _argmin(choices) if dim in self.elastic else _argmax(choices))

    def sample(self, space: SearchSpace, rng: np.random.Generator) -> Arch:
        def pick(dim: str, choices: Sequence[Any]) -> int:
            return int(rng.integers(len(choices))) if dim in self.elastic else _argmax(choices)

        skips = "depth" in self.elastic and space.config.allow_skip
        return _arch(space, pick, rng if skips else None)


def progressive_phases(epochs: int | Sequence[int] = 1, lr_scales: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> tuple[Phase, ...]:
    """OFA's order: kernel -> depth -> width (expand ratio and width multiplier) -> bits;
    resolution is elastic throughout, each phase keeps what the previous opened."""
    eps = [epochs] * 4 if isinstance(epochs, int) else list(epochs)
    if len(eps) != 4 or len(lr_scales) != 4:
        raise ConfigError(f"progressive_phases needs 4 epoch counts and 4 lr scales (kernel, depth, width, bits), got {eps}, {list(lr_scales)}")
    opened = [{"resolution", "kernel"}, {"depth"}, {"expand", "width"}, {"bits"}]
    phases, acc = [], set()
    for name, new, e, lr in zip(("kernel", "depth", "width", "bits"), opened, eps, lr_scales):
        acc |= new
        phases.append(Phase(name, frozenset(acc), e, lr).validate())
    return tuple(phases)


def full_space_largest(space: SearchSpace) -> Arch:
    """The largest arch of the whole space (highest bits): the distillation teacher runs it in float."""
    return _arch(space, lambda dim, choices: _argmax(choices))


def _argmax(choices: Sequence[Any]) -> int:
    return max(range(len(choices)), key=lambda i: choices[i])


def _argmin(choices: Sequence[Any]) -> int:
    return min(range(len(choices)), key=lambda i: choices[i])


#: the elastic dimension each gene group belongs to (the op gene is kernel and expand)
_DIMENSION = {"resolution": "resolution", "width": "width", "depth": "depth", "stem_w": "bits", "stem_a": "bits",
              "head_w": "bits", "head_a": "bits", "w_bits": "bits", "a_bits": "bits"}


def _arch(space: SearchSpace, pick: Callable[[str, Sequence[Any]], int],
          rng: np.random.Generator | None = None) -> Arch:
    """An arch whose every gene is ``pick(dimension, choices)``; with ``rng``, a block that may be
    a skip becomes one with probability ``1 / (ops of its stage + 1)``.

    The op gene picks a kernel and an expand ratio among those of the block's stage
    (``space.stage_ops``); when the space's exclude rules leave that pair out, the expand ratio
    stays and the kernel is picked again among those the space allows with it (so the largest
    arch is :meth:`SearchSpace.uniform`'s: the largest expand ratio, then kernel). The result
    passes :meth:`SearchSpace.validate`."""

    def value(gene: Gene) -> int:
        if gene.group != "op":
            return pick(_DIMENSION[gene.group], gene.choices)
        ops = space.stage_ops[gene.stage]  # type: ignore[index]
        kernels, expands = kernels_and_expands(ops)
        k, e = kernels[pick("kernel", kernels)], expands[pick("expand", expands)]
        if (k, e) not in ops:  # an excluded combination
            allowed = [kk for kk, ee in ops if ee == e]
            k = allowed[pick("kernel", allowed)]
        op = ops.index((k, e))
        if (rng is not None and space.skip_allowed(gene.stage, gene.pos)  # type: ignore[arg-type]
                and rng.random() < 1.0 / (len(ops) + 1)):
            op = space.genes.skip_index(gene.stage)  # type: ignore[arg-type,assignment]
        return op

    return space.validate(space.decode(space.genes.fill(value)))


def kernels_and_expands(ops: Any) -> tuple[list[int], list[float]]:
    """The distinct kernels and expand ratios of a stage's ``(kernel, expand)`` ops, in first-seen order."""
    return list(dict.fromkeys(k for k, _ in ops)), list(dict.fromkeys(e for _, e in ops))
