"""Export a finished model for one target and prove the file computes what the model does.

:func:`export_model` is what ``qnas export BACKEND`` runs: load the checkpoint,
resolve the precision map on the target profile (refuse a model the target
cannot run as searched unless ``allow_upcast``), write the file with the
backend's exporter, then verify it where a runtime exists here (predictions on
the model's own test split) and check the stored integer codes and scales
where the backend can read them back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qnas.errors import ExportError, QnasError
from qnas.exporters.base import CodeCheck, ParityReport, create_exporter
from qnas.exporters.targets import DEFAULT_TARGET_PROFILES
from qnas.model_io import LoadedModel, load_model
from qnas.precision_map import PrecisionMap, precision_map


@dataclass
class ExportResult:
    """Everything one export produced and checked."""

    backend: str
    path: Path
    precision: PrecisionMap | None = None
    parity: ParityReport | None = None
    codes: CodeCheck | None = None
    backend_lines: list[str] = field(default_factory=list)
    latency_ms: float | None = None
    """measured here, in the runtime that exists (onnxruntime, LiteRT), batch 1, 1 thread"""
    predicted_latency_ms: float | None = None
    """on the target, by the latency model a search uses by default there (``latency_kind``)"""
    latency_kind: str | None = None
    latency_target: str | None = None
    """the latency target ``predicted_latency_ms`` is on (the precision map's; ``cpu-ort`` for an ONNX file)"""
    size_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "path": str(self.path), "size_bytes": self.size_bytes,
            "precision": self.precision.to_dict() if self.precision else None,
            "parity": self.parity.to_dict() if self.parity else None,
            "codes": self.codes.to_dict() if self.codes else None,
            "backend_report": self.backend_lines, "latency_ms": self.latency_ms,
            "predicted_latency_ms": self.predicted_latency_ms, "latency_kind": self.latency_kind,
            "latency_target": self.latency_target,
            "notes": self.notes,
        }

    def lines(self) -> list[str]:
        out = [f"wrote {self.path} ({self.size_bytes / 1024:.1f} KiB)"]
        if self.precision:
            out += self.precision.lines()
        out += self.backend_lines
        if self.parity:
            p = self.parity
            out.append(f"verify ({p.backend}, {p.n} test images): identical predictions {100 * p.agreement:.2f} %, "
                       f"acc torch {100 * p.torch_acc:.2f} % / file {100 * p.export_acc:.2f} %, "
                       f"max |dlogit| {p.max_abs_logit_diff:.4g}")
            step = p.step_line()
            out += ([f"  {step}"] if step else []) + [f"  {n}" for n in p.notes]
        if self.codes:
            c = self.codes
            out.append(f"stored codes and scales: {'equal to the model' if c.ok else 'DIFFER from the model'} "
                       f"({c.tensors} weight tensors, max scale rel. error {c.max_scale_rel_err:.2g})")
            out += [f"  {m}" for m in c.mismatches[:5]] + [f"  {n}" for n in c.notes]
        if self.latency_ms is not None:
            out.append(f"measured latency here: {self.latency_ms:.4g} ms (batch 1, 1 thread, median)")
        if self.predicted_latency_ms is not None:
            target = self.latency_target or (self.precision.target if self.precision else "?")
            ratio = (f"; predicted / measured {self.predicted_latency_ms / self.latency_ms:.2f}"
                     if self.latency_ms and target == "cpu-ort" else "")
            out.append(f"predicted latency on {target}: {self.predicted_latency_ms:.4g} ms "
                       f"({self.latency_kind or 'analytic'} model{ratio})")
        return out + self.notes


def _size(path: Path) -> int:
    if path.is_dir():  # an .mlpackage is a directory
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def verification_split(loaded: LoadedModel) -> Any:
    """The test split the model was finished against, at its resolution."""
    from qnas.data import load_dataset, split

    d = loaded.meta.get("data") or {}
    if not d:
        raise ExportError("the checkpoint records no data set to verify against; pass --no-verify")
    return split(load_dataset(d["data"], d.get("data_path")), seed=d.get("split_seed", 0)).test.at_resolution(
        loaded.arch.resolution)


def resolve_target(backend: str, target_profile: str | None) -> str | None:
    """``"default"`` -> the backend's usual target; ``None``/"none" -> no precision check."""
    if target_profile == "default":
        return DEFAULT_TARGET_PROFILES.get(backend)
    if target_profile in (None, "", "none"):
        return None
    return target_profile


def require_finite(model: torch.nn.Module, where: str) -> None:
    """Refuse (one line) a model with NaN/Inf weights or statistics: nothing sensible can be exported."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ExportError(f"{where}: {name} holds NaN or Inf values (training diverged?); "
                              "finish the model again, e.g. with a lower learning rate")


MIN_AGREEMENT = 0.995
"""the share of test images on which an exported file must predict the model's class"""
MIN_WITHIN_STEP = 0.999
"""the share of logits an exported file must reproduce within one quantization step"""


def check_parity(parity: ParityReport, path: str | Path, min_agreement: float = MIN_AGREEMENT,
                 min_within_step: float = MIN_WITHIN_STEP) -> None:
    """Raise :class:`ExportError` (one line) when the file at ``path`` is not faithful: top-1
    agreement below ``min_agreement``, or fewer than ``min_within_step`` of its logits within one
    quantization step of the model's, counting images a rounding tie explains as faithful
    (:attr:`ParityReport.faithful_share`, :mod:`qnas.exporters.parity`)."""
    if parity.agreement < min_agreement:
        raise ExportError(f"{path} agrees with PyTorch on only {100 * parity.agreement:.2f} % of the test split "
                          f"(< {100 * min_agreement:.1f} %); the file was written but is not faithful")
    share = parity.faithful_share
    if share is not None and share < min_within_step:
        raise ExportError(f"{path}: only {100 * share:.2f} % of logits lie within one quantization step of PyTorch's "
                          f"(< {100 * min_within_step:.2f} %, max {parity.max_step_diff:.0f} steps); the file was "
                          f"written but is not faithful (--min-within-step sets the bar)")


def _predicted_latency(space: Any, plan: Any, target: str, map_ms: float | None) -> tuple[float | None, str]:
    """The latency a default search prices this model at on ``target`` (``--latency auto``): this machine's
    measured table on ``cpu-ort``, else the profile's analytic model (``map_ms``: the precision map's, priced
    from the same breakdown, a profile given by path included; None: price it here)."""
    from qnas.latency import create_latency_model
    from qnas.latency.machine_cache import resolve_latency_kind

    kind = resolve_latency_kind("auto", target)
    if kind == "measured" or map_ms is None:
        model = create_latency_model(target, kind=kind)
        if hasattr(model, "calibrate"):
            model.calibrate(space)
        return float(model.predict(plan)), kind
    return map_ms, "analytic"


def export_model(model_or_run: str | Path | LoadedModel, backend: str, out: str | Path, *,
                 target_profile: str | None = "default", allow_upcast: bool = False, verify: bool = True,
                 overwrite: bool = False, min_agreement: float = MIN_AGREEMENT,
                 min_within_step: float = MIN_WITHIN_STEP, measure_latency: bool = True,
                 options: dict[str, Any] | None = None) -> ExportResult:
    """Export a qnas checkpoint (``model.pt`` or a run directory) with ``backend``.

    Raises :class:`ExportError` before writing anything when the target
    cannot run the model as searched (unless ``allow_upcast``), and after
    writing when the file's predictions agree with PyTorch on less than
    ``min_agreement`` of the test split, fewer than ``min_within_step`` of its logits lie
    within one quantization step of the model's (:func:`check_parity`), or its stored codes
    differ."""
    loaded = model_or_run if isinstance(model_or_run, LoadedModel) else load_model(model_or_run)
    require_finite(loaded.model, str(model_or_run) if not isinstance(model_or_run, LoadedModel) else "the model")
    out = Path(out)
    plan = loaded.space.plan(loaded.arch)
    target = resolve_target(backend, target_profile)
    pmap = None
    if target is not None:
        try:
            pmap = precision_map(plan, target)
        except ExportError:
            raise
        except QnasError as e:
            raise ExportError(f"--target-profile {target!r}: {e}") from None
        pmap.require_exact(allow_upcast)
    exporter = create_exporter(backend, **(options or {}))
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another --out or pass --force to overwrite it")

    test = verification_split(loaded) if verify else None
    res = loaded.arch.resolution
    example = test.images[:1] if test is not None else torch.zeros(1, loaded.space.config.in_channels, res, res)
    path, report = exporter.export_with_report(loaded.model, example, out, overwrite=overwrite)
    path = Path(path)
    result = ExportResult(backend, path, precision=pmap, size_bytes=_size(path))
    if report is not None:
        result.backend_lines = list(report.lines())
    if pmap is not None:
        result.predicted_latency_ms, result.latency_kind = _predicted_latency(loaded.space, plan, pmap.target, pmap.latency_ms)
        result.latency_target = pmap.target
    elif backend == "onnx":  # the file runs here, in onnxruntime: price it as a search on cpu-ort would
        result.predicted_latency_ms, result.latency_kind = _predicted_latency(loaded.space, plan, "cpu-ort", None)
        result.latency_target = "cpu-ort"

    if verify:
        assert test is not None
        if exporter.runtime_available():
            result.parity = exporter.verify(path, loaded.model, test.images, test.labels)
        else:
            result.notes.append(f"no {backend} runtime on this machine: predictions were not run; "
                                f"the stored integer codes and scales were compared instead")
        if exporter.capabilities.check_codes:  # the backend can read its file back
            result.codes = exporter.check_codes(path, loaded.model)
        elif result.parity is None:
            raise ExportError(f"{backend}: neither a runtime nor a code check exists here; pass --no-verify")
    if measure_latency:
        result.latency_ms = exporter.measure_latency_ms(path, tuple(example.shape))

    if result.parity is not None:
        check_parity(result.parity, path, min_agreement, min_within_step)
    if result.codes is not None and not result.codes.ok:
        first = result.codes.mismatches[0] if result.codes.mismatches else "no weight tensors found"
        raise ExportError(f"{path}: stored codes/scales differ from the model ({first}); the file was written but "
                          f"is not faithful")
    return result


def __getattr__(name: str) -> Any:
    if name == "DEFAULT_TARGET":  # the old home of the default targets, kept for one release
        import warnings

        warnings.warn("qnas.exporting.DEFAULT_TARGET moved to qnas.exporters.targets.DEFAULT_TARGET_PROFILES",
                      DeprecationWarning, stacklevel=2)
        return DEFAULT_TARGET_PROFILES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
