"""Fast and differentiable sum-of-table latency over a whole search space.

Any per-layer cost ``layer_ms(LayerSpec) -> ms`` (``LatencyTable.lookup``, or
the ``layer_ms`` of any :class:`~qnas.latency.base.LatencyModel`) is
evaluated once for every layer shape the space can produce, and stored in
small arrays indexed by the genes of :meth:`SearchSpace.encode`:

* stem ``[RW, n_stem_w, n_stem_a]``, head ``[RW, n_head_w, n_head_a]``,
  pool ``[RW, n_u]`` (``RW`` = resolution x width, ``u`` = a bit width in the
  union of block and stem/head activation widths);
* per block position ``p`` (stages' positions in gene order) and conv
  ``c`` in (expand, depthwise, project): ``[RW, n_ops, n_w, n_a]``;
* per block position the residual add ``[RW, n_u]``: its bits are those of
  the layer that consumes its output (``inherit_weightless_bits``), i.e. the
  expand conv of the next active, non-skipped block, or the head.

The geometry behind those arrays is the space's own: it is read from
``space.plan`` of one max-depth arch per (resolution, width). It is exact
because in a :class:`SearchSpace` a block's input channels depend only on
the width and its stage/position (a stage's first block is never skipped and
always active), and its spatial size only on the resolution and the strides
of the stage-first blocks.

:class:`VectorizedTablePredictor` then prices a batch of gene vectors with
numpy fancy indexing (``predict_encoded``), and the expected latency of a
factorised distribution over archs as a torch expression
(:meth:`VectorizedTablePredictor.expected_latency`, see
:class:`ArchDistribution`), both equal to ``TableLatencyModel.predict`` of
the planned arch.

The standard mobile spaces add, only where the space has them: per-stage op
lists (the op axis is the largest stage's; a stage's skip value is its own op
count), ops without expand conv (their ``expand`` entries stay 0 and the
residual add's consumer bits are the depthwise conv's), a squeeze-excite array
``se [n_pos, RW, n_ops, n_a]`` (its pool, two convs and mul, by the project
conv's activation bits), and ``mix``/``pre_head`` ``[RW, n_head_w, n_head_a]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from qnas.errors import ArchError, LatencyTableError
from qnas.genes import BLOCK_CONVS
from qnas.quant.plan import LayerSpec, add_layer, pool_layer

if TYPE_CHECKING:
    import torch

    from qnas.arch import Arch
    from qnas.space import BlockGeometry, SearchSpace

CONVS = BLOCK_CONVS  # the convs of a block, in gene order


class SpaceGeometry:
    """Layer shapes of every slot of a search space, indexed like its genes.

    Positions, gene indices and layer shapes all come from the space itself
    (``space.genes``, ``space.block_geometry``, ``space.block_layers``,
    ``space.stem_layer``, ``space.head_layer``). ``slots()`` yields
    ``(slot, index, LayerSpec)`` for every layer an arch of the space can
    contain (with add/pool bits already inherited from their consumer); the
    arrays of :class:`VectorizedTablePredictor` and
    :func:`qnas.latency.table.space_layer_keys` are both built from it."""

    def __init__(self, space: "SearchSpace"):
        self.space = space
        c = self.config = space.config
        layout = self.layout = space.genes
        self.ops = tuple(space.ops)
        self.stage_ops = tuple(getattr(space, "stage_ops", (self.ops,) * len(c.stages)))
        self.stage_n_ops = [len(o) for o in self.stage_ops]
        self.n_ops = max(self.stage_n_ops)  # the op axis of the block arrays
        self.skip_col = c.allow_skip  # the op gene has an extra "skip" value (each stage's last)
        self.has_expand = [np.asarray([space.has_expand_conv(e) if hasattr(space, "has_expand_conv") else True
                                       for _, e in o] + [True] * (self.n_ops - len(o))) for o in self.stage_ops]
        self.all_expand = all(h.all() for h in self.has_expand)
        self.has_se = any(getattr(s, "se", False) for s in c.stages)
        self.has_mix = bool(getattr(c, "mix_channels", 0))
        self.has_pre_head = bool(getattr(c, "pre_head_channels", 0))
        self.R, self.W = len(c.resolutions), len(c.widths)
        self.RW = self.R * self.W
        self.n_w, self.n_a = len(c.w_bits), len(c.a_bits)
        self.n_sw, self.n_sa = len(c.stem_head_w_bits), len(c.stem_head_a_bits)
        self.union_a = tuple(sorted(set(c.a_bits) | set(c.stem_head_a_bits)))
        self.n_u = len(self.union_a)
        self.block_a_u = np.array([self.union_a.index(a) for a in c.a_bits], dtype=np.intp)
        self.head_a_u = np.array([self.union_a.index(a) for a in c.stem_head_a_bits], dtype=np.intp)
        self.max_depths = [max(s.depths) for s in c.stages]
        self.n_stages = len(c.stages)
        self.blocks = layout.blocks  # gene indices of every block position, in gene order
        self.n_genes = layout.n_genes
        self.n_pos = len(self.blocks)
        # geometry per (resolution, width) index rw = r * W + w
        self.pos_geo: list[list[BlockGeometry]] = []  # [rw][p]
        self.stem_cout: list[int] = []
        self.head_cin: list[int] = []  # the pool's channels (the last block's, or the mix conv's)
        self.final_hw: list[int] = []
        self.rw_pairs: list[tuple[int, float]] = []
        for r in c.resolutions:
            for w in c.widths:
                geo = space.block_geometry(r, w)
                self.rw_pairs.append((r, w))
                self.pos_geo.append(geo)
                cout = geo[-1].cout
                if self.has_mix:
                    cout = space.mix_layer(cout, geo[-1].hw_out, w, (8, 8)).cout
                self.head_cin.append(cout)
                self.final_hw.append(geo[-1].hw_out)

    # ---- which genes mean what ----------------------------------------------
    def add_consumers(self, stage: int, index: int) -> tuple[bool, bool]:
        """(a block can consume, the head can consume) the output of the add at this position."""
        depths = self.config.stages[stage].depths
        last = stage == self.n_stages - 1
        block = (not last) or any(d > index + 1 for d in depths)
        head = last and any(d == index + 1 or (d > index + 1 and self.config.allow_skip) for d in depths)
        return block, head

    def add_union_bits(self, stage: int, index: int) -> list[int]:
        """Indices into ``union_a`` the add at this position can carry."""
        block, head = self.add_consumers(stage, index)
        u: set[int] = set()
        if block:
            u |= set(self.block_a_u.tolist())
        if head:
            u |= set(self.head_a_u.tolist())
        return sorted(u)

    def repaired(self, stage: int, op: int, conv: int, i: int, j: int) -> tuple[int, int] | None:
        """The (w, a) choice indices conv ``conv`` of op ``op`` runs at instead of ``(i, j)`` when the
        space's exclude rules leave that pair out; None when it is allowed."""
        rep = self.layout.bit_repair[stage]
        if rep is None:
            return None
        ii, jj = (int(x) for x in rep[op, conv, i, j])
        return None if (ii, jj) == (i, j) else (ii, jj)

    # ---- layers ------------------------------------------------------------------
    def block_plan(self, geo: BlockGeometry, op: int, w_bits: int, a_bits: int) -> Any:
        """The :class:`~qnas.quant.plan.BlockPlan` of op ``op`` of the block's stage at ``geo``, every
        conv at ``(w_bits, a_bits)``."""
        from qnas.arch import Block

        k, e = self.stage_ops[geo.stage][op]
        return self.space.block_layers(geo, Block(k, e, (w_bits,) * 3, (a_bits,) * 3))

    def block_layers(self, geo: BlockGeometry, op: int, w_bits: int, a_bits: int) -> tuple[LayerSpec, ...]:
        """The (expand, depthwise, project) convs of op ``op`` at ``geo`` with every conv at
        ``(w_bits, a_bits)``; the expand conv is None for an op without one."""
        bp = self.block_plan(geo, op, w_bits, a_bits)
        return (bp.expand, bp.depthwise, bp.project)

    def slots(self) -> Iterator[tuple[str, tuple[int, ...], LayerSpec]]:
        """Every (array name, index, layer) the space needs, in a fixed order (``se`` slots
        yield each of the four SE layers under the same index: their costs add up)."""
        c, sp = self.config, self.space
        for rw, (r, w) in enumerate(self.rw_pairs):
            for i, wb in enumerate(c.stem_head_w_bits):
                for j, ab in enumerate(c.stem_head_a_bits):
                    yield "stem", (rw, i, j), sp.stem_layer(r, w, (wb, ab))
            for p, geo in enumerate(self.pos_geo[rw]):
                for o in range(self.stage_n_ops[geo.stage]):
                    se_done: set[int] = set()
                    for i, wb in enumerate(c.w_bits):
                        for j, ab in enumerate(c.a_bits):
                            bp = self.block_plan(geo, o, wb, ab)
                            for ci, (conv, layer) in enumerate(zip(CONVS, (bp.expand, bp.depthwise, bp.project))):
                                if layer is not None and self.repaired(geo.stage, o, ci, i, j) is None:
                                    yield conv, (p, rw, o, i, j), layer
                            # SE: by the project's a bits only (its first allowed w bits)
                            if bp.se is not None and j not in se_done and self.repaired(geo.stage, o, 2, i, j) is None:
                                se_done.add(j)
                                for layer in bp.se.all_layers:
                                    yield "se", (p, rw, o, j), layer
                if geo.residual:
                    for u in self.add_union_bits(geo.stage, geo.pos):
                        yield "add", (p, rw, u), add_layer(geo.name, geo.cout, geo.hw_out, self.union_a[u])
            last = self.pos_geo[rw][-1]
            for u in self.head_a_u.tolist():
                yield "pool", (rw, u), pool_layer(self.head_cin[rw], self.final_hw[rw], self.union_a[u])
            for i, wb in enumerate(c.stem_head_w_bits):
                for j, ab in enumerate(c.stem_head_a_bits):
                    cin = self.head_cin[rw]
                    if self.has_mix:
                        yield "mix", (rw, i, j), sp.mix_layer(last.cout, last.hw_out, w, (wb, ab))
                    if self.has_pre_head:
                        pre = sp.pre_head_layer(cin, w, (wb, ab))
                        yield "pre_head", (rw, i, j), pre
                        cin = pre.cout
                    yield "head", (rw, i, j), sp.head_layer(cin, (wb, ab))

    def array_shapes(self) -> dict[str, tuple[int, ...]]:
        blk = (self.n_pos, self.RW, self.n_ops, self.n_w, self.n_a)
        out = {"stem": (self.RW, self.n_sw, self.n_sa), "head": (self.RW, self.n_sw, self.n_sa),
               "pool": (self.RW, self.n_u), "add": (self.n_pos, self.RW, self.n_u),
               "expand": blk, "dw": blk, "project": blk}
        if self.has_se:
            out["se"] = (self.n_pos, self.RW, self.n_ops, self.n_a)
        if self.has_mix:
            out["mix"] = (self.RW, self.n_sw, self.n_sa)
        if self.has_pre_head:
            out["pre_head"] = (self.RW, self.n_sw, self.n_sa)
        return out


def _call_layer_ms(layer_ms: Callable[[LayerSpec], float], layer: LayerSpec) -> float:
    try:
        v = float(layer_ms(layer))
    except LatencyTableError:
        raise
    except KeyError:
        raise LatencyTableError(
            f"no latency for layer {layer.name!r} key {layer.key()}; measure it with `qnas latency measure` "
            "or import a latency table that covers this search space") from None
    if not np.isfinite(v) or v < 0:
        raise LatencyTableError(f"latency of layer {layer.name!r} key {layer.key()} is {v}; "
                                "latencies must be finite and >= 0, fix or re-measure the table")
    return v


class VectorizedTablePredictor:
    """Sum-of-table latency for gene vectors of ``space``, vectorised over archs.

    >>> pred = VectorizedTablePredictor(space, table.lookup)
    >>> ms = pred.predict_encoded(np.array([space.encode(a) for a in archs]))

    ``layer_ms`` is called once per distinct layer key the space can produce
    (see :func:`qnas.latency.table.space_layer_keys`); a missing table entry
    raises :class:`LatencyTableError` naming the key, at construction."""

    def __init__(self, space: "SearchSpace", layer_ms: Callable[[LayerSpec], float]):
        self.space = space
        self.geo = g = SpaceGeometry(space)
        shapes = g.array_shapes()
        self.arrays: dict[str, np.ndarray] = {k: np.zeros(s, dtype=np.float64) for k, s in shapes.items()}
        cache: dict[tuple, float] = {}
        for name, idx, layer in g.slots():
            key = layer.key()
            if key not in cache:
                cache[key] = _call_layer_ms(layer_ms, layer)
            if name == "se":  # the four layers of a squeeze-excite share one entry
                self.arrays[name][idx] += cache[key]
            else:
                self.arrays[name][idx] = cache[key]
        if g.layout.has_bit_rules:
            self._price_excluded_as_repaired()
        self.n_keys = len(cache)
        self._flat = {k: np.ascontiguousarray(v).ravel() for k, v in self.arrays.items()}
        c = space.config
        self._depth_values = [np.asarray(s.depths, dtype=np.int64) for s in c.stages]
        self._torch_cache: dict[Any, dict[str, Any]] = {}

    def _price_excluded_as_repaired(self) -> None:
        """Entries of bit pairs the exclude rules leave out get the cost of the pair they decode to, so
        the expected latency of a distribution prices them as the arch that would be built."""
        g = self.geo
        for p, b in enumerate(g.blocks):
            rep = g.layout.bit_repair[b.stage]
            if rep is None:
                continue
            for o in range(g.stage_n_ops[b.stage]):
                for ci, name in enumerate(CONVS):
                    a = self.arrays[name][p, :, o]
                    a[...] = a[:, rep[o, ci, ..., 0], rep[o, ci, ..., 1]]
                if "se" in self.arrays:  # by the project's a bits: only an a width it never runs at moves
                    se = self.arrays["se"][p, :, o]
                    kept = (rep[o, 2, :, :, 1] == np.arange(rep.shape[3])).any(axis=0)
                    se[...] = se[:, np.where(kept, np.arange(rep.shape[3]), rep[o, 2, 0, :, 1])]

    @classmethod
    def from_table(cls, space: "SearchSpace", table: Any) -> "VectorizedTablePredictor":
        return cls(space, table.lookup)

    # ---- numpy -------------------------------------------------------------------
    def predict_encoded(self, X: np.ndarray) -> np.ndarray:
        """Latency in ms of each row of ``X`` (``[N, n_genes]``, rows = ``space.encode(arch)``)."""
        g, L = self.geo, self.space.genes
        X = L.repair_bits(L.check_matrix(X))
        f = self._flat
        n_w, n_a, n_ops, n_u, RW = g.n_w, g.n_a, g.n_ops, g.n_u, g.RW
        rw = X[:, L.resolution] * g.W + X[:, L.width]
        total = f["stem"][(rw * g.n_sw + X[:, L.stem_w]) * g.n_sa + X[:, L.stem_a]]
        head_idx = (rw * g.n_sw + X[:, L.head_w]) * g.n_sa + X[:, L.head_a]
        total = total + f["head"][head_idx]
        for extra in ("mix", "pre_head"):
            if extra in f:
                total = total + f[extra][head_idx]
        carry = g.head_a_u[X[:, L.head_a]]  # union index of the a bits of the next consumer
        total = total + f["pool"][rw * n_u + carry]
        block_a_u = g.block_a_u
        fe, fd, fp, fa = f["expand"], f["dw"], f["project"], f["add"]
        for p in range(g.n_pos - 1, -1, -1):
            b = g.blocks[p]
            depth = self._depth_values[b.stage][X[:, L.depth[b.stage]]]
            active = depth > b.pos
            op = X[:, b.op]
            if g.skip_col:
                is_skip = op == g.stage_n_ops[b.stage]
                live = active & ~is_skip if b.skip_allowed else active
                op = np.where(is_skip, 0, op)  # decode: a skip where none is allowed is ops[0]
            else:
                live = active
            base = ((p * RW + rw) * n_ops + op) * n_w
            cost = (fe[(base + X[:, b.w[0]]) * n_a + X[:, b.a[0]]]
                    + fd[(base + X[:, b.w[1]]) * n_a + X[:, b.a[1]]]
                    + fp[(base + X[:, b.w[2]]) * n_a + X[:, b.a[2]]]
                    + fa[(p * RW + rw) * n_u + carry])
            if "se" in f:
                cost = cost + f["se"][((p * RW + rw) * n_ops + op) * n_a + X[:, b.a[2]]]
            total = total + np.where(live, cost, 0.0)
            if g.all_expand:
                carry = np.where(live, block_a_u[X[:, b.a[0]]], carry)
            else:  # an op without expand conv reads its input at the depthwise conv's bits
                first_a = np.where(g.has_expand[b.stage][op], X[:, b.a[0]], X[:, b.a[1]])
                carry = np.where(live, block_a_u[first_a], carry)
        return total

    def predict_archs(self, archs: Iterable["Arch"]) -> np.ndarray:
        """``predict_encoded`` of ``space.encode`` of each arch."""
        rows = [self.space.encode(a) for a in archs]
        if not rows:
            return np.zeros(0)
        return self.predict_encoded(np.asarray(rows, dtype=np.int64))

    def predict(self, arch: "Arch") -> float:
        return float(self.predict_archs([arch])[0])

    # ---- torch -------------------------------------------------------------------
    def _tables(self, dtype: Any, torch_device: Any) -> dict[str, Any]:
        import torch

        key = (dtype, str(torch_device))
        if key not in self._torch_cache:
            g = self.geo
            t = {k: torch.as_tensor(v, dtype=dtype, device=torch_device) for k, v in self.arrays.items()}
            # one-hot maps from block / head activation choices to the union of a bit widths
            t["block_u"] = torch.zeros(g.n_a, g.n_u, dtype=dtype, device=torch_device)
            t["block_u"][torch.arange(g.n_a), torch.as_tensor(g.block_a_u)] = 1
            t["head_u"] = torch.zeros(g.n_sa, g.n_u, dtype=dtype, device=torch_device)
            t["head_u"][torch.arange(g.n_sa), torch.as_tensor(g.head_a_u)] = 1
            self._torch_cache[key] = t
        return self._torch_cache[key]

    def expected_latency(self, dist: "ArchDistribution") -> "torch.Tensor":
        """E[latency] (ms) of an arch drawn from the factorised ``dist``, as a differentiable scalar.

        Every gene is independent under ``dist``, so the expectation is exact:
        each layer's table entry weighted by the probability of its choices, a
        block weighted by P(depth > position) and P(not skipped), a residual
        add by the distribution of the bits of whichever block (or the head)
        consumes it. With one-hot ``dist`` it equals the deterministic latency. Under bit exclude
        rules a conv's excluded widths are priced as the widths they decode to; the bits a residual
        add inherits from its consumer are taken before that repair (an approximation)."""
        import torch

        g = self.geo
        dist.check(self.space)
        T = self._tables(dist.resolution.dtype, dist.resolution.device)
        p_rw = (dist.resolution[:, None] * dist.width[None, :]).reshape(g.RW)
        total = torch.einsum("r,i,j,rij->", p_rw, dist.stem_w, dist.stem_a, T["stem"])
        total = total + torch.einsum("r,i,j,rij->", p_rw, dist.head_w, dist.head_a, T["head"])
        for extra in ("mix", "pre_head"):
            if extra in T:
                total = total + torch.einsum("r,i,j,rij->", p_rw, dist.head_w, dist.head_a, T[extra])
        head_u = dist.head_a @ T["head_u"]

        def first_bits(si: int, j: int, q: "torch.Tensor") -> "torch.Tensor":
            """Distribution (over the union of a bits) of the bits a block reads its input at."""
            a0 = dist.a_bits[si][j, 0] @ T["block_u"]
            if g.all_expand:
                return a0
            p_e = (q * torch.as_tensor(g.has_expand[si][:q.shape[0]], dtype=q.dtype, device=q.device)).sum()
            return p_e * a0 + (1 - p_e) * (dist.a_bits[si][j, 1] @ T["block_u"])

        def op_dist(si: int) -> tuple["torch.Tensor", "torch.Tensor"]:
            """(P(skip) per position, distribution over the stage's ops per position)."""
            ops, n = dist.op[si], g.stage_n_ops[si]
            if g.skip_col:
                allowed = torch.as_tensor([b.skip_allowed for b in self.space.genes.stage_blocks(si)], device=p_rw.device)
                p_skip = torch.where(allowed, ops[:, n], torch.zeros_like(ops[:, n]))
                # a skip gene where no skip is allowed decodes to ops[0]
                fold = torch.where(allowed, torch.zeros_like(p_skip), ops[:, n])
                return p_skip, torch.cat([ops[:, :1] + fold[:, None], ops[:, 1:n]], dim=1)
            return torch.zeros_like(ops[:, 0]), ops
        total = total + torch.einsum("r,u,ru->", p_rw, head_u, T["pool"])
        p = 0
        for si, s in enumerate(self.space.config.stages):
            D = g.max_depths[si]
            depth_vals = torch.as_tensor(s.depths, device=p_rw.device)
            n_s = g.stage_n_ops[si]
            p_skip, q_ops = op_dist(si)
            p_depth = [dist.depth[si][depth_vals == d].sum() for d in range(D + 1)]  # P(depth == d)
            a_u = [first_bits(si, j, q_ops[j]) for j in range(D)]
            if si + 1 < g.n_stages:
                nxt = first_bits(si + 1, 0, op_dist(si + 1)[1][0])
            else:
                nxt = head_u
            for j in range(D):
                pa = dist.depth[si][depth_vals > j].sum()  # P(block j active)
                wj, aj = dist.w_bits[si][j], dist.a_bits[si][j]
                conv = 0
                for ci, name in enumerate(CONVS):
                    conv = conv + torch.einsum("o,i,j,roij->r", q_ops[j], wj[ci], aj[ci], T[name][p + j][:, :n_s])
                if "se" in T:
                    conv = conv + torch.einsum("o,j,roj->r", q_ops[j], aj[2], T["se"][p + j][:, :n_s])
                total = total + pa * (p_rw @ conv)
                # residual add: consumer = first live block after j in this stage, else the next stage / head
                if not self.arrays["add"][p + j].any():  # never residual
                    continue
                p_ns = 1 - p_skip[j]
                e_add = 0
                for d in range(j + 1, D + 1):
                    if not bool((depth_vals == d).any()):
                        continue
                    q = 0
                    through = 1  # P(every position strictly between j and j' is skipped)
                    for jp in range(j + 1, d):
                        q = q + through * (1 - p_skip[jp]) * a_u[jp]
                        through = through * p_skip[jp]
                    q = q + through * nxt
                    e_add = e_add + p_depth[d] * q
                total = total + p_ns * torch.einsum("r,u,ru->", p_rw, e_add, T["add"][p + j])
            p += D
        return total

    def __repr__(self) -> str:
        return f"VectorizedTablePredictor({self.n_keys} layer keys, {self.geo.n_genes} genes)"


@dataclass
class ArchDistribution:
    """A factorised (every gene independent) distribution over the archs of a space.

    Each field holds probabilities (rows summing to 1) over one gene's choices,
    in :class:`SearchSpace` choice order:

    * ``resolution`` ``[n_resolutions]``, ``width`` ``[n_widths]``
    * ``stem_w``/``head_w`` ``[len(stem_head_w_bits)]``, ``stem_a``/``head_a`` ``[len(stem_head_a_bits)]``
    * ``depth[s]`` ``[len(stages[s].depths)]``
    * ``op[s]`` ``[max_depth_s, n_ops (+1 skip if allow_skip)]`` over ``space.ops``
      (kernel, expand) pairs then skip; as in ``decode``, the skip column of a
      position where no skip is allowed (a stage's first block) means ``ops[0]``
    * ``w_bits[s]`` ``[max_depth_s, 3, len(w_bits)]`` for (expand, depthwise, project)
    * ``a_bits[s]`` ``[max_depth_s, 3, len(a_bits)]``

    Build one from logits with :meth:`softmax`, or exactly one arch with :meth:`one_hot`.
    """

    resolution: "torch.Tensor"
    width: "torch.Tensor"
    stem_w: "torch.Tensor"
    stem_a: "torch.Tensor"
    head_w: "torch.Tensor"
    head_a: "torch.Tensor"
    depth: list
    op: list
    w_bits: list
    a_bits: list
    #: the space's :class:`~qnas.genes.GeneLayout` (which gene reads which row); not a tensor
    layout: Any = field(default=None, repr=False, compare=False)

    # ---- constructors ----------------------------------------------------------
    @staticmethod
    def shapes(space: "SearchSpace") -> dict[str, Any]:
        """Shape of each field (:meth:`qnas.genes.GeneLayout.group_shapes`)."""
        return space.genes.group_shapes()

    @classmethod
    def _build(cls, space: "SearchSpace", make: Callable[[tuple[int, ...]], "torch.Tensor"]) -> "ArchDistribution":
        kw: dict[str, Any] = {}
        for name, shp in cls.shapes(space).items():
            kw[name] = [make(s) for s in shp] if isinstance(shp, list) else make(shp)
        return cls(**kw, layout=space.genes)

    @classmethod
    def uniform(cls, space: "SearchSpace", dtype: Any = None, requires_grad: bool = False) -> "ArchDistribution":
        """Uniform probabilities over every gene (leaf tensors)."""
        import torch

        dtype = dtype or torch.float64
        return cls._build(space, lambda s: torch.full(s, 1.0 / s[-1], dtype=dtype, requires_grad=requires_grad))

    @classmethod
    def zeros_logits(cls, space: "SearchSpace", dtype: Any = None, requires_grad: bool = True) -> "ArchDistribution":
        """Zero logits (leaf tensors) of the right shapes, e.g. as trainable parameters."""
        import torch

        dtype = dtype or torch.float64
        return cls._build(space, lambda s: torch.zeros(s, dtype=dtype, requires_grad=requires_grad))

    @classmethod
    def one_hot(cls, space: "SearchSpace", arch: "Arch | Sequence[int]", dtype: Any = None) -> "ArchDistribution":
        """The point mass on one arch (or on one gene vector)."""
        import torch

        from qnas.arch import Arch

        dist = cls._build(space, lambda s: torch.zeros(s, dtype=dtype or torch.float64))
        layout = space.genes
        vec = space.encode(arch) if isinstance(arch, Arch) else layout.check(arch)
        for gene, v in zip(layout.genes, vec):
            layout.row(dist, gene)[v] = 1
        return dist

    # ---- transforms -------------------------------------------------------------
    def _tensor_fields(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "layout"]

    def map(self, fn: Callable[["torch.Tensor"], "torch.Tensor"]) -> "ArchDistribution":
        kw: dict[str, Any] = {}
        for name in self._tensor_fields():
            v = getattr(self, name)
            kw[name] = [fn(t) for t in v] if isinstance(v, list) else fn(v)
        return type(self)(**kw, layout=self.layout)

    def softmax(self) -> "ArchDistribution":
        """Treat every field as logits; softmax over the last axis."""
        return self.map(lambda t: t.softmax(-1))

    def tensors(self) -> list["torch.Tensor"]:
        out = []
        for name in self._tensor_fields():
            v = getattr(self, name)
            out.extend(v if isinstance(v, list) else [v])
        return out

    def check(self, space: "SearchSpace") -> None:
        """Raise :class:`ArchError` if a field's shape does not match ``space``."""
        for name, shp in self.shapes(space).items():
            v = getattr(self, name)
            if isinstance(shp, list):
                if not isinstance(v, (list, tuple)) or len(v) != len(shp):
                    raise ArchError(f"ArchDistribution.{name} must be a list of {len(shp)} tensors (one per stage)")
                pairs = [(f"{name}[{i}]", t, s) for i, (t, s) in enumerate(zip(v, shp))]
            else:
                pairs = [(name, v, shp)]
            for n, t, s in pairs:
                if tuple(t.shape) != tuple(s):
                    raise ArchError(f"ArchDistribution.{n} has shape {tuple(t.shape)}, this space needs {tuple(s)}")

    def sample_genes(self, n: int, rng: Any = None) -> np.ndarray:
        """``n`` gene vectors drawn from this distribution (``[n, n_genes]``, for Monte-Carlo checks)."""
        if self.layout is None:
            raise ArchError("this ArchDistribution has no gene layout; build it with ArchDistribution.uniform/"
                            "one_hot/zeros_logits(space) or pass layout=space.genes")
        g = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng

        def draw(p: "torch.Tensor") -> np.ndarray:
            p = p.detach().cpu().double().numpy()
            cdf = np.cumsum(p / p.sum())
            return np.minimum(np.searchsorted(cdf, g.random(n), side="right"), len(p) - 1)

        cols = [draw(self.layout.row(self, gene)) for gene in self.layout.genes]
        return np.stack(cols, axis=1).astype(np.int64)
