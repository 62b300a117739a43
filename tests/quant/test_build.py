import itertools
import warnings

import pytest
import torch

from qnas.arch import Arch
from qnas.quant.build import QuantNet, build_model
from qnas.quant.layer_view import QuantLayer
from qnas.quant.naming import block_path, block_path_of, split_block_path
from qnas.quant.plan import BlockPlan, LayerSpec
from qnas.space import SearchSpace

COMBOS = list(itertools.product((2, 4, 8), (4, 8)))


def conv_layers(model: QuantNet):
    """(spec, conv module, input-quantizer module) for every quantized layer, in plan order."""
    return [(l.spec, l.module, l.input_quant.module) for l in model.quant_layers()]


def skip_arch(space: SearchSpace) -> Arch:
    """An arch of the skip space with a skipped block position (so block names are not 0..n-1)."""
    return next(a for a in (space.sample(i) for i in range(200)) if any(b.is_skip for b in a.blocks()))


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


def test_every_quantized_layer_lives_at_its_plan_name():
    space = SearchSpace.from_dict({"allow_skip": True})
    arch = skip_arch(space)
    model = build_model(space, arch)
    plan = model.plan
    specs = plan.quantized_layers()
    assert [l.spec for l in model.quant_layers()] == specs  # execution order, one view per layer
    for spec in specs:
        assert model.get_submodule(spec.name).weight.shape[0] == spec.cout, spec.name
    # blocks are named by their position in the stage, skipped positions included
    names = [path for path, _ in model.named_blocks()]
    assert names == [b.expand.name.rsplit(".", 1)[0] for b in plan.blocks]
    skipped = [f"s{si}.b{j}" for si, genes in enumerate(arch.stages) for j, b in enumerate(genes) if b.is_skip]
    assert skipped and not set(skipped) & set(names)
    assert [n for n, _ in model.named_children()][:5] == ["input_quant", "stem", "stem_bn", "stem_act", "s0"]
    assert model.blocks == tuple(b for _, b in model.named_blocks())


def test_quant_layer_views_name_their_quantizers_bn_and_residual():
    space = SearchSpace()
    arch = space.sample(3)
    model = build_model(space, arch).eval()
    layers = model.quant_layers()
    assert all(isinstance(l, QuantLayer) for l in layers)
    stem, head = layers[0], layers[-1]
    assert (stem.input_quant.name, stem.bn_name, stem.relu) == ("input_quant", "stem_bn", "stem_act")
    assert (head.input_quant.name, head.output_quant.name) == ("head_quant", "logit_quant")
    assert head.bn is None and head.relu is None
    assert head.bias is model.head.bias
    for prev, layer in zip(layers, layers[1:]):
        if layer is not head:  # each layer's output quantizer is the next one's input quantizer
            assert prev.output_quant.name == layer.input_quant.name
            assert prev.output_quant.module is layer.input_quant.module
    assert layers[-2].output_quant.name == "pool_quant"
    for l in layers:
        for q in (l.input_quant, l.output_quant):
            assert model.get_submodule(q.name) is q.module
        if l.bn is not None:
            assert model.get_submodule(l.bn_name) is l.bn and l.bn.num_features == l.spec.cout
        w, a = l.weight(), l.input_act()
        assert (w.bits, a.bits) == (l.spec.w_bits, l.spec.a_bits)
        assert w.codes.shape == l.module.weight.shape and w.scale.numel() == l.spec.cout
        assert int(w.codes.abs().max()) <= w.qmax and a.per_tensor
        assert (a.qmin, a.qmax) == (-(2 ** (a.bits - 1)), 2 ** (a.bits - 1) - 1)  # signed, full range
        assert torch.allclose(w.codes * w.scale.view(-1, *[1] * (w.codes.dim() - 1)), l.module.quant_weight().value)
    residual = [l for l in layers if l.residual is not None]
    assert [l.block for l in residual] == [path for path, b in model.named_blocks() if b.residual]
    for l in residual:
        assert l.spec.name.endswith(".project") and l.residual.name == f"{l.block}.add"
        assert (l.residual.skip.name, l.residual.quant.name) == (f"{l.block}.in_quant", f"{l.block}.out_quant")
    adds = [s.name for s in model.plan.layers() if s.op == "add"]
    assert adds == [l.residual.name for l in residual]  # the plan's add layers, by the same names
    streams = model.stream_quants()
    assert [q.name for q in streams] == [f"{l.block}.out_quant" for l in residual] + ["pool_quant", "logit_quant"]
    assert [q.kind for q in streams] == ["residual"] * len(residual) + ["pool", "logits"]
    assert all(model.get_submodule(q.name) is q.module for q in streams)


def test_old_checkpoint_keys_load_with_a_deprecation_warning():
    space = SearchSpace.from_dict({"allow_skip": True})
    arch = skip_arch(space)
    torch.manual_seed(0)
    model = build_model(space, arch)
    x = torch.randn(2, 1, arch.resolution, arch.resolution)
    model.train()
    model(x)  # initialises the quantizer scales, so they are in the state dict
    model.eval()
    paths = [p for p, _ in model.named_blocks()]
    state = model.state_dict()
    old = {}  # the layout before module paths were plan names: blocks.{i}.*
    for k, v in state.items():
        i = next((i for i, p in enumerate(paths) if k.startswith(p + ".")), None)
        old[k if i is None else f"blocks.{i}.{k[len(paths[i]) + 1:]}"] = v
    assert any(k.startswith("blocks.") for k in old)
    torch.manual_seed(1)
    other = build_model(space, arch)
    with pytest.warns(DeprecationWarning, match="old module names"):
        other.load_state_dict(old, strict=True)
    assert any(k.startswith("blocks.") for k in old), "the caller's dict is left as it was"
    assert all(torch.equal(other.state_dict()[k], v) for k, v in state.items())
    with torch.no_grad():
        assert torch.equal(other.eval()(x), model(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # current keys load silently
        build_model(space, arch).load_state_dict(state, strict=True)


def test_block_naming_scheme_round_trips_and_rejects_other_names():
    assert block_path(2, 1) == "s2.b1" and split_block_path("s2.b1") == ("s2", "b1")
    with pytest.raises(ValueError, match="s<stage>.b<index>"):
        split_block_path("blocks.3")
    plan = SearchSpace().plan(SearchSpace().sample(0))
    assert [block_path_of(b) for b in plan.blocks][:1] == ["s0.b0"]
    odd = BlockPlan(LayerSpec("s0.b0.expand", "pwconv", 8, 24, 4, 4),
                    LayerSpec("s0.b0.depthwise", "dwconv", 24, 24, 4, 4),
                    LayerSpec("s0.b0.project", "pwconv", 24, 8, 4, 4), residual=True)
    with pytest.raises(ValueError, match="s0.b0.dw"):
        block_path_of(odd)
