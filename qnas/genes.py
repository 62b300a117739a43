"""The integer gene vector of a search space, defined in one place.

A :class:`~qnas.arch.Arch` is encoded as one integer per gene, each an index
into that gene's choices. :class:`GeneLayout` (owned by
:class:`~qnas.space.SearchSpace` as ``space.genes``) says which integer means
what; everything that reads or writes gene vectors -- sampling, mutation,
pymoo's problem, the vectorized latency predictor, the accuracy predictor's
features, the differentiable search's logits and :class:`ArchDistribution` --
walks :attr:`GeneLayout.genes` instead of counting offsets by hand.

The layout, in order::

    resolution, width, stem w_bits, stem a_bits, head w_bits, head a_bits,
    then per stage: depth, then per block position (up to the stage's largest depth):
        op (kernel x expand pair, plus "skip" when the space allows skips),
        w_bits of (expand, depthwise, project), a_bits of (expand, depthwise, project)

A stage may have its own (kernel, expand) pairs (``space.stage_ops``): its op
genes index those. Genes of positions beyond a stage's depth, the bit genes of
a skipped block, and the expand-conv bit genes of an op without expand conv
(expand ratio 1 in a space with ``expand1_no_conv``; they decode as the
depthwise conv's bits) do not change the decoded arch (:meth:`GeneLayout.active`);
:meth:`GeneLayout.canonical` sets them to 0. Bit genes that land on a width the
space's exclude rules leave out for that op and conv decode to the nearest
allowed width, preferring wider (:attr:`GeneLayout.bit_repair`), so every gene
vector is a valid arch and mutation, crossover and sampling need no special case.

Each gene also names its *group* and its *slot* in that group's tensor, the
layout of a factorised distribution over archs (one probability row per
gene): ``resolution [R]``, ``width [W]``, ``stem_w``/``head_w``,
``stem_a``/``head_a``, and per stage ``depth [n_depths]``, ``op [max_depth, n_ops]``,
``w_bits``/``a_bits [max_depth, 3, n_bits]`` (see :meth:`GeneLayout.group_shapes`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from qnas.arch import Arch, Block
from qnas.errors import ArchError, ConfigError
from qnas.quant.naming import BLOCK_LAYERS

if TYPE_CHECKING:
    from qnas.space import SpaceConfig

#: The convs of a block whose bits are genes, in gene order (their module names in a block).
BLOCK_CONVS: tuple[str, ...] = BLOCK_LAYERS
#: Gene groups; groups after ``PER_STAGE_FROM`` hold one tensor per stage.
GROUPS: tuple[str, ...] = ("resolution", "width", "stem_w", "stem_a", "head_w", "head_a",
                           "depth", "op", "w_bits", "a_bits")
STAGE_GROUPS: tuple[str, ...] = ("depth", "op", "w_bits", "a_bits")
SKIP = "skip"


@dataclass(frozen=True)
class Gene:
    """One position of the gene vector."""

    index: int
    group: str
    choices: tuple[Any, ...]
    stage: int | None = None  # stage groups
    pos: int | None = None  # block position within the stage (op, w_bits, a_bits)
    conv: int | None = None  # index into BLOCK_CONVS (w_bits, a_bits)

    @property
    def n_choices(self) -> int:
        return len(self.choices)

    @property
    def slot(self) -> tuple[int, ...]:
        """Row of this gene in its group's (stage's) tensor; the choices are the last axis."""
        if self.pos is None:
            return ()
        return (self.pos,) if self.conv is None else (self.pos, self.conv)


@dataclass(frozen=True)
class BlockGenes:
    """Indices of the genes of one block position."""

    stage: int
    pos: int
    op: int
    w: tuple[int, int, int]
    a: tuple[int, int, int]
    skip_allowed: bool

    @property
    def bits(self) -> tuple[int, ...]:
        return self.w + self.a


class GeneLayout:
    """Which integer of a gene vector means what, for one search-space config.

    ``ops`` are the space's (kernel, expand) pairs and ``stage_ops`` each stage's (default: ``ops``
    for every stage); when the config allows skips the op gene has one more value, the last
    (:meth:`skip_index`; :attr:`skip_op` when every stage has the same number of ops)."""

    def __init__(self, config: "SpaceConfig", ops: Sequence[tuple[int, Any]],
                 stage_ops: Sequence[Sequence[tuple[int, Any]]] | None = None):
        c = self.config = config
        self.ops = tuple(ops)
        self.stage_ops: tuple[tuple[tuple[int, Any], ...], ...] = (
            tuple(tuple(o) for o in stage_ops) if stage_ops is not None else tuple(self.ops for _ in c.stages))
        n_ops = {len(o) for o in self.stage_ops}
        self.skip_op: int | None = (len(self.ops) if len(n_ops) == 1 and len(self.ops) in n_ops else
                                    (n_ops.pop() if len(n_ops) == 1 else None)) if c.allow_skip else None
        no_expand = bool(getattr(c, "expand1_no_conv", False))
        #: per stage, per op index: whether the op has an expand conv (False for skip)
        self.op_has_expand = [np.asarray([not (no_expand and e == 1) for _, e in o] + ([False] if c.allow_skip else []))
                              for o in self.stage_ops]
        genes: list[Gene] = []

        def add(group: str, choices: Sequence[Any], **where: Any) -> int:
            genes.append(Gene(len(genes), group, tuple(choices), **where))
            return len(genes) - 1

        self.resolution = add("resolution", c.resolutions)
        self.width = add("width", c.widths)
        self.stem_w = add("stem_w", c.stem_head_w_bits)
        self.stem_a = add("stem_a", c.stem_head_a_bits)
        self.head_w = add("head_w", c.stem_head_w_bits)
        self.head_a = add("head_a", c.stem_head_a_bits)
        self.depth: list[int] = []
        self.blocks: list[BlockGenes] = []
        for si, s in enumerate(c.stages):
            self.depth.append(add("depth", s.depths, stage=si))
            op_choices: tuple[Any, ...] = self.stage_ops[si] + ((SKIP,) if c.allow_skip else ())
            for j in range(max(s.depths)):
                op = add("op", op_choices, stage=si, pos=j)
                w = tuple(add("w_bits", c.w_bits, stage=si, pos=j, conv=k) for k in range(len(BLOCK_CONVS)))
                a = tuple(add("a_bits", c.a_bits, stage=si, pos=j, conv=k) for k in range(len(BLOCK_CONVS)))
                self.blocks.append(BlockGenes(si, j, op, w, a, skip_allowed(c, si, j)))  # type: ignore[arg-type]
        self.genes: tuple[Gene, ...] = tuple(genes)
        self._bounds = np.asarray([g.n_choices - 1 for g in genes], dtype=np.int64)
        #: per stage, None when no exclude rule removes bit widths there, else an int array
        #: ``[n_stage_ops, 3, n_w_bits, n_a_bits, 2]``: the (w, a) choice indices each conv of each op
        #: decodes the (w, a) gene values to (themselves unless excluded)
        self.bit_repair: list[np.ndarray | None] = [self._bit_repair(si) for si in range(len(c.stages))]
        self.depth_values = [np.asarray(s.depths, dtype=np.int64) for s in c.stages]

    def _bit_repair(self, stage: int) -> np.ndarray | None:
        c = self.config
        rules = [r for r in getattr(c, "exclude", ()) if getattr(r, "on_bits", False)]
        if not rules:
            return None
        ws, as_ = list(c.w_bits), list(c.a_bits)
        grid = [(i, j) for i in range(len(ws)) for j in range(len(as_))]
        out = np.zeros((len(self.stage_ops[stage]), len(BLOCK_CONVS), len(ws), len(as_), 2), dtype=np.int64)
        changed = False
        for o, (k, e) in enumerate(self.stage_ops[stage]):
            for ci, name in enumerate(BLOCK_CONVS):
                has_conv = name != "expand" or self.op_has_expand[stage][o]
                ok = {(i, j): not (has_conv and any(r.excludes_bits(stage, k, e, name, ws[i], as_[j]) for r in rules))
                      for i, j in grid}
                allowed = [ij for ij in grid if ok[ij]]
                if not allowed:
                    raise ConfigError(f"stage {stage} op k{k}e{e}: the exclude rules leave its {name} conv no "
                                      "(w_bits, a_bits) pair; relax them")
                for i, j in grid:
                    if ok[(i, j)]:
                        out[o, ci, i, j] = (i, j)
                        continue
                    changed = True
                    # the nearest allowed pair, preferring one that lowers no width (as exporters upcast)
                    out[o, ci, i, j] = min(allowed, key=lambda ij: (
                        (ws[ij[0]] < ws[i]) + (as_[ij[1]] < as_[j]),
                        abs(ws[ij[0]] - ws[i]) + abs(as_[ij[1]] - as_[j]), -ws[ij[0]], -as_[ij[1]]))
        return out if changed else None

    @property
    def has_bit_rules(self) -> bool:
        """Whether some op's conv decodes some bit gene values to other widths (exclude rules)."""
        return any(r is not None for r in self.bit_repair)

    def repair_bits(self, X: Any) -> np.ndarray:
        """``X`` (``[N, n_genes]``) with every bit gene pair an exclude rule leaves out replaced by the
        pair it decodes to (vectorised :meth:`decode` of the bits; other genes unchanged). Without bit
        rules ``X`` itself comes back (no copy: the vectorised latency predictor calls this per batch)."""
        if not self.has_bit_rules:
            return np.asarray(X, dtype=np.int64)
        X = np.array(X, dtype=np.int64)
        for bg in self.blocks:
            rep = self.bit_repair[bg.stage]
            if rep is None:
                continue
            op = X[:, bg.op]
            op = np.where(op >= rep.shape[0], 0, op)  # a skip: its bits do not matter
            for ci in range(len(BLOCK_CONVS)):
                pair = rep[op, ci, X[:, bg.w[ci]], X[:, bg.a[ci]]]
                X[:, bg.w[ci]], X[:, bg.a[ci]] = pair[:, 0], pair[:, 1]
        return X

    # ---- shape ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.genes)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    def bounds(self) -> list[int]:
        """Inclusive upper bound of each gene (lower bounds are 0)."""
        return self._bounds.tolist()

    def skip_index(self, stage: int) -> int | None:
        """The op-gene value meaning "skip" in ``stage`` (None when the space has no skips)."""
        return len(self.stage_ops[stage]) if self.config.allow_skip else None

    def stage_blocks(self, stage: int) -> list[BlockGenes]:
        return [b for b in self.blocks if b.stage == stage]

    def group_shapes(self) -> dict[str, Any]:
        """Shape of each group's tensor (a list of shapes, one per stage, for the stage groups);
        the last axis holds the choices."""
        c = self.config
        n_op = [len(o) + (1 if c.allow_skip else 0) for o in self.stage_ops]
        nb = len(BLOCK_CONVS)
        return {
            "resolution": (len(c.resolutions),), "width": (len(c.widths),),
            "stem_w": (len(c.stem_head_w_bits),), "stem_a": (len(c.stem_head_a_bits),),
            "head_w": (len(c.stem_head_w_bits),), "head_a": (len(c.stem_head_a_bits),),
            "depth": [(len(s.depths),) for s in c.stages],
            "op": [(max(s.depths), n_op[si]) for si, s in enumerate(c.stages)],
            "w_bits": [(max(s.depths), nb, len(c.w_bits)) for s in c.stages],
            "a_bits": [(max(s.depths), nb, len(c.a_bits)) for s in c.stages],
        }

    def row(self, groups: Any, gene: Gene) -> Any:
        """The row of ``gene`` in ``groups`` (a mapping or object with one attribute per group,
        in :meth:`group_shapes` layout): a 1-D tensor/array over the gene's choices."""
        t = groups[gene.group] if isinstance(groups, dict) else getattr(groups, gene.group)
        if gene.stage is not None:
            t = t[gene.stage]
        return t[gene.slot] if gene.slot else t

    # ---- building vectors ---------------------------------------------------------
    def fill(self, pick: Callable[[Gene], int]) -> list[int]:
        """A gene vector with ``pick(gene)`` as each value, called in gene order (so a
        ``pick`` that draws random numbers draws them in a fixed order)."""
        return [int(pick(g)) for g in self.genes]

    def check(self, vec: Sequence[int]) -> list[int]:
        """``vec`` as a list of ints; :class:`ArchError` on a wrong length or an out-of-range gene."""
        vec = [int(x) for x in vec]
        if len(vec) != len(self.genes):
            raise ArchError(f"gene vector has length {len(vec)}, this space needs {len(self.genes)}")
        for i, (x, hi) in enumerate(zip(vec, self._bounds)):
            if not 0 <= x <= hi:
                raise ArchError(f"gene {i} is {x}, allowed 0..{hi}")
        return vec

    def check_matrix(self, X: Any) -> np.ndarray:
        """``X`` as an ``[N, n_genes]`` int64 matrix (a single vector becomes one row), range-checked."""
        X = np.asarray(X)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != len(self.genes):
            raise ArchError(f"gene matrix has shape {X.shape}, this space needs [N, {len(self.genes)}]")
        X = X.astype(np.int64, copy=False)
        if X.size and ((X < 0).any() or (X > self._bounds).any()):
            bad = np.argwhere((X < 0) | (X > self._bounds))[0]
            raise ArchError(f"gene {bad[1]} of row {bad[0]} is {X[bad[0], bad[1]]}, allowed 0..{self._bounds[bad[1]]}")
        return X

    # ---- arch <-> genes -------------------------------------------------------------
    def encode(self, arch: Arch) -> list[int]:
        """Fixed-length index vector of a (validated) arch; inactive genes are 0."""
        c = self.config
        vec = [0] * len(self.genes)
        vec[self.resolution] = c.resolutions.index(arch.resolution)
        vec[self.width] = _close_index(c.widths, arch.width)
        vec[self.stem_w] = c.stem_head_w_bits.index(arch.stem_bits[0])
        vec[self.stem_a] = c.stem_head_a_bits.index(arch.stem_bits[1])
        vec[self.head_w] = c.stem_head_w_bits.index(arch.head_bits[0])
        vec[self.head_a] = c.stem_head_a_bits.index(arch.head_bits[1])
        for si, (s, blocks) in enumerate(zip(c.stages, arch.stages)):
            vec[self.depth[si]] = s.depths.index(len(blocks))
        for bg in self.blocks:
            blocks = arch.stages[bg.stage]
            if bg.pos >= len(blocks):
                continue
            blk = blocks[bg.pos]
            if blk.is_skip:
                vec[bg.op] = self.skip_index(bg.stage)  # type: ignore[assignment]
                continue
            vec[bg.op] = op = self.stage_ops[bg.stage].index((blk.kernel, blk.expand))
            first = 0 if self.op_has_expand[bg.stage][op] else 1  # no expand conv: its bits are inactive
            for g, w in list(zip(bg.w, blk.w_bits))[first:]:
                vec[g] = c.w_bits.index(w)
            for g, a in list(zip(bg.a, blk.a_bits))[first:]:
                vec[g] = c.a_bits.index(a)
        return vec

    def decode(self, vec: Sequence[int]) -> Arch:
        """The arch of a gene vector (length and ranges checked). A skip gene where no skip is
        allowed (a stage's first block) decodes to ``ops[0]``."""
        vec = self.check(vec)
        c = self.config
        g = self.genes
        stages: list[list[Block]] = [[] for _ in c.stages]
        depths = [c.stages[si].depths[vec[i]] for si, i in enumerate(self.depth)]
        for bg in self.blocks:
            if bg.pos >= depths[bg.stage]:
                continue
            op, ops = vec[bg.op], self.stage_ops[bg.stage]
            if op == self.skip_index(bg.stage):
                if bg.skip_allowed:
                    stages[bg.stage].append(Block.skip())
                    continue
                op = 0
            wi, ai = [vec[i] for i in bg.w], [vec[i] for i in bg.a]
            rep = self.bit_repair[bg.stage]
            if rep is not None:  # a width the exclude rules leave out: the nearest allowed one
                for ci in range(len(BLOCK_CONVS)):
                    wi[ci], ai[ci] = (int(x) for x in rep[op, ci, wi[ci], ai[ci]])
            wb = tuple(g[i].choices[v] for i, v in zip(bg.w, wi))
            ab = tuple(g[i].choices[v] for i, v in zip(bg.a, ai))
            if not self.op_has_expand[bg.stage][op]:  # no expand conv: its (inactive) bits mirror the dw conv's
                wb, ab = (wb[1],) + wb[1:], (ab[1],) + ab[1:]
            stages[bg.stage].append(Block(*ops[op], wb, ab))
        return Arch(c.resolutions[vec[self.resolution]], c.widths[vec[self.width]], tuple(tuple(s) for s in stages),
                    (c.stem_head_w_bits[vec[self.stem_w]], c.stem_head_a_bits[vec[self.stem_a]]),
                    (c.stem_head_w_bits[vec[self.head_w]], c.stem_head_a_bits[vec[self.head_a]]))

    def canonical(self, vec: Sequence[int]) -> list[int]:
        """``encode(decode(vec))``: the same arch with every gene that does not matter set to 0."""
        return self.encode(self.decode(vec))

    def canonical_matrix(self, X: Any) -> np.ndarray:
        """:meth:`canonical` of every row of an ``[N, n_genes]`` gene matrix, vectorised: the genes that
        do not change the decoded arch set to 0 (:meth:`active`), a skip where none is allowed (a
        stage's first block, which decodes as the stage's first op) made that op, and excluded bit
        widths made the ones they decode to (:meth:`repair_bits`)."""
        act = self.active(X)
        X = np.where(act, np.asarray(X, dtype=np.int64), 0)
        if self.config.allow_skip:
            for b in self.blocks:
                if not b.skip_allowed:
                    col = X[:, b.op]
                    col[col == self.skip_index(b.stage)] = 0
        if self.has_bit_rules:
            X = np.where(act, self.repair_bits(X), 0)
        return X

    def active(self, X: Any) -> np.ndarray:
        """Which genes change the decoded arch: ``[N, n_genes]`` bool for an ``[N, n_genes]`` matrix
        (``[n_genes]`` for one vector). Inactive: every gene of a position beyond its stage's depth,
        and the bit genes of a skipped block."""
        X = np.asarray(X, dtype=np.int64)
        one = X.ndim == 1
        X = np.atleast_2d(X)
        act = np.ones(X.shape, dtype=bool)
        for bg in self.blocks:
            on = self.depth_values[bg.stage][X[:, self.depth[bg.stage]]] > bg.pos
            act[:, bg.op] = on
            skip = self.skip_index(bg.stage)
            bits_on = on & (X[:, bg.op] != skip) if (bg.skip_allowed and skip is not None) else on
            act[:, list(bg.bits)] = bits_on[:, None]
            has_expand = self.op_has_expand[bg.stage]
            if not has_expand.all():  # ops without expand conv: the expand conv's bit genes do not matter
                op = np.where(X[:, bg.op] == skip, 0, X[:, bg.op]) if (skip is not None and not bg.skip_allowed) else X[:, bg.op]
                exp_on = bits_on & has_expand[op]
                act[:, bg.w[0]] = exp_on
                act[:, bg.a[0]] = exp_on
        return act[0] if one else act


def skip_allowed(config: "SpaceConfig", stage: int, pos: int) -> bool:
    """Whether block position ``pos`` of ``stage`` may be a skip: only when the space allows
    skips, and never a stage's first block (it changes the channels and may stride)."""
    return bool(config.allow_skip) and pos > 0


def _close_index(choices: Sequence[float], v: float) -> int:
    import math

    for i, c in enumerate(choices):
        if math.isclose(c, v):
            return i
    raise ArchError(f"width={v} is not allowed; choose one of {list(choices)}")
