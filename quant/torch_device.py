"""The torch device every training and evaluation path runs on, and opt-in mixed precision.

One resolver, :func:`resolve_torch_device`, turns ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or
``"auto"`` (CUDA if available, else MPS, else CPU) into a :class:`torch.device`; an unknown or
unavailable device is a one-line :class:`~qnas.quant.errors.TorchDeviceError`. This is the
*torch* device (``--torch-device``), not the latency target a search prices archs for
(``--target``, a device profile such as ``cpu-ort`` or ``edgetpu``).

Mixed precision (``amp``): ``"off"`` (default), ``"bf16"`` or ``"fp16"``. :func:`autocast` wraps a
forward pass and its loss in :func:`torch.autocast`; :func:`grad_scaler` gives a
:class:`torch.amp.GradScaler` for fp16 on CUDA (bf16 needs none). Brevitas 0.13 has no autocast
support of its own (no mention in its docs, code or issues; its quantizers are plain torch ops): under
autocast the convolutions and linear layers run in the low precision, while every quantizer's
arithmetic (``x / scale``, rounding, clamping) stays in fp32 because the learned scales are fp32
parameters and torch's type promotion lifts the product to fp32; the weights, optimizer state and
checkpoints stay fp32. Autocast is refused on the CPU for fp16 (torch has no CPU fp16 kernels for
most ops); CPU bf16 works but is slower than fp32 on most CPUs.

The module imports torch only inside its functions, so the CLI can validate names without it.
"""
from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any, Iterator

from qnas.quant.configs import AMP_MODES, TORCH_DEVICES  # the names, defined once (torch-free)
from qnas.quant.errors import TorchDeviceError

if TYPE_CHECKING:
    import torch

__all__ = ["AMP_MODES", "TORCH_DEVICES", "amp_dtype", "autocast", "grad_scaler", "is_torch_device_name", "module_device",
           "resolve_torch_device", "to_device", "validate_amp"]


_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def is_torch_device_name(name: Any) -> bool:
    """Whether ``name`` is spelled like a torch device (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``);
    torch-free, for telling a torch device from a latency target."""
    return isinstance(name, str) and bool(_NAME.match(name.strip().lower()))


def resolve_torch_device(name: "str | torch.device | None" = "cpu") -> "torch.device":
    """The :class:`torch.device` for ``name`` (None: cpu); ``auto`` is cuda if available, else mps, else cpu.

    Raises :class:`TorchDeviceError` (one line) for a name that is not a torch device or a device
    this machine does not have."""
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    text = "cpu" if name is None else str(name).strip().lower()
    if not _NAME.match(text):
        raise TorchDeviceError(f"unknown torch device {name!r}; choose one of {', '.join(TORCH_DEVICES)}")
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else ("mps" if has_mps else "cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TorchDeviceError(f"torch device {name!r} is not available: this torch ({torch.__version__}) sees "
                                   "no CUDA GPU; use --torch-device cpu (or auto)")
        index = int(text.split(":")[1]) if ":" in text else None
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise TorchDeviceError(f"torch device {name!r} is not available: this machine has {count} CUDA "
                                   f"device(s) (cuda:0..cuda:{count - 1})")
    if text == "mps" and not has_mps:
        raise TorchDeviceError(f"torch device {name!r} is not available (no Apple MPS backend here); "
                               "use --torch-device cpu (or auto)")
    return torch.device(text)


def validate_amp(amp: Any, device: "torch.device | None" = None) -> str:
    """``amp`` checked (``off``, ``bf16``, ``fp16``; None/False: off), and refused where it cannot run."""
    mode = "off" if amp in (None, False) else str(amp).lower()
    if mode not in AMP_MODES:
        raise TorchDeviceError(f"unknown mixed-precision mode {amp!r}; choose one of {', '.join(AMP_MODES)}")
    if device is not None and mode == "fp16" and device.type == "cpu":
        raise TorchDeviceError("amp 'fp16' needs a GPU (torch has no CPU fp16 kernels); use --amp bf16 or off")
    return mode


def amp_dtype(amp: str) -> "torch.dtype | None":
    """The autocast dtype of ``amp`` (None for off)."""
    import torch

    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[validate_amp(amp)]


@contextlib.contextmanager
def autocast(device: "torch.device", amp: str = "off") -> Iterator[None]:
    """:func:`torch.autocast` on ``device`` in the ``amp`` dtype; nothing at all when ``amp`` is off."""
    dtype = amp_dtype(amp)
    if dtype is None:
        yield
        return
    import torch

    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def grad_scaler(device: "torch.device", amp: str = "off") -> "torch.amp.GradScaler | None":
    """A gradient scaler for fp16 on CUDA (bf16 and fp32 need none, so None)."""
    if validate_amp(amp, device) != "fp16" or device.type != "cuda":
        return None
    import torch

    return torch.amp.GradScaler(device.type)


def to_device(x: Any, device: "torch.device") -> Any:
    """``x`` (a tensor, or a tuple/list of them) on ``device``; a CPU tensor stays the same object on the CPU."""
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    if hasattr(x, "to") and getattr(x, "device", None) is not None and x.device != device:
        return x.to(device, non_blocking=True)
    return x


def training_layout(x: Any) -> Any:
    """A 4-D image batch in channels-last memory order (other values unchanged), for training steps.

    Convolutions, above all depthwise ones, run their backward pass several times faster on
    channels-last inputs in oneDNN (CPU: 41 -> 5 ms for a 3x3 depthwise conv over 64x96x12x12) and on
    tensor cores; every later activation keeps that order. Values are the same up to float rounding.
    Used by the supernet's training; stand-alone Brevitas models train in the default order, where
    Brevitas' statistics phase was slower in channels-last (bench/scale.py: 3.2-3.5x the float step
    against 2.2-2.4x)."""
    import torch

    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def module_device(model: Any) -> "torch.device":
    """The device of ``model``'s first parameter (or buffer); cpu for a module without tensors."""
    import torch

    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
