"""qnas.quant.clipping: per-quantizer clipped shares of a QuantNet (issue 12, item 1)."""
import argparse
import copy
import json

import numpy as np
import pytest
import torch
from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling

from qnas.errors import QnasError
from qnas.quant.build import build_model
from qnas.quant.clipping import ClipReport, clipping_report
from qnas.quant.layer_view import read_act_quant
from qnas.quant.ptq import float_mode

from .test_ptq import MIXED, R, SPACE, one_thread  # noqa: F401  (the same arch, space and autouse fixture)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randn(96, 1, R, R, generator=g)


def _runtime_scalings(model):
    return [m for m in model.modules() if isinstance(m, ParameterFromRuntimeStatsScaling)]


@pytest.fixture(scope="module")
def calibrated(images, one_thread):
    """MIXED with activation scales from one batch's statistics, frozen as learned values (what
    Brevitas does after its statistics steps), weight scales initialised; eval mode."""
    torch.manual_seed(0)
    model = build_model(SPACE, MIXED)
    model.train()
    with torch.no_grad():
        model(images)
    for s in _runtime_scalings(model):
        s.init_scale()
    return model.eval()


@pytest.fixture
def model(calibrated):
    return copy.deepcopy(calibrated)


def _batches(images):
    return [images[i:i + 32] for i in range(0, len(images), 32)]


def _set_scale_value(model, name, value):
    """Set activation quantizer ``name``'s learned threshold (its ``scaling_impl.value``)."""
    impl = model.get_submodule(name).act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl
    assert impl.counter > impl.collect_stats_steps  # the learned value is what eval mode uses
    with torch.no_grad():
        impl.value.fill_(value)


def _same(a, b):
    return (a.clipped, a.count, a.bits, a.threshold, a.max_abs) == (b.clipped, b.count, b.bits, b.threshold, b.max_abs)


def test_rows_cover_every_quantizer_with_kinds_bits_and_counts(model, images):
    rep = clipping_report(model, _batches(images))
    layers = model.quant_layers()
    act_names = {l.input_quant.name for l in layers} | {l.output_quant.name for l in layers} \
        | {q.name for q in model.stream_quants()}
    assert {r.name for r in rep.activations} == act_names
    assert [r.name for r in rep.weights] == [l.name for l in layers]
    assert rep.activations[0].name == "input_quant" and rep.activations[0].kind == "input"
    assert rep.activations[-1].name == "logit_quant" and rep.logits is rep.activations[-1]
    assert rep.row("pool_quant").kind == "pool" and rep.row("s0.b0.out_quant").kind == "residual"
    assert rep.row("s1.b0.act1").kind == "act"
    for l in layers:
        assert rep.row(l.input_quant.name).bits == l.spec.a_bits
        assert rep.row(l.name, "weight").bits == l.spec.w_bits
        assert rep.row(l.name, "weight").op == l.spec.op
    assert rep.images == 96 and rep.batches == 3
    assert rep.logits.count == 96 * 10 and rep.row("input_quant").count == 96 * R * R
    assert all(0.0 <= r.share <= 1.0 and r.calibrated is not False for r in rep.rows)
    assert not rep.warnings and not rep.disabled and not rep.unused
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["summary"]["logits"]["name"] == "logit_quant" and len(d["rows"]) == len(rep.rows)
    text = rep.format()
    assert "logits:" in text and "worst activation quantizer" in text and "s1.b0.dw" in text
    assert clipping_report(model, _batches(images), max_batches=2).images == 64


def test_tiny_scale_clips_everything_and_leaves_the_others(model, images):
    base = clipping_report(model, _batches(images))
    _set_scale_value(model, "logit_quant", 1e-6)
    rep = clipping_report(model, _batches(images))
    assert rep.logits.share > 0.99 and rep.logits.threshold < 1e-6
    assert rep.summary()["logits"]["share"] == rep.logits.share
    assert rep.worst_activation.name == "logit_quant"
    for a, b in zip(base.rows, rep.rows):
        assert a.name == b.name
        if a.name != "logit_quant":
            assert _same(a, b), a.name


def test_huge_scale_clips_nothing(model, images):
    base = clipping_report(model, _batches(images))
    _set_scale_value(model, "s1.b0.act1", 1e6)
    rep = clipping_report(model, _batches(images))
    row = rep.row("s1.b0.act1")
    assert row.clipped == 0 and row.share == 0.0 and row.threshold > 1e3
    names = [r.name for r in rep.activations]
    for a, b in zip(base.activations[:names.index("s1.b0.act1")], rep.activations):
        assert _same(a, b), a.name  # everything upstream unchanged


def test_clipping_is_counted_after_the_relu(model, images):
    # s1.b0.act1 is a QuantReLU: it quantizes relu(bn1(x)); negative BN outputs become 0, never clipped
    _set_scale_value(model, "s1.b0.act1", 1e-4)
    seen = []
    h = model.s1.b0.bn1.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        rep = clipping_report(model, _batches(images))
    finally:
        h.remove()
    q = read_act_quant(model.s1.b0.act1)
    pre = torch.cat(seen)
    codes = torch.round(torch.relu(pre) / q.scale_value)
    expected = int(((codes > q.qmax) | (codes < q.qmin)).sum())
    row = rep.row("s1.b0.act1")
    assert row.clipped == expected and row.count == pre.numel() and row.bits == MIXED.stages[1][0].a_bits[1]
    pre_codes = torch.round(pre / q.scale_value)
    assert int(((pre_codes > q.qmax) | (pre_codes < q.qmin)).sum()) > expected + pre.numel() // 10
    assert row.threshold == pytest.approx(q.qmax * q.scale_value, rel=1e-6)
    assert row.max_abs == pytest.approx(float(torch.relu(pre).max()), rel=1e-6)


def test_weight_shares_match_numpy(model, images):
    layer = next(l for l in model.quant_layers() if l.spec.op == "dwconv" and l.spec.w_bits == 4)
    with torch.no_grad():  # the learned scales stay; widen a few channels past them
        layer.module.weight[:3].mul_(2.5)
    rep = clipping_report(model, _batches(images))
    row = rep.row(layer.name, "weight")
    w = layer.module.weight.detach().numpy().astype(np.float32)
    s = layer.module.weight_quant.scale().detach().numpy().astype(np.float32)  # (cout, 1, 1, 1)
    qmax = 2 ** (layer.spec.w_bits - 1) - 1  # narrow range
    q = np.round(w / s)
    clipped = (q > qmax) | (q < -qmax)
    assert clipped.sum() > 0
    assert row.clipped == int(clipped.sum()) and row.count == w.size and row.bits == 4
    assert row.share == pytest.approx(clipped.mean())
    assert row.worst_channel_share == pytest.approx(clipped.reshape(len(w), -1).mean(axis=1).max())
    assert row.threshold == pytest.approx(float((qmax * s).max()), rel=1e-6)
    assert row.max_abs == pytest.approx(float(np.abs(w).max()), rel=1e-6)
    assert rep.worst_weight.name == layer.name
    others = [r for r in rep.weights if r.name != layer.name]
    assert all(r.clipped == 0 for r in others)  # scales initialised from these very weights


def test_leaves_model_state_and_mode_alone(images):
    torch.manual_seed(0)
    model = build_model(SPACE, MIXED)
    model.train()
    with torch.no_grad():
        model(images[:32])  # activation scales mid statistics collection
    counters = [s.counter for s in _runtime_scalings(model)]
    before = copy.deepcopy(model.state_dict())
    rep = clipping_report(model, _batches(images))
    assert model.training and all(m.training for m in model.modules())
    assert [s.counter for s in _runtime_scalings(model)] == counters
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(r.calibrated for r in rep.activations)


def test_uncalibrated_model_is_reported_with_a_warning(images):
    torch.manual_seed(0)
    rep = clipping_report(build_model(SPACE, MIXED), images[:16])
    assert rep.activations and all(r.calibrated is False for r in rep.activations)
    assert rep.warnings and "never calibrated" in rep.warnings[0]
    assert "(uncalibrated)" in rep.format() and "warning:" in rep.format()


def test_clear_errors(model, images):
    with float_mode(model), pytest.raises(QnasError, match="float_mode"):
        clipping_report(model, images)
    with pytest.raises(QnasError, match="no batches"):
        clipping_report(model, [])
    with pytest.raises(QnasError, match="expects 1x12x12"):
        clipping_report(model, torch.randn(4, 1, 8, 8))
    with pytest.raises(QnasError, match="max_batches"):
        clipping_report(model, images, max_batches=0)
    with pytest.raises(QnasError, match="no Brevitas quantizer"):
        clipping_report(torch.nn.Linear(2, 2), [torch.randn(2, 2)])


def test_inputs_accept_loaders_tensors_and_datasets(model, images):
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(images, torch.zeros(len(images), dtype=torch.long)), batch_size=48)
    a = clipping_report(model, loader)
    b = clipping_report(model, images, batch_size=48)
    assert isinstance(a, ClipReport) and a.batches == b.batches == 2
    assert all(_same(x, y) for x, y in zip(a.rows, b.rows))


def test_cli_diagnose_clipping(model, tmp_path, capsys):
    from qnas.cli import run_parsed
    from qnas.cli.diagnose import add_diagnose_parser
    from qnas.model_io import save_model

    _set_scale_value(model, "logit_quant", 1e-6)
    path = save_model(tmp_path / "model.pt", model, SPACE, MIXED,
                      {"data": {"data": "digits", "data_path": None, "split_seed": 0}})
    parser = argparse.ArgumentParser(prog="qnas")
    add_diagnose_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "clip.json"
    rc = run_parsed(parser.parse_args(["diagnose", "clipping", str(tmp_path), "--batches", "1", "--batch-size", "32",
                                       "--json", str(out)]))
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["images"] == 32 and d["summary"]["logits"]["share"] > 0.99
    assert "logits:" in capsys.readouterr().out
    rc = run_parsed(parser.parse_args(["diagnose", "clipping", str(path), "--batches", "1", "--max-logits", "1"]))
    assert rc == 1 and "--max-logits" in capsys.readouterr().err
