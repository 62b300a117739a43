"""PathGates on the one supernet: the differentiable search's view of it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qnas.errors import ArchError
from qnas.space import SearchSpace, SpaceConfig
from qnas.strategies.differentiable import ArchLogits, path_arch_and_gates
from qnas.supernet import Supernet

SPACE = SearchSpace(SpaceConfig(resolutions=(12,), widths=(0.5,), allow_skip=True, stem_head_w_bits=(4, 8),
                                stem_head_a_bits=(4, 8)))


@pytest.fixture(scope="module")
def net() -> Supernet:
    torch.manual_seed(0)
    n = Supernet(SPACE, bn_per_bits=False)
    n.train()
    n.set_active(SPACE.uniform(8, 8))(torch.randn(8, 1, 12, 12))  # initialise the activation quantizers
    for b in SPACE.config.w_bits:
        for a in SPACE.config.a_bits:
            n.set_active(SPACE.uniform(b, a))(torch.randn(8, 1, 12, 12))
    n.eval()
    return n


def _gates_of(vec):
    logits = ArchLogits(SPACE, 0, 0)
    return path_arch_and_gates(SPACE, logits.path_from_genes(vec), 0, 0)


def test_one_hot_gates_compute_the_path(net):
    """Gates that put all weight on the arch's own choices give the supernet's plain output."""
    x = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    rng = np.random.default_rng(0)
    for _ in range(5):
        vec = SPACE.encode(SPACE.sample(rng))
        arch, gates = _gates_of(vec)
        assert arch == SPACE.decode(vec)
        plain = net.set_active(arch)(x)
        with net.gated(gates):
            gated = net(x)
        torch.testing.assert_close(gated, plain, rtol=1e-6, atol=1e-6)
        assert all(m.mix is None for m in net.modules() if hasattr(m, "mix"))  # cleared on exit


def test_gradients_reach_every_gate_kind(net):
    """Soft bit mixtures, op gates and depth gates all get gradients through the supernet."""
    space = SPACE
    logits = ArchLogits(space, 0, 0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 12, 12, generator=gen)
    s = logits.sample(1.0, gen)
    arch, gates = path_arch_and_gates(space, s, 0, 0)
    net.set_active(arch)
    net.train()  # as the search's steps run: batch statistics
    try:
        with net.gated(gates):
            net(x).logsumexp(1).sum().backward()
    finally:
        net.eval()
    assert logits.stem_w.grad is not None and logits.stem_w.grad.abs().sum() > 0
    assert logits.head_a.grad is not None and logits.head_a.grad.abs().sum() > 0
    assert any(t.grad is not None and t.grad.abs().sum() > 0 for t in logits.w_bits)
    assert any(t.grad is not None and t.grad.abs().sum() > 0 for t in logits.a_bits)
    assert any(t.grad is not None and t.grad.abs().sum() > 0 for t in logits.op)
    assert gates.depth, "the sampled path has positions past a stage's minimum depth"
    assert any(t.grad is not None and t.grad.abs().sum() > 0 for t in logits.depth)


def test_gates_need_quantized_mode(net):
    arch, gates = _gates_of(SPACE.encode(SPACE.sample(3)))
    net.set_active(arch, quantize=False)
    with pytest.raises(ArchError, match="quantize=True"):
        with net.gated(gates):
            pass
    net.set_active(arch)
