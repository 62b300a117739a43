"""GeneLayout: the one definition of the gene vector, and the block geometry the plan is built from."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qnas.errors import ArchError
from qnas.genes import GROUPS, GeneLayout
from qnas.latency.vectorized import ArchDistribution
from qnas.space import SearchSpace, SpaceConfig, StageConfig

SPACES = {
    "default": SearchSpace(),
    "skip": SearchSpace(SpaceConfig(allow_skip=True)),
    "odd": SearchSpace(SpaceConfig(resolutions=(16, 24), widths=(0.75, 1.25), kernels=(3, 5), expands=(2, 6),
                                   w_bits=(4, 8), a_bits=(8,), stem_head_w_bits=(4, 8), allow_skip=True,
                                   stages=(StageConfig(8, (1,), 1), StageConfig(16, (2, 4), 2),
                                           StageConfig(24, (1, 3), 1)))),
}


@pytest.fixture(params=sorted(SPACES))
def space(request) -> SearchSpace:
    return SPACES[request.param]


def test_layout_is_the_space_encoding(space):
    L = space.genes
    assert isinstance(L, GeneLayout)
    assert len(L) == len(space.bounds()) == L.n_genes
    assert [g.index for g in L.genes] == list(range(len(L)))
    assert space.bounds() == [g.n_choices - 1 for g in L.genes]
    assert {g.group for g in L.genes} == set(GROUPS)
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = space.sample(rng)
        assert L.encode(a) == space.encode(a)
        assert L.decode(L.encode(a)) == a


def test_every_block_position_has_one_op_and_three_plus_three_bit_genes(space):
    L = space.genes
    positions = [(s, j) for s, st in enumerate(space.config.stages) for j in range(max(st.depths))]
    assert [(b.stage, b.pos) for b in L.blocks] == positions
    seen = set()
    for b in L.blocks:
        idx = (b.op, *b.w, *b.a)
        assert not seen & set(idx)
        seen |= set(idx)
        assert L.genes[b.op].group == "op"
        assert [L.genes[i].group for i in b.w] == ["w_bits"] * 3
        assert [L.genes[i].group for i in b.a] == ["a_bits"] * 3
        assert b.skip_allowed == (space.config.allow_skip and b.pos > 0) == space.skip_allowed(b.stage, b.pos)


def test_active_genes_are_exactly_those_that_change_the_arch(space):
    """Changing an inactive gene never changes the decoded arch; changing an active one does (but for
    the skip value where no skip is allowed, which decodes to ops[0] like value 0)."""
    L = space.genes
    rng = np.random.default_rng(1)
    for _ in range(40):
        vec = L.encode(space.sample(rng))
        act = L.active(vec)
        arch = L.decode(vec)
        for g in L.genes:
            for v in range(g.n_choices):
                if v == vec[g.index]:
                    continue
                other = list(vec)
                other[g.index] = v
                changed = L.decode(other) != arch
                same_op = (g.group == "op" and not space.skip_allowed(g.stage, g.pos)
                           and {v, vec[g.index]} == {0, L.skip_op})
                assert changed == (bool(act[g.index]) and not same_op), (g, v)


def test_canonical_zeroes_inactive_genes_and_keeps_the_arch(space):
    L = space.genes
    rng = np.random.default_rng(2)
    hi = np.asarray(space.bounds())
    for _ in range(100):
        raw = [int(rng.integers(0, h + 1)) for h in hi]
        can = space.canonical(raw)
        assert L.decode(can) == L.decode(raw)
        act = L.active(can)
        assert all(v == 0 for v, a in zip(can, act) if not a)
        assert space.canonical(can) == can


def test_matrix_active_matches_rows(space):
    rng = np.random.default_rng(3)
    X = np.asarray([space.encode(space.sample(rng)) for _ in range(50)])
    A = space.genes.active(X)
    assert A.shape == X.shape
    for x, a in zip(X, A):
        assert (space.genes.active(x) == a).all()


def test_decode_and_check_reject_bad_vectors(space):
    L = space.genes
    vec = L.encode(space.sample(0))
    with pytest.raises(ArchError, match="length"):
        L.decode(vec[:-1])
    bad = list(vec)
    bad[0] = len(space.config.resolutions)
    with pytest.raises(ArchError, match="gene 0"):
        L.decode(bad)
    with pytest.raises(ArchError, match="shape"):
        L.check_matrix(np.zeros((2, len(vec) + 1), dtype=int))


def test_fill_calls_pick_in_gene_order(space):
    calls = []
    vec = space.genes.fill(lambda g: calls.append(g.index) or 0)
    assert calls == list(range(len(space.genes)))
    assert vec == [0] * len(calls)


def test_rows_address_each_genes_slot(space):
    """row() of a one-hot distribution is the one-hot of that gene's value, for every gene."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        vec = space.encode(space.sample(rng))
        d = ArchDistribution.one_hot(space, vec)
        for g in space.genes.genes:
            row = space.genes.row(d, g)
            assert row.shape == (g.n_choices,)
            assert int(row.argmax()) == vec[g.index] and float(row.sum()) == 1.0
        # and sampling a point mass returns the vector
        assert (d.sample_genes(3, 0) == np.asarray(vec)).all()


def test_group_shapes_hold_every_gene_once(space):
    shapes = space.genes.group_shapes()
    cells = 0
    for name, shp in shapes.items():
        for s in (shp if isinstance(shp, list) else [shp]):
            cells += int(np.prod(s[:-1])) if len(s) > 1 else 1
    assert cells == len(space.genes)
    d = ArchDistribution.uniform(space, dtype=torch.float32)
    d.check(space)


def test_plan_is_built_from_the_block_geometry(space):
    """Each planned block sits where block_geometry says, whatever the depth and skips before it."""
    rng = np.random.default_rng(5)
    for _ in range(100):
        a = space.sample(rng)
        geo = {g.name: g for g in space.block_geometry(a.resolution, a.width)}
        plan = space.plan(a)
        for bp in plan.blocks:
            g = geo[bp.name]
            assert (bp.expand.cin, bp.project.cout, bp.expand.hw_in, bp.project.hw_out) == (g.cin, g.cout, g.hw_in, g.hw_out)
            assert bp.depthwise.stride == g.stride and bp.residual == g.residual
            assert bp.layers == space.block_layers(g, a.stages[g.stage][g.pos]).layers
        assert plan.head.cin == plan.blocks[-1].project.cout
