"""Finishing a searched arch into the model that gets exported: QAT or PTQ.

* :func:`finish_qat` -- quantization-aware training (:func:`qnas.quant.qat.qat`) from the
  supernet's weights (or a PTQ calibration of float weights, or of pretrained weights, or
  scratch), with knowledge distillation from a float teacher, BN frozen late, resumable;
* :func:`finish_ptq` -- post-training quantization (:func:`qnas.quant.ptq.ptq`: min-max,
  + bias correction, + GPTQ) of float weights on a calibration set.

``pretrained`` (``--pretrained PATH``) starts both from a float ``state_dict`` file instead of the
run's weights (:func:`qnas.pretrained.load_pretrained`: a torchvision MobileNetV2 /
MobileNetV3-Large for the matching preset's reference arch); the file is read and checked against
the arch before the data is loaded, anything trained or anything written.

``run_or_arch`` is a run directory (its arch as :func:`qnas.rundir.resolve_arch` picks it,
``config.json`` for the data and space, and the weights a search left:
``supernet/supernet.pt`` or ``candidates/UID.pt``), an arch JSON file (with ``space``/``data``
given or the defaults), or a finished ``model.pt``. The settings are typed options
(:class:`qnas.options.QATFinishOptions`, :class:`qnas.options.PTQFinishOptions`), given as an
object or as keywords: ``finish_qat(run, epochs=5)``.

The result is a :func:`qnas.model_io.save_model` checkpoint (``RUN/model.pt`` by
default) that ``qnas export`` and :func:`qnas.model_io.load_model` read.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qnas.arch import Arch
from qnas.data import Splits
from qnas.errors import CheckpointError, ConfigError
from qnas.options import PTQFinishOptions, QATFinishOptions, with_fields
from qnas.quant.build import build_model
from qnas.quant.checkpoint import load_checkpoint, load_state
from qnas.quant.integer_grid import snap_biases
from qnas.quant.qat import QATConfig, qat
from qnas.quant.torch_device import resolve_torch_device
from qnas.quant.train import TrainConfig, evaluate, train
from qnas.refining import REFINED_DIR
from qnas.rundir import resolve_arch
from qnas.space import SearchSpace


# ---- what to finish ------------------------------------------------------------
@dataclass
class FinishSource:
    """An arch with its space, data and whatever weights the run left for it."""

    space: SearchSpace
    arch: Arch
    data: str = "digits"
    data_path: str | None = None
    seed: int = 0
    batch_size: int = 64
    run_dir: Path | None = None
    supernet_path: Path | None = None
    state_path: Path | None = None  # candidates/UID.pt or a finished model.pt
    note: str = ""
    stream: bool = False  # read the data lazily (qnas.streaming)
    refined_path: Path | None = None  # refined/UID.pt: the search's refine stage trained it further

    @property
    def has_weights(self) -> bool:
        return self.supernet_path is not None or self.state_path is not None or self.refined_path is not None


def resolve_source(run_or_arch: str | Path, space: SearchSpace | str | Path | None = None, data: str | None = None,
                   data_path: str | None = None, seed: int | None = None,
                   batch_size: int | None = None, stream: bool = False) -> FinishSource:
    """Read what to finish from a run directory, an arch JSON file or a ``model.pt`` (the arch as
    :func:`qnas.rundir.resolve_arch` finds it) with the weights the run left for it. Explicit
    ``space``/``data``/``data_path``/``seed``/``batch_size`` override what the run recorded."""
    found = resolve_arch(run_or_arch, space)
    cfg = found.config
    supernet_path = state_path = refined_path = None
    run = found.run_dir
    if run is not None:
        if (run / "supernet" / "supernet.pt").is_file():
            supernet_path = run / "supernet" / "supernet.pt"
        elif cfg.get("accuracy") == "supernet" and cfg.get("accuracy_path"):
            ap = Path(cfg["accuracy_path"])
            ap = ap / "supernet.pt" if ap.is_dir() else ap
            supernet_path = ap if ap.is_file() else None
        if (run / "candidates" / f"{found.arch.uid}.pt").is_file():
            state_path = run / "candidates" / f"{found.arch.uid}.pt"
        refined = run / REFINED_DIR / f"{found.arch.uid}.pt"
        refined_path = refined if refined.is_file() else None
    elif found.model_path is not None:
        state_path = found.model_path
    pick = lambda given, key, default: given if given is not None else (  # noqa: E731
        cfg.get(key) if cfg.get(key) is not None else default)
    return FinishSource(found.space, found.arch, pick(data, "data", "digits"), pick(data_path, "data_path", None),
                        int(pick(seed, "seed", 0)), int(pick(batch_size, "batch_size", 64)), run,
                        supernet_path, state_path, found.note, bool(stream or cfg.get("stream", False)),
                        refined_path)


# ---- models -------------------------------------------------------------------------
def _pretrained_model(src: FinishSource, path: Any) -> tuple[nn.Module, str, bool]:
    """The arch's model with the float weights of the file ``path`` (every error one line, before
    anything runs); a line saying what was loaded; whether its classifier is new (another class count)."""
    from qnas.pretrained import load_pretrained

    torch.manual_seed(src.seed)
    model = build_model(src.space, src.arch)
    loaded = load_pretrained(model, path)
    return model, f"pretrained: {loaded.describe()}", not loaded.classifier_loaded


class FloatTeacher(nn.Module):
    """A qnas model run with every quantizer off (:func:`qnas.quant.ptq.float_mode`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from qnas.quant.ptq import float_mode

        with float_mode(self.model):
            return self.model(x)


class SupernetTeacher(nn.Module):
    """An arch of a supernet in float mode (default: the largest of the whole space, the
    in-place distillation teacher it was trained with), fed at that arch's resolution."""

    def __init__(self, supernet: nn.Module, arch: Arch | None = None):
        super().__init__()
        from qnas.supernet import full_space_largest

        self.supernet = supernet
        self.arch = arch or full_space_largest(supernet.space)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.supernet
        if net.active_arch != self.arch or net.quantize:
            net.set_active(self.arch, quantize=False)
        r = self.arch.resolution
        if tuple(x.shape[-2:]) != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=r < x.shape[-1])
        return net(x)


@dataclass
class ArchData:
    """The splits of a data set at an arch's resolution (``part("train")`` ...)."""

    splits: Splits
    arch: Arch

    def part(self, name: str):
        return getattr(self.splits, name).at_resolution(self.arch.resolution)


def _load_splits(src: FinishSource, splits: Splits | None) -> Splits:
    from qnas.searching import prepare_data, space_for

    if splits is None:
        splits = prepare_data(src.data, src.data_path, src.seed, src.stream, src.space)
    space_for(splits, src.space)  # the same one-line refusal as search: channels and classes must match
    return splits


def _run_weights(src: FinishSource, splits: Splits, device: torch.device | None = None) -> tuple[nn.Module | None, str]:
    """The model the run's weights give for the arch: the refine stage's model, the supernet's extraction
    (BN recalibrated as in search, on ``device``), a candidate's trained state or a finished model; else
    None. On the CPU."""
    if src.refined_path is not None:  # the supernet's (or a candidate's) weights, trained further
        state, meta = load_checkpoint(src.refined_path)
        epochs = (meta.get("refined") or {}).get("epochs")
        return (load_state(build_model(src.space, src.arch), state, str(src.refined_path)),
                f"refined ({epochs} QAT epochs)" if epochs else "refined")
    if src.supernet_path is not None:
        from qnas.supernet import SupernetEvaluator, load_supernet

        supernet = load_supernet(src.supernet_path).to(device or torch.device("cpu"))
        if supernet.space.to_dict() != src.space.to_dict():
            raise ConfigError(f"the supernet at {src.supernet_path} was trained on another search space")
        return SupernetEvaluator(supernet, splits, batch_size=src.batch_size, seed=src.seed).extract(src.arch), "supernet"
    if src.state_path is not None:
        state, _ = load_checkpoint(src.state_path)
        return load_state(build_model(src.space, src.arch), state, str(src.state_path)), str(src.state_path.name)
    return None, "scratch"


def train_float(model: nn.Module, data: ArchData, epochs: int, seed: int, batch_size: int, progress: bool,
                lr: float = 3e-3, *, torch_device: str = "cpu", amp: str = "off") -> nn.Module:
    """Train ``model``'s float weights in place with every quantizer off on ``torch_device``, then
    re-estimate its BN statistics (float) on up to 1024 training images; returns it in eval mode."""
    from qnas.quant.ptq import float_mode, recalibrate_bn_float

    train_ds = data.part("train")
    with float_mode(model):
        train(model, train_ds.loader(batch_size, True, seed), None,
              TrainConfig(epochs=epochs, lr=lr, seed=seed, progress=progress, desc="float model",
                          torch_device=torch_device, amp=amp))
    recalibrate_bn_float(model, train_ds.head(1024).images, batch_size)
    model.eval()
    return model


def float_accuracy(model: nn.Module, loader: Any) -> float:
    from qnas.quant.ptq import float_mode

    with float_mode(model):
        return evaluate(model, loader)


def _calibration(calib: Any, src: FinishSource, splits: Splits, n: int = 512):
    """A :class:`CalibrationSet` from a path, a set, or (None) ``n`` class-balanced training images."""
    from qnas.calib_data.calibration import CalibrationSet

    if calib is None:
        from qnas.calib_data.build import build_calibration_set

        cs = build_calibration_set(src.data, src.data_path, n=min(n, len(splits.train)), resolution=src.arch.resolution,
                                   seed=src.seed, split_seed=src.seed, mean=splits.train.mean, std=splits.train.std,
                                   stream=src.stream)
    elif isinstance(calib, CalibrationSet):
        cs = calib
    else:
        cs = CalibrationSet.load(calib)
    return cs.check_for(src.space.config.in_channels, src.arch.resolution, splits.train.mean, splits.train.std)


# ---- results --------------------------------------------------------------------------
@dataclass
class FinishResult:
    """Where the finished model went and how good it is (accuracies in [0, 1])."""

    path: Path
    method: str
    val_acc: float
    test_acc: float
    seconds: float
    float_val_acc: float | None = None
    float_test_acc: float | None = None
    started_from_val_acc: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)  # on the CPU

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "method": self.method, "val_acc": self.val_acc, "test_acc": self.test_acc,
                "float_val_acc": self.float_val_acc, "float_test_acc": self.float_test_acc,
                "started_from_val_acc": self.started_from_val_acc, "seconds": round(self.seconds, 2),
                **self.details}

    def lines(self) -> list[str]:
        out = [f"finished ({self.method}) -> {self.path}",
               f"  val acc {100 * self.val_acc:.2f} %, test acc {100 * self.test_acc:.2f} %  ({self.seconds:.1f} s)"]
        if self.float_test_acc is not None:
            out.append(f"  float model: val acc {100 * self.float_val_acc:.2f} %, test acc {100 * self.float_test_acc:.2f} %")
        if self.started_from_val_acc is not None:
            out.append(f"  started from val acc {100 * self.started_from_val_acc:.2f} %")
        source = self.details.get("weights", self.details.get("init"))
        if isinstance(source, str) and source.startswith("pretrained:"):
            out.append(f"  {source}")
        kept = self.details.get("kept")
        if kept is not None:
            ran = len(self.details.get("history", []))
            line = (f"  kept the best epoch on validation: {self.details['kept_epoch']} of {ran}"
                    if kept == "best" else f"  kept the last epoch ({self.details['kept_epoch']})")
            if self.details.get("stopped_early_after") is not None:
                line += f", stopped early after epoch {self.details['stopped_early_after']}"
            out.append(line)
        return out


def _out_path(src: FinishSource, out: str | Path | None, overwrite: bool) -> Path:
    if out is None:
        if src.run_dir is None:
            raise ConfigError("pass out=... (--out PATH): finishing an arch file has no run directory to write into")
        out = src.run_dir / "model.pt"
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; pass the path of the model file to write (e.g. {path}/model.pt)")
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} already exists; choose another --out or pass --force (overwrite=True)")
    return path


def _save(path: Path, model: nn.Module, src: FinishSource, splits: Splits, test_acc: float, val_acc: float,
          finish: dict[str, Any], overwrite: bool) -> None:
    from qnas.model_io import save_model

    data_meta = {"data": src.data, "data_path": src.data_path, "split_seed": src.seed,
                 "mean": list(splits.train.mean), "std": list(splits.train.std)}
    save_model(path, model, src.space, src.arch,
               {"data": data_meta, "test_acc": test_acc, "val_acc": val_acc, "finish": finish}, overwrite=overwrite)


# ---- QAT -------------------------------------------------------------------------------
def finish_qat(run_or_arch: str | Path, options: QATFinishOptions | None = None, *, splits: Splits | None = None,
               **fields: Any) -> FinishResult:
    """QAT-finish an arch and save it (default ``RUN/model.pt``).

    ``options`` (:class:`~qnas.options.QATFinishOptions`: teacher, init, epochs, lr, kd settings,
    calibration, overrides of the run, output) default to its defaults; keyword ``fields`` replace
    single options (``finish_qat(run, epochs=5, teacher="float")``). The run is resumable: a killed
    finish continues from ``OUT.qat-state.pt`` (removed when done). ``splits`` skips re-loading the
    data (the demo)."""
    t0 = time.perf_counter()
    opts = with_fields(options or QATFinishOptions(), fields).validate()
    teacher = "none" if opts.teacher is None else opts.teacher
    init = "pretrained" if opts.pretrained is not None else opts.init
    progress = opts.progress
    src = resolve_source(run_or_arch, opts.space, opts.data, opts.data_path, opts.seed, opts.batch_size, opts.stream)
    cfg = opts.qat_config or QATConfig(epochs=opts.epochs, lr=opts.lr, kd_weight=opts.kd_weight,
                                       kd_temperature=opts.kd_temperature, freeze_bn_fraction=opts.freeze_bn_fraction,
                                       seed=src.seed, keep_best=opts.keep_best, early_stop=opts.early_stop)
    cfg = replace(cfg, progress=progress, desc="finish (QAT)", torch_device=opts.torch_device,
                  amp=opts.amp).validate()
    device = resolve_torch_device(cfg.torch_device)
    path = _out_path(src, opts.out, opts.overwrite)
    if teacher == "auto":
        teacher = "supernet" if src.supernet_path is not None else "float"
    if teacher == "supernet" and src.supernet_path is None:
        raise ConfigError(f"teacher='supernet' needs a run with a supernet; {run_or_arch} has none "
                          "(use teacher='float' or 'none')")
    if init == "supernet" and not src.has_weights:
        raise ConfigError(f"init='supernet' needs a run with weights (a supernet or a candidate state); "
                          f"{run_or_arch} has none (use init='ptq' or 'scratch')")
    pretrained = _pretrained_model(src, opts.pretrained) if init == "pretrained" else None
    splits = _load_splits(src, splits)
    # a calibration file given is checked now, not after the float training that precedes its use
    calib = _calibration(opts.calib, src, splits) if opts.calib is not None else None
    d = ArchData(splits, src.arch)
    val_loader = d.part("val").loader(512, False)

    torch.manual_seed(src.seed)
    if pretrained is not None:  # the file's weights instead of the run's
        base, base_from = pretrained[0], pretrained[1]
    else:
        base, base_from = _run_weights(src, splits, device) if src.has_weights else (None, "scratch")
    need_float = teacher == "float" or (init == "ptq" and base is None)
    if init == "auto":
        init = "supernet" if base is not None else ("ptq" if need_float else "scratch")
    float_model = None
    float_val = float_test = None
    if need_float:
        torch.manual_seed(src.seed)
        float_model = copy.deepcopy(base) if base is not None else build_model(src.space, src.arch)
        train_float(float_model, d, opts.float_epochs if opts.float_epochs is not None else cfg.epochs, src.seed,
                    src.batch_size, progress, torch_device=cfg.torch_device, amp=cfg.amp)
        float_val = float_accuracy(float_model, val_loader)
        float_test = float_accuracy(float_model, d.part("test").loader(512, False))

    if init == "scratch":
        torch.manual_seed(src.seed)
        model = build_model(src.space, src.arch)
    elif init == "supernet":
        model = base
    else:  # ptq, pretrained: min-max PTQ of the float weights (fine-tuned in float when there is a float teacher)
        from qnas.quant.ptq import PTQConfig, ptq

        model = copy.deepcopy(float_model if float_model is not None else base).to(device)
        calib = calib if calib is not None else _calibration(None, src, splits)
        ptq(model, calib.images, PTQConfig(method="minmax", progress=progress))
    model.to(device)
    started = evaluate(model, val_loader)

    teacher_module = None
    teacher_desc = None
    if teacher == "supernet":
        from qnas.supernet import load_supernet

        teacher_module = SupernetTeacher(load_supernet(src.supernet_path))
        teacher_desc = f"supernet largest subnet, float ({teacher_module.arch.describe()})"
    elif teacher == "float":
        teacher_module = FloatTeacher(float_model)
        teacher_desc = "same arch, float mode"

    state_path = path.with_name(path.stem + ".qat-state.pt")
    if state_path.exists() and opts.overwrite and not _state_fits(state_path, cfg):
        state_path.unlink()
    t_qat = time.perf_counter()
    hist = qat(model, d.part("train").loader(src.batch_size, True, src.seed), val_loader, cfg,
               teacher=teacher_module, state_path=state_path)
    t_qat = time.perf_counter() - t_qat
    model.eval()
    snap_biases(model)  # last step: integer runtimes then add the biases exactly (see qnas.quant.integer_grid)
    val_acc = evaluate(model, val_loader)
    test_acc = evaluate(model, d.part("test").loader(512, False))
    finish = {"method": "qat", "init": init, "init_weights": base_from if init in ("supernet", "pretrained") else init,
              "teacher": teacher_desc, "config": cfg.to_dict(), **hist.summary(),
              "float_val_acc": float_val, "float_test_acc": float_test}
    model.cpu()
    if _is_main():
        _save(path, model, src, splits, test_acc, val_acc, finish, overwrite=True)
        state_path.unlink(missing_ok=True)
    _barrier()
    details = {"init": init if pretrained is None else base_from, "teacher": teacher_desc,
               "qat_seconds": round(t_qat, 2),
               "history": hist.to_dicts(), "resumed_from_epoch": hist.resumed_from_epoch, **hist.selection()}
    if src.note:
        details["note"] = src.note
    return FinishResult(path, "qat", val_acc, test_acc, time.perf_counter() - t0, float_val, float_test, started,
                        details, model)


def _state_fits(state_path: Path, cfg: QATConfig) -> bool:
    from qnas.quant.qat import _changed_settings

    try:
        payload = torch.load(state_path, map_location="cpu", weights_only=True)
        return not _changed_settings(json.loads(payload["config_json"]), cfg)
    except Exception:
        return False


def _is_main() -> bool:
    from qnas.quant.distributed import context

    return context().is_main


def _barrier() -> None:
    from qnas.quant.distributed import barrier

    barrier()


# ---- PTQ -------------------------------------------------------------------------------
def finish_ptq(run_or_arch: str | Path, calib: Any = None, method: str | None = None,
               options: PTQFinishOptions | None = None, *, splits: Splits | None = None, **fields: Any) -> FinishResult:
    """PTQ-finish an arch and save it (default ``RUN/model.pt``).

    The float weights come from the run (the supernet's extraction, a candidate's state or a finished
    model) or, for a bare arch, from ``float_epochs`` of float training. ``calib``: a calibration-set
    path (``qnas calib build``), a :class:`CalibrationSet`, or None for 512 class-balanced training
    images. ``method``: ``minmax``, ``bias_correction`` or ``gptq`` (cumulative). ``pretrained``: the
    float weights come from that file instead (a new classifier is trained ``float_epochs`` in float
    first). ``options`` (:class:`~qnas.options.PTQFinishOptions`) and keyword ``fields`` set the rest, as
    for :func:`finish_qat`."""
    from qnas.quant.ptq import PTQConfig, ptq

    t0 = time.perf_counter()
    if calib is not None:
        fields["calib"] = calib
    if method is not None:
        fields["method"] = method
    opts = with_fields(options or PTQFinishOptions(), fields).validate()
    method, progress, float_epochs = opts.method, opts.progress, opts.float_epochs
    src = resolve_source(run_or_arch, opts.space, opts.data, opts.data_path, opts.seed, opts.batch_size, opts.stream)
    path = _out_path(src, opts.out, opts.overwrite)
    pretrained = _pretrained_model(src, opts.pretrained) if opts.pretrained is not None else None
    splits = _load_splits(src, splits)
    cs = _calibration(opts.calib, src, splits)
    d = ArchData(splits, src.arch)
    val_loader = d.part("val").loader(512, False)
    test_loader = d.part("test").loader(512, False)
    device = resolve_torch_device(opts.torch_device)
    torch.manual_seed(src.seed)
    if pretrained is not None:
        model, base_from, new_head = pretrained
    else:
        model, base_from = _run_weights(src, splits, device) if src.has_weights else (None, "scratch")
        new_head = False
    trained_float = model is None or new_head
    if model is None:
        model = build_model(src.space, src.arch)
    if trained_float:
        train_float(model, d, float_epochs, src.seed, src.batch_size, progress, torch_device=opts.torch_device,
                    amp=opts.amp)
    model.to(device)
    float_val = float_accuracy(model, val_loader)
    float_test = float_accuracy(model, test_loader)
    t_ptq = time.perf_counter()
    ptq(model, cs.images, PTQConfig(method=method, batch_size=opts.batch_size_calib, progress=progress))
    t_ptq = time.perf_counter() - t_ptq
    model.eval()
    snap_biases(model)
    val_acc = evaluate(model, val_loader)
    test_acc = evaluate(model, test_loader)
    weights = base_from if pretrained is not None else ("float training" if trained_float else base_from)
    finish = {"method": f"ptq:{method}", "weights": weights,
              "float_epochs": float_epochs if trained_float else 0, "calibration": cs.meta,
              "float_val_acc": float_val, "float_test_acc": float_test}
    model.cpu()
    if _is_main():
        _save(path, model, src, splits, test_acc, val_acc, finish, overwrite=True)
    _barrier()
    details = {"weights": finish["weights"], "ptq_seconds": round(t_ptq, 2), "calibration_n": len(cs)}
    if src.note:
        details["note"] = src.note
    return FinishResult(path, f"ptq:{method}", val_acc, test_acc, time.perf_counter() - t0, float_val, float_test,
                        None, details, model)

