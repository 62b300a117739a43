"""QAT (qnas.quant.qat) and the finishing API/CLI (qnas.finishing)."""
import argparse
import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from qnas.errors import CheckpointError, QnasError, TrainingError
from qnas.quant.build import build_model
from qnas.quant.qat import QATConfig, freeze_batchnorm, kd_loss, qat
from qnas.space import SearchSpace

RES = 12


def _small_arch(space, w=4, a=8):
    return space.uniform(w, a, largest=False, resolution=RES)


def _warm(model, x):
    """Bring every Brevitas quantizer past its statistics-collection phase, as a supernet
    extraction or a PTQ calibration leaves it (a resume inside the phase is tested below)."""
    model.train()
    with torch.no_grad():
        model(x)
    model.load_state_dict(model.state_dict())
    return model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: faster than two on a busy 2-core machine, and results do not
    depend on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small(digits_splits):
    space = SearchSpace()
    arch = _small_arch(space)
    tr = digits_splits.train.at_resolution(RES).subset(slice(0, 256))
    va = digits_splits.val.at_resolution(RES).subset(slice(0, 128))
    return space, arch, tr, va


def _model(space, arch, tr, seed=0):
    torch.manual_seed(seed)
    return _warm(build_model(space, arch), tr.images[:32])


# ---- the loss and BN ---------------------------------------------------------
def test_kd_loss_math():
    torch.manual_seed(0)
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    ce = F.cross_entropy(s, y)
    T = 3.0
    p_t = F.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean()
    assert kd_loss(s, t, y, 0.0, T) == pytest.approx(float(ce), rel=1e-5)
    assert kd_loss(s, None, y, 0.7, T) == pytest.approx(float(ce), rel=1e-5)
    assert kd_loss(s, t, y, 1.0, T) == pytest.approx(float(T * T * kl), rel=1e-5)
    assert kd_loss(s, t, y, 0.3, T) == pytest.approx(float(0.7 * ce + 0.3 * T * T * kl), rel=1e-5)
    assert kd_loss(s, s, y, 1.0, T) == pytest.approx(0.0, abs=1e-6)
    # gradients reach the student only
    s.requires_grad_(True)
    t.requires_grad_(True)
    kd_loss(s, t, y, 0.5, 2.0).backward()
    assert s.grad is not None and t.grad is None


def _bn_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def test_bn_freeze_really_freezes_running_stats(small):
    space, arch, tr, va = small
    model = _model(space, arch, tr)
    snaps = []
    res = qat(model, tr.loader(64, True), None, QATConfig(epochs=3, freeze_bn_epoch=1, progress=False),
              on_epoch=lambda st: snaps.append(_bn_stats(model)))
    assert res.bn_frozen_from_epoch == 2
    before = _bn_stats(_model(space, arch, tr))
    assert any(not torch.equal(before[k], snaps[0][k]) for k in before), "epoch 1 updates BN statistics"
    for k in before:
        assert torch.equal(snaps[0][k], snaps[1][k]) and torch.equal(snaps[1][k], snaps[2][k]), k
    # the affine parameters still learn while frozen
    assert QATConfig(epochs=10, freeze_bn_fraction=0.7).bn_freeze_start() == 7
    assert QATConfig(epochs=10, freeze_bn_fraction=None).bn_freeze_start() == 10
    assert freeze_batchnorm(model) > 0 and all(not m.training for m in model.modules()
                                               if isinstance(m, torch.nn.BatchNorm2d))


def test_qat_config_validation_and_nan(small):
    space, arch, tr, _ = small
    with pytest.raises(QnasError, match="kd_weight"):
        QATConfig(kd_weight=2).validate()
    with pytest.raises(QnasError, match="freeze_bn_epoch"):
        QATConfig(freeze_bn_epoch=-1).validate()
    x = torch.full((32, 1, RES, RES), float("nan"))
    loader = DataLoader(TensorDataset(x, torch.zeros(32, dtype=torch.long)), batch_size=16)
    with pytest.raises(TrainingError, match="nan|NaN"):
        qat(build_model(space, arch), loader, None, QATConfig(epochs=1, progress=False))


# ---- resume --------------------------------------------------------------------
class _Stop(Exception):
    pass


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(small, tmp_path):
    space, arch, tr, va = small
    cfg = QATConfig(epochs=3, freeze_bn_epoch=2, progress=False, seed=1)
    torch.manual_seed(0)
    teacher = _model(space, arch, tr, seed=5)
    full = _model(space, arch, tr)
    ref = qat(full, tr.loader(64, True, 3), va.loader(128, False), cfg, teacher=teacher)
    assert ref.distilled and len(ref.epochs) == 3

    state = tmp_path / "qat-state.pt"
    part = _model(space, arch, tr)

    def stop_after_first(stats):
        if stats.epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        qat(part, tr.loader(64, True, 3), va.loader(128, False), cfg, teacher=teacher, state_path=state,
            on_epoch=stop_after_first)
    assert state.is_file()
    torch.manual_seed(1234)  # the resume must not depend on the global RNG at the call
    resumed_model = _model(space, arch, tr)
    res = qat(resumed_model, tr.loader(64, True, 3), va.loader(128, False), cfg, teacher=teacher, state_path=state)
    assert res.resumed_from_epoch == 1
    assert [e.epoch for e in res.epochs] == [1, 2, 3]
    a, b = full.state_dict(), resumed_model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert res.epochs[-1].val_acc == ref.epochs[-1].val_acc

    payload = torch.load(state, weights_only=True)
    assert payload["epoch"] == 3 and set(payload) >= {"model", "optimizer", "rng", "history_json"}
    with pytest.raises(CheckpointError, match="other QAT settings"):
        qat(_model(space, arch, tr), tr.loader(64, True, 3), None, QATConfig(epochs=4, progress=False),
            state_path=state)


def test_resume_inside_the_statistics_phase_is_exact(small, tmp_path):
    """From scratch, Brevitas' quantizers collect range statistics for their first 300 steps; a state
    dict leaves that out (loading one ends the phase), so the QAT state carries it (issue 14)."""
    space, arch, tr, va = small
    cfg = QATConfig(epochs=3, progress=False, seed=2, keep_best=False)  # the last epoch, whichever is best

    def scratch():
        torch.manual_seed(0)
        return build_model(space, arch)

    full = scratch()
    qat(full, tr.loader(64, True, 3), va.loader(128, False), cfg)
    state = tmp_path / "qat-state.pt"

    def stop_after_first(stats):
        if stats.epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        qat(scratch(), tr.loader(64, True, 3), va.loader(128, False), cfg, state_path=state, on_epoch=stop_after_first)
    stats = torch.load(state, weights_only=True)["stats"]
    assert stats and all(0 < int(e["counter"]) < 300 for e in stats.values())  # killed inside the phase
    resumed = scratch()
    qat(resumed, tr.loader(64, True, 3), va.loader(128, False), cfg, state_path=state)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# ---- finishing API ---------------------------------------------------------------
def _tiny_run(tmp_path, space, arch):
    """A run directory as a supernet search leaves it (an untrained supernet is enough here)."""
    from qnas.quant.checkpoint import save_checkpoint
    from qnas.supernet import Supernet

    run = tmp_path / "run"
    (run / "supernet").mkdir(parents=True)
    (run / "arch.json").write_text(json.dumps(arch.to_dict()))
    (run / "config.json").write_text(json.dumps({"data": "digits", "seed": 0, "batch_size": 64,
                                                 "accuracy": "supernet", "space": space.to_dict()}))
    torch.manual_seed(0)
    sn = Supernet(space)

    class _Wrap(torch.nn.Module):
        def state_dict(self):
            return {f"supernet.{k}": v for k, v in sn.state_dict().items()}

    save_checkpoint(run / "supernet" / "supernet.pt", _Wrap(), {"kind": "supernet-train", "supernet": sn.config})
    return run


def _export_ok(path, tmp_path, digits_splits):
    from qnas.exporters import create_exporter
    from qnas.model_io import load_model

    loaded = load_model(path)
    assert loaded.meta["data"]["data"] == "digits" and "finish" in loaded.meta
    test = digits_splits.test.at_resolution(loaded.arch.resolution).subset(slice(0, 64))
    exp = create_exporter("onnx")
    onnx_path = exp.export(loaded.model, test.images[:1], tmp_path / f"{path.stem}.onnx", overwrite=True)
    rep = exp.verify(onnx_path, loaded.model, test.images, test.labels)
    assert rep.agreement >= 0.95
    return loaded


def test_finish_qat_from_arch_json_with_float_teacher(tmp_path, digits_splits):
    from qnas.finishing import finish_qat

    space = SearchSpace()
    arch = _small_arch(space, 4, 8)
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(arch.to_dict()))
    out = tmp_path / "qat.pt"
    res = finish_qat(arch_file, out=out, epochs=1, float_epochs=2, progress=False, splits=digits_splits)
    assert res.path == out and out.is_file() and not (tmp_path / "qat.qat-state.pt").exists()
    assert res.details["init"] == "ptq" and "float" in res.details["teacher"]
    # measured: float (2 epochs) ~79 %, QAT from its PTQ ~83 %: QAT keeps the float model's accuracy
    assert res.float_test_acc >= 0.65 and res.test_acc >= res.float_test_acc - 0.1
    loaded = _export_ok(out, tmp_path, digits_splits)
    assert loaded.meta["finish"]["method"] == "qat" and loaded.meta["test_acc"] == pytest.approx(res.test_acc)
    with pytest.raises(CheckpointError, match="already exists"):
        finish_qat(arch_file, out=out, epochs=1, progress=False, splits=digits_splits)
    with pytest.raises(QnasError, match="teacher"):
        finish_qat(arch_file, out=tmp_path / "x.pt", teacher="supernet", progress=False)


def test_finish_from_a_supernet_run_qat_and_ptq(tmp_path, digits_splits):
    from qnas.calib_data.build import build_calibration_set
    from qnas.finishing import finish_ptq, finish_qat

    space = SearchSpace()
    arch = _small_arch(space, 8, 8)
    run = _tiny_run(tmp_path, space, arch)
    res = finish_qat(run, epochs=1, progress=False, splits=digits_splits)
    assert res.path == run / "model.pt" and "supernet largest" in res.details["teacher"]
    assert res.details["init"] == "supernet"
    _export_ok(res.path, tmp_path, digits_splits)

    calib = tmp_path / "calib.npz"
    build_calibration_set("digits", n=128, resolution=arch.resolution).save(calib)
    pres = finish_ptq(run, calib, "bias_correction", out=tmp_path / "ptq.pt", progress=False, splits=digits_splits)
    assert pres.method == "ptq:bias_correction" and pres.details["calibration_n"] == 128
    _export_ok(pres.path, tmp_path, digits_splits)


def test_finish_cli_parser_and_bad_input(tmp_path, capsys):
    from qnas.cli.finish import add_finish_parser

    parser = argparse.ArgumentParser(prog="qnas")
    add_finish_parser(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(["finish", "ptq", str(tmp_path / "missing"), "--method", "minmax", "--no-progress"])
    assert a.method == "minmax" and a.finish_method == "ptq"
    with pytest.raises(QnasError, match="neither a run directory"):
        a.func(a)
    a = parser.parse_args(["finish", "qat", str(tmp_path), "--epochs", "1", "--teacher", "none"])
    with pytest.raises(QnasError, match="arch.json"):
        a.func(a)
    bad = tmp_path / "arch.json"
    bad.write_text("{not json")
    a = parser.parse_args(["finish", "qat", str(bad), "--out", str(tmp_path / "m.pt")])
    with pytest.raises(QnasError):
        a.func(a)
    with pytest.raises(SystemExit):
        parser.parse_args(["finish", "ptq", "x", "--method", "adaround"])
    with pytest.raises(SystemExit):
        parser.parse_args(["finish", "qat", "x", "--epochs", "-1"])


def test_finish_options_defaults_are_the_qat_recipe():
    """QATFinishOptions (what the CLI, finish_qat and the demo default to) agrees with QATConfig."""
    from dataclasses import fields

    from qnas.options import QATFinishOptions

    recipe = QATConfig()
    run_settings = {"seed", "progress"}  # the finish takes these from the run / the caller, not the recipe
    shared = [f.name for f in fields(QATFinishOptions) if hasattr(recipe, f.name) and f.name not in run_settings]
    assert sorted(shared) == ["amp", "early_stop", "epochs", "freeze_bn_fraction", "kd_temperature", "kd_weight",
                              "keep_best", "lr", "torch_device"]
    assert all(getattr(QATFinishOptions(), n) == getattr(recipe, n) for n in shared)
