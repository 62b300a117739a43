import copy

import pytest
import torch

from qnas.quant.bn_fold import bn_fold
from qnas.quant.build import build_model
from qnas.quant.integer_grid import grid_offsets, snap_biases
from qnas.quant.train import TrainConfig, train
from qnas.space import SearchSpace


def _trained(digits_splits, bits: int = 4):
    space = SearchSpace()
    arch = space.uniform(bits, bits, largest=False, resolution=12)
    torch.manual_seed(0)
    model = build_model(space, arch)
    train(model, digits_splits.train.at_resolution(12).loader(64, True), None, TrainConfig(epochs=2, progress=False))
    return model.eval(), digits_splits.test.at_resolution(12)


def test_snap_puts_every_bias_on_its_grid_and_barely_moves_the_model(digits_splits):
    model, test = _trained(digits_splits)
    before = grid_offsets(model)
    assert max(o.max_offset_steps for o in before) > 0.1  # trained biases are off the grid
    assert [o.layer for o in before] == [l.name for l in model.quant_layers()]  # every layer, by its plan name
    assert {o.layer for o in before} >= {"stem", "s0.b0.expand", "s0.b0.dw", "s0.b0.project", "head"}
    ref = copy.deepcopy(model)
    removed = snap_biases(model)
    assert all(o.max_offset_steps <= 0.5 + 1e-6 for o in removed)
    assert max(o.max_offset_steps for o in grid_offsets(model)) < 0.01
    # each BN shift moved by at most half an accumulator step (input scale x weight scale x |gamma/sigma|)
    bn, conv, act = model.s0.b0.bn1, model.s0.b0.expand, model.s0.b0.in_quant
    bn_ref = ref.s0.b0.bn1
    step = (act.act_quant.scale() * conv.quant_weight().scale.reshape(-1)
            * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).abs()).detach()
    assert torch.all((bn.bias - bn_ref.bias).abs() <= 0.5 * step + 1e-6)
    # only BN shifts and the fc bias change; weights and quantizer scales do not
    for (k, v), (_, w) in zip(ref.state_dict().items(), model.state_dict().items()):
        if not (k.endswith("bias") and ("bn" in k or k.startswith("head"))):
            assert torch.equal(v, w), k


def test_snap_barely_changes_predictions_at_8_bits(digits_splits):
    """At W8A8 a shift of under half an accumulator step flips an output code only near a rounding
    tie; at 4 bits, on a model this briefly trained, a flipped code can flip a prediction (not tested)."""
    model, test = _trained(digits_splits, bits=8)
    ref = copy.deepcopy(model)
    snap_biases(model)
    with torch.no_grad():
        a, b = ref(test.images).argmax(1), model(test.images).argmax(1)
    assert float((a == b).float().mean()) >= 0.9
    assert abs(float((a == test.labels).float().mean()) - float((b == test.labels).float().mean())) <= 0.03


def test_snap_is_idempotent(digits_splits):
    model, _ = _trained(digits_splits)
    snap_biases(model)
    state = copy.deepcopy(model.state_dict())
    snap_biases(model)
    for k, v in model.state_dict().items():
        assert torch.allclose(v.float(), state[k].float(), atol=1e-6), k


def test_bn_fold_is_what_an_eval_batchnorm_computes():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.weight.normal_(), bn.bias.normal_(), bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2.0)
    y = torch.randn(3, 6, 4, 4)
    g, shift = bn_fold(bn)
    assert torch.allclose(bn(y), g.view(1, -1, 1, 1) * y + shift.view(1, -1, 1, 1), atol=1e-5)
    b = torch.randn(6)
    g2, shift2 = bn_fold(bn, b)  # a conv bias folds into the shift
    assert torch.equal(g2, g)
    assert torch.allclose(bn(y + b.view(1, -1, 1, 1)), g.view(1, -1, 1, 1) * y + shift2.view(1, -1, 1, 1), atol=1e-5)
    with pytest.raises(ValueError, match="running statistics"):
        bn_fold(torch.nn.BatchNorm2d(6, track_running_stats=False))
