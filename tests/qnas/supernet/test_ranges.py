"""Quantizer ranges that follow the data in the supernet: batch-statistic activation ranges,
re-estimated per sub-network with its BN, and weight thresholds that restart from the weights."""
import pytest
import torch

from qnas.supernet import Supernet, SupernetEvaluator, train_supernet
from qnas.supernet.quantize import ActQuantizers, WeightQuantizers, abs_percentile, calibrating_ranges, fake_quant, \
    mse_threshold
from qnas.supernet.train import restart_weight_ranges

from .test_supernet import fast_cfg, tiny_space, tiny_splits


def test_batch_ranges_quantize_each_batch_with_its_own_range_and_keep_a_running_average():
    q = ActQuantizers([4, 8], ranges="batch").train()
    q.active_bits = 4
    assert all(not p.requires_grad for p in q.scaling.values()), "batch ranges are not trained by the optimizer"
    x1, x2 = torch.randn(64, 8) * 3, torch.randn(64, 8)
    y1 = q(x1)
    assert torch.equal(y1, fake_quant(x1, abs_percentile(x1), 4, narrow=False))
    assert float(q.value(4)) == pytest.approx(float(abs_percentile(x1)))  # the first batch starts the average
    q(x2)
    expect = 0.9 * float(abs_percentile(x1)) + 0.1 * float(abs_percentile(x2))
    assert float(q.value(4)) == pytest.approx(expect, rel=1e-6)
    assert float(q.value(8)) == 1.0, "a bit width that did not run keeps its value"
    q.eval()
    assert torch.equal(q(x2), fake_quant(x2, q.value(4), 4, narrow=False)), "eval uses the running average"


def test_calibration_sets_the_mean_of_the_batch_ranges_in_eval_mode():
    net = torch.nn.Sequential(ActQuantizers([8], ranges="batch"), ActQuantizers([8], ranges="learned")).eval()
    before = float(net[1].value(8).detach())
    xs = [torch.randn(32, 4) * s for s in (1.0, 2.0, 4.0)]
    with calibrating_ranges(net):
        for x in xs:
            assert torch.equal(net[0](x), fake_quant(x, abs_percentile(x), 8, narrow=False))
            net(x)
    mean = sum(float(abs_percentile(x)) for x in xs) / len(xs)
    assert float(net[0].value(8)) == pytest.approx(mean, rel=1e-6)
    assert float(net[1].value(8).detach()) == before, "learned ranges are not calibrated"
    assert net[0]._calibration is None


def test_evaluator_calibrates_each_arch_and_restores_ranges(digits_splits):
    space = tiny_space()
    splits = tiny_splits(digits_splits)
    net = Supernet.from_seed(space, 0)
    assert net.act_ranges == "batch" and net.config["act_ranges"] == "batch"
    train_supernet(net, splits, fast_cfg(phases=fast_cfg().phases[:1]))
    ev = SupernetEvaluator(net, splits, bn_batches=2, batch_size=32, seed=0)
    a = space.uniform(4, 4, largest=False, resolution=8)
    b = space.uniform(8, 8, resolution=12)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    alone = ev(b)["val_acc"]
    ev(a)
    assert ev(b)["val_acc"] == alone, "one arch's calibration does not leak into another's evaluation"
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items()), "ranges and BN restored"
    # the extracted model carries the calibrated ranges: it computes what the calibrated supernet computes
    model = ev.extract(b)
    x = splits.val.at_resolution(12).images[:16]
    with ev._activated(b):
        ref = net(x)
    torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)
    thr = model.logit_quant.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl.value
    assert float(thr) != float(net.logit_quant.value(8)), "the logits' range was re-estimated for the arch"


def test_weight_ranges_restart_from_the_weights_each_epoch():
    q = WeightQuantizers(6, ["w4"])
    w = torch.randn(6, 3, 3, 3)
    q.calibrate("w4", lambda: w)
    first = q.value("w4", 6).detach().clone()
    w2 = w * 2  # the weights grew
    q.calibrate("w4", lambda: w2)
    assert torch.equal(q.value("w4", 6), first), "without a restart the threshold stays"
    holder = torch.nn.Sequential(q)
    restart_weight_ranges(holder)
    q.calibrate("w4", lambda: w2)
    assert torch.equal(q.value("w4", 6).detach(), mse_threshold(w2, 4))


def test_train_config_and_supernet_refuse_unknown_range_modes():
    from qnas.errors import ConfigError

    with pytest.raises(ConfigError, match="weight_ranges"):
        fast_cfg(weight_ranges="sometimes").validate()
    with pytest.raises(ConfigError, match="act_ranges"):
        Supernet(tiny_space(), act_ranges="guess")


def test_checkpoints_without_act_ranges_load_as_learned(tmp_path, digits_splits):
    from qnas.quant.checkpoint import load_checkpoint, save_checkpoint
    from qnas.supernet import load_supernet

    net = Supernet.from_seed(tiny_space(), 0, act_ranges="learned")
    train_supernet(net, tiny_splits(digits_splits), fast_cfg(phases=fast_cfg().phases[:1], checkpoint_dir=str(tmp_path)))
    state, meta = load_checkpoint(tmp_path / "supernet.pt")
    del meta["supernet"]["act_ranges"]  # as written before the option existed

    class Raw:
        def state_dict(self):
            return state
    save_checkpoint(tmp_path / "old" / "supernet.pt", Raw(), meta)
    loaded = load_supernet(tmp_path / "old")
    assert loaded.act_ranges == "learned"
    assert all(m.ranges == "learned" for m in loaded.modules() if isinstance(m, ActQuantizers))
