"""A few supernet and QAT steps on CUDA with automatic mixed precision (``pytest -m gpu`` on a GPU machine)."""
import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_supernet_and_qat_train_on_cuda_with_amp(digits_splits, tmp_path, amp):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from qnas.data import Splits
    from qnas.quant.build import build_model
    from qnas.quant.qat import QATConfig, qat
    from qnas.space import SearchSpace
    from qnas.supernet import Supernet, SupernetTrainConfig, load_supernet, progressive_phases, train_supernet

    space = SearchSpace()
    splits = Splits(digits_splits.train.subset(slice(0, 128)), digits_splits.val.subset(slice(0, 64)),
                    digits_splits.test)
    net = Supernet.from_seed(space, 0)
    hist = train_supernet(net, splits, SupernetTrainConfig(
        phases=progressive_phases(1)[:2], batch_size=32, n_random=1, progress=False, eval_bn_batches=1,
        checkpoint_dir=str(tmp_path), torch_device="cuda", amp=amp))
    assert next(net.parameters()).is_cuda and all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert load_supernet(tmp_path) is not None  # the checkpoint holds CPU tensors and loads anywhere

    arch = space.uniform(8, 8, largest=False, resolution=12)
    model = build_model(space, arch)
    res = qat(model, splits.train.at_resolution(12).loader(32, True, 0), splits.val.at_resolution(12).loader(64, False),
              QATConfig(epochs=2, progress=False, torch_device="cuda", amp=amp), state_path=tmp_path / "qat.pt")
    assert next(model.parameters()).is_cuda and res.best_epoch in (1, 2)
    assert all(p.dtype == torch.float32 for p in model.parameters())
