"""The one torch-device resolver, mixed-precision modes, and the latency target / torch device names."""
import subprocess
import sys

import pytest
import torch

from qnas.errors import ConfigError, QnasError, TorchDeviceError
from qnas.quant.torch_device import autocast, grad_scaler, is_torch_device_name, resolve_torch_device, validate_amp


def test_resolve_cpu_auto_and_refusals():
    assert resolve_torch_device("cpu") == torch.device("cpu") == resolve_torch_device(None)
    assert resolve_torch_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(TorchDeviceError, match="unknown torch device 'gpu'"):
        resolve_torch_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(TorchDeviceError, match="not available"):
            resolve_torch_device("cuda:0")
    assert issubclass(TorchDeviceError, QnasError)
    assert [is_torch_device_name(n) for n in ("cuda:1", "mps", "cpu-ort", "edgetpu")] == [True, True, False, False]


def test_amp_modes():
    cpu = torch.device("cpu")
    assert validate_amp(None) == "off" and grad_scaler(cpu, "bf16") is None
    with pytest.raises(TorchDeviceError, match="needs a GPU"):
        validate_amp("fp16", cpu)
    with pytest.raises(TorchDeviceError, match="unknown mixed-precision"):
        validate_amp("fp8")
    with autocast(cpu, "bf16"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, "off"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


def test_qat_under_bf16_autocast_on_the_cpu_keeps_fp32_weights(digits_splits):
    """One step of a Brevitas model under CPU bf16 autocast (slow kernels: kept to one small batch)."""
    from qnas.quant.build import build_model
    from qnas.quant.train import TrainConfig, train
    from qnas.space import SearchSpace

    space = SearchSpace()
    arch = space.uniform(8, 8, largest=False, resolution=12)
    torch.manual_seed(0)
    model = build_model(space, arch)
    res = train(model, digits_splits.train.subset(slice(0, 8)).at_resolution(12).loader(8, True, 0), None,
                TrainConfig(epochs=1, progress=False, amp="bf16"))
    assert all(p.dtype == torch.float32 for p in model.parameters()) and res.epochs[0].train_loss > 0


def test_target_and_torch_device_cannot_be_confused(tmp_path):
    from qnas.options import SearchConfig

    with pytest.raises(ConfigError, match="unknown latency target 'cuda'; the torch device is --torch-device"):
        SearchConfig(target="cuda").validate()
    with pytest.warns(DeprecationWarning, match="target"):
        cfg = SearchConfig(device="edgetpu")
    assert cfg.target == "edgetpu" and "device" not in cfg.to_dict()
    assert SearchConfig.from_dict({"device": "edgetpu"}).target == "edgetpu"  # a config.json of an older run
    with pytest.raises(QnasError, match="unknown torch device"):
        SearchConfig(torch_device="gpu").validate()
    run = lambda *a: subprocess.run([sys.executable, "-m", "qnas", "search", *a, "--out", str(tmp_path / "r")],  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    p = run("--target", "cuda")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        p.stderr.strip().splitlines()[0]] and "the torch device is --torch-device" in p.stderr
    p = run("--device", "mps")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 2 and "--device is deprecated" in lines[0]
    assert "unknown latency target 'mps'" in lines[1]
    p = run("--torch-device", "gpu")
    assert p.returncode == 2 and p.stderr.strip() == ("qnas: error: unknown torch device 'gpu'; choose one of auto, "
                                                      "cpu, cuda, cuda:N, mps")


@pytest.mark.parametrize("command", ["search", "demo"])
def test_an_amp_mode_the_machine_cannot_run_is_refused_before_anything_is_written(command, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("fp16 autocast runs on this machine's GPU")
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "qnas", command, "--amp", "fp16", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "amp 'fp16' needs a GPU" in p.stderr
    assert not out.exists()
