"""The weight-sharing supernet on the standard mobile spaces (qnas.presets), at small resolutions:
per-stage elastic ops, expand-less blocks, squeeze-excite, relu6/h-swish, stem kernel,
feature-mix conv, pre-classifier linear and exclude rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qnas import presets
from qnas.arch import Arch
from qnas.quant.build import act_quant, build_model
from qnas.space import SearchSpace
from qnas.supernet import Supernet, SupernetTrainConfig, full_space_largest, make_optimizer, progressive_phases, sandwich_step
from qnas.supernet.gates import PathGates

#: a small resolution per preset (the presets' own are ImageNet's), 5 classes
RESOLUTION = {"cifar-small": 32, "mobilenetv2": 64, "mobilenetv3-large": 64, "ofa-mbv3": 64, "proxyless-mobile": 64}


def small(name: str, **kw) -> SearchSpace:
    d = presets.preset_dict(name)
    d.update(resolutions=[RESOLUTION[name]], num_classes=5, **kw)
    return SearchSpace.from_dict(d)


def prepared(space: SearchSpace, x: torch.Tensor, seed: int = 0, **options) -> Supernet:
    """Quantizers initialised, BN running stats and learned scales off their defaults."""
    net = Supernet.from_seed(space, seed, **options).train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for arch in [space.uniform(8, 8), space.uniform(2, 4, largest=False)] + [space.sample(i) for i in range(3)]:
            net.set_active(arch)(x)
        for name, p in net.named_parameters():
            if ".bns." in name and name.endswith("weight"):
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=gen))
            elif ".bns." in name or (name.endswith("bias") and ".se." in name):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            elif "scaling" in name and p.ndim == 1:
                p.mul_(0.7 + 0.3 * torch.rand(p.shape, generator=gen))
    return net.eval()


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_extracted_subnet_computes_what_the_supernet_does(name):
    space = small(name)
    res = RESOLUTION[name]
    x = torch.randn(4, 3, res, res, generator=torch.Generator().manual_seed(1))
    net = prepared(space, x)
    archs = [space.uniform(8, 8), space.uniform(2, 4, largest=False), space.sample(100), space.sample(101)]
    distinct = []
    for arch in archs:
        net.set_active(arch)
        with torch.no_grad():
            ref = net(x)
            model = net.extract(arch).eval()
            out = model(x)
        rel = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
        assert rel < 1e-4, (name, arch.describe(), rel)
        distinct.append(bool((ref != ref[0]).any()))
        assert net.active_param_count() == sum(p.numel() for p in build_model(space, arch).parameters())
        assert set(model.state_dict()) == set(net.active_state())
    # not degenerate outputs, at least for some arch (a deep low-bit net of random weights may map
    # every input to one logit vector)
    assert any(distinct), name


def test_squeeze_excite_and_fractional_expands_slice_as_ofa():
    space = small("mobilenetv3-large")
    net = Supernet.from_seed(space, 0)
    ref = presets.reference_arch("mobilenetv3-large")  # expand 2.3 / 2.5 in stage 3
    arch = Arch(64, ref.width, ref.stages, ref.stem_bits, ref.head_bits)
    assert {b.expand for b in arch.stages[3]} >= {2.3, 2.5}
    model = net.extract(arch)
    plan = space.plan(arch)
    for b in plan.blocks:
        blk = net.get_submodule(b.name)
        mid = b.depthwise.cout
        assert model.get_submodule(f"{b.name}.dw").weight.shape[0] == mid
        if b.se is not None:
            sq = b.se.reduce.cout
            assert torch.equal(model.get_submodule(f"{b.name}.se.reduce").weight, blk.se.reduce.weight[:sq, :mid])
            assert torch.equal(model.get_submodule(f"{b.name}.se.expand").bias, blk.se.expand.bias[:mid])
        if b.expand is None:
            assert not model.get_submodule(b.name).has_expand
    # per-stage kernel lists: stage 0 holds only a 3x3 depthwise and no expand conv at all
    assert net.block(0, 0).dw.kernels == (3,) and not hasattr(net.block(0, 0), "expand")
    assert net.block(1, 0).dw.kernels == (3, 5)


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_sampled_archs_are_valid_and_respect_the_stage_choices(name):
    space = small(name)
    rng = np.random.default_rng(0)
    phases = progressive_phases(1)
    assert full_space_largest(space) == space.uniform(8, 8) == phases[-1].largest(space)
    assert phases[-1].smallest(space) == space.uniform(2, 4, largest=False)
    for phase in phases:
        for _ in range(15):
            arch = space.validate(phase.sample(space, rng))
            for si, blocks in enumerate(arch.stages):
                assert all(b.is_skip or (b.kernel, b.expand) in space.stage_ops[si] for b in blocks)


def test_exclude_rules_are_never_sampled():
    space = small("cifar-small")  # excludes k5 x e6 in stage 1
    rng = np.random.default_rng(0)
    seen = set()
    for phase in progressive_phases(1):
        for _ in range(40):
            seen |= {(b.kernel, b.expand) for b in phase.sample(space, rng).stages[1]}
    assert (5, 6) not in seen and {(5, 4), (3, 6)} <= seen


def test_relu6_quantizer_applies_relu6_also_after_loading():
    """Brevitas drops a Hardtanh (ReLU6) before a quantizer and rebuilds quantizers on load_state_dict."""
    q = act_quant(8, act="relu6")
    q.load_state_dict({"act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl.value": torch.tensor(8.0)})
    y = q.eval()(torch.tensor([-3.0, 2.0, 9.0])).value
    assert torch.equal(y, torch.tensor([0.0, 2.0, 6.0]))


def _one_hot_gates(space: SearchSpace, arch) -> PathGates:
    def one_hot(choices, v):
        return torch.tensor([1.0 if c == v else 0.0 for c in choices], requires_grad=True)

    c, plan = space.config, space.plan(arch)
    g = PathGates()
    for layer in (plan.stem, plan.head):
        g.w[layer.name], g.a[layer.name] = one_hot(c.stem_head_w_bits, layer.w_bits), one_hot(c.stem_head_a_bits, layer.a_bits)
    for b in plan.blocks:
        for layer in (b.expand, b.depthwise, b.project):
            if layer is not None:
                g.w[layer.name], g.a[layer.name] = one_hot(c.w_bits, layer.w_bits), one_hot(c.a_bits, layer.a_bits)
        g.op[b.name] = torch.tensor(1.0, requires_grad=True)
    return g


def test_gated_path_on_a_preset():
    space = small("mobilenetv3-large", widths=[1.0])
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    net = prepared(space, x, bn_per_bits=False)
    for i in range(2):
        arch = space.sample(10 + i)
        gates = _one_hot_gates(space, arch)
        plain = net.set_active(arch)(x)
        with net.gated(gates):
            gated = net(x)
        torch.testing.assert_close(gated, plain, rtol=1e-6, atol=1e-6)
        gated.logsumexp(1).sum().backward()
        assert gates.w["head"].grad.abs().sum() > 0 and any(g.grad.abs().sum() > 0 for g in gates.op.values())
    assert all(m.mix is None for m in net.modules() if not isinstance(m, Supernet) and hasattr(m, "mix"))


def test_sandwich_steps_train_a_preset():
    space = small("cifar-small")
    net = Supernet.from_seed(space, 0)
    cfg = SupernetTrainConfig(phases=progressive_phases(1), batch_size=8, n_random=1, progress=False,
                              eval_bn_batches=0, lr=1e-2, kd_weight=0.0)
    opt = make_optimizer(net, cfg)
    gen = torch.Generator().manual_seed(0)
    images, labels = {32: torch.randn(8, 3, 32, 32, generator=gen)}, torch.randint(0, 5, (8,), generator=gen)
    phase = progressive_phases(1)[-1]
    students = [phase.largest(space), phase.smallest(space), phase.sample(space, np.random.default_rng(0))]
    losses = [sandwich_step(net, opt, images, labels, students, cfg) for _ in range(5)]
    assert all(np.isfinite(l["loss"]) for l in losses)
    assert losses[-1]["loss"] < losses[0]["loss"] and losses[-1]["teacher_loss"] < losses[0]["teacher_loss"]
