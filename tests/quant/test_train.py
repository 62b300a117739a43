import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from qnas.errors import QnasError, TrainingError
from qnas.quant.build import build_model
from qnas.quant.train import TrainConfig, cosine_lr, evaluate, train
from qnas.space import SearchSpace


def _loader(x, y):
    return DataLoader(TensorDataset(x, y), batch_size=16)


def test_nan_loss_stops_training_with_a_clear_error():
    space = SearchSpace()
    arch = space.sample(0)
    model = build_model(space, arch)
    x = torch.full((32, 1, arch.resolution, arch.resolution), float("nan"))
    y = torch.zeros(32, dtype=torch.long)
    with pytest.raises(TrainingError, match="NaN|nan"):
        train(model, _loader(x, y), cfg=TrainConfig(epochs=1, progress=False))


def test_training_reduces_loss_and_learns_digits(digits_splits):
    space = SearchSpace()
    arch = space.uniform(8, 8, largest=False, resolution=12)
    torch.manual_seed(0)
    model = build_model(space, arch)
    tr = digits_splits.train.at_resolution(12)
    va = digits_splits.val.at_resolution(12)
    before = evaluate(model, va.loader(256, False))
    res = train(model, tr.loader(64, True), va.loader(256, False), TrainConfig(epochs=3, progress=False))
    assert res.epochs[-1].train_loss < res.epochs[0].train_loss
    assert res.final_val_acc > max(0.6, before + 0.3)


def test_cosine_schedule_and_config_validation():
    assert cosine_lr(0, 100, 1.0) == pytest.approx(1.0)
    assert cosine_lr(50, 100, 1.0) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 1.0) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(QnasError, match="optimizer"):
        TrainConfig(optimizer="lbfgs").validate()
    with pytest.raises(QnasError, match="lr"):
        TrainConfig(lr=-1).validate()


# ---- best epoch on validation, early stop ------------------------------------------------------------
def _scripted(monkeypatch, accs):
    """Make the validation accuracy of successive epochs ``accs`` (the loop's own evaluate is replaced)."""
    import qnas.quant.train as qtrain

    it = iter(accs)
    monkeypatch.setattr(qtrain, "evaluate", lambda *a, **k: next(it))


def _linear_run(monkeypatch, accs, **cfg):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.randn(32, 1, 2, 2), torch.randint(0, 3, (32,))
    _scripted(monkeypatch, accs)
    states = []
    res = train(model, _loader(x, y), _loader(x, y), TrainConfig(progress=False, lr=0.05, **cfg),
                on_epoch=lambda s: states.append({k: v.clone() for k, v in model.state_dict().items()}))
    return model, res, states


def test_keep_best_ends_with_the_best_validation_epoch(monkeypatch):
    model, res, states = _linear_run(monkeypatch, [0.5, 0.7, 0.6, 0.7], epochs=4, keep_best=True)
    assert (res.best_epoch, res.best_val_acc, res.final_val_acc) == (2, 0.7, 0.7)  # the first of equal bests
    assert all(torch.equal(v, states[1][k]) for k, v in model.state_dict().items())
    assert res.selection() == {"kept": "best", "kept_epoch": 2, "kept_val_acc": 0.7, "stopped_early_after": None}
    model, res, states = _linear_run(monkeypatch, [0.5, 0.7, 0.6, 0.7], epochs=4)  # TrainConfig default: last
    assert res.best_epoch is None and res.selection()["kept"] == "last"
    assert all(torch.equal(v, states[-1][k]) for k, v in model.state_dict().items())


def test_early_stop_after_n_epochs_without_improvement(monkeypatch):
    _, res, _ = _linear_run(monkeypatch, [0.5, 0.7, 0.6, 0.65, 0.9, 0.9], epochs=6, keep_best=True, early_stop=2)
    assert [e.epoch for e in res.epochs] == [1, 2, 3, 4] and res.stopped_early_after == 4 and res.best_epoch == 2
    with pytest.raises(QnasError, match="early_stop"):
        TrainConfig(early_stop=0).validate()


def test_qat_resume_keeps_the_best_epoch_and_says_which(monkeypatch, tmp_path, digits_splits):
    from qnas.quant.qat import QATConfig, qat

    class Killed(Exception):
        pass

    space = SearchSpace()
    arch = space.uniform(8, 8, largest=False, resolution=12)
    tr = digits_splits.train.subset(slice(0, 64)).at_resolution(12).loader(32, True, 0)
    va = digits_splits.val.subset(slice(0, 32)).at_resolution(12).loader(32, False)
    cfg = QATConfig(epochs=3, progress=False, freeze_bn_fraction=None)
    state = tmp_path / "qat-state.pt"

    def kill(stats):
        if stats.epoch == 2:
            raise Killed

    torch.manual_seed(0)
    _scripted(monkeypatch, [0.4, 0.8])
    with pytest.raises(Killed):
        qat(build_model(space, arch), tr, va, cfg, state_path=state, on_epoch=kill)
    _scripted(monkeypatch, [0.6])
    torch.manual_seed(0)
    res = qat(build_model(space, arch), tr, va, cfg, state_path=state)
    assert res.resumed_from_epoch == 2 and res.best_epoch == 2 and res.best_val_acc == 0.8
    assert res.summary()["kept"] == "best" and res.summary()["kept_epoch"] == 2
