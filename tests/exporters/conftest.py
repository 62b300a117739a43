import pytest
import torch


def _settled_model(space, arch, seed: int = 0, batch: int = 16):
    """``arch`` of ``space`` built with ``seed``, BatchNorm affine parameters as training leaves them
    (not 1 and 0), run past the activation quantizers' statistics phase, in eval mode with biases
    snapped to the integer grid (as `qnas finish` leaves a model)."""
    from qnas.quant.build import build_model
    from qnas.quant.integer_grid import snap_biases

    torch.manual_seed(seed)
    model = build_model(space, arch).train()
    c = space.config
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
        for _ in range(3):
            model(torch.randn(batch, c.in_channels, arch.resolution, arch.resolution))
    model.eval()
    snap_biases(model)
    return model


@pytest.fixture(scope="session")
def settled_model():
    """:func:`_settled_model`: a function ``(space, arch, seed=0) -> model`` for export tests."""
    return _settled_model
