import itertools

import pytest
import torch

from qnas.quant.build import QuantNet, build_model
from qnas.space import SearchSpace

COMBOS = list(itertools.product((2, 4, 8), (4, 8)))


def conv_layers(model: QuantNet):
    """(spec, conv module, input-quantizer module) for every quantized layer, in plan order."""
    out = [(model.plan.stem, model.stem, model.input_quant)]
    for spec, blk in zip(model.plan.blocks, model.blocks):
        out += [(spec.expand, blk.expand, blk.in_quant), (spec.depthwise, blk.dw, blk.act1),
                (spec.project, blk.project, blk.act2)]
    out.append((model.plan.head, model.head, model.head_quant))
    return out


@pytest.mark.parametrize("w_bits,a_bits", COMBOS)
def test_build_model_every_uniform_bit_combination(w_bits, a_bits):
    space = SearchSpace()
    for largest in (True, False):
        arch = space.uniform(w_bits, a_bits, largest=largest)
        torch.manual_seed(0)
        model = build_model(space, arch)
        x = torch.randn(4, 1, arch.resolution, arch.resolution)
        model.train()
        out = model(x)
        assert out.shape == (4, 10)
        out.sum().backward()  # QAT needs gradients through the quantizers
        assert model.stem.weight.grad is not None and torch.isfinite(model.stem.weight.grad).all()
        model.eval()
        with torch.no_grad():
            assert torch.isfinite(model(x)).all()
        for spec, conv, aq in conv_layers(model):
            qw = conv.quant_weight()
            assert int(qw.bit_width) == spec.w_bits, spec.name
            assert bool(qw.signed)
            # integer codes stay within the signed narrow range of the layer's bit width
            codes = qw.int()
            assert codes.abs().max() <= 2 ** (spec.w_bits - 1) - 1, spec.name
            assert int(aq.act_quant.bit_width()) == spec.a_bits, spec.name


def test_mixed_arch_bits_land_in_the_right_layers():
    space = SearchSpace()
    arch = space.sample(7)
    model = build_model(space, arch)
    blocks = arch.blocks()
    for blk_gene, blk_mod in zip(blocks, model.blocks):
        assert [int(m.quant_weight().bit_width) for m in (blk_mod.expand, blk_mod.dw, blk_mod.project)] == list(blk_gene.w_bits)
        assert [int(q.act_quant.bit_width()) for q in (blk_mod.in_quant, blk_mod.act1, blk_mod.act2)] == list(blk_gene.a_bits)
        assert blk_mod.dw.groups == blk_mod.dw.in_channels and blk_mod.dw.kernel_size == (blk_gene.kernel,) * 2


def test_first_and_last_layer_8_bit_by_default():
    space = SearchSpace()
    model = build_model(space, space.uniform(2, 4))
    assert int(model.stem.quant_weight().bit_width) == 8
    assert int(model.head.quant_weight().bit_width) == 8
    assert int(model.input_quant.act_quant.bit_width()) == 8


def test_quantizers_are_signed_symmetric_zero_point_zero():
    space = SearchSpace()
    model = build_model(space, space.sample(1))
    model.eval()
    x = torch.randn(2, 1, 20, 20)
    qt = model.input_quant(x)
    assert bool(qt.signed) and float(qt.zero_point.abs().max()) == 0.0
    for _, conv, _ in conv_layers(model):
        qw = conv.quant_weight()
        assert float(qw.zero_point.abs().max()) == 0.0
        assert qw.scale.numel() == conv.weight.shape[0]  # per output channel
