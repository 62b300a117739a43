"""Typed options of each pipeline stage: what the CLI fills and the library takes.

* :class:`SearchConfig` -- a search (``qnas search``, :func:`qnas.search`); saved as ``RUN/config.json``;
* :class:`DemoConfig` -- the demo (``qnas demo``, :func:`qnas.demo`): a search plus a QAT finish;
* :class:`QATFinishOptions` / :class:`PTQFinishOptions` -- ``qnas finish qat|ptq``,
  :func:`qnas.finish_qat` / :func:`qnas.finish_ptq`, sharing :class:`FinishOptions`.

Each default is written here once; the CLI takes its defaults (and help text) from these classes.
Torch-free on purpose, so that building the CLI parser stays fast.
"""
from __future__ import annotations

import functools
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, TypeVar

from qnas.errors import ConfigError
from qnas.quant.configs import (PTQ_METHODS, QATConfig,  # torch-free: the QAT/PTQ defaults, defined once
                                validate_run_device)

if TYPE_CHECKING:
    from qnas.strategies.base import Budget

__all__ = ["SearchConfig", "DemoConfig", "demo_search_config", "default_out", "search_budget", "FinishOptions",
           "QATFinishOptions", "PTQFinishOptions", "TEACHERS", "INITS", "PTQ_INITS", "PTQ_METHODS", "with_fields",
           "check_latency_target", "checked_latency_kind", "target_alias"]

#: ``teacher`` values of a QAT finish.
TEACHERS: tuple[str, ...] = ("auto", "float", "supernet", "none")
#: ``init`` values of a QAT finish.
INITS: tuple[str, ...] = ("auto", "supernet", "ptq", "scratch", "pretrained")
#: ``init`` values of a PTQ finish (where its float weights come from).
PTQ_INITS: tuple[str, ...] = ("auto", "pretrained")

_Options = TypeVar("_Options")

#: the largest count (epochs, candidates, batch size) an option takes (as :data:`qnas.cli._args.MAX_COUNT`)
MAX_COUNT = 2**31 - 1


def with_fields(options: _Options, changes: Mapping[str, Any]) -> _Options:
    """``options`` with some fields replaced; an unknown field is a one-line error listing the valid ones."""
    known = [f.name for f in fields(options)]  # type: ignore[arg-type]
    unknown = sorted(set(changes) - set(known))
    if unknown:
        raise ConfigError(f"unknown {type(options).__name__} field(s) {unknown}; valid: {known}")
    return replace(options, **changes) if changes else options  # type: ignore[type-var]


def check_latency_target(name: Any) -> None:
    """Refuse a latency target that is spelled like a torch device (``cuda``, ``cpu``, ``mps`` ...) and is
    no profile: the user meant ``--torch-device``. Other unknown names are left to the latency models."""
    from qnas.latency.profile import PROFILES_DIR, known_profiles
    from qnas.quant.torch_device import is_torch_device_name

    if isinstance(name, str) and not name.strip():  # an empty --target would silently mean the default
        raise ConfigError(f"the latency target (--target) is empty; choose one of: {', '.join(known_profiles())}")
    if is_torch_device_name(name) and not (PROFILES_DIR / f"{name}.json").is_file():
        raise ConfigError(f"unknown latency target {name!r}; the torch device is --torch-device "
                          f"(latency targets: {', '.join(known_profiles())})")


def checked_latency_kind(kind: Any, target: str, table: str | None = None, hybrid: str | None = None) -> str:
    """``kind`` checked against the latency model kinds, with ``auto`` resolved for ``target``
    (:func:`~qnas.latency.machine_cache.resolve_latency_kind`), so a run's config says what priced it."""
    from qnas.latency import latency_model_kinds
    from qnas.latency.machine_cache import resolve_latency_kind

    if kind not in latency_model_kinds():
        raise ConfigError(f"unknown latency model kind {kind!r} (--latency); valid kinds: "
                          f"{', '.join(latency_model_kinds())}")
    return resolve_latency_kind(kind, target, table, hybrid)


def target_alias(cls: type) -> type:
    """Let ``cls(device=...)`` and ``obj.device`` keep meaning the latency ``target`` for one release,
    with a DeprecationWarning (``device`` was renamed: it was confusable with the torch device)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, device: Any = None, **kwargs: Any) -> None:
        if device is not None:
            warnings.warn(f"{cls.__name__}(device=...) is deprecated: the latency target is now 'target' "
                          "(the torch device is 'torch_device')", DeprecationWarning, stacklevel=2)
            if kwargs.get("target") is not None:
                raise ConfigError(f"give {cls.__name__} either target or its deprecated name device, not both")
            kwargs["target"] = device
        init(self, *args, **kwargs)

    def _get(self: Any) -> Any:
        warnings.warn(f"{cls.__name__}.device is deprecated; use .target (the latency target)",
                      DeprecationWarning, stacklevel=2)
        return self.target

    def _set(self: Any, value: Any) -> None:
        warnings.warn(f"{cls.__name__}.device is deprecated; use .target (the latency target)",
                      DeprecationWarning, stacklevel=2)
        self.target = value

    cls.__init__ = __init__  # type: ignore[method-assign]
    cls.device = property(_get, _set, doc="Deprecated name of ``target``.")  # type: ignore[attr-defined]
    return cls


def default_out(prefix: str) -> str:
    """The default run directory of a command: ``runs/PREFIX-TIMESTAMP``."""
    return str(Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")


# ---- search ---------------------------------------------------------------------------
def search_budget(config: Mapping[str, Any]) -> "Budget":
    """The hard budget a search config sets (a :class:`SearchConfig`'s fields or a run's ``config.json``)."""
    from qnas.strategies.base import Budget

    return Budget(config.get("latency_budget_ms"), config.get("size_budget_kb"), config.get("memory_budget_kb"),
                  config.get("energy_budget_mj"))


@target_alias
@dataclass
class SearchConfig:
    """Everything that defines a search; saved as the run's ``config.json`` and read back by ``--resume``.

    ``target``: the latency target (a device profile, ``qnas latency show NAME``; formerly ``device``).
    ``torch_device``: where the search trains and evaluates (supernet, accuracy sources, differentiable
    search): ``cpu`` (default), ``cuda``, ``cuda:N``, ``mps`` or ``auto``; ``amp``: mixed precision of
    that training (``off``, ``bf16``, ``fp16``). ``ray_address``: the Ray cluster ``executor="ray"``
    connects to (None: a local Ray runtime); ``ray_gpus_per_task`` / ``ray_cpus_per_task``: what each Ray
    evaluation task requests (default: 1 GPU when ``torch_device`` is CUDA, else none; 1 CPU)."""

    data: str = "digits"
    data_path: str | None = None
    stream: bool = False  # read the data lazily from disk (qnas.streaming) instead of loading it whole
    target: str = "cpu-ort"
    latency_kind: str = "auto"  # resolved by validate(): measured on cpu-ort, else analytic (or table/hybrid)
    latency_table: str | None = None
    latency_hybrid: str | None = None
    strategy: str = "random"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    accuracy: str = "train"  # an accuracy source (qnas.accuracy_sources)
    accuracy_path: str | None = None  # supernet checkpoint (accuracy=supernet) or predictor file (accuracy=predictor)
    proxy: str = "naswot"  # zero-cost proxy (accuracy=zero-cost)
    #: per progressive-shrinking phase when the run trains its own supernet: one count for every phase, or
    #: four (kernel, depth, width, bits)
    supernet_epochs: int | list[int] = 2
    supernet_lr: float | None = None  # the supernet's Adam learning rate (None: SupernetTrainConfig's, 3e-3)
    n_candidates: int = 8
    batch: int = 4
    epochs: int = 3
    batch_size: int = 64
    seed: int = 0
    latency_budget_ms: float | None = None
    size_budget_kb: float | None = None
    memory_budget_kb: float | None = None
    energy_budget_mj: float | None = None  # on targets whose profile gives energy (e.g. bitfusion)
    executor: str = "local"
    threads: int | None = None
    space: dict[str, Any] | None = None
    torch_device: str = "cpu"
    amp: str = "off"
    ray_address: str | None = None
    ray_gpus_per_task: float | None = None  # None: 1 when torch_device is CUDA, else 0
    ray_cpus_per_task: float | None = None  # None: 1
    # after the search, give the refine_top most accurate archs within budget refine_epochs epochs of QAT
    # and choose among them by that accuracy (qnas.refining); 0: choose by the search's accuracy
    refine_top: int = 0
    refine_epochs: int = 3
    # written by the search, not read: how the latency target prices each sub-8-bit width (native, upcast,
    # host or excluded; TargetProfile.low_bits_summary), so a run's config says what its latencies mean
    latency_low_bits: dict[str, Any] | None = None

    #: fields that name files: stored absolute, so that ``RUN/config.json`` (and ``--resume RUN``) means the
    #: same files from any working directory (``strategy_options["predictor"]`` too)
    PATH_FIELDS = ("data_path", "latency_table", "latency_hybrid", "accuracy_path")

    def __post_init__(self) -> None:
        # absolute from the start: a config built from relative flags equals the one read back from config.json
        for name in self.PATH_FIELDS:
            setattr(self, name, _absolute(getattr(self, name)))
        if isinstance(self.strategy_options, dict) and "predictor" in self.strategy_options:
            self.strategy_options = {**self.strategy_options,
                                     "predictor": _absolute(self.strategy_options["predictor"])}

    def validate(self) -> "SearchConfig":
        from qnas.accuracy_sources import accuracy_source

        check_latency_target(self.target)
        self.latency_kind = checked_latency_kind(self.latency_kind, self.target, self.latency_table,
                                                 self.latency_hybrid)
        validate_run_device(self.torch_device, self.amp)
        if self.ray_address is not None and self.executor != "ray":
            raise ConfigError(f"ray_address (--ray-address) needs executor='ray' (--executor ray), got {self.executor!r}")
        if self.executor == "ray":
            from qnas.executors import ray_task_resources
            ray_task_resources(self.torch_device, self.ray_gpus_per_task, self.ray_cpus_per_task)
        elif self.ray_gpus_per_task is not None or self.ray_cpus_per_task is not None:
            raise ConfigError("ray_gpus_per_task / ray_cpus_per_task (--ray-gpus-per-task / --ray-cpus-per-task) "
                              f"need executor='ray' (--executor ray), got {self.executor!r}")

        for name in ("n_candidates", "batch", "epochs", "batch_size", "refine_epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_COUNT:
                raise ConfigError(f"{name} must be a positive integer up to 2**31 - 1, got {v!r}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be at least 2 (batch norm needs two images), got {self.batch_size}")
        if isinstance(self.refine_top, bool) or not isinstance(self.refine_top, int) \
                or not 0 <= self.refine_top <= MAX_COUNT:
            raise ConfigError(f"refine_top must be an integer >= 0 (at most 2**31 - 1), got {self.refine_top!r}")
        self.supernet_epochs = checked_phase_epochs(self.supernet_epochs, "supernet_epochs", 0)
        if self.supernet_lr is not None and (isinstance(self.supernet_lr, bool)
                                             or not isinstance(self.supernet_lr, (int, float))
                                             or not 0 < self.supernet_lr < float("inf")):
            raise ConfigError(f"supernet_lr must be a positive number (or null for the default), got {self.supernet_lr!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= 2**32 - 1:
            raise ConfigError(f"seed must be an integer in [0, 2**32 - 1], got {self.seed!r}")
        for name in ("latency_budget_ms", "size_budget_kb", "memory_budget_kb", "energy_budget_mj"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")):
                raise ConfigError(f"{name} must be a positive finite number, got {v!r}")
        accuracy_source(self.accuracy).check(self)
        from qnas.strategies import strategy_names

        if self.strategy not in strategy_names():  # before a supernet is trained for it
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of {strategy_names()}")
        return self

    @property
    def budget(self) -> "Budget":
        return search_budget(vars(self))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchConfig":
        if "device" in d and "target" not in d:  # a config.json written before the rename
            d = {("target" if k == "device" else k): v for k, v in d.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown search config key(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**d).validate()


def checked_phase_epochs(v: Any, name: str, lo: int) -> int | list[int]:
    """Supernet epochs per progressive-shrinking phase: an integer >= ``lo`` for every phase, or a list of four
    integers >= 0 (kernel, depth, width, bits) adding up to at least ``lo``; a tuple comes back as a list."""
    if isinstance(v, int) and not isinstance(v, bool):
        if not lo <= v <= MAX_COUNT:  # 0: an untrained supernet (tests)
            raise ConfigError(f"{name} must be an integer >= {lo} (at most 2**31 - 1), got {v!r}")
        return v
    if isinstance(v, (list, tuple)) and len(v) == 4 and all(isinstance(x, int) and not isinstance(x, bool)
                                                            and 0 <= x <= MAX_COUNT for x in v) and sum(v) >= lo:
        return list(v)
    raise ConfigError(f"{name} must be one integer >= {lo} (epochs of every phase) or four integers >= 0 "
                      f"(kernel, depth, width, bits phases, e.g. [3, 3, 6, 12]), got {v!r}")


def _absolute(path: Any) -> Any:
    """``path`` (a non-empty str or PathLike) made absolute against the working directory, as a str; anything
    else unchanged (validation reports it)."""
    import os

    if isinstance(path, os.PathLike) or (isinstance(path, str) and path):
        return os.path.abspath(os.path.expanduser(os.fspath(path)))
    return path


def demo_search_config(**overrides: Any) -> SearchConfig:
    """The demo's search: NSGA-II over a briefly trained supernet, sized for 2 CPU cores."""
    defaults: dict[str, Any] = dict(strategy="nsga2", accuracy="supernet", supernet_epochs=1, n_candidates=24,
                                    batch=8, strategy_options={"pop_size": 8}, refine_top=4)
    defaults.update(overrides)
    if defaults["strategy"] not in ("nsga2", "nsga3") and "strategy_options" not in overrides:
        defaults["strategy_options"] = {}
    return SearchConfig(**defaults)


# ---- finishing -------------------------------------------------------------------------
@dataclass
class FinishOptions:
    """What every finish takes besides its recipe: the calibration set, what to override of the run, where to write.

    ``space``/``data``/``data_path``/``seed``/``batch_size`` override what the run recorded (None: the
    run's, else the defaults: the embedded space, digits, seed 0, batch 64). ``calib``: a calibration-set
    path (``qnas calib build``), a :class:`~qnas.calib_data.calibration.CalibrationSet`, or None for 512
    class-balanced training images. ``out``: the model file (None: ``RUN/model.pt``).
    ``pretrained``: a float ``state_dict`` file (a torchvision MobileNetV2 / MobileNetV3-Large, or any
    file whose conv/linear layers line up with the arch's, :mod:`qnas.pretrained`) to start from; it
    implies ``init="pretrained"``, which needs it."""

    out: str | Path | None = None
    calib: Any = None
    space: Any = None  # SearchSpace, a YAML path, or None
    data: str | None = None
    data_path: str | None = None
    stream: bool = False
    seed: int | None = None
    batch_size: int | None = None
    overwrite: bool = False
    progress: bool = True
    torch_device: str = "cpu"
    amp: str = "off"
    pretrained: str | Path | None = None

    def validate(self) -> "FinishOptions":
        validate_run_device(self.torch_device, self.amp)
        init = getattr(self, "init", "auto")
        if self.pretrained is not None and init not in ("auto", "pretrained"):
            raise ConfigError(f"--pretrained gives the starting weights, --init {init} others; "
                              "drop one of them (--pretrained implies --init pretrained)")
        if init == "pretrained" and self.pretrained is None:
            raise ConfigError("--init pretrained needs the weights file: --pretrained PATH")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 2):
            raise ConfigError(f"--batch-size must be at least 2, got {self.batch_size}")
        return self


@dataclass
class QATFinishOptions(FinishOptions):
    """A QAT finish (:func:`qnas.finish_qat`).

    ``teacher``: ``"supernet"`` (the run supernet's largest subnet in float mode), ``"float"`` (the same
    arch trained ``float_epochs`` -- default: ``epochs`` -- in float mode from the run's weights or
    scratch), ``None``/``"none"`` (labels only) or ``"auto"`` (supernet if the run has one, else float).
    ``init``: ``"supernet"`` (the run's weights: supernet extraction, the candidate's state or a finished
    model), ``"ptq"`` (min-max PTQ of the float weights on ``calib``), ``"scratch"``, ``"pretrained"``
    (min-max PTQ of the ``pretrained`` file's float weights; ``teacher="float"`` fine-tunes a float copy
    of them), or ``"auto"`` (``pretrained`` when that file is given, else the run's weights if any, else
    PTQ of the float model if one is trained, else scratch).
    ``qat_config`` (a :class:`qnas.quant.qat.QATConfig`) replaces epochs/lr/kd/BN-freeze settings.
    ``keep_best``: end with the weights of the epoch of best validation accuracy (default) rather than the
    last; ``early_stop``: stop after that many epochs without a better validation accuracy (None: never).
    ``torch_device``/``amp`` (every finish): where to train and with which mixed precision."""

    epochs: int = QATConfig.epochs
    lr: float = QATConfig.lr
    teacher: str | None = "auto"
    init: str = "auto"
    kd_weight: float = QATConfig.kd_weight
    kd_temperature: float = QATConfig.kd_temperature
    freeze_bn_fraction: float | None = QATConfig.freeze_bn_fraction
    float_epochs: int | None = None
    qat_config: Any = None
    keep_best: bool = QATConfig.keep_best
    early_stop: int | None = None

    def validate(self) -> "QATFinishOptions":
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; choose one of {list(INITS)}")
        super().validate()
        if self.early_stop is not None and (isinstance(self.early_stop, bool) or not isinstance(self.early_stop, int)
                                            or self.early_stop < 1):
            raise ConfigError(f"--early-stop must be a positive number of epochs, got {self.early_stop!r}")
        teacher = "none" if self.teacher is None else self.teacher
        if teacher not in TEACHERS:
            raise ConfigError(f"unknown teacher {teacher!r}; choose one of {list(TEACHERS)}")
        return self


@dataclass
class PTQFinishOptions(FinishOptions):
    """A PTQ finish (:func:`qnas.finish_ptq`): ``method`` is ``minmax``, ``bias_correction`` or ``gptq``
    (cumulative); ``float_epochs`` of float training give the weights when the run has none. ``init``:
    ``"auto"`` (the ``pretrained`` file when given, else the run's weights, else float training) or
    ``"pretrained"`` (the file's float weights; a new classifier -- another class count -- is trained
    ``float_epochs`` in float first)."""

    method: str = "gptq"
    float_epochs: int = 10
    batch_size_calib: int = 64
    init: str = "auto"

    def validate(self) -> "PTQFinishOptions":
        if self.init not in PTQ_INITS:
            raise ConfigError(f"unknown PTQ init {self.init!r}; choose one of {list(PTQ_INITS)}")
        super().validate()
        if self.method not in PTQ_METHODS:
            raise ConfigError(f"unknown PTQ method {self.method!r}; choose one of {list(PTQ_METHODS)}")
        return self


# ---- demo ------------------------------------------------------------------------------
@dataclass
class DemoConfig:
    """The search (a :class:`SearchConfig`) plus the finishing pass and the run directory."""

    search: SearchConfig = field(default_factory=demo_search_config)
    finish_epochs: int = 20  # the supernet is trained briefly: the chosen arch needs a full QAT
    finish_lr: float = QATFinishOptions.lr
    # distil from the supernet's largest float subnet (when the run has a supernet); off by default: after the
    # demo's short supernet training it costs ~30 % more finish time and did not raise test accuracy
    finish_kd: bool = False
    finish_kd_weight: float = QATFinishOptions.kd_weight
    out: str = ""

    def validate(self) -> "DemoConfig":
        self.search.validate()
        if self.finish_epochs < 0:
            raise ConfigError(f"finish_epochs must be >= 0, got {self.finish_epochs}")
        if not self.finish_lr > 0:
            raise ConfigError(f"finish_lr must be a positive number, got {self.finish_lr}")
        if not 0 <= self.finish_kd_weight <= 1:
            raise ConfigError(f"finish_kd_weight must be in [0, 1], got {self.finish_kd_weight}")
        return self
