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
