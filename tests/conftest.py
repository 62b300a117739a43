import os
import tempfile
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", message=".*fast_hadamard_transform.*")

# The default latency kind ("auto") is this machine's measured table on cpu-ort: timings, which would make
# search results depend on the machine's load. Tests price with the analytic profile unless they opt in
# (tests/qnas/latency/test_machine_cache.py), and never touch the user's ~/.cache.
os.environ.setdefault("QNAS_AUTO_LATENCY", "analytic")
os.environ.setdefault("QNAS_CACHE_DIR", tempfile.mkdtemp(prefix="qnas-test-cache-"))


@pytest.fixture(scope="session")
def digits_splits():
    from qnas.data import load_digits, split

    return split(load_digits(), seed=0)


@pytest.fixture(scope="session")
def trained_digits_model(digits_splits):
    """A small mixed-precision model QAT-trained on digits for 3 epochs (shared by export tests)."""
    from qnas.arch import Arch, Block
    from qnas.quant.build import build_model
    from qnas.quant.integer_grid import snap_biases
    from qnas.quant.train import TrainConfig, train
    from qnas.space import SearchSpace

    space = SearchSpace()
    arch = Arch(16, 0.75, (
        (Block(3, 4, (8, 4, 8), (8, 8, 4)),),
        (Block(5, 3, (4, 2, 4), (8, 4, 8)), Block(3, 3, (2, 8, 8), (4, 8, 8))),
        (Block(7, 6, (8, 8, 4), (8, 8, 8)),),
        (Block(3, 4, (4, 4, 8), (8, 4, 4)),),
    ))
    space.validate(arch)
    torch.manual_seed(0)
    model = build_model(space, arch)
    train(model, digits_splits.train.at_resolution(16).loader(64, True), None,
          TrainConfig(epochs=3, progress=False))
    model.eval()
    snap_biases(model)  # as the finishing pass does: integer runtimes then add the biases exactly
    return space, arch, model
