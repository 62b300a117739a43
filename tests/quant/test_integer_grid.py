import copy

import torch

from qnas.quant.build import build_model
from qnas.quant.integer_grid import grid_offsets, snap_biases
from qnas.quant.train import TrainConfig, train
from qnas.space import SearchSpace


def _trained(digits_splits):
    space = SearchSpace()
    arch = space.uniform(4, 4, largest=False, resolution=12)
    torch.manual_seed(0)
    model = build_model(space, arch)
    train(model, digits_splits.train.at_resolution(12).loader(64, True), None, TrainConfig(epochs=2, progress=False))
    return model.eval(), digits_splits.test.at_resolution(12)


def test_snap_puts_every_bias_on_its_grid_and_barely_moves_the_model(digits_splits):
    model, test = _trained(digits_splits)
    before = grid_offsets(model)
    assert max(o.max_offset_steps for o in before) > 0.1  # trained biases are off the grid
    assert {o.layer for o in before} >= {"stem", "blocks.0.expand", "blocks.0.dw", "blocks.0.project", "head"}
    ref = copy.deepcopy(model)
    removed = snap_biases(model)
    assert all(o.max_offset_steps <= 0.5 + 1e-6 for o in removed)
    assert max(o.max_offset_steps for o in grid_offsets(model)) < 0.01
    # each BN shift moved by at most half an accumulator step (input scale x weight scale x |gamma/sigma|)
    bn, conv, act = model.blocks[0].bn1, model.blocks[0].expand, model.blocks[0].in_quant
    bn_ref = ref.blocks[0].bn1
    step = (act.act_quant.scale() * conv.quant_weight().scale.reshape(-1)
            * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).abs()).detach()
    assert torch.all((bn.bias - bn_ref.bias).abs() <= 0.5 * step + 1e-6)
    with torch.no_grad():
        acc_a = float((ref(test.images).argmax(1) == test.labels).float().mean())
        acc_b = float((model(test.images).argmax(1) == test.labels).float().mean())
    assert abs(acc_a - acc_b) < 0.05
    # only BN shifts and the fc bias change; weights and quantizer scales do not
    for (k, v), (_, w) in zip(ref.state_dict().items(), model.state_dict().items()):
        if not (k.endswith("bias") and ("bn" in k or k.startswith("head"))):
            assert torch.equal(v, w), k


def test_snap_is_idempotent(digits_splits):
    model, _ = _trained(digits_splits)
    snap_biases(model)
    state = copy.deepcopy(model.state_dict())
    snap_biases(model)
    for k, v in model.state_dict().items():
        assert torch.allclose(v.float(), state[k].float(), atol=1e-6), k
