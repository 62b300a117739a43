"""The exporter contract and registry shared by every backend.

A backend subclasses :class:`Exporter`, declares its :class:`Capabilities` and
registers itself with :func:`register`; :func:`create_exporter` builds one by
name."""
from __future__ import annotations

import importlib
import os
import sys
import tempfile
from contextlib import contextmanager
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Protocol, runtime_checkable

import torch
from torch import nn

from qnas.quant.errors import ExportError


@dataclass
class ParityReport:
    """How closely an exported file reproduces the PyTorch model on real data."""

    backend: str
    n: int
    torch_acc: float
    export_acc: float
    agreement: float
    """share of samples whose top-1 prediction is identical"""
    max_abs_logit_diff: float
    notes: list[str] = field(default_factory=list)
    logit_step: float | None = None
    """the quantization step of the model's logits (None: the model's output is not quantized)"""
    within_one_step: float | None = None
    """share of logits within one step of the model's"""
    max_step_diff: float | None = None
    """the largest logit difference, in steps"""
    tie_images: int | None = None
    """images whose logits differ by more than one step only because a value on a rounding boundary rounded
    the other way (traced quantizer by quantizer, see :mod:`qnas.exporters.parity`); None: not traced"""
    tie_logits: int = 0
    """logits more than one step off on :attr:`tie_images`"""
    n_logits: int = 0

    @property
    def faithful_share(self) -> float | None:
        """Share of logits within one step, the logits of :attr:`tie_images` counted as faithful."""
        if self.within_one_step is None:
            return None
        return min(1.0, self.within_one_step + self.tie_logits / max(1, self.n_logits))

    def step_line(self) -> str | None:
        """``logits within one step ...`` for reports, or None without a logit step."""
        if self.within_one_step is None or self.max_step_diff is None:
            return None
        line = (f"logits within one quantization step ({self.logit_step:.4g}) of PyTorch: "
                f"{100 * self.within_one_step:.2f} % (max {self.max_step_diff:.0f} steps)")
        if self.tie_images:
            line += (f"; {self.tie_images} image(s) differ more only where a value on a rounding boundary rounds the "
                     f"other way: {100 * self.faithful_share:.2f} % faithful")
        return line

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "faithful_share": self.faithful_share}


@dataclass
class CodeCheck:
    """Whether the integer weight codes and scales stored in an exported file
    equal the model's (the check that runs where no runtime for the file exists)."""

    backend: str
    tensors: int
    """weight tensors compared"""
    mismatches: list[str] = field(default_factory=list)
    """one line per tensor whose codes or scales differ"""
    max_scale_rel_err: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.tensors > 0 and not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@runtime_checkable
class LayerReport(Protocol):
    """A backend's per-layer account of one export: how each quantizer of the model is stored."""

    def lines(self) -> list[str]:
        """One human-readable line per layer (and notes)."""

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable data."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do besides writing its file, declared by the backend."""

    check_codes: bool = False
    """it reads its own file back and compares the stored integer codes and scales with the
    model (:meth:`Exporter.check_codes`), with or without a runtime for the file"""
    layer_report: bool = False
    """:meth:`Exporter.export_with_report` returns a per-layer report (else None)"""


class Exporter(ABC):
    """Writes a deployable file for one target and checks it against the model.

    A backend implements :meth:`export_with_report` and :meth:`verify` and declares its
    :attr:`capabilities`. Backends whose runtime does not exist on this machine (CoreML
    off macOS) return False from :meth:`runtime_available`; for them :meth:`check_codes`
    (``capabilities.check_codes``) is the verification that runs."""

    name: str = ""
    suffix: str = ""
    extra: str = ""
    """the pip extra holding this backend's SDK (``pip install "qnas[extra]"``)"""
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # the declaration is what callers read; keep it true to the implementation
        implemented = cls.check_codes is not Exporter.check_codes
        if implemented != cls.capabilities.check_codes:
            raise TypeError(f"{cls.__name__}: capabilities.check_codes={cls.capabilities.check_codes} but check_codes "
                            f"is {'' if implemented else 'not '}implemented")

    def runtime_available(self) -> bool:
        """Whether :meth:`verify` can run the exported file here."""
        return True

    def measure_latency_ms(self, path: str | Path, input_shape: tuple[int, ...]) -> float | None:
        """Median latency (ms) of one inference in the runtime that exists here, or None."""
        return None

    def check_codes(self, path: str | Path, model: nn.Module) -> CodeCheck:
        """Compare the integer codes and scales in the file with the model's (``capabilities.check_codes``)."""
        raise ExportError(f"the {self.name} backend has no code check; use verify()")

    @abstractmethod
    def export_with_report(self, model: nn.Module, example_input: torch.Tensor, out: str | Path,
                           overwrite: bool = False) -> tuple[Path, LayerReport | None]:
        """Write the exported file atomically to ``out``; return its path and the per-layer
        report (None unless ``capabilities.layer_report``)."""

    def export(self, model: nn.Module, example_input: torch.Tensor, out: str | Path, overwrite: bool = False) -> Path:
        """Write the exported file atomically to ``out`` and return its path."""
        return self.export_with_report(model, example_input, out, overwrite)[0]

    @abstractmethod
    def verify(self, path: str | Path, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> ParityReport:
        """Run the exported file on ``images`` and compare with ``model``."""


@contextmanager
def quiet_native_output() -> Iterator[None]:
    """Silence what vendor SDKs print (C++ logs, progress lines) while they run.

    Both file descriptors 1 and 2 go to a temporary file; if the block raises,
    the captured text is replayed on stderr so nothing that explains the error
    is lost."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace")[-4000:])


def import_sdk(module: str, extra: str) -> Any:
    """Import a vendor SDK lazily; a missing one says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(f"{module} is not installed ({e}); install it with: pip install \"qnas[{extra}]\"") from None


def mobile_space_features(model: nn.Module) -> list[tuple[str, str]]:
    """(layer kind, where) of each layer of the standard mobile spaces in ``model``'s plan:
    ``squeeze-excite``, ``block without expand conv``, a ``relu6``/``hswish`` activation,
    ``feature-mix conv``, ``pre-classifier linear``; empty for a model of the plain MBConv space
    (and for anything without a plan)."""
    plan = getattr(model, "plan", None)
    if plan is None or not hasattr(plan, "blocks"):
        return []
    out: list[tuple[str, str]] = []
    if getattr(plan, "stem_act", "relu") != "relu":
        out.append((f"{plan.stem_act} activation", "stem"))
    for b in plan.blocks:
        if b.expand is None:
            out.append(("block without expand conv", b.name))
        if getattr(b, "act", "relu") != "relu":
            out.append((f"{b.act} activation", b.name))
        if getattr(b, "se", None) is not None:
            out.append(("squeeze-excite", f"{b.name}.se"))
    if getattr(plan, "mix", None) is not None:
        out.append(("feature-mix conv", "mix"))
    if getattr(plan, "pre_head", None) is not None:
        out.append(("pre-classifier linear", "pre_head"))
    return out


_REGISTRY: dict[str, Callable[[], Exporter]] = {}
# the backends shipped with qnas, imported (and so registered) on first use of the registry
_BUILTIN_BACKENDS = ("onnx_qcdq", "tensorrt_onnx", "coreml_mlprogram", "tflite_litert")


def _load_builtin_backends() -> None:
    for module in _BUILTIN_BACKENDS:
        importlib.import_module(f"qnas.exporters.{module}")


def register(name: str) -> Callable[[type[Exporter]], type[Exporter]]:
    """Class decorator: make a backend available as ``create_exporter(name)``."""
    def deco(cls: type[Exporter]) -> type[Exporter]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def available_exporters() -> list[str]:
    """Names of every registered backend (the built-in ones and any registered since)."""
    _load_builtin_backends()
    return sorted(_REGISTRY)


def create_exporter(name: str, **kwargs: Any) -> Exporter:
    """Factory: ``create_exporter("onnx")``. An unknown name lists the valid ones."""
    _load_builtin_backends()
    if name not in _REGISTRY:
        raise ExportError(f"unknown export backend {name!r}; choose one of {available_exporters()}")
    return _REGISTRY[name](**kwargs)


def compare_logits(backend: str, ref: torch.Tensor, got: torch.Tensor, labels: torch.Tensor, *,
                   step: float | None = None) -> ParityReport:
    """Top-1 agreement and logit differences of ``got`` against ``ref``; with the model's logit
    ``step``, the share of logits within one step and the largest difference in steps."""
    ref, got = ref.float(), got.float()
    steps = (ref - got).abs() / step if step else None
    return ParityReport(
        backend=backend,
        n=len(labels),
        torch_acc=float((ref.argmax(1) == labels).float().mean()),
        export_acc=float((got.argmax(1) == labels).float().mean()),
        agreement=float((ref.argmax(1) == got.argmax(1)).float().mean()),
        max_abs_logit_diff=float((ref - got).abs().max()),
        logit_step=step,
        within_one_step=float((steps <= 1.001).double().mean()) if steps is not None else None,
        max_step_diff=float(steps.max()) if steps is not None else None,
        n_logits=ref.numel(),
    )
