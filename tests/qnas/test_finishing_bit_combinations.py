"""PTQ and QAT on every (w_bits, a_bits) the space offers, and calib -> finish -> export from the CLI."""
import json

import pytest
import torch

from qnas.calib_data.build import build_calibration_set
from qnas.quant.build import build_model
from qnas.quant.integer_grid import grid_offsets, snap_biases
from qnas.quant.ptq import PTQConfig, float_mode, load_float_weights, ptq
from qnas.quant.qat import QATConfig, qat
from qnas.quant.train import TrainConfig, train
from qnas.space import SearchSpace

R = 12
SPACE = SearchSpace()
COMBOS = [(w, a) for w in SPACE.config.w_bits for a in SPACE.config.a_bits]


@pytest.fixture(scope="module")
def float_state(digits_splits):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(SPACE, SPACE.uniform(8, 8, largest=False, resolution=R))
    with float_mode(model):
        train(model, digits_splits.train.at_resolution(R).loader(64, True), None,
              TrainConfig(epochs=2, lr=1e-2, progress=False))
    torch.set_num_threads(n)
    return model.state_dict()


def test_the_space_offers_six_combinations():
    assert sorted(COMBOS) == [(2, 4), (2, 8), (4, 4), (4, 8), (8, 4), (8, 8)]


@pytest.mark.parametrize("w,a", COMBOS)
def test_ptq_and_qat_on_every_bit_combination(w, a, float_state, digits_splits):
    arch = SPACE.uniform(w, a, largest=False, resolution=R)
    calib = build_calibration_set("digits", n=128, resolution=R, seed=0)
    test = digits_splits.test.at_resolution(R)
    for method in ("minmax", "bias_correction", "gptq"):
        model = ptq(load_float_weights(build_model(SPACE, arch), float_state), calib.images,
                    PTQConfig(method=method, progress=False))
        assert torch.isfinite(model(test.images[:64])).all(), method
    # the searched bits are what the layers quantize at
    block = model.blocks[0]
    assert round(float(block.dw.quant_weight().bit_width)) == w
    assert round(float(block.act1.act_quant.bit_width())) == a
    before = [p.detach().clone() for p in model.parameters()]
    small = digits_splits.train.subset(range(256)).at_resolution(R)
    qat(model, small.loader(64, True), None, QATConfig(epochs=1, progress=False))
    assert any(not torch.equal(p0, p1) for p0, p1 in zip(before, model.parameters())), "QAT updated nothing"
    model.eval()
    snap_biases(model)
    assert max(o.max_offset_steps for o in grid_offsets(model)) < 0.01
    assert torch.isfinite(model(test.images[:64])).all()


def test_calib_finish_export_from_the_cli(tmp_path, capsys):
    from qnas.cli import main

    calib, model, out = tmp_path / "calib.npz", tmp_path / "model.pt", tmp_path / "m.tflite"
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(SPACE.uniform(4, 8, largest=False, resolution=R).to_dict()))
    assert main(["calib", "build", "--from", "digits", "--n", "128", "--arch", str(arch), "--out", str(calib)]) == 0
    assert main(["finish", "ptq", str(arch), "--calib", str(calib), "--method", "minmax", "--float-epochs", "2",
                 "--out", str(model), "--no-progress"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    # 4-bit weights: the Edge TPU runs them as int8 on its host, so TFLite export needs the user's consent
    assert main(["export", "tflite", str(model), "--out", str(out)]) == 2
    assert "--allow-upcast" in capsys.readouterr().err and not out.exists()
    assert main(["export", "tflite", str(model), "--out", str(out), "--allow-upcast"]) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert out.is_file() and "identical predictions 100.00 %" in text and "precision map on edgetpu" in text
