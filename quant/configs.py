"""Training and quantization settings as plain dataclasses, defined once.

No torch import here: the CLI builds its flags and help texts from these
defaults, and the finishing options (:mod:`qnas.options`) take theirs from
them. The loops that use them live in :mod:`qnas.quant.train` (training),
:mod:`qnas.quant.qat` (QAT) and :mod:`qnas.quant.ptq` (PTQ); the supernet's
:class:`~qnas.supernet.train.SupernetTrainConfig` shares
:class:`OptimizerConfig`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from qnas.quant.errors import QnasError

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
#: PTQ methods, cumulative: min-max calibration, + bias correction, + GPTQ.
PTQ_METHODS: tuple[str, ...] = ("minmax", "bias_correction", "gptq")
#: settings that change how a run looks or where it runs, not what it computes (ignored when a resume
#: checks its config: a run may resume on another torch device)
RUN_ONLY: tuple[str, ...] = ("progress", "desc", "torch_device")
#: the torch-device names (:mod:`qnas.quant.torch_device` resolves them) and mixed-precision modes
TORCH_DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "cuda:N", "mps")
AMP_MODES: tuple[str, ...] = ("off", "bf16", "fp16")


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def validate_run_device(torch_device: object, amp: object) -> None:
    """Torch-free check of a ``torch_device`` name and an ``amp`` mode (availability is checked when
    the run resolves the device, :func:`qnas.quant.torch_device.resolve_torch_device`)."""
    from qnas.quant.torch_device import is_torch_device_name

    if not is_torch_device_name(torch_device):
        raise QnasError(f"unknown torch device {torch_device!r}; choose one of {', '.join(TORCH_DEVICES)}")
    if amp not in AMP_MODES:
        raise QnasError(f"unknown mixed-precision mode {amp!r}; choose one of {', '.join(AMP_MODES)}")


@dataclass
class OptimizerConfig:
    """The optimizer every training loop makes with :func:`qnas.quant.train.make_optimizer`:
    Adam or Nesterov SGD (``momentum``), weight decay on conv/linear weights only."""

    lr: float = 3e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 1e-5

    def validate_optimizer(self) -> None:
        if not (_number(self.lr) and self.lr > 0):
            raise QnasError(f"lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise QnasError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if not (_number(self.momentum) and 0 <= self.momentum < 1):
            raise QnasError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (_number(self.weight_decay) and self.weight_decay >= 0):
            raise QnasError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")


@dataclass
class TrainConfig(OptimizerConfig):
    """One training run (:func:`qnas.quant.train.train`): cosine schedule after
    ``warmup_epochs`` of linear warm-up, optional label smoothing.

    ``torch_device``: where to train (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``); ``amp``: mixed
    precision (``off``, ``bf16``, ``fp16``; see :mod:`qnas.quant.torch_device`). ``keep_best``: with a
    validation loader, end with the weights of the epoch of the best validation accuracy (the first
    such epoch) instead of the last; ``early_stop``: stop after that many epochs without a better
    validation accuracy (None: never)."""

    epochs: int = 5
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0
    seed: int = 0
    progress: bool = True
    desc: str = "train"
    torch_device: str = "cpu"
    amp: str = "off"
    keep_best: bool = False
    early_stop: int | None = None

    def validate(self) -> "TrainConfig":
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise QnasError(f"epochs must be an integer >= 0, got {self.epochs!r}")
        self.validate_optimizer()
        if not (_number(self.label_smoothing) and 0.0 <= self.label_smoothing < 1.0):
            raise QnasError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        validate_run_device(self.torch_device, self.amp)
        if self.early_stop is not None and (isinstance(self.early_stop, bool) or not isinstance(self.early_stop, int)
                                            or self.early_stop < 1):
            raise QnasError(f"early_stop must be a positive number of epochs or None, got {self.early_stop!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a resume: everything but progress bar settings."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in RUN_ONLY}


@dataclass
class QATConfig(TrainConfig):
    """QAT settings (:func:`qnas.quant.qat.qat`). BN statistics freeze from epoch
    ``freeze_bn_epoch`` (0-based; ``None``: ``round(freeze_bn_fraction * epochs)``; neither:
    never). ``kd_weight`` is the distillation weight ``a`` (used only when a teacher is given).
    QAT keeps the best epoch on validation by default (``keep_best``)."""

    epochs: int = 10
    lr: float = 2e-3
    desc: str = "QAT"
    kd_weight: float = 0.5
    kd_temperature: float = 2.0
    freeze_bn_epoch: int | None = None
    freeze_bn_fraction: float | None = 0.7
    keep_best: bool = True

    def validate(self) -> "QATConfig":
        super().validate()
        if not (_number(self.kd_weight) and 0.0 <= self.kd_weight <= 1.0):
            raise QnasError(f"kd_weight must be in [0, 1], got {self.kd_weight!r}")
        if not (_number(self.kd_temperature) and self.kd_temperature > 0):
            raise QnasError(f"kd_temperature must be a positive number, got {self.kd_temperature!r}")
        if self.freeze_bn_epoch is not None and (isinstance(self.freeze_bn_epoch, bool)
                                                 or not isinstance(self.freeze_bn_epoch, int)
                                                 or self.freeze_bn_epoch < 0):
            raise QnasError(f"freeze_bn_epoch must be an integer >= 0 or None, got {self.freeze_bn_epoch!r}")
        if self.freeze_bn_fraction is not None and not (_number(self.freeze_bn_fraction)
                                                        and 0.0 <= self.freeze_bn_fraction <= 1.0):
            raise QnasError(f"freeze_bn_fraction must be in [0, 1] or None, got {self.freeze_bn_fraction!r}")
        return self

    def train_config(self) -> TrainConfig:
        """The plain training settings of this QAT run."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})

    def bn_freeze_start(self) -> int:
        """The first (0-based) epoch with frozen BN; ``epochs`` when BN is never frozen."""
        if self.freeze_bn_epoch is not None:
            return min(self.freeze_bn_epoch, self.epochs)
        if self.freeze_bn_fraction is not None:
            return min(self.epochs, int(round(self.freeze_bn_fraction * self.epochs)))
        return self.epochs


@dataclass
class PTQConfig:
    """How to post-training-quantize a model (:func:`qnas.quant.ptq.ptq`).

    method: ``minmax`` (activation calibration only), ``bias_correction``
        (+ bias correction) or ``gptq`` (+ GPTQ weights), cumulative.
    batch_size: calibration batch size.
    bn_recalibrate: re-estimate BatchNorm statistics (float) on the calibration
        data first (needed for weights taken from a supernet).
    progress: tqdm progress bars.
    gptq_act_order: process columns by decreasing Hessian diagonal in GPTQ.
    """

    method: Literal["minmax", "bias_correction", "gptq"] = "minmax"
    batch_size: int = 64
    bn_recalibrate: bool = True
    progress: bool = True
    gptq_act_order: bool = False

    def validate(self) -> "PTQConfig":
        if self.method not in PTQ_METHODS:
            raise QnasError(f"PTQ method must be one of {', '.join(PTQ_METHODS)}, got {self.method!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise QnasError(f"PTQ batch_size must be a positive integer, got {self.batch_size!r}")
        return self
