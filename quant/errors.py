"""Errors raised by the quantization layer. They live here, not in ``qnas``,
because ``quant`` sits below ``qnas`` in the dependency order; ``qnas.errors``
re-exports them."""
from __future__ import annotations


class QnasError(ValueError):
    """Base class for errors caused by user input (config, data, files, flags).

    The message is one line saying what is wrong and how to fix it; the CLI
    prints it and exits with status 2."""


class CheckpointError(QnasError):
    """A checkpoint file that is missing, corrupt or not a qnas checkpoint."""


class TrainingError(QnasError):
    """Training that cannot go on (e.g. the loss became NaN or infinite)."""


class ExportError(QnasError):
    """A model that cannot be exported or whose export failed verification."""


class TorchDeviceError(QnasError):
    """A torch device (``--torch-device``) that is unknown or not available on this machine."""
