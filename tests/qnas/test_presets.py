"""The standard mobile search spaces (qnas.presets) and the space features they use."""
import math

import numpy as np
import pytest
import torch
import yaml

from qnas import presets
from qnas.arch import Arch, Block
from qnas.costs import count_costs
from qnas.errors import ArchError, ConfigError
from qnas.latency.base import inherit_weightless_bits
from qnas.latency.factory import create_latency_model
from qnas.latency.profile import PROFILES_DIR
from qnas.latency.table import space_layer_keys
from qnas.latency.vectorized import ArchDistribution, VectorizedTablePredictor
from qnas.quant.build import build_model
from qnas.space import SearchSpace


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_preset_loads_by_name_and_its_yaml_says_the_same(name, tmp_path):
    sp = SearchSpace.from_yaml(name)
    path = tmp_path / f"{name}.yaml"
    presets.preset_yaml(name, path)
    assert SearchSpace.from_yaml(path).config == sp.config
    assert SearchSpace.from_dict(yaml.safe_load(yaml.safe_dump(sp.to_dict()))).config == sp.config
    for i in range(10):
        a = sp.sample(i)
        assert sp.decode(sp.encode(a)) == a
        sp.plan(a)
    ref = presets.reference_arch(name)
    assert sp.validate(ref) is ref and sp.decode(sp.encode(ref)) == ref


def test_unknown_preset_is_one_line():
    with pytest.raises(ConfigError, match="mobilenetv2") as ei:
        SearchSpace.from_yaml("mobilenetv9")
    assert "\n" not in str(ei.value)
    with pytest.raises(ConfigError):
        presets.preset_space("nope")


def test_mobilenetv2_cost_parity():
    """MobileNetV2-1.0 @224, 1000 classes: the paper's 300 M MACs / 3.4 M params. The params are
    torchvision's conv + linear weights and biases exactly (3,470,760, BN excluded), 2.08 % over
    the paper's rounded 3.4 M."""
    sp = presets.preset_space("mobilenetv2")
    c = count_costs(sp.plan(presets.reference_arch("mobilenetv2", 224)))
    assert abs(c.macs - 300e6) / 300e6 < 0.02
    assert c.params == 3_470_760
    assert abs(c.params - 3.4e6) / 3.4e6 < 0.021
    assert abs(c.params - 3.5e6) / 3.5e6 < 0.02  # torchvision's documented 3.5 M (BN included)


def test_mobilenetv3_large_cost_parity():
    sp = presets.preset_space("mobilenetv3-large")
    arch = presets.reference_arch("mobilenetv3-large", 224)
    plan = sp.plan(arch)
    c = count_costs(plan)
    assert abs(c.macs - 217e6) / 217e6 < 0.03
    assert abs(c.params - 5.4e6) / 5.4e6 < 0.03
    # the published structure: 15 bottlenecks, 8 with squeeze-excite, 960 mix conv, 1280 linear
    assert len(plan.blocks) == 15 and sum(b.se is not None for b in plan.blocks) == 8
    assert plan.blocks[0].expand is None
    assert [b.depthwise.cin for b in plan.blocks[6:10]] == [240, 200, 184, 184]
    assert plan.mix.cout == 960 and plan.pre_head.cout == 1280 and plan.head.cin == 1280
    assert plan.blocks[3].se.reduce.cout == 24  # torchvision's _make_divisible(72 // 4, 8)


def test_model_params_equal_the_cost_counter():
    sp = presets.preset_space("cifar-small")
    arch = sp.sample(3)
    model = build_model(sp, arch)
    weights = sum(p.numel() for k, p in model.named_parameters()
                  if k.rsplit(".", 1)[-1] in ("weight", "bias") and "bn" not in k and "quant" not in k)
    assert weights == count_costs(sp.plan(arch)).params
    names = [l.name for l in model.quant_layers()]
    assert names == [l.name for l in sp.plan(arch).quantized_layers()]
    assert all(model.get_submodule(l.name) is l.module for l in model.quant_layers())
    model.eval()
    assert model(torch.randn(2, 3, arch.resolution, arch.resolution)).shape == (2, 10)


def _tiny(**kw):
    d = {"resolutions": [8], "widths": [1.0], "stem_channels": 8, "kernels": [3, 5], "expands": [1, 3],
         "stages": [{"channels": 8, "depths": [1, 2]}, {"channels": 16, "depths": [1], "stride": 2,
                                                         "kernels": [3], "expands": [3, 6]}]}
    d.update(kw)
    return SearchSpace.from_dict(d)


def test_per_stage_choices_and_exclude_rules():
    sp = _tiny(exclude=[{"stage": 0, "kernel": 5, "expand": 3}])
    assert sp.stage_ops == (((3, 1), (3, 3), (5, 1)), ((3, 3), (3, 6)))
    assert [g.n_choices for g in sp.genes.genes if g.group == "op"] == [3, 3, 2]
    bad = Arch(8, 1.0, ((Block(5, 3, (8,) * 3, (8,) * 3),), (Block(3, 6, (8,) * 3, (8,) * 3),)))
    with pytest.raises(ArchError, match="excludes"):
        sp.validate(bad)
    with pytest.raises(ArchError, match="expand"):
        sp.validate(Arch(8, 1.0, ((Block(3, 1, (8,) * 3, (8,) * 3),), (Block(3, 1, (8,) * 3, (8,) * 3),))))
    with pytest.raises(ConfigError, match="no .kernel, expand. op left"):
        _tiny(exclude=[{"stage": 1, "expand": 3}, {"stage": 1, "expand": 6}])
    with pytest.raises(ConfigError, match="exclude"):
        _tiny(exclude=[{"layer": 3}])


def test_expand_one_without_conv_makes_its_bit_genes_inactive():
    old = _tiny()
    new = _tiny(expand1_no_conv=True)
    a = Arch(8, 1.0, ((Block(3, 1, (2, 4, 8), (4, 8, 8)),), (Block(3, 3, (8,) * 3, (8,) * 3),)))
    assert old.plan(a).blocks[0].expand is not None  # default: an expand-1 conv is still built
    plan = new.plan(a)
    assert plan.blocks[0].expand is None and plan.blocks[0].depthwise.cin == 8
    assert new.decode(new.encode(a)).stages[0][0] == Block(3, 1, (4, 4, 8), (8, 8, 8))  # mirrors the dw conv's bits
    b0 = new.genes.blocks[0]
    act = new.genes.active(new.encode(a))
    assert not act[b0.w[0]] and not act[b0.a[0]] and act[b0.w[1]]
    assert math.isfinite(new.size()) and new.size() < old.size()


@pytest.mark.parametrize("name", ["cifar-small", "mobilenetv3-large", "proxyless-mobile"])
def test_vectorized_latency_equals_the_per_layer_sum(name):
    sp = presets.preset_space(name)
    model = create_latency_model("edgetpu")
    pred = VectorizedTablePredictor(sp, model.layer_ms)
    archs = [sp.sample(i) for i in range(12)] + [presets.reference_arch(name)]
    ref = np.array([sum(model.layer_ms(l) for l in inherit_weightless_bits(sp.plan(a).layers())) for a in archs])
    np.testing.assert_allclose(pred.predict_archs(archs), ref, rtol=1e-9)
    for a, r in zip(archs[:3], ref):
        assert float(pred.expected_latency(ArchDistribution.one_hot(sp, a))) == pytest.approx(r, rel=1e-9)
    dist = ArchDistribution.uniform(sp)
    mc = pred.predict_encoded(dist.sample_genes(3000, 0)).mean()
    assert float(pred.expected_latency(dist)) == pytest.approx(mc, rel=0.02)


def test_every_profile_prices_the_new_layer_kinds():
    sp = presets.preset_space("mobilenetv3-large")
    plan = sp.plan(presets.reference_arch("mobilenetv3-large"))
    kinds = {l.op for l in plan.layers()}
    assert {"mul", "pool", "fc", "pwconv"} <= kinds
    for path in sorted(PROFILES_DIR.glob("*.json")):
        costs = create_latency_model(path.stem).breakdown(plan)
        assert all(np.isfinite(c.ms) and c.ms > 0 for c in costs), path.stem
        assert {c.layer.name for c in costs} >= {"mix", "pre_head", "s2.b0.se.mul", "s2.b0.se.reduce"}
    keys = {l.key()[0] for l in space_layer_keys(presets.preset_space("cifar-small"))}
    assert "mul" in keys


def test_the_supernet_builds_a_preset():
    """(extraction parity on every preset: tests/qnas/supernet/test_supernet_presets.py)"""
    from qnas.supernet import Supernet

    net = Supernet(presets.preset_space("ofa-mbv3"))
    assert net.active_arch == net.space.uniform(8, 8)
