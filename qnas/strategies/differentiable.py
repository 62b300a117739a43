"""Differentiable architecture + precision search (ProxylessNAS / FBNet / GDAS style).

The weights live in the one weight-sharing supernet of the space
(:class:`qnas.supernet.Supernet`, the same one the supernet accuracy source
and progressive shrinking train: every op of a block position slices one
MBConv, every conv has learned fake-quantizers for every weight and
activation bit width), driven through differentiable gates
(:mod:`qnas.supernet.gates`). Architecture logits
(:class:`ArchLogits`) give a categorical distribution per gene group, the same
structure as :class:`~qnas.latency.vectorized.ArchDistribution`:

* per stage, the depth; per block position, the op (plus skip when the space
  allows it); per conv (expand, depthwise, project), the weight bits and the
  activation bits; the stem/head bits;
* each stage's op logits are sized by that stage's own (kernel, expand) pairs
  (``space.stage_ops``: the mobile presets' per-stage kernel/expand lists, the
  exclude rules already applied, so an excluded combination has no logit and
  is never derived); the skip column is the stage's own last one, masked at a
  stage's first block. A gene with a single choice (a fixed depth, a stage of
  one op, one bit width) is a constant, not a logit, and so are the
  expand-conv bit genes of a stage whose ops have no expand conv;
* resolution and width are fixed (``resolution``/``width`` options; by default
  the largest, or with a latency budget the largest pair whose fastest arch
  leaves room under the budget).

One training step is a weight step on a train batch and an arch step on a
validation batch. Both sample an arch with Gumbel noise:

* op and depth: straight-through hard Gumbel-softmax (binarized paths, GDAS /
  ProxylessNAS): the supernet runs only the sampled path (its active arch),
  each block's output multiplied by the hard gate (value 1) whose gradient
  reaches the logits; a block beyond a stage's minimum depth is mixed with its
  input by the depth gate;
* bits: a conv's effective weight is the Gumbel-softmax-weighted mixture of its
  fake-quantized versions, its input activation likewise (``hard_bits=True``
  makes these straight-through hard as well). Bit mixtures are per conv, not per
  (op, conv): a width the space's exclude rules leave out for some op is still
  mixed in while training, priced as the width it decodes to, and the derived
  arch decodes it the same way.

The arch loss is ``CE + latency_weight * log(E[latency])`` or, with a latency
budget ``B``, ``CE + lambda * relu(E[latency] / B' - 1)``, where ``E[latency]``
is the exact expectation of the sum-of-table latency under the softmax
distribution (:meth:`VectorizedTablePredictor.expected_latency` over
``context.latency.layer_ms``, each stage over its own ops), ``lambda`` grows
(and the target ``B'`` shrinks) while the derived arch (argmax of every group)
is priced over budget by ``context.latency.predict``. An arch that still misses the budget after
training is repaired greedily (the gene change that saves the most table
latency per unit of lost log-probability, until the latency model accepts it).

Weights: Adam with a cosine schedule; architecture: Adam. The first
``warmup_epochs`` train the weights only, on uniformly sampled paths.

>>> strat = create_strategy("differentiable", space, seed=0, budget=Budget(latency_ms=0.4),
...                         context=StrategyContext(splits=splits, latency=model))   # doctest: +SKIP
>>> archs = strat.ask(4)          # the derived arch, then samples of the final distribution  # doctest: +SKIP
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qnas._torch_utils import torch_threads
from qnas.arch import Arch
from qnas.quant.torch_device import to_device, training_layout
from qnas.quant.train import cosine_lr
from qnas.errors import ConfigError
from qnas.space import SearchSpace
from qnas.genes import BLOCK_CONVS
from qnas.quant.naming import block_path
from qnas.strategies.base import Budget, Strategy, StrategyContext, register_strategy
from qnas.supernet.gates import PathGates
from qnas.supernet.supernet import Supernet

__all__ = ["DifferentiableOptions", "DifferentiableStrategy", "DifferentiableSearch", "ArchLogits", "path_arch_and_gates"]

_MASKED = -1e4  # logit of a choice that is not allowed (a skip at a stage's first block)


# ---------------------------------------------------------------------------- options
@dataclass(frozen=True)
class DifferentiableOptions:
    """Hyper-parameters of :class:`DifferentiableStrategy` (its keyword options).

    ``latency_weight`` is the ``lambda`` of the loss (``"lambda"`` is accepted as
    an alias); its default is 0.1 for ``CE + lambda * log(E[lat])`` and 0.5 as
    the starting value of the hard-budget penalty."""

    epochs: int = 4
    warmup_epochs: int = 1
    batch_size: int = 32
    lr: float = 3e-3
    arch_lr: float = 0.05
    tau_start: float = 1.0
    tau_end: float = 0.2
    latency_weight: float | None = None
    lambda_growth: float = 1.1
    lambda_max: float = 1e3
    hard_bits: bool = False
    penalty: str = "relu"
    resolution: int | None = None
    width: float | None = None
    steps_per_epoch: int | None = None
    threads: int | None = None
    #: where the supernet trains (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``); the architecture
    #: logits and the expected-latency table stay on the CPU (they are tiny)
    torch_device: str = "cpu"

    def validate(self, space: SearchSpace) -> "DifferentiableOptions":
        def pos_int(name: str, lo: int = 1) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"differentiable option {name} must be an integer >= {lo}, got {v!r}")

        def pos_num(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ConfigError(f"differentiable option {name} must be a positive number, got {v!r}")

        pos_int("epochs")
        pos_int("warmup_epochs", lo=0)
        pos_int("batch_size")
        for name in ("lr", "arch_lr", "tau_start", "tau_end", "lambda_max"):
            pos_num(name)
        if self.latency_weight is not None:
            v = self.latency_weight
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"differentiable option latency_weight (lambda) must be a number >= 0, got {v!r}")
        if isinstance(self.lambda_growth, bool) or not isinstance(self.lambda_growth, (int, float)) \
                or not self.lambda_growth >= 1:
            raise ConfigError(f"differentiable option lambda_growth must be a number >= 1, got {self.lambda_growth!r}")
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(f"differentiable option warmup_epochs ({self.warmup_epochs}) must be below epochs "
                              f"({self.epochs}), or no architecture step is taken")
        if self.penalty not in ("relu", "abs"):
            raise ConfigError(f"differentiable option penalty must be 'relu' or 'abs', got {self.penalty!r}")
        if not isinstance(self.hard_bits, bool):
            raise ConfigError(f"differentiable option hard_bits must be true or false, got {self.hard_bits!r}")
        if self.steps_per_epoch is not None:
            pos_int("steps_per_epoch")
        if self.threads is not None:
            pos_int("threads")
        from qnas.quant.configs import validate_run_device

        validate_run_device(self.torch_device, "off")
        c = space.config
        if self.resolution is not None and self.resolution not in c.resolutions:
            raise ConfigError(f"differentiable option resolution={self.resolution!r} is not in the space; "
                              f"choose one of {list(c.resolutions)}")
        if self.width is not None and (isinstance(self.width, bool) or not isinstance(self.width, (int, float))
                                       or not any(math.isclose(self.width, w) for w in c.widths)):
            raise ConfigError(f"differentiable option width={self.width!r} is not in the space; "
                              f"choose one of {list(c.widths)}")
        return self


# ---------------------------------------------------------------------------- gumbel
def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator | None,
                   hard: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gumbel-softmax sample over the last axis: (weights, argmax index).

    ``hard``: one-hot in the forward pass, the soft sample's gradient in the
    backward pass (straight-through)."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).clamp_(1e-10, 1 - 1e-7)
    y = ((logits - torch.log(-torch.log(u))) / tau).softmax(-1)
    idx = y.argmax(-1)
    if not hard:
        return y, idx
    one_hot = F.one_hot(idx, logits.shape[-1]).to(y.dtype)
    return one_hot - y.detach() + y, idx


def _one_hot(idx: int, n: int) -> torch.Tensor:
    t = torch.zeros(n)
    t[idx] = 1
    return t


# ---------------------------------------------------------------------------- architecture parameters
@dataclass
class PathSample:
    """One sampled (or fixed) arch as gates for the super-network.

    ``depth_idx[s]``/``op_idx[s][j]`` are the chosen indices, the ``*_gate``
    tensors their (straight-through) one-hot gates; ``w``/``a`` hold per stage
    ``[max_depth, 3, n_bits]`` mixture weights, ``stem_w`` ... the stem/head ones."""

    depth_idx: list[int]
    depth_gate: list[torch.Tensor]
    op_idx: list[list[int]]
    op_gate: list[torch.Tensor]
    w: list[torch.Tensor]
    a: list[torch.Tensor]
    stem_w: torch.Tensor
    stem_a: torch.Tensor
    head_w: torch.Tensor
    head_a: torch.Tensor


class ArchLogits(nn.Module):
    """Trainable logits of every searchable gene group, in :class:`ArchDistribution` layout.

    Each stage's logits are sized by that stage's own choices (:meth:`qnas.genes.GeneLayout.group_shapes`):
    ``op[s]`` is ``[max_depth_s, len(space.stage_ops[s]) (+1 skip)]`` over the stage's (kernel, expand)
    pairs, the space's exclude rules already applied (an excluded combination has no logit at all), the
    skip column being the stage's own last one and masked where no skip is allowed (a stage's first
    block). A group tensor with a single choice (one depth, one op, one bit width: a fixed gene) is a
    constant buffer, not a parameter: it contributes no logits to learn; neither do the expand-conv
    bit rows of a stage none of whose ops has an expand conv (``expand1_no_conv``), which are fixed
    zero logits. Resolution and width are fixed (one-hot) at the given choice indices."""

    def __init__(self, space: SearchSpace, res_idx: int, width_idx: int):
        super().__init__()
        c, layout = space.config, space.genes
        self.space, self.res_idx, self.width_idx = space, res_idx, width_idx
        self.n_ops = len(space.ops)  # the space-wide op count (the default space's every stage)
        #: per stage, its number of (kernel, expand) ops (the op logits' columns, without skip)
        self.stage_n_ops = [len(o) for o in layout.stage_ops]
        self.n_stages = len(c.stages)
        #: per stage, the block convs (indices into BLOCK_CONVS) whose bit genes can be active
        self.bit_convs: list[tuple[int, ...]] = [
            tuple(range(len(BLOCK_CONVS))) if bool(layout.op_has_expand[si][:n].any())
            else tuple(range(1, len(BLOCK_CONVS))) for si, n in enumerate(self.stage_n_ops)]
        skip = 1 if c.allow_skip else 0
        for name, choices in (("stem_w", c.stem_head_w_bits), ("stem_a", c.stem_head_a_bits),
                              ("head_w", c.stem_head_w_bits), ("head_a", c.stem_head_a_bits)):
            self._logits(name, (len(choices),), len(choices) > 1)
        for si, s in enumerate(c.stages):
            self._logits(f"depth_{si}", (len(s.depths),), len(s.depths) > 1)
        for si, s in enumerate(c.stages):
            blocks = layout.stage_blocks(si)
            n_row = [self.stage_n_ops[si] + (1 if skip and b.skip_allowed else 0) for b in blocks]
            self._logits(f"op_{si}", (max(s.depths), self.stage_n_ops[si] + skip), max(n_row) > 1)
            mask = torch.zeros(max(s.depths), self.stage_n_ops[si] + skip)
            for b in blocks:
                if skip and not b.skip_allowed:
                    mask[b.pos, self.stage_n_ops[si]] = _MASKED
            self.register_buffer(f"op_mask{si}", mask)
        for group, bits in (("w_bits", c.w_bits), ("a_bits", c.a_bits)):
            for si, s in enumerate(c.stages):
                self._logits(f"{group}_{si}", (max(s.depths), len(self.bit_convs[si]), len(bits)), len(bits) > 1)

    def _logits(self, name: str, shape: tuple[int, ...], free: bool) -> None:
        """Zero logits: a parameter when there is something to choose, else a constant buffer."""
        if free:
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))
        else:
            self.register_buffer(name, torch.zeros(shape))

    # the group tensors, in gene-layout shapes
    @property
    def depth(self) -> list[torch.Tensor]:
        return [getattr(self, f"depth_{si}") for si in range(self.n_stages)]

    @property
    def op(self) -> list[torch.Tensor]:
        """Per stage the raw op logits ``[max_depth, n_stage_ops (+1 skip)]`` (without the skip mask)."""
        return [getattr(self, f"op_{si}") for si in range(self.n_stages)]

    def _bits(self, group: str, si: int) -> torch.Tensor:
        t = getattr(self, f"{group}_{si}")
        if len(self.bit_convs[si]) == len(BLOCK_CONVS):
            return t
        # no op of the stage has an expand conv: its bit genes are never active, fixed zero logits
        return torch.cat([t.new_zeros(t.shape[0], len(BLOCK_CONVS) - t.shape[1], t.shape[2]), t], dim=1)

    @property
    def w_bits(self) -> list[torch.Tensor]:
        """Per stage ``[max_depth, 3, n_w_bits]`` logits over (expand, depthwise, project)."""
        return [self._bits("w_bits", si) for si in range(self.n_stages)]

    @property
    def a_bits(self) -> list[torch.Tensor]:
        return [self._bits("a_bits", si) for si in range(self.n_stages)]

    def groups(self) -> dict[str, list[torch.Tensor]]:
        """Logit tensors by group name (for tests and reports), in gene-layout shapes; a group of one
        choice is a constant buffer (see the class docstring)."""
        return {"stem_w": [self.stem_w], "stem_a": [self.stem_a], "head_w": [self.head_w], "head_a": [self.head_a],
                "depth": self.depth, "op": self.op, "w_bits": self.w_bits, "a_bits": self.a_bits}

    def op_logits(self, si: int) -> torch.Tensor:
        return getattr(self, f"op_{si}") + getattr(self, f"op_mask{si}")

    def logits(self) -> dict[str, Any]:
        """The searchable logits in the gene layout's groups (:meth:`qnas.genes.GeneLayout.group_shapes`;
        resolution and width are fixed and not included)."""
        return {"stem_w": self.stem_w, "stem_a": self.stem_a, "head_w": self.head_w, "head_a": self.head_a,
                "depth": self.depth, "op": [self.op_logits(si) for si in range(self.n_stages)],
                "w_bits": self.w_bits, "a_bits": self.a_bits}

    def distribution(self, dtype: torch.dtype = torch.float64) -> Any:
        """The softmax :class:`ArchDistribution` (differentiable in the logits)."""
        from qnas.latency.vectorized import ArchDistribution

        c = self.space.config
        sm = lambda t: t.to(dtype).softmax(-1)  # noqa: E731
        probs = {k: [sm(t) for t in v] if isinstance(v, list) else sm(v) for k, v in self.logits().items()}
        return ArchDistribution(_one_hot(self.res_idx, len(c.resolutions)).to(dtype),
                                _one_hot(self.width_idx, len(c.widths)).to(dtype), **probs, layout=self.space.genes)

    def sample(self, tau: float, generator: torch.Generator | None, hard_bits: bool = False,
               uniform: bool = False) -> PathSample:
        """A Gumbel sample; gradients reach the logits unless ``uniform`` (zero logits, weights-only warm-up)."""
        def lg(t: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(t) if uniform else t

        depth_idx, depth_gate, op_idx, op_gate, ws, as_ = [], [], [], [], [], []
        w_bits, a_bits, depth, op = self.w_bits, self.a_bits, self.depth, self.op
        for si in range(self.n_stages):
            g, i = gumbel_softmax(lg(depth[si]), tau, generator, hard=True)
            depth_idx.append(int(i))
            depth_gate.append(g)
            logits = lg(op[si]) + getattr(self, f"op_mask{si}")
            g, i = gumbel_softmax(logits, tau, generator, hard=True)
            op_idx.append([int(v) for v in i])
            op_gate.append(g)
            ws.append(gumbel_softmax(lg(w_bits[si]), tau, generator, hard=hard_bits)[0])
            as_.append(gumbel_softmax(lg(a_bits[si]), tau, generator, hard=hard_bits)[0])
        heads = [gumbel_softmax(lg(t), tau, generator, hard=hard_bits)[0]
                 for t in (self.stem_w, self.stem_a, self.head_w, self.head_a)]
        return PathSample(depth_idx, depth_gate, op_idx, op_gate, ws, as_, *heads)

    def _fixed(self, group: str) -> int | None:
        return {"resolution": self.res_idx, "width": self.width_idx}.get(group)

    @torch.no_grad()
    def genes(self) -> list[int]:
        """The derived arch: argmax of every group, as a gene vector (not canonicalised)."""
        layout, logits = self.space.genes, self.logits()
        return [int(layout.row(logits, g).argmax()) if self._fixed(g.group) is None else self._fixed(g.group)
                for g in layout.genes]

    @torch.no_grad()
    def gene_log_probs(self) -> list[np.ndarray]:
        """Per gene of the vector, the log-probabilities of its choices (resolution/width: 0 at the fixed choice)."""
        layout, logits = self.space.genes, self.logits()
        out = []
        for g in layout.genes:
            fixed = self._fixed(g.group)
            if fixed is not None:
                out.append(np.where(np.arange(g.n_choices) == fixed, 0.0, -50.0))
            else:
                out.append(np.maximum(layout.row(logits, g).double().log_softmax(-1).numpy(), -50.0))
        return out

    def path_from_genes(self, vec: Sequence[int]) -> PathSample:
        """The fixed (one-hot, no gradient) gates of one gene vector."""
        from qnas.latency.vectorized import ArchDistribution

        layout = self.space.genes
        vec = layout.check(vec)
        d = ArchDistribution.one_hot(self.space, vec, dtype=torch.float32)
        n = len(self.space.config.stages)
        return PathSample([vec[layout.depth[si]] for si in range(n)], d.depth,
                          [[vec[b.op] for b in layout.stage_blocks(si)] for si in range(n)], d.op, d.w_bits, d.a_bits,
                          d.stem_w, d.stem_a, d.head_w, d.head_a)


# ---------------------------------------------------------------------------- the path on the supernet
def path_arch_and_gates(space: SearchSpace, s: PathSample, res_idx: int, width_idx: int) -> tuple[Arch, PathGates]:
    """The arch a sampled path runs (depths and ops as sampled, each conv at its most weighted bit
    width) and the gates that make the supernet's forward pass differentiable in the logits."""
    layout = space.genes
    vec = [0] * len(layout)
    vec[layout.resolution], vec[layout.width] = res_idx, width_idx
    for gene, t in ((layout.stem_w, s.stem_w), (layout.stem_a, s.stem_a), (layout.head_w, s.head_w),
                    (layout.head_a, s.head_a)):
        vec[gene] = int(t.argmax())
    gates = PathGates(w={"stem": s.stem_w, "head": s.head_w}, a={"stem": s.stem_a, "head": s.head_a})
    skips = set()
    for si, st in enumerate(space.config.stages):
        vec[layout.depth[si]] = s.depth_idx[si]
        depth = st.depths[s.depth_idx[si]]
        for b in layout.stage_blocks(si):
            op = s.op_idx[si][b.pos]
            vec[b.op] = op
            for c in range(3):
                vec[b.w[c]] = int(s.w[si][b.pos, c].argmax())
                vec[b.a[c]] = int(s.a[si][b.pos, c].argmax())
            if b.pos >= depth:
                continue
            name = block_path(si, b.pos)
            gates.op[name] = s.op_gate[si][b.pos, op]
            if b.pos >= min(st.depths):  # P(depth > j): the path vs. the identity
                gates.depth[name] = sum(s.depth_gate[si][k] for k, d in enumerate(st.depths) if d > b.pos)
            if op == layout.skip_index(si) and b.skip_allowed:  # the stage's own skip value
                skips.add(name)
                continue
            for c, conv in enumerate(BLOCK_CONVS):
                if c == 0 and not layout.op_has_expand[si][op]:  # an op without expand conv (expand 1)
                    continue
                gates.w[f"{name}.{conv}"] = s.w[si][b.pos, c]
                gates.a[f"{name}.{conv}"] = s.a[si][b.pos, c]
    gates.skips = frozenset(skips)
    return space.decode(vec), gates


# ---------------------------------------------------------------------------- the search engine
@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    val_loss: float | None
    val_acc: float | None  # accuracy of the sampled paths on the arch steps' validation batches
    expected_ms: float
    derived_ms: float
    latency_weight: float
    tau: float
    seconds: float


class DifferentiableSearch:
    """The super-network, its architecture logits and the alternating training loop.

    ``predictor`` is a :class:`~qnas.latency.vectorized.VectorizedTablePredictor` of ``space``
    (for ``E[latency]``), ``latency`` a function ``arch -> ms`` that decides the budget
    (``LatencyModel.predict`` of the arch's plan)."""

    def __init__(self, space: SearchSpace, predictor: Any, latency: Callable[[Arch], float],
                 budget: Budget | None = None, options: DifferentiableOptions | None = None, seed: int = 0):
        self.space, self.predictor, self.latency = space, predictor, latency
        # the genes repair and coordinate descent may change when resolution and width stay fixed
        self._not_rw = [g.index for g in space.genes.genes if g.group not in ("resolution", "width")]
        self.budget = budget or Budget()
        self.opt = (options or DifferentiableOptions()).validate(space)
        self.seed = seed
        c = space.config
        self.resolution, self.width = self._choose_resolution_width()
        res_idx = c.resolutions.index(self.resolution)
        width_idx = next(i for i, w in enumerate(c.widths) if math.isclose(w, self.width))
        # the one weight-sharing supernet; batch norm switches per expand ratio only (bits are mixed here)
        from qnas.quant.torch_device import resolve_torch_device

        self.device = resolve_torch_device(self.opt.torch_device)
        self.net = Supernet.from_seed(space, seed, bn_per_bits=False).to(self.device)
        self.res_idx, self.width_idx = res_idx, width_idx
        self.arch = ArchLogits(space, res_idx, width_idx)
        self.gen = torch.Generator().manual_seed(seed)
        hard = self.budget.latency_ms is not None
        default_w = 0.5 if hard else 0.1
        self.lam = float(self.opt.latency_weight if self.opt.latency_weight is not None else default_w)
        self.target_ms = self.budget.latency_ms  # the budget on the table's scale (see _control)
        self.offset_ms = 0.0
        self.w_opt = torch.optim.Adam(self.net.parameters(), lr=self.opt.lr)
        arch_params = list(self.arch.parameters())  # none when every searchable gene has one choice
        self.a_opt = (torch.optim.Adam(arch_params, lr=self.opt.arch_lr, betas=(0.5, 0.999))
                      if arch_params else None)
        self.history: list[EpochLog] = []
        self.summary: dict[str, Any] = {}
        self._step = 0

    # ---- genes and costs -----------------------------------------------------------
    def canonical(self, vec: Sequence[int]) -> list[int]:
        return self.space.canonical(vec)

    def table_ms(self, vecs: np.ndarray) -> np.ndarray:
        return self.predictor.predict_encoded(np.asarray(vecs, dtype=np.int64))

    def violation(self, arch: Arch) -> float:
        """Budget violation of an arch (latency from the latency model, size/peak counted)."""
        b = self.budget
        return b.violation(Budget.record(self.space.plan(arch), self.latency(arch) if b.latency_ms is not None else 0.0))

    def _est_violation(self, vecs: list[list[int]], offset: float) -> np.ndarray:
        """Budget violation estimated from the table (+ offset); size/peak counted exactly."""
        b = self.budget
        v = np.zeros(len(vecs))
        if b.latency_ms is not None:
            lat = self.table_ms(np.asarray(vecs)) + offset
            v += np.maximum(lat - b.latency_ms, 0) / b.latency_ms
        counted = Budget(None, b.size_kb, b.peak_act_kb)  # the limits the table cannot estimate
        if counted != Budget():
            for i, vec in enumerate(vecs):
                v[i] += counted.violation(Budget.record(self.space.plan(self.space.decode(vec)), 0.0))
        return v

    def _neighbours(self, vec: Sequence[int], genes: Sequence[int]) -> np.ndarray:
        """The distinct canonical vectors one gene change away from ``vec`` (genes in order, then values;
        ``[N, n_genes]``), vectorised: the mobile presets have a couple of hundred genes."""
        bounds = self.space.bounds()
        which = [(i, x) for i in genes for x in range(bounds[i] + 1) if x != vec[i]]
        cur = np.asarray(vec, dtype=np.int64)
        if not which:
            return cur[:0]
        X = np.repeat(cur[None, :], len(which), axis=0)
        idx = np.asarray(which, dtype=np.int64)
        X[np.arange(len(which)), idx[:, 0]] = idx[:, 1]
        X = self.space.genes.canonical_matrix(X)
        seen = {cur.tobytes()}  # drop ``vec`` itself and repeats, keeping first occurrences in order
        keep = []
        for i, row in enumerate(X):
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                keep.append(i)
        return X[keep]

    def repair(self, vec: Sequence[int], log_probs: list[np.ndarray] | None = None,
               fixed_rw: bool = True, max_iter: int = 500) -> list[int] | None:
        """Greedy repair: apply the single gene change with the largest estimated violation drop per unit of
        lost log-probability (table latency drop when no change lowers the estimate) until the arch meets the
        budget. Resolution/width change only when ``fixed_rw`` is off. None when it gets stuck."""
        cur = self.canonical(vec)
        genes = self._not_rw if fixed_rw else range(len(cur))
        if log_probs is not None:  # [n_genes, most choices] (padding never indexed)
            lp = np.zeros((len(cur), max(len(r) for r in log_probs)))
            for i, r in enumerate(log_probs):
                lp[i, :len(r)] = r
            cols = np.arange(len(cur))
        for _ in range(max_iter):
            arch = self.space.decode(cur)
            if self.violation(arch) == 0:
                return cur
            offset = (self.latency(arch) - float(self.table_ms(np.asarray([cur]))[0])
                      if self.budget.latency_ms is not None else 0.0)
            nbrs = self._neighbours(cur, genes)
            if not len(nbrs):
                return None
            v_cur = self._est_violation([cur], offset)[0]
            v_new = self._est_violation(nbrs, offset)
            t_cur = float(self.table_ms(np.asarray([cur]))[0])
            t_new = self.table_ms(nbrs)
            gain = v_cur - v_new
            if not (gain > 1e-12).any():  # the estimate says "fine" but the model disagrees: cut table latency
                gain = (t_cur - t_new) / max(t_cur, 1e-12)
                if not (gain > 1e-12).any():
                    return None
            if log_probs is not None:  # lost log-probability of the changed genes active in both
                N, c = nbrs, np.asarray(cur, dtype=np.int64)
                layout = self.space.genes
                changed = (N != c) & layout.active(c)[None, :] & layout.active(N)
                lost = np.clip(lp[cols, c][None, :] - lp[cols[None, :], N], 0.0, 50.0)
                cost = np.zeros(len(nbrs))
                for i in range(len(cur)):  # summed in gene order
                    cost += np.where(changed[:, i], lost[:, i], 0.0)
                cost += 0.05
            else:
                cost = np.ones(len(nbrs))
            score = np.where(gain > 1e-12, gain / cost, -np.inf)
            cur = nbrs[int(np.argmax(score))].tolist()
        return None

    def fastest(self, resolution: int | None = None, width: float | None = None) -> list[int]:
        """A (locally) fastest gene vector by coordinate descent on the table, optionally at one (resolution, width)."""
        c = self.space.config
        best: list[int] | None = None
        best_ms = math.inf
        starts = []
        for wb in c.w_bits:
            for ab in c.a_bits:
                for r in ([resolution] if resolution is not None else c.resolutions):
                    a = self.space.uniform(wb, ab, largest=False, resolution=r)
                    if width is not None:
                        a = Arch(a.resolution, width, a.stages, a.stem_bits, a.head_bits)
                    starts.append(self.space.encode(a))
        genes = self._not_rw if resolution is not None else range(len(starts[0]))
        for start in starts:
            cur, ms = start, float(self.table_ms(np.asarray([start]))[0])
            while True:
                nbrs = self._neighbours(cur, genes)
                if not len(nbrs):
                    break
                t = self.table_ms(nbrs)
                i = int(np.argmin(t))
                if t[i] >= ms - 1e-12:
                    break
                cur, ms = nbrs[i].tolist(), float(t[i])
            if ms < best_ms:
                best, best_ms = cur, ms
        return best  # type: ignore[return-value]

    def _choose_resolution_width(self) -> tuple[int, float]:
        c = self.space.config
        if self.opt.resolution is not None and self.opt.width is not None:
            return self.opt.resolution, float(self.opt.width)
        res = [self.opt.resolution] if self.opt.resolution is not None else list(c.resolutions)
        wid = [float(self.opt.width)] if self.opt.width is not None else list(c.widths)
        pairs = sorted(((r, w) for r in res for w in wid), key=lambda p: (p[0] * p[1], p[1]), reverse=True)
        b = self.budget.latency_ms
        if b is None:
            return pairs[0]
        # with a budget: the largest pair whose fastest arch uses at most 3/4 of it, else the one with most room
        mins = []
        for r, w in pairs:
            m = self.latency(self.space.decode(self.fastest(r, w)))
            if m <= 0.75 * b:
                return r, w
            mins.append(m)
        return pairs[int(np.argmin(mins))]

    # ---- training ----------------------------------------------------------------------
    def tau_at(self, t: float) -> float:
        """Temperature at fraction ``t`` in [0, 1] of the architecture phase (exponential decay)."""
        o = self.opt
        return o.tau_start * (o.tau_end / o.tau_start) ** min(max(t, 0.0), 1.0)

    def forward(self, x: torch.Tensor, s: PathSample) -> torch.Tensor:
        """The supernet's logits on the sampled path ``s`` (gated: differentiable in the logits)."""
        arch, gates = path_arch_and_gates(self.space, s, self.res_idx, self.width_idx)
        if self.device.type != "cpu":  # the logits (and so the gates) live on the CPU; gradients flow back
            gates = _gates_on(gates, self.device)
        self.net.set_active(arch, quantize=True)
        with self.net.gated(gates):
            return self.net(x)

    def weight_step(self, x: torch.Tensor, y: torch.Tensor, tau: float, uniform: bool = False) -> float:
        x, y = training_layout(to_device(x, self.device)), to_device(y, self.device)
        self.net.train()
        with torch.no_grad():
            s = self.arch.sample(tau, self.gen, self.opt.hard_bits, uniform=uniform)
        loss = F.cross_entropy(self.forward(x, s), y)
        self.w_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.w_opt.step()
        return float(loss.detach())

    def expected_ms(self) -> torch.Tensor:
        """E[table latency] (ms) under the current softmax distribution, differentiable in the logits."""
        return self.predictor.expected_latency(self.arch.distribution())

    def arch_loss(self, ce: torch.Tensor, e_ms: torch.Tensor) -> torch.Tensor:
        if self.budget.latency_ms is None:
            return ce + self.lam * torch.log(e_ms).to(ce.device, ce.dtype)
        r = e_ms / self.target_ms - 1
        pen = torch.relu(r) if self.opt.penalty == "relu" else r.abs()
        return ce + self.lam * pen.to(ce.device, ce.dtype)

    def arch_step(self, x: torch.Tensor, y: torch.Tensor, tau: float) -> tuple[float, float, float]:
        """One Adam step on the logits; returns (CE, accuracy of the sampled path, E[latency])."""
        x, y = training_layout(to_device(x, self.device)), to_device(y, self.device)
        self.net.train()
        s = self.arch.sample(tau, self.gen, self.opt.hard_bits)
        out = self.forward(x, s)
        ce = F.cross_entropy(out, y)
        e_ms = self.expected_ms()
        loss = self.arch_loss(ce, e_ms)
        if self.a_opt is not None:
            self.a_opt.zero_grad(set_to_none=True)
            loss.backward(inputs=list(self.arch.parameters()))
            self.a_opt.step()
        self._control()
        return float(ce.detach()), float((out.argmax(1) == y).float().mean()), float(e_ms.detach())

    def derived_genes(self) -> list[int]:
        return self.canonical(self.arch.genes())

    def _control(self) -> None:
        """Budget mode: while the derived arch misses the budget, raise lambda and lower the table target."""
        b = self.budget.latency_ms
        if b is None:
            return
        vec = self.derived_genes()
        true_ms = self.latency(self.space.decode(vec))
        table = float(self.table_ms(np.asarray([vec]))[0])
        self.offset_ms = true_ms - table
        goal = b - self.offset_ms  # the budget on the table's scale
        if goal <= 0:
            goal = b
        if true_ms > b:
            self.lam = min(self.lam * self.opt.lambda_growth, self.opt.lambda_max)
            self.target_ms = min(self.target_ms, goal) * 0.98
        else:
            self.target_ms = min(goal, self.target_ms * 1.01)

    def fit(self, train: Any, val: Any, progress: bool = False) -> list[EpochLog]:
        """Alternate weight steps (``train``) and arch steps (``val``), ``ImageDataset``s of any resolution."""
        from tqdm.auto import tqdm

        o = self.opt
        t0 = time.perf_counter()
        tr, va = train.at_resolution(self.resolution), val.at_resolution(self.resolution)
        steps = math.ceil(len(tr) / o.batch_size)
        if o.steps_per_epoch is not None:
            steps = min(steps, o.steps_per_epoch)
        total = o.epochs * steps
        arch_total = (o.epochs - o.warmup_epochs) * steps
        if self.budget.latency_ms is not None:
            self._control()  # initial offset between the table and the latency model
        bar = tqdm(total=total, desc="differentiable search", disable=not progress, unit="step")
        try:
            for epoch in range(o.epochs):
                te = time.perf_counter()
                warm = epoch < o.warmup_epochs
                vals = _cycle(va, o.batch_size, self.seed + 1000 + epoch)
                tl, vl, vacc, e_ms, n_arch = [], [], [], [], 0
                for i, (x, y) in enumerate(tr.loader(o.batch_size, shuffle=True, seed=self.seed + epoch)):
                    if i >= steps:
                        break
                    if len(y) < 2:  # batch norm needs two samples (a last batch of one)
                        continue
                    for g in self.w_opt.param_groups:
                        g["lr"] = cosine_lr(self._step, total, o.lr)
                    arch_t = (self._step - o.warmup_epochs * steps) / max(arch_total - 1, 1)
                    tau = o.tau_start if warm else self.tau_at(arch_t)
                    tl.append(self.weight_step(x, y, tau, uniform=warm))
                    if not warm:
                        xv, yv = next(vals)
                        c, a, e = self.arch_step(xv, yv, tau)
                        vl.append(c)
                        vacc.append(a)
                        e_ms.append(e)
                        n_arch += 1
                    self._step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{tl[-1]:.3f}", lam=f"{self.lam:.3g}")
                with torch.no_grad():
                    e_now = float(self.expected_ms())
                vec = self.derived_genes()
                self.history.append(EpochLog(
                    epoch, float(np.mean(tl)), float(np.mean(vl)) if vl else None,
                    float(np.mean(vacc)) if vacc else None, e_now, self.latency(self.space.decode(vec)),
                    self.lam, tau, time.perf_counter() - te))
        finally:
            bar.close()
        self.summary["train_seconds"] = time.perf_counter() - t0
        return self.history

    # ---- results ---------------------------------------------------------------------
    @torch.no_grad()
    def accuracy(self, vec: Sequence[int], splits: Any, recalibrate_batches: Any = 8, *old: Any) -> float | None:
        """Validation accuracy of one arch inherited from the supernet, BN re-estimated on
        ``recalibrate_batches`` train batches (the supernet accuracy source). None for another
        (resolution, width) than the search trained."""
        from qnas.supernet import SupernetEvaluator

        if not hasattr(splits, "val"):  # deprecated form accuracy(vec, train, val[, recalibrate_batches])
            import warnings

            from qnas.data import Splits

            warnings.warn("DifferentiableSearch.accuracy(vec, train, val) is deprecated; pass the Splits: "
                          "accuracy(vec, splits)", DeprecationWarning, stacklevel=2)
            splits, recalibrate_batches = Splits(splits, recalibrate_batches, recalibrate_batches), (old or (8,))[0]

        arch = self.space.decode(vec)
        if arch.resolution != self.resolution or not math.isclose(arch.width, self.width):
            return None
        evaluator = SupernetEvaluator(self.net, splits, recalibrate_batches, self.opt.batch_size, self.seed + 7)
        return evaluator(arch)["val_acc"]


def _gates_on(gates: PathGates, device: torch.device) -> PathGates:
    """``gates`` with every tensor on ``device`` (differentiable copies)."""
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return PathGates(move(gates.w), move(gates.a), move(gates.op), move(gates.depth), gates.skips)


def _cycle(ds: Any, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    k = 0
    while True:
        for x, y in ds.loader(batch_size, shuffle=True, seed=seed + 7919 * k):
            if len(y) >= 2:
                yield x, y
        k += 1


# ---------------------------------------------------------------------------- the strategy
class DifferentiableStrategy(Strategy):
    """ProxylessNAS/FBNet-style search of ops, depths and per-conv bit widths (see the module docstring).

    Needs ``context.splits`` (trains on train, architecture steps on val) and
    ``context.latency`` (a :class:`~qnas.latency.base.LatencyModel`) in
    :meth:`ask`; the constructor only checks the options. The first ``ask``
    runs the search; it returns the derived arch first, then distinct archs
    sampled from the final distribution (all within the budget when one is
    set); later asks return further samples. ``tell`` is ignored."""

    prices_energy = False

    name = "differentiable"

    def __init__(self, space: SearchSpace, seed: int = 0, budget: Budget | None = None,
                 context: StrategyContext | None = None, **options: Any):
        if "lambda" in options:
            if "latency_weight" in options:
                raise ConfigError("give the differentiable strategy either lambda or latency_weight, not both")
            options["latency_weight"] = options.pop("lambda")
        known = {f.name for f in fields(DifferentiableOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"strategy 'differentiable' takes no option(s) {unknown}; valid: {sorted(known | {'lambda'})}")
        self.options = DifferentiableOptions(**options).validate(space)
        super().__init__(space, seed, budget, context)
        self.search: DifferentiableSearch | None = None
        self.derived: Arch | None = None
        self.asked: set[Arch] = set()
        self._pending: list[Arch] = []
        self._sample_rng = np.random.default_rng(seed)
        self._log_probs: list[np.ndarray] | None = None

    # ---- helpers ------------------------------------------------------------------
    def _require_context(self) -> tuple[Any, Any]:
        ctx = self.context
        if ctx.splits is None or ctx.latency is None:
            missing = " and ".join(n for n, v in (("data splits", ctx.splits), ("a latency model", ctx.latency)) if v is None)
            raise ConfigError(f"the differentiable strategy trains a super-network and needs {missing}: pass "
                              "context=StrategyContext(splits=..., latency=...) or run it through qnas.search")
        if not hasattr(ctx.latency, "layer_ms") or not hasattr(ctx.latency, "predict"):
            raise ConfigError(f"the differentiable strategy needs a LatencyModel with layer_ms/predict, "
                              f"got a {type(ctx.latency).__name__}")
        return ctx.splits, ctx.latency

    def _ok(self, arch: Arch) -> bool:
        assert self.search is not None
        return self.search.violation(arch) == 0

    def _run(self) -> None:
        from qnas.latency.vectorized import VectorizedTablePredictor

        splits, model = self._require_context()
        space = self.space
        t0 = time.perf_counter()
        predictor = VectorizedTablePredictor(space, model.layer_ms)
        latency = lambda a: float(model.predict(space.plan(a)))  # noqa: E731
        with torch_threads(self.options.threads):
            search = DifferentiableSearch(space, predictor, latency, self.budget, self.options, self.seed)
            self.search = search
            if self.budget.latency_ms is not None or self.budget.size_kb is not None or self.budget.peak_act_kb is not None:
                fastest = space.decode(search.fastest())
                if not self._ok(fastest):
                    raise ConfigError(f"no arch of the search space meets the budget (fastest found: "
                                      f"{latency(fastest):.4g} ms); raise the budget or widen the space")
            search.fit(splits.train, splits.val, progress=self.context.progress)
            self._log_probs = search.arch.gene_log_probs()
            raw = search.derived_genes()
            vec = raw
            repaired = False
            if not self._ok(space.decode(vec)):
                repaired = True
                vec = search.repair(vec, self._log_probs) or search.repair(vec, self._log_probs, fixed_rw=False) \
                    or search.fastest()
            self.derived = space.validate(space.decode(vec))  # valid by construction: checked all the same
            acc = search.accuracy(vec, splits)
        search.summary.update({
            "derived": self.derived.to_dict(), "describe": self.derived.describe(),
            "derived_ms": latency(self.derived), "budget_ms": self.budget.latency_ms, "repaired": repaired,
            "unrepaired_ms": latency(space.decode(raw)), "expected_ms": float(search.expected_ms().detach()),
            "derived_val_acc": acc, "resolution": search.resolution, "width": search.width,
            "seconds": time.perf_counter() - t0,
        })
        self._pending = [self.derived]

    def _samples(self, n: int) -> list[Arch]:
        """Up to ``n`` distinct, never asked, budget-meeting archs from the final distribution; the
        distribution is flattened (temperature doubled) when samples keep repeating."""
        assert self.search is not None
        search, space = self.search, self.space
        dist = search.arch.distribution()
        out: list[Arch] = []
        temp, misses = 1.0, 0
        while len(out) < n and temp <= 64:
            d = dist if temp == 1.0 else dist.map(lambda t: (t.log() / temp).softmax(-1))
            for vec in d.sample_genes(max(4 * n, 16), self._sample_rng):
                arch = space.decode(vec)
                if arch in self.asked or arch in out:
                    misses += 1
                    continue
                if not self._ok(arch):
                    fixed = search.repair(space.encode(arch), self._log_probs)
                    arch = space.decode(fixed) if fixed is not None else None
                    if arch is None or arch in self.asked or arch in out:
                        misses += 1
                        continue
                out.append(arch)
                if len(out) == n:
                    break
            if misses > 8 * n + 16:
                temp, misses = temp * 2, 0
        return out

    # ---- the contract ---------------------------------------------------------------
    def ask(self, n: int) -> list[Arch]:
        if self.search is None:
            self._require_context()
            self._run()
        out = [a for a in self._pending[:n] if a not in self.asked]
        self._pending = self._pending[n:]
        if len(out) < n:
            with torch.no_grad():
                out += self._samples(n - len(out))
        self.asked.update(out)
        return out

    @property
    def summary(self) -> dict[str, Any]:
        """What the search found (derived arch, its latency vs. budget, accuracy in the super-network, time)."""
        return dict(self.search.summary) if self.search else {}

    @property
    def history(self) -> list[EpochLog]:
        return list(self.search.history) if self.search else []


register_strategy("differentiable", DifferentiableStrategy)


def __getattr__(name: str) -> Any:
    # One release of grace: the strategy's own super-network is gone; it drives qnas.supernet.Supernet.
    if name == "SuperNet":
        import warnings

        warnings.warn("qnas.strategies.differentiable.SuperNet is deprecated: the differentiable search drives "
                      "qnas.supernet.Supernet through PathGates (qnas.supernet.gates)", DeprecationWarning, stacklevel=2)
        return Supernet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
