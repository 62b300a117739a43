import copy

import pytest
import torch

from qnas.arch import Arch, Block
from qnas.calib_data.build import build_calibration_set
from qnas.errors import QnasError
from qnas.quant.build import build_model
from qnas.quant.ptq import PTQConfig, float_mode, load_float_weights, ptq
from qnas.quant.train import TrainConfig, evaluate, train
from qnas.space import SearchSpace

R = 12
SPACE = SearchSpace()
W8A8 = SPACE.uniform(8, 8, largest=False, resolution=R)
W4A4 = SPACE.uniform(4, 4, largest=False, resolution=R)
MIXED = SPACE.validate(Arch(R, 0.5, (
    (Block(3, 3, (8, 4, 2), (8, 4, 8)),),
    (Block(3, 3, (4, 2, 8), (4, 8, 4)),),
    (Block(3, 3, (2, 4, 4), (8, 4, 8)),),
    (Block(3, 3, (4, 8, 2), (4, 4, 8)),),
)))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # the CI machine is small and shared: one thread is much faster than oversubscribing
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def float_model(digits_splits, one_thread):
    """The W8A8 topology trained with every quantizer off (a float model)."""
    torch.manual_seed(0)
    model = build_model(SPACE, W8A8)
    with float_mode(model):
        train(model, digits_splits.train.at_resolution(R).loader(64, True), None,
              TrainConfig(epochs=6, lr=1e-2, progress=False))
        model.eval()
        acc = evaluate(model, _test_loader(digits_splits))
    return copy.deepcopy(model.state_dict()), acc


@pytest.fixture(scope="module")
def calib():
    return build_calibration_set("digits", n=256, arch=W8A8, seed=0)


def _test_loader(splits):
    return splits.test.at_resolution(R).loader(512, False)


def _ptq(arch, state, calib, method):
    model = load_float_weights(build_model(SPACE, arch), state)
    return ptq(model, calib.images, PTQConfig(method=method, progress=False))


@pytest.fixture(scope="module")
def results(float_model, calib, digits_splits):
    state, _ = float_model
    out = {}
    for name, arch in (("w8a8", W8A8), ("mixed", MIXED), ("w4a4", W4A4)):
        for method in ("minmax", "bias_correction", "gptq"):
            m = _ptq(arch, state, calib, method)
            out[name, method] = (m, evaluate(m, _test_loader(digits_splits)))
    return out


def test_float_model_learned_digits(float_model):
    assert float_model[1] > 0.85


def test_w8a8_minmax_close_to_float(float_model, results):
    float_acc = float_model[1]
    for method in ("minmax", "bias_correction", "gptq"):
        assert results["w8a8", method][1] >= float_acc - 0.03, method


def test_low_bit_archs_are_reasonable(float_model, results):
    float_acc = float_model[1]
    # PTQ loses some accuracy at 4 bits and more with 2-bit weights (measured: ~5-10 and ~20-25 points
    # below float); these bounds leave 10 points for other CPUs' roundings
    for name, max_loss in (("w4a4", 0.2), ("mixed", 0.35)):
        accs = {m: results[name, m][1] for m in ("minmax", "bias_correction", "gptq")}
        assert all(a >= float_acc - max_loss for a in accs.values()), (name, float_acc, accs)
        # bias correction and GPTQ do not make things much worse than plain calibration
        assert accs["bias_correction"] >= accs["minmax"] - 0.03, accs
        assert accs["gptq"] >= accs["minmax"] - 0.03, accs


def test_gptq_reconstructs_2bit_layer_outputs_better_than_rounding(float_model, calib, results):
    """What GPTQ optimises: each layer's output error on the calibration inputs (float activations)
    is below that of rounding the same weights to the same grid (min-max PTQ); at 2 bits by a wide
    margin (measured 0.40-0.71 of it)."""
    import torch.nn.functional as F

    state, _ = float_model
    ref = load_float_weights(build_model(SPACE, MIXED), state).eval()
    inputs: dict[str, torch.Tensor] = {}
    hooks = [layer.module.register_forward_hook(
        lambda mod, args, out, name=layer.name: inputs.__setitem__(name, getattr(args[0], "value", args[0]).detach()))
        for layer in ref.quant_layers()]
    with float_mode(ref), torch.no_grad():
        ref(calib.images)
    for h in hooks:
        h.remove()
    two_bit = [layer for layer in ref.quant_layers() if layer.spec.w_bits == 2]
    assert len(two_bit) == 4
    for layer in two_bit:
        x, conv = inputs[layer.name], layer.module

        def out(w: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, w, None, conv.stride, conv.padding, 1, conv.groups)

        err = {}
        for method in ("minmax", "gptq"):
            q = results["mixed", method][0].get_submodule(layer.name).quant_weight().value
            with torch.no_grad():
                err[method] = float((out(q) - out(conv.weight)).pow(2).mean())
        assert err["gptq"] < 0.85 * err["minmax"], (layer.name, err)


def test_gptq_changes_low_bit_weights(float_model, results):
    state, _ = float_model
    g = results["mixed", "gptq"][0]
    mm = results["mixed", "minmax"][0]
    assert torch.equal(mm.blocks[0].project.weight, state["s0.b0.project.weight"])  # minmax keeps float weights
    changed = (g.blocks[0].project.weight - state["s0.b0.project.weight"]).abs().max()  # a 2-bit layer
    assert changed > 1e-3
    # the quantized weights still sit on the (unchanged) per-channel grid
    qw = g.blocks[0].project.quant_weight()
    codes = qw.value / qw.scale
    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.abs().max() <= 1


def test_structure_kept_and_checkpoint_round_trip(results, calib, tmp_path):
    from qnas.model_io import load_model, save_model

    model = results["mixed", "bias_correction"][0]
    assert all(m.bias is None for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
    fresh = build_model(SPACE, MIXED)
    fresh(calib.images[:2])  # initialise every quantizer so all state keys exist
    assert set(model.state_dict()) == set(fresh.state_dict())
    path = save_model(tmp_path / "model.pt", model, SPACE, MIXED)
    loaded = load_model(path).model
    x = calib.images[:64]
    assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_onnx_export_of_ptq_model_matches_pytorch(results, digits_splits, tmp_path):
    from qnas.exporters import create_exporter

    test = digits_splits.test.at_resolution(R)
    exporter = create_exporter("onnx")
    for key in (("mixed", "gptq"), ("w8a8", "bias_correction")):
        model = results[key][0]
        path = exporter.export(model, test.images[:1], tmp_path / f"{'-'.join(key)}.onnx")
        report = exporter.verify(path, model, test.images, test.labels)
        assert report.agreement >= 0.99, (key, report)


def test_float_mode_disables_and_restores(results, calib):
    model = results["w4a4", "minmax"][0]
    x = calib.images[:32]
    q = model(x)
    with float_mode(model):
        f = model(x)
    assert not torch.allclose(q, f, atol=1e-3)
    assert torch.equal(model(x), q)


def test_bad_calibration_data_is_rejected(float_model):
    model = load_float_weights(build_model(SPACE, W8A8), float_model[0])
    cfg = PTQConfig(progress=False)
    with pytest.raises(QnasError) as e:
        ptq(model, torch.zeros(8, 1, 16, 16), cfg)
    assert str(e.value) == ("calibration images are 1x16x16 but the model expects 1x12x12; "
                            "rebuild with --resolution 12")
    with pytest.raises(QnasError, match="3x12x12 but the model expects 1x12x12"):
        ptq(model, torch.zeros(8, 3, 12, 12), cfg)
    with pytest.raises(QnasError, match="NaN or Inf"):
        ptq(model, torch.full((8, 1, 12, 12), float("inf")), cfg)
    with pytest.raises(QnasError, match="empty"):
        ptq(model, torch.zeros(0, 1, 12, 12), cfg)
    with pytest.raises(QnasError, match="4-D"):
        ptq(model, torch.zeros(8, 12, 12), cfg)
    with pytest.raises(QnasError, match="method"):
        ptq(model, torch.zeros(8, 1, 12, 12), PTQConfig(method="adaround"))


def test_load_float_weights_rejects_other_topology(float_model):
    other = build_model(SPACE, SPACE.uniform(8, 8, largest=True, resolution=R))
    with pytest.raises(QnasError, match="shape|lack"):
        load_float_weights(other, float_model[0])


def test_float_mode_resyncs_train_flag(float_model):
    from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling

    model = load_float_weights(build_model(SPACE, W8A8), float_model[0])
    model.train()
    with float_mode(model):
        model.eval()
    assert not any(m.training for m in model.modules())
    stats = [m for m in model.modules() if isinstance(m, ParameterFromRuntimeStatsScaling)]
    assert stats and all(m.counter == 0 for m in stats)  # nothing collected in float mode


def test_single_image_calibration_still_works(float_model, calib):
    model = load_float_weights(build_model(SPACE, W8A8), float_model[0])
    ptq(model, calib.images[:1], PTQConfig(progress=False))
    assert torch.isfinite(model(calib.images[:4])).all()
