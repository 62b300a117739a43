"""SearchSpace / SpaceConfig: genotype operations, validation, config loading, plan()."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import yaml

from qnas.arch import Arch, Block
from qnas.errors import ArchError, ConfigError
from qnas.quant.plan import NetworkPlan
from qnas.space import SearchSpace, SpaceConfig, StageConfig

def with_block(arch: Arch, stage: int, index: int, block: Block) -> Arch:
    stages = [list(s) for s in arch.stages]
    stages[stage][index] = block
    return dataclasses.replace(arch, stages=tuple(tuple(s) for s in stages))


def with_stage(arch: Arch, stage: int, blocks) -> Arch:
    stages = list(arch.stages)
    stages[stage] = tuple(blocks)
    return dataclasses.replace(arch, stages=tuple(stages))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def nearest_multiple_of_8(v: float) -> int:
    """Round to the nearest multiple of 8 (ties up), never below 8 -- written independently of make_divisible."""
    lo = math.floor(v / 8) * 8
    r = lo + 8 if v - lo >= 4 else lo
    return max(8, r)



def test_encode_decode_round_trip_many(space, archs):
    n = len(space.bounds())
    for a in archs:
        v = space.encode(a)
        assert len(v) == n
        assert all(isinstance(x, int) for x in v)
        assert space.decode(v) == a
        assert space.encode(space.decode(v)) == v


def test_encode_decode_round_trip_skip_space(skip_space, skip_archs):
    for a in skip_archs:
        v = skip_space.encode(a)
        assert skip_space.decode(v) == a
        assert skip_space.encode(skip_space.decode(v)) == v


# ---------------------------------------------------------------- sample
def test_sample_deterministic_for_seed(space):
    for seed in range(5):
        assert space.sample(seed) == space.sample(seed)
        assert space.sample(np.random.default_rng(seed)) == space.sample(seed)


def test_sample_differs_across_seeds(space):
    samples = {space.sample(seed) for seed in range(20)}
    assert len(samples) >= 18


def test_sample_valid_and_in_bounds(space, archs):
    bounds = space.bounds()
    assert len(bounds) == len(space.encode(archs[0]))
    assert all(isinstance(b, int) and b >= 0 for b in bounds)
    for a in archs:
        assert space.validate(a) is a
        v = space.encode(a)
        assert len(v) == len(bounds)
        assert all(0 <= x <= hi for x, hi in zip(v, bounds))


def test_sample_explores_every_choice(space, archs):
    c = space.config
    assert {a.resolution for a in archs} == set(c.resolutions)
    assert {a.width for a in archs} == set(c.widths)
    blocks = [b for a in archs for b in a.blocks()]
    assert {b.kernel for b in blocks} == set(c.kernels)
    assert {b.expand for b in blocks} == set(c.expands)
    assert {w for b in blocks for w in b.w_bits} == set(c.w_bits)
    assert {x for b in blocks for x in b.a_bits} == set(c.a_bits)
    for i, s in enumerate(c.stages):
        assert {a.depths[i] for a in archs} == set(s.depths)


def test_bounds_is_a_copy(space):
    b = space.bounds()
    b[0] = 999
    assert space.bounds()[0] != 999


# ---------------------------------------------------------------- mutate
def test_mutate_valid_and_different(space, archs):
    rng = np.random.default_rng(7)
    for a in archs[:100]:
        child = space.mutate(a, rng)
        assert child != a
        space.validate(child)


def test_mutate_with_zero_prob_still_changes(space):
    a = space.sample(3)
    child = space.mutate(a, 0, prob=0.0)
    assert child != a
    space.validate(child)


def test_mutate_default_prob_is_local(space, archs):
    """Default prob 1/#genes: a child differs from its parent in only a few genes on average."""
    rng = np.random.default_rng(11)
    diffs = []
    for a in archs[:100]:
        va, vc = space.encode(a), space.encode(space.mutate(a, rng))
        diffs.append(sum(x != y for x, y in zip(va, vc)))
    assert min(diffs) >= 1
    assert np.mean(diffs) < 0.25 * len(space.bounds())


def test_mutate_deterministic_for_seed(space):
    a = space.sample(0)
    assert space.mutate(a, 5) == space.mutate(a, 5)


def test_mutate_skip_space(skip_space, skip_archs):
    rng = np.random.default_rng(8)
    for a in skip_archs[:100]:
        child = skip_space.mutate(a, rng)
        assert child != a
        skip_space.validate(child)


# ---------------------------------------------------------------- crossover
@pytest.mark.parametrize("which", ["plain", "skip"])
def test_crossover_genes_come_from_parents(which, space, skip_space, archs, skip_archs):
    sp, pool = (space, archs) if which == "plain" else (skip_space, skip_archs)
    rng = np.random.default_rng(99)
    differs_from_both = 0
    for a, b in zip(pool[:100], pool[100:200]):
        child = sp.crossover(a, b, rng)
        sp.validate(child)
        va, vb, vc = sp.encode(a), sp.encode(b), sp.encode(child)
        for i, (x, y, z) in enumerate(zip(va, vb, vc)):
            if x == y:
                assert z == x, f"gene {i}: both parents have {x}, child has {z}"
            assert z in (x, y), f"gene {i}: child {z} from neither parent ({x}, {y})"
        differs_from_both += child != a and child != b
    assert differs_from_both > 50


def test_crossover_of_identical_parents(space, archs):
    for a in archs[:20]:
        assert space.crossover(a, a, 0) == a


# ---------------------------------------------------------------- decode errors
def test_decode_rejects_wrong_length(space, archs):
    v = space.encode(archs[0])
    for bad in (v[:-1], v + [0], [], v[:6]):
        with pytest.raises(ArchError, match="length"):
            space.decode(bad)


def test_decode_rejects_out_of_range_genes(space, archs):
    v = space.encode(archs[0])
    for i, hi in enumerate(space.bounds()):
        for bad_value in (hi + 1, -1):
            bad = list(v)
            bad[i] = bad_value
            with pytest.raises(ArchError, match=f"gene {i}\\b"):
                space.decode(bad)


# ---------------------------------------------------------------- validate
def _msg(space, arch) -> str:
    with pytest.raises(ArchError) as ei:
        space.validate(arch)
    return str(ei.value)


def test_validate_accepts_uniform(space):
    a = space.uniform()
    assert space.validate(a) is a


def test_validate_rejects_3bit_weights(space):
    a = space.uniform()
    bad = with_block(a, 1, 0, Block(3, 4, (8, 3, 8), (8, 8, 8)))
    m = _msg(space, bad)
    assert "w_bits" in m and "[2, 4, 8]" in m and "3" in m
    assert "stages[1][0]" in m


def test_validate_rejects_kernel_4(space):
    bad = with_block(space.uniform(), 0, 0, Block(4, 4, (8, 8, 8), (8, 8, 8)))
    m = _msg(space, bad)
    assert "kernel" in m and "[3, 5, 7]" in m


def test_validate_rejects_bad_expand(space):
    bad = with_block(space.uniform(), 0, 0, Block(3, 5, (8, 8, 8), (8, 8, 8)))
    m = _msg(space, bad)
    assert "expand" in m and "[3, 4, 6]" in m


def test_validate_rejects_depth_out_of_range(space):
    a = space.uniform()
    blk = a.stages[0][0]
    too_deep = with_stage(a, 0, [blk] * 3)  # stage 0 allows depths (1, 2)
    m = _msg(space, too_deep)
    assert "depth" in m and "stages[0]" in m and "[1, 2]" in m
    empty = with_stage(a, 1, [])
    m = _msg(space, empty)
    assert "depth" in m and "[1, 2, 3]" in m


def test_validate_rejects_2bit_activations(space):
    bad = with_block(space.uniform(), 2, 1, Block(3, 4, (8, 8, 8), (8, 2, 8)))
    m = _msg(space, bad)
    assert "a_bits" in m and "[4, 8]" in m and "stages[2][1]" in m


def test_validate_rejects_wrong_number_of_bits(space):
    bad = with_block(space.uniform(), 0, 0, Block(3, 4, (8, 8), (8, 8, 8)))
    assert "3" in _msg(space, bad)


def test_validate_rejects_wrong_width(space):
    m = _msg(space, dataclasses.replace(space.uniform(), width=0.6))
    assert "width" in m and "[0.5, 0.75, 1.0]" in m


def test_validate_accepts_width_up_to_float_noise(space):
    a = dataclasses.replace(space.uniform(), width=0.75 + 1e-12)
    space.validate(a)
    assert space.decode(space.encode(a)).width == 0.75


def test_validate_rejects_wrong_resolution(space):
    m = _msg(space, dataclasses.replace(space.uniform(), resolution=32))
    assert "resolution" in m and "[12, 16, 20]" in m


def test_validate_rejects_stem_head_bits(space):
    m = _msg(space, dataclasses.replace(space.uniform(), stem_bits=(4, 8)))
    assert "stem" in m and "[8]" in m
    m = _msg(space, dataclasses.replace(space.uniform(), head_bits=(8, 4)))
    assert "head" in m and "[8]" in m


def test_validate_rejects_wrong_stage_count(space):
    a = space.uniform()
    m = _msg(space, dataclasses.replace(a, stages=a.stages[:-1]))
    assert "stages" in m


def test_validate_rejects_non_arch(space):
    with pytest.raises(ArchError):
        space.validate({"resolution": 16})  # type: ignore[arg-type]


def test_validate_rejects_skip_without_allow_skip(space):
    bad = with_block(space.uniform(), 1, 1, Block.skip())
    m = _msg(space, bad)
    assert "skip" in m and "allow_skip" in m
    with pytest.raises(ArchError):
        space.encode(bad)
    with pytest.raises(ArchError):
        space.plan(bad)


def test_encode_validates(space):
    with pytest.raises(ArchError):
        space.encode(dataclasses.replace(space.uniform(), resolution=13))


# ---------------------------------------------------------------- skips
def test_skip_allowed_only_on_non_first_blocks(skip_space):
    a = skip_space.uniform()
    ok = with_block(a, 1, 1, Block.skip())
    assert skip_space.validate(ok) is ok
    ok2 = with_block(ok, 1, 2, Block.skip())
    skip_space.validate(ok2)
    for stage in range(len(a.stages)):
        bad = with_block(a, stage, 0, Block.skip())
        m = _msg(skip_space, bad)
        assert "skip" in m and f"stages[{stage}][0]" in m


def test_sampled_skips_never_first(skip_archs):
    for a in skip_archs:
        for stage in a.stages:
            assert not stage[0].is_skip


def test_skip_blocks_vanish_from_plan(skip_space):
    a = skip_space.uniform()
    full = skip_space.plan(a)
    b = with_block(with_block(a, 1, 1, Block.skip()), 2, 2, Block.skip())
    p = skip_space.plan(b)
    assert len(p.blocks) == len(full.blocks) - 2
    names = [blk.expand.name for blk in p.blocks]
    assert "s1.b1.expand" not in names and "s2.b2.expand" not in names
    assert "s1.b0.expand" in names and "s1.b2.expand" in names
    assert all(not blk.expand.name.startswith(("s1.b1.", "s2.b2.")) for blk in p.blocks)
    assert len(p.quantized_layers()) == len(full.quantized_layers()) - 6
    # a skip keeps shapes: the block after it reads what the block before it wrote
    by_name = {blk.expand.name.rsplit(".", 1)[0]: blk for blk in p.blocks}
    assert by_name["s1.b2"].expand.cin == by_name["s1.b0"].project.cout
    assert by_name["s1.b2"].expand.hw_in == by_name["s1.b0"].project.hw_out


def test_plan_skip_space_matches_nonskip_blocks(skip_space, skip_archs):
    for a in skip_archs[:50]:
        p = skip_space.plan(a)
        assert len(p.blocks) == sum(not b.is_skip for b in a.blocks())


def test_skip_gene_on_first_block_decodes_to_a_real_block(skip_space):
    """The skip op index on a stage's first block cannot yield an invalid arch."""
    v = skip_space.encode(skip_space.uniform())
    bounds = skip_space.bounds()
    # first op gene of stage 0 sits right after the 6 global genes and the stage's depth gene
    op_pos = 7
    assert bounds[op_pos] == len(skip_space.ops)  # the skip choice
    v[op_pos] = bounds[op_pos]
    a = skip_space.decode(v)
    assert not a.stages[0][0].is_skip
    skip_space.validate(a)


# ---------------------------------------------------------------- config loading
def test_to_dict_from_dict_round_trip(space):
    d = space.to_dict()
    # the standard-mobile-space options appear only when set (old run configs stay byte-identical)
    from qnas.space import _OPTIONAL_FIELDS
    assert set(d) == set(SpaceConfig.__dataclass_fields__) - set(_OPTIONAL_FIELDS)
    assert SearchSpace.from_dict(d).config == space.config
    assert SearchSpace.from_dict(json.loads(json.dumps(d))).config == space.config


def test_from_dict_custom_config():
    d = {
        "resolutions": [8, 10],
        "widths": [1.0],
        "stem_channels": 8,
        "stages": [{"channels": 8, "depths": [1, 2]}, {"channels": 16, "depths": [1], "stride": 2}],
        "kernels": [3, 5],
        "expands": [2],
        "w_bits": [4, 8],
        "a_bits": [8],
        "allow_skip": True,
    }
    sp = SearchSpace.from_dict(d)
    c = sp.config
    assert c.resolutions == (8, 10)
    assert c.stages == (StageConfig(8, (1, 2), 1), StageConfig(16, (1,), 2))
    assert c.kernels == (3, 5) and c.w_bits == (4, 8) and c.a_bits == (8,)
    assert c.allow_skip is True
    assert c.num_classes == SpaceConfig().num_classes  # untouched defaults
    assert SearchSpace.from_dict(sp.to_dict()).config == c
    a = sp.sample(0)
    assert sp.decode(sp.encode(a)) == a


def test_from_yaml_round_trip(tmp_path):
    sp = SearchSpace(SpaceConfig(resolutions=(16,), widths=(0.5, 1.0), allow_skip=True,
                                 stages=(StageConfig(16, (1, 2)), StageConfig(32, (2, 3), 2))))
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(sp.to_dict()))
    loaded = SearchSpace.from_yaml(p)
    assert loaded.config == sp.config
    assert loaded.to_dict() == sp.to_dict()
    assert SearchSpace.from_yaml(str(p)).config == sp.config


def test_from_yaml_hand_written(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(
        "resolutions: [8]\n"
        "widths: [1.0]\n"
        "stages:\n"
        "  - {channels: 8, depths: [1]}\n"
        "  - channels: 16\n"
        "    depths: [1, 2]\n"
        "    stride: 2\n"
    )
    c = SearchSpace.from_yaml(p).config
    assert c.resolutions == (8,) and c.widths == (1.0,)
    assert c.stages == (StageConfig(8, (1,), 1), StageConfig(16, (1, 2), 2))


def test_from_yaml_empty_file_gives_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert SearchSpace.from_yaml(p).config == SpaceConfig()


def test_to_dict_is_plain_json_data(space):
    d = space.to_dict()
    assert json.loads(json.dumps(d)) == d


@pytest.mark.parametrize("d, words", [
    ({"bogus": 1}, ["bogus", "unknown"]),
    ({"w_bits": [1, 3, 8]}, ["w_bits", "[1]", "2-8"]),
    ({"w_bits": [2, 9]}, ["w_bits", "[9]"]),
    ({"a_bits": [2, 8]}, ["a_bits", "2", "4-8"]),
    ({"kernels": [3, 4]}, ["kernels", "4"]),
    ({"stages": []}, ["stages"]),
    ({"stages": [{"channels": 16, "depths": [1], "stride": 3}]}, ["stride", "3"]),
    ({"stages": [{"channels": 16}]}, ["stages[0]"]),
    ({"stages": [{"channels": 16, "depths": [1], "dilation": 2}]}, ["stages[0]"]),
    ({"stages": [{"channels": 0, "depths": [1]}]}, ["channels"]),
    ({"stages": [{"channels": 16, "depths": []}]}, ["depths"]),
    ({"stages": "four"}, ["stages"]),
    ({"w_bits": []}, ["w_bits"]),
    ({"w_bits": [4, 4]}, ["duplicates"]),
    ({"stem_head_a_bits": [2]}, ["stem_head_a_bits"]),
    ({"resolutions": [4]}, ["resolutions"]),
    ({"widths": [0.0]}, ["widths"]),
    ({"widths": [5]}, ["widths"]),
    ({"stem_stride": 3}, ["stem_stride"]),
    ({"num_classes": 1}, ["num_classes"]),
    ({"in_channels": 0}, ["in_channels"]),
    ({"allow_skip": "yes"}, ["allow_skip"]),
    ({"kernels": 3}, ["kernels"]),
])
def test_config_errors(d, words):
    with pytest.raises(ConfigError) as ei:
        SearchSpace.from_dict(d)
    for w in words:
        assert w in str(ei.value)


def test_config_errors_direct_dataclass():
    with pytest.raises(ConfigError):
        SearchSpace(SpaceConfig(stages=()))
    with pytest.raises(ConfigError):
        SearchSpace(SpaceConfig(stages=(StageConfig(16, (1,), 3),)))
    with pytest.raises(ConfigError, match="any of 2-8 bits"):
        SearchSpace(SpaceConfig(w_bits=(1,)))
    with pytest.raises(ConfigError, match="any of 4-8 bits"):
        SearchSpace(SpaceConfig(a_bits=(3,)))
    with pytest.raises(ConfigError, match="any of 2-8 bits"):
        SearchSpace(SpaceConfig(stem_head_w_bits=(9,)))


def test_a_space_may_offer_any_weight_width_2_to_8_and_activation_width_4_to_8():
    space = SearchSpace(SpaceConfig(w_bits=(3, 5, 6, 7), a_bits=(5, 6, 7), stem_head_w_bits=(6,),
                                    stem_head_a_bits=(6,)))
    arch = space.sample(0)
    space.validate(arch)
    assert {b for blk in arch.blocks() for b in blk.w_bits} <= {3, 5, 6, 7}
    layers = space.plan(arch).layers()
    assert {l.w_bits for l in layers if l.op in ("conv", "dwconv", "pwconv", "fc")} <= {3, 5, 6, 7}
    assert SearchSpace.from_dict(space.to_dict()).config == space.config


def test_from_dict_rejects_non_mapping():
    with pytest.raises(ConfigError):
        SearchSpace.from_dict([1, 2])  # type: ignore[arg-type]


def test_from_yaml_malformed(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("resolutions: [8, 12\nwidths: {\n")
    with pytest.raises(ConfigError) as ei:
        SearchSpace.from_yaml(p)
    assert "YAML" in str(ei.value)


def test_from_yaml_not_a_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError):
        SearchSpace.from_yaml(p)


def test_from_yaml_missing_file(tmp_path):
    with pytest.raises(ConfigError) as ei:
        SearchSpace.from_yaml(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(ei.value)


# ---------------------------------------------------------------- plan
@pytest.mark.parametrize("width, stem, stages", [
    (0.5, 8, [8, 16, 16, 32]),      # 16*.5=8, 24*.5=12->16, 32*.5=16, 64*.5=32
    (0.75, 16, [16, 16, 24, 48]),   # 12->16, 18->16, 24, 48
    (1.0, 16, [16, 24, 32, 64]),
])
def test_channels_hand_computed(space, width, stem, stages):
    assert space.channels(width) == (stem, stages)
    assert space.channels(width) == (nearest_multiple_of_8(16 * width),
                                     [nearest_multiple_of_8(s.channels * width) for s in space.config.stages])


def _check_plan(space: SearchSpace, arch: Arch, p: NetworkPlan) -> None:
    c = space.config
    stem_c = nearest_multiple_of_8(c.stem_channels * arch.width)
    stage_c = [nearest_multiple_of_8(s.channels * arch.width) for s in c.stages]
    assert p.resolution == arch.resolution and p.num_classes == c.num_classes and p.in_channels == c.in_channels
    # stem
    hw = ceil_div(arch.resolution, c.stem_stride)
    assert (p.stem.op, p.stem.cin, p.stem.cout, p.stem.k, p.stem.stride) == ("conv", c.in_channels, stem_c, 3, c.stem_stride)
    assert (p.stem.hw_in, p.stem.hw_out) == (arch.resolution, hw)
    assert (p.stem.w_bits, p.stem.a_bits) == arch.stem_bits
    cin = stem_c
    it = iter(p.blocks)
    for si, (s, blocks) in enumerate(zip(c.stages, arch.stages)):
        for j, b in enumerate(blocks):
            if b.is_skip:
                continue
            bp = next(it)
            stride = s.stride if j == 0 else 1
            mid = cin * b.expand
            ho = ceil_div(hw, stride)
            e, d, pr = bp.expand, bp.depthwise, bp.project
            assert e.name == f"s{si}.b{j}.expand" and d.name == f"s{si}.b{j}.dw" and pr.name == f"s{si}.b{j}.project"
            assert (e.op, e.cin, e.cout, e.k, e.stride, e.groups, e.hw_in, e.hw_out) == ("pwconv", cin, mid, 1, 1, 1, hw, hw)
            assert (d.op, d.cin, d.cout, d.k, d.stride, d.groups, d.hw_in, d.hw_out) == ("dwconv", mid, mid, b.kernel, stride, mid, hw, ho)
            assert (pr.op, pr.cin, pr.cout, pr.k, pr.stride, pr.groups, pr.hw_in, pr.hw_out) == ("pwconv", mid, stage_c[si], 1, 1, 1, ho, ho)
            assert (e.w_bits, d.w_bits, pr.w_bits) == b.w_bits
            assert (e.a_bits, d.a_bits, pr.a_bits) == b.a_bits
            assert bp.residual == (stride == 1 and cin == stage_c[si])
            cin, hw = stage_c[si], ho
    assert next(it, None) is None
    assert (p.head.op, p.head.cin, p.head.cout) == ("fc", cin, c.num_classes)
    assert (p.head.w_bits, p.head.a_bits) == arch.head_bits


def test_plan_matches_hand_rules(space, archs):
    for a in archs[:100]:
        _check_plan(space, a, space.plan(a))


def test_plan_skip_space_matches_hand_rules(skip_space, skip_archs):
    for a in skip_archs[:100]:
        _check_plan(skip_space, a, skip_space.plan(a))


def test_plan_concrete_arch(space):
    """A fully spelled-out arch with distinct bits per layer, checked field by field."""
    a = Arch(20, 1.0, (
        (Block(3, 3, (2, 4, 8), (4, 8, 4)),),
        (Block(5, 4, (8, 2, 4), (8, 4, 8)), Block(7, 6, (4, 8, 2), (8, 8, 4))),
        (Block(3, 6, (8, 8, 8), (4, 4, 4)),),
        (Block(7, 3, (2, 2, 2), (8, 8, 8)), Block(5, 3, (4, 4, 4), (4, 8, 4))),
    ))
    p = space.plan(a)
    # stem: 20 -> 10 (stride 2), 1 -> 16 channels
    assert (p.stem.cout, p.stem.hw_out) == (16, 10)
    b = p.blocks
    assert len(b) == 6
    # stage 0: stride 1, 16 -> 16 channels: residual
    assert (b[0].expand.cin, b[0].expand.cout, b[0].project.cout, b[0].project.hw_out) == (16, 48, 16, 10)
    assert b[0].residual
    assert [l.w_bits for l in b[0].layers] == [2, 4, 8] and [l.a_bits for l in b[0].layers] == [4, 8, 4]
    # stage 1 first block: stride 2, 10 -> 5, 16 -> 24 channels, k5 e4
    assert (b[1].expand.cout, b[1].depthwise.k, b[1].depthwise.stride, b[1].project.cout, b[1].project.hw_out) == (64, 5, 2, 24, 5)
    assert not b[1].residual
    assert [l.w_bits for l in b[1].layers] == [8, 2, 4] and [l.a_bits for l in b[1].layers] == [8, 4, 8]
    # stage 1 second block: stride 1, 24 -> 24: residual, e6 -> 144 mid
    assert (b[2].expand.cin, b[2].expand.cout, b[2].depthwise.k, b[2].depthwise.stride) == (24, 144, 7, 1)
    assert b[2].residual
    assert [l.w_bits for l in b[2].layers] == [4, 8, 2] and [l.a_bits for l in b[2].layers] == [8, 8, 4]
    # stage 2: 5 -> 3 (ceil), 24 -> 32
    assert (b[3].project.cout, b[3].depthwise.hw_in, b[3].depthwise.hw_out) == (32, 5, 3)
    assert not b[3].residual
    # stage 3: 3 -> 2, 32 -> 64; second block residual
    assert (b[4].project.cout, b[4].project.hw_out) == (64, 2)
    assert not b[4].residual and b[5].residual
    assert [l.a_bits for l in b[5].layers] == [4, 8, 4]
    assert (p.head.cin, p.head.cout) == (64, 10)
    # flat layer list: stem, 3 per block, one add per residual block, pool, head
    layers = p.layers()
    assert len(layers) == 1 + 3 * 6 + 3 + 2
    assert [l.name for l in layers if l.op == "add"] == ["s0.b0.add", "s1.b1.add", "s3.b1.add"]
    assert layers[0] is p.stem and layers[-1] is p.head and layers[-2].op == "pool"


def test_plan_stem_and_head_bits_from_arch():
    sp = SearchSpace(SpaceConfig(stem_head_w_bits=(4, 8), stem_head_a_bits=(4, 8)))
    base = sp.uniform(8, 8)
    for stem, head in [((4, 8), (8, 4)), ((8, 4), (4, 8)), ((4, 4), (8, 8))]:
        a = dataclasses.replace(base, stem_bits=stem, head_bits=head)
        p = sp.plan(a)
        assert (p.stem.w_bits, p.stem.a_bits) == stem
        assert (p.head.w_bits, p.head.a_bits) == head
        assert sp.decode(sp.encode(a)) == a
    # all four stem/head genes are searched independently
    seen = {(a.stem_bits, a.head_bits) for a in (sp.sample(s) for s in range(400))}
    assert len(seen) == 16


def test_plan_stride_config():
    sp = SearchSpace(SpaceConfig(resolutions=(32,), stem_stride=1,
                                 stages=(StageConfig(16, (1,), 2), StageConfig(16, (2,), 1), StageConfig(24, (1,), 2))))
    p = sp.plan(sp.uniform())
    assert p.stem.hw_out == 32
    assert [b.project.hw_out for b in p.blocks] == [16, 16, 16, 8]
    assert [b.residual for b in p.blocks] == [False, True, True, False]


# ---------------------------------------------------------------- uniform
@pytest.mark.parametrize("w, a", [(2, 4), (4, 8), (8, 8), (8, 4)])
def test_uniform_sets_every_block(space, w, a):
    arch = space.uniform(w, a)
    space.validate(arch)
    for b in arch.blocks():
        assert b.w_bits == (w, w, w) and b.a_bits == (a, a, a)
    p = space.plan(arch)
    for bp in p.blocks:
        assert all(l.w_bits == w and l.a_bits == a for l in bp.layers)
    assert arch.stem_bits == (8, 8) and arch.head_bits == (8, 8)


def test_uniform_largest_and_smallest(space):
    c = space.config
    big = space.uniform()
    small = space.uniform(largest=False)
    assert big.resolution == max(c.resolutions) and small.resolution == min(c.resolutions)
    assert big.width == max(c.widths) and small.width == min(c.widths)
    assert big.depths == tuple(max(s.depths) for s in c.stages)
    assert small.depths == tuple(min(s.depths) for s in c.stages)
    assert {(b.kernel, b.expand) for b in big.blocks()} == {(max(c.kernels), max(c.expands))}
    assert {(b.kernel, b.expand) for b in small.blocks()} == {(min(c.kernels), min(c.expands))}
    assert space.uniform(resolution=16).resolution == 16


def test_uniform_rejects_unsupported_bits(space):
    with pytest.raises(ArchError):
        space.uniform(3, 8)
    with pytest.raises(ArchError):
        space.uniform(8, 2)
    with pytest.raises(ArchError):
        space.uniform(resolution=64)


# ---------------------------------------------------------------- size
def test_size_positive(space, skip_space):
    assert space.size() > 0
    assert skip_space.size() > space.size()
    assert "SearchSpace(" in repr(space)


def _count_distinct(sp: SearchSpace) -> int:
    return len({sp.decode(v) for v in itertools.product(*(range(hi + 1) for hi in sp.bounds()))})


def test_size_counts_distinct_archs_exactly():
    """Brute force: enumerate every gene vector of a tiny space and count the distinct archs."""
    sp = SearchSpace(SpaceConfig(
        resolutions=(8, 12), widths=(1.0,), stem_channels=8,
        stages=(StageConfig(8, (1, 2)),), kernels=(3,), expands=(1, 2),
        w_bits=(8,), a_bits=(4, 8),
    ))
    n = _count_distinct(sp)
    # by hand: 2 resolutions * (per-block 2 ops * 2^3 a-bit choices = 16; depth 1 or 2 -> 16 + 256)
    assert n == 2 * (16 + 16 ** 2)
    assert math.isclose(10 ** sp.size(), n, rel_tol=1e-9)


def test_size_counts_distinct_archs_with_skip():
    sp = SearchSpace(SpaceConfig(
        resolutions=(8,), widths=(1.0,), stem_channels=8,
        stages=(StageConfig(8, (1, 2)),), kernels=(3,), expands=(1, 2),
        w_bits=(8,), a_bits=(4, 8), allow_skip=True,
    ))
    n = _count_distinct(sp)
    # by hand: a real block has 16 variants; first block can't skip; second block 16 + 1 (skip)
    assert n == 16 + 16 * 17
    assert math.isclose(10 ** sp.size(), n, rel_tol=1e-9)
