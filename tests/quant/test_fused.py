"""The faster drop-ins for Brevitas internals (qnas.quant.fused) compute Brevitas' numbers."""
import math

import pytest
import torch
from brevitas.core.function_wrapper import Identity
from brevitas.core.quant import IntQuant
from brevitas.core.stats.stats_op import AbsPercentile

from qnas.quant.fused import FusedIntQuant, TopAbsPercentile, abs_percentile


def _run(cls, x, scale, zero_point, bits, narrow, signed=True):
    m = cls(narrow_range=narrow, signed=signed, input_view_impl=Identity())
    x = x.clone().requires_grad_()
    scale = scale.clone().requires_grad_()
    y = m(scale, zero_point, torch.tensor(float(bits)), x)
    weights = torch.linspace(-1, 1, y.numel()).view_as(y)  # a loss whose gradient differs per element
    (y * weights).sum().backward()
    return y.detach(), x.grad, scale.grad


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("zero_point", [0.0, 1.0])
@pytest.mark.parametrize("signed", [True, False])
def test_fused_int_quant_matches_brevitas(bits, per_channel, zero_point, signed):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(6, 5, 4, 4, generator=g) * 0.1 * 2 ** (bits - 1)  # some beyond the range, most inside
    scale = torch.rand((6, 1, 1, 1) if per_channel else (), generator=g) * 0.3 + 0.05
    zp = torch.tensor(zero_point)
    ref = _run(IntQuant, x, scale, zp, bits, per_channel, signed)
    out = _run(FusedIntQuant, x, scale, zp, bits, per_channel, signed)
    assert torch.equal(ref[0], out[0]), "the forward pass is bit-identical"
    # gradients: the same formula, summed in another order; a scale's gradient sums x.numel() terms of
    # size up to ~2^bits with cancellation, so its tolerance is float32's rounding of that sum
    torch.testing.assert_close(out[1], ref[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[2], ref[2], rtol=1e-4, atol=1e-6 * x.numel() * 2 ** bits)
    assert (out[1] == 0).any() and (out[1] != 0).any(), "some values clamped, some inside the range"


def test_value_on_a_bound_keeps_its_gradient():
    # TensorClamp clamps only what lies strictly beyond a bound: round(x/s) == max keeps d/dx = 1
    x = torch.tensor([7.0, 7.4, 8.0, -8.0, -9.0])
    _, gx, _ = _run(FusedIntQuant, x, torch.tensor(1.0), torch.tensor(0.0), 4, False)
    _, gx_ref, _ = _run(IntQuant, x, torch.tensor(1.0), torch.tensor(0.0), 4, False)
    assert torch.equal(gx != 0, gx_ref != 0) and (gx != 0).tolist() == [True, True, False, True, False]


def test_a_learned_bit_width_falls_back_to_brevitas():
    m = FusedIntQuant(narrow_range=False, signed=True, input_view_impl=Identity())
    bw = torch.tensor(4.0, requires_grad=True)
    y = m(torch.tensor(0.1), torch.tensor(0.0), bw, torch.randn(10))
    y.sum().backward()
    assert bw.grad is not None  # only Brevitas' graph differentiates the bit width


@pytest.mark.parametrize("shape,relu", [((8, 16, 12, 12), False), ((8, 96, 40, 40), True), ((4, 10), False),
                                        ((3,), False), ((2, 1280, 7, 7), True)])
@pytest.mark.parametrize("q", [99.999, 99.9, 50.0])
def test_abs_percentile_is_brevitas_abs_percentile(shape, relu, q):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape))) * 3
    if relu:
        x = torch.relu(x)  # ties: half the values are 0
    x.view(-1)[0] = 1e4  # an outlier
    ref = AbsPercentile(q, None)(x)
    assert torch.equal(abs_percentile(x, q), ref)
    assert torch.equal(TopAbsPercentile(q, None)(x), ref)


def test_abs_percentile_gradient_reaches_the_chosen_element():
    x = torch.randn(4, 64, 32, 32, requires_grad=True)
    abs_percentile(x, 99.999).backward()
    assert (x.grad != 0).sum() == 1 and float(x.grad.abs().sum()) == 1.0


def test_abs_percentile_with_nan_gives_kthvalue_answer():
    x = torch.randn(4, 64, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    k = int(math.floor(0.01 * 99.999 * x.numel() + 0.5))
    ref = torch.kthvalue(x.abs().view(-1), k)[0]
    got = abs_percentile(x, 99.999)
    assert torch.equal(got.isnan(), ref.isnan()) and (got.isnan() or got == ref)


def test_the_recipes_use_the_fast_implementations():
    from qnas.quant.build import act_quant, quant_conv
    from qnas.quant.plan import LayerSpec

    a = act_quant(8, relu=True)
    proxy = a.act_quant.fused_activation_quant_proxy.tensor_quant
    assert type(proxy.int_quant) is FusedIntQuant
    assert type(proxy.scaling_impl.stats.stats_impl) is TopAbsPercentile
    conv = quant_conv(LayerSpec(name="c", op="conv", cin=3, cout=4, k=3, stride=1, groups=1, w_bits=4, a_bits=8,
                                hw_in=8, hw_out=8))
    assert type(conv.weight_quant.tensor_quant.int_quant) is FusedIntQuant
