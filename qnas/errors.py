"""Error types. Every error a user can cause is a :class:`QnasError` whose
message is one line saying what is wrong and how to fix it; the CLI prints it
and exits with status 2."""
from __future__ import annotations

from qnas.quant.errors import CheckpointError, ExportError, QnasError, TorchDeviceError, TrainingError

__all__ = [
    "QnasError", "ArchError", "ConfigError", "DataError", "UnknownTargetError", "UnknownDeviceError",
    "CheckpointError", "LatencyTableError", "TrainingError", "ExportError", "TorchDeviceError",
]


class ArchError(QnasError):
    """An architecture that its search space does not allow."""


class ConfigError(QnasError):
    """A malformed search-space or run configuration."""


class DataError(QnasError):
    """A data set or calibration file that cannot be used as given."""


class UnknownTargetError(QnasError):
    """A latency target (profile) name that qnas does not know (``--target``; not the torch
    device, which is :class:`TorchDeviceError`)."""


#: the former name of :class:`UnknownTargetError` (the same class)
UnknownDeviceError = UnknownTargetError


class LatencyTableError(QnasError):
    """A latency table that is corrupt or lacks an entry."""
