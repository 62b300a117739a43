"""count_costs: MACs, params, deployed size, BitOps and peak activation memory, checked against hand counts."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qnas.arch import Arch, Block
from qnas.costs import Costs, count_costs
from qnas.space import SearchSpace, SpaceConfig, StageConfig


# ---------------------------------------------------------------- tiny spaces
def tiny_space() -> SearchSpace:
    """1 stage x 1 block. res 8 -> stem (3x3, s2) 1->8 ch at 4x4 -> MBConv e2 k3 s2 8->16->16 at 2x2 -> fc 16->10."""
    return SearchSpace(SpaceConfig(
        in_channels=1, num_classes=10, resolutions=(8,), widths=(1.0,),
        stem_channels=8, stem_stride=2,
        stages=(StageConfig(16, (1,), 2),),
        kernels=(3,), expands=(2,),
    ))


def tiny_arch(w=(8, 8, 8), a=(8, 8, 8)) -> Arch:
    return Arch(8, 1.0, ((Block(3, 2, tuple(w), tuple(a)),),))


# Hand counts for tiny_space / tiny_arch (MACs = hw_out^2 * cout * cin/groups * k^2):
STEM_MACS = 4 * 4 * 8 * 1 * 9            # 1152
STEM_PARAMS = 8 * 1 * 9                  # 72
EXP_MACS, EXP_PARAMS = 4 * 4 * 16 * 8, 16 * 8        # 2048, 128 (1x1, 8->16 at 4x4)
DW_MACS, DW_PARAMS = 2 * 2 * 16 * 1 * 9, 16 * 9      # 576, 144 (3x3 depthwise, stride 2: 4x4 -> 2x2)
PROJ_MACS, PROJ_PARAMS = 2 * 2 * 16 * 16, 16 * 16    # 1024, 256 (1x1, 16->16 at 2x2)
HEAD_MACS, HEAD_PARAMS = 16 * 10, 16 * 10 + 10       # 160, 170 (fc with bias)


def test_tiny_macs_and_params_by_hand():
    sp = tiny_space()
    c = count_costs(sp.plan(tiny_arch()))
    assert isinstance(c, Costs)
    assert c.macs == STEM_MACS + EXP_MACS + DW_MACS + PROJ_MACS + HEAD_MACS == 4960
    assert c.params == STEM_PARAMS + EXP_PARAMS + DW_PARAMS + PROJ_PARAMS + HEAD_PARAMS == 770


def test_residual_two_block_macs_and_params_by_hand():
    """Stage of 2 residual blocks (8->8 ch, stride 1), k5 e3, at 4x4."""
    sp = SearchSpace(SpaceConfig(
        resolutions=(8,), widths=(1.0,), stem_channels=8, stem_stride=2,
        stages=(StageConfig(8, (2,), 1),), kernels=(5,), expands=(3,),
    ))
    blk = Block(5, 3, (8, 8, 8), (8, 8, 8))
    arch = Arch(8, 1.0, ((blk, blk),))
    plan = sp.plan(arch)
    assert all(b.residual for b in plan.blocks)
    stem = 4 * 4 * 8 * 9                                   # 1152
    per_block_macs = 16 * 24 * 8 + 16 * 24 * 25 + 16 * 8 * 24  # 3072 + 9600 + 3072
    per_block_params = 24 * 8 + 24 * 25 + 8 * 24          # 192 + 600 + 192
    head_macs, head_params = 8 * 10, 8 * 10 + 10
    c = count_costs(plan)
    assert c.macs == stem + 2 * per_block_macs + head_macs == 32720
    assert c.params == 72 + 2 * per_block_params + head_params == 2130


def test_width_scales_tiny_channels():
    """Width 0.5 in a space with 16-ch stem and 32-ch stage: channels 8 and 16."""
    sp = SearchSpace(SpaceConfig(resolutions=(8,), widths=(0.5, 1.0), stem_channels=16, stem_stride=2,
                                 stages=(StageConfig(32, (1,), 2),), kernels=(3,), expands=(2,)))
    half = Arch(8, 0.5, ((Block(3, 2, (8, 8, 8), (8, 8, 8)),),))
    c = count_costs(sp.plan(half))
    # identical shapes to tiny_space: stem 1->8, block 8->16->16, head 16->10
    assert c.macs == 4960 and c.params == 770
    full = count_costs(sp.plan(dataclasses.replace(half, width=1.0)))
    assert full.macs > c.macs and full.params > c.params


# ---------------------------------------------------------------- size
def test_tiny_size_bits_by_hand():
    sp = tiny_space()
    stem_bits = STEM_PARAMS * 8
    head_bits = 16 * 10 * 8 + 10 * 32   # 8-bit weights + 32-bit bias
    block_params = EXP_PARAMS + DW_PARAMS + PROJ_PARAMS
    s8 = count_costs(sp.plan(tiny_arch(w=(8, 8, 8)))).size_bits
    s4 = count_costs(sp.plan(tiny_arch(w=(4, 4, 4)))).size_bits
    mixed = count_costs(sp.plan(tiny_arch(w=(2, 4, 8)))).size_bits
    assert s8 == stem_bits + 8 * block_params + head_bits == 6400
    assert s4 == stem_bits + 4 * block_params + head_bits
    assert mixed == stem_bits + 2 * EXP_PARAMS + 4 * DW_PARAMS + 8 * PROJ_PARAMS + head_bits
    c = count_costs(sp.plan(tiny_arch()))
    assert c.size_kb == pytest.approx(c.size_bits / 8 / 1024)
    d = c.to_dict()
    assert d["size_bits"] == c.size_bits and d["macs"] == c.macs
    assert d["size_kb"] == pytest.approx(c.size_kb, abs=1e-3)


def test_size_bits_halves_when_block_weights_go_8_to_4():
    sp = SearchSpace()
    for res in (12, 20):
        a8, a4 = sp.uniform(8, 8, resolution=res), sp.uniform(4, 8, resolution=res)
        p = sp.plan(a8)
        # stem/head stay 8-bit; the head's bias is 32-bit
        fixed = p.stem.cout * p.stem.cin * 9 * 8 + p.head.cin * p.head.cout * 8 + p.head.cout * 32
        s8, s4 = count_costs(p).size_bits, count_costs(sp.plan(a4)).size_bits
        assert s8 - fixed == 2 * (s4 - fixed)
        assert s4 / s8 == pytest.approx(0.5, abs=0.03)
    # the same holds for the smallest arch and for 4 -> 2
    small8, small4 = sp.uniform(8, 8, largest=False), sp.uniform(4, 8, largest=False)
    small2 = sp.uniform(2, 8, largest=False)
    s8, s4, s2 = (count_costs(sp.plan(x)).size_bits for x in (small8, small4, small2))
    assert s8 - s4 == 2 * (s4 - s2) > 0


# ---------------------------------------------------------------- BitOps
def test_tiny_bitops_by_hand():
    sp = tiny_space()
    fixed = STEM_MACS * 64 + HEAD_MACS * 64
    assert count_costs(sp.plan(tiny_arch())).bitops == fixed + (EXP_MACS + DW_MACS + PROJ_MACS) * 64
    mixed = count_costs(sp.plan(tiny_arch(w=(2, 4, 8), a=(4, 8, 4)))).bitops
    assert mixed == fixed + EXP_MACS * 2 * 4 + DW_MACS * 4 * 8 + PROJ_MACS * 8 * 4


def test_bitops_scale_with_w_times_a():
    sp = SearchSpace()
    b = {(w, a): count_costs(sp.plan(sp.uniform(w, a))).bitops for w in (2, 4, 8) for a in (4, 8)}
    # bitops(w, a) = F + M * w * a, with F the fixed 8x8 stem/head part and M the blocks' MACs
    p = sp.plan(sp.uniform())
    fixed = (p.stem.macs + p.head.macs) * 64
    block_macs = count_costs(p).macs - p.stem.macs - p.head.macs
    for (w, a), v in b.items():
        assert v == fixed + block_macs * w * a
    assert b[(8, 8)] - b[(4, 8)] == b[(8, 8)] - b[(8, 4)] == 2 * (b[(4, 8)] - b[(2, 8)])
    assert (b[(8, 8)] - fixed) == 8 * (b[(2, 4)] - fixed)


def test_macs_params_independent_of_bits_and_bitops_bounded():
    sp = SearchSpace()
    rng = np.random.default_rng(0)
    for _ in range(40):
        a = sp.sample(rng)
        c = count_costs(sp.plan(a))
        c88 = count_costs(sp.plan(dataclasses.replace(a, stages=tuple(
            tuple(Block(b.kernel, b.expand, (8, 8, 8), (8, 8, 8)) for b in s) for s in a.stages))))
        assert (c.macs, c.params) == (c88.macs, c88.params)
        assert c.macs > 0 and c.params > 0 and c.size_bits > 0 and c.peak_activation_bytes > 0
        assert 2 * 4 * c.macs <= c.bitops <= 8 * 8 * c.macs
        assert c.bitops <= c88.bitops and c.size_bits <= c88.size_bits
        # weights at <= 8 bits, only the fc bias is 32-bit
        assert c.size_bits <= 8 * c.params + 24 * sp.config.num_classes
        assert c.size_bits >= 2 * (c.params - sp.config.num_classes)


# ---------------------------------------------------------------- peak activations
def test_tiny_peak_activation_by_hand():
    """Live memory per layer = input at the layer's a_bits + output at its consumer's a_bits."""
    sp = tiny_space()
    # elements: image 1*8*8=64, stem out 8*4*4=128, expand out 16*4*4=256, dw out 16*2*2=64, project out 64
    # all 8-bit: expand is the peak: 128*8 + 256*8 = 3072 bits
    assert count_costs(sp.plan(tiny_arch(a=(8, 8, 8)))).peak_activation_bytes == 3072 // 8
    # blocks consume 4-bit: stem 64*8 + 128*4 = 1024, expand 128*4 + 256*4 = 1536, dw 256*4 + 64*4 = 1280
    assert count_costs(sp.plan(tiny_arch(a=(4, 4, 4)))).peak_activation_bytes == 1536 // 8
    # only the dw/project inputs 4-bit: expand 128*8 + 256*4 = 2048
    assert count_costs(sp.plan(tiny_arch(a=(8, 4, 4)))).peak_activation_bytes == 2048 // 8


def test_peak_activation_positive_grows_with_resolution():
    sp = SearchSpace()
    peaks = [count_costs(sp.plan(sp.uniform(8, 8, resolution=r))).peak_activation_bytes for r in sp.config.resolutions]
    assert all(p > 0 for p in peaks)
    assert peaks == sorted(peaks) and len(set(peaks)) == len(peaks)
    small = [count_costs(sp.plan(sp.uniform(8, 8, largest=False, resolution=r))).peak_activation_bytes
             for r in sp.config.resolutions]
    assert small[0] < small[1] < small[2]


def test_peak_activation_falls_with_activation_bits():
    sp = SearchSpace()
    for largest in (True, False):
        for w in (2, 8):
            p8 = count_costs(sp.plan(sp.uniform(w, 8, largest=largest))).peak_activation_bytes
            p4 = count_costs(sp.plan(sp.uniform(w, 4, largest=largest))).peak_activation_bytes
            assert 0 < p4 < p8
            assert p4 >= p8 / 2  # at most halves (the stem input stays 8-bit)
    # weight bits never change activation memory
    assert (count_costs(sp.plan(sp.uniform(2, 8))).peak_activation_bytes
            == count_costs(sp.plan(sp.uniform(8, 8))).peak_activation_bytes)


def test_residual_block_input_counted_once():
    """Residual block, expand 1, at 8x8 with 8 channels (512 elements per tensor).

    Docstring rule: live = input + output + kept residual, each at the bit width of its consumer.
    Block a_bits (8, 8, 4); stem/head consume 4-bit.
      stem:    64*4 (image) + 512*8                     = 4352
      expand:  512*8 (block input, also the residual) + 512*8 = 8192  (input counted once)
      dw:      512*8 + 512*4 + 512*8 kept              = 10240  <- peak
      project: 512*4 + 512*4 + 512*8 kept              = 8192
      add:     512*4 + 512*4 + 512*8 kept              = 8192
    """
    sp = SearchSpace(SpaceConfig(
        resolutions=(8,), widths=(1.0,), stem_channels=8, stem_stride=1,
        stages=(StageConfig(8, (1,), 1),), kernels=(3,), expands=(1,),
        w_bits=(8,), a_bits=(4, 8), stem_head_w_bits=(8,), stem_head_a_bits=(4,),
    ))
    arch = Arch(8, 1.0, ((Block(3, 1, (8, 8, 8), (8, 8, 4)),),), (8, 4), (8, 4))
    plan = sp.plan(arch)
    assert plan.blocks[0].residual
    assert count_costs(plan).peak_activation_bytes == 10240 // 8
