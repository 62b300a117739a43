"""Quantization-aware training to finish a searched model.

:func:`qat` continues training a Brevitas model (from supernet weights, a PTQ
calibration or scratch) with

* knowledge distillation from a float teacher:
  ``(1 - a) * CE(student, labels) + a * T^2 * KL(teacher/T || student/T)``;
* a cosine learning-rate schedule per step (:func:`qnas.quant.train.cosine_lr`);
* batch norm frozen for the last part of training: from ``bn_freeze_start()``
  on, every BN layer runs in eval mode (normalises with, and no longer updates,
  its running statistics), so the statistics the exported model folds in are
  the ones the last epochs were trained against;
* resumable state: after every epoch ``{model, optimizer, epoch, history, rng}``
  is written atomically to ``state_path``; when that file exists at the start
  the run continues from it, and gives the same weights as an uninterrupted
  run (for a model whose quantizers are past Brevitas' statistics-collection
  steps, as every supernet-extracted or PTQ-calibrated model is).

* the best epoch on validation: with a validation loader the model ends with the weights of the
  epoch of highest validation accuracy (``QATConfig.keep_best``, default on; ``QATResult.best_epoch``
  says which), and ``early_stop = N`` ends the run after N epochs without improvement;
* the torch device ``QATConfig.torch_device`` (model, teacher and batches moved there; the state
  file holds CPU tensors and loads onto any device), opt-in mixed precision (``amp``), and DDP under
  ``torchrun`` (:mod:`qnas.quant.distributed`; rank 0 alone writes the state file, the others wait).

The training loop itself is :func:`qnas.quant.train.train`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from qnas.quant import distributed as qdist
from qnas.quant.checkpoint import atomic_write, load_state
from qnas.quant.errors import CheckpointError
from qnas.quant.batchnorm import freeze_batchnorm
from qnas.quant.configs import QATConfig
from qnas.quant.torch_device import resolve_torch_device
from qnas.quant.train import EpochStats, TrainResult, kd_loss, make_optimizer, train

STATE_FORMAT = "qnas-qat-state"
STATE_VERSION = 1
#: fingerprint entries added after version 1 files were written, with the value those files ran with
_LATER_SETTINGS = {"amp": "off", "keep_best": False, "early_stop": None}


@dataclass
class QATResult(TrainResult):
    """Per-epoch stats plus where the run resumed and from which epoch (1-based) BN was frozen."""

    resumed_from_epoch: int = 0
    bn_frozen_from_epoch: int | None = None
    distilled: bool = False

    def summary(self) -> dict[str, Any]:
        """Per-epoch stats, resume/BN/distillation facts and which epoch's weights were kept
        (:meth:`TrainResult.selection`)."""
        return {"epochs": self.to_dicts(), "resumed_from_epoch": self.resumed_from_epoch,
                "bn_frozen_from_epoch": self.bn_frozen_from_epoch, "distilled": self.distilled,
                **self.selection()}


# ---- resumable state ------------------------------------------------------------
def _loader_generator(loader: Iterable) -> torch.Generator | None:
    gen = getattr(loader, "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


def save_qat_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                   history: TrainResult, cfg: QATConfig, loader_gen: torch.Generator | None) -> Path:
    """Write ``{model, optimizer, epoch, history, rng}`` atomically (tensors and plain data only)."""
    payload = {
        "format": STATE_FORMAT, "version": STATE_VERSION, "epoch": int(epoch),
        "config_json": json.dumps(cfg.fingerprint()),
        "history_json": json.dumps(history.to_dicts()),
        "best_json": json.dumps({"best_epoch": history.best_epoch, "best_val_acc": history.best_val_acc}),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "best_model": history.best_state if history.best_state is not None else {},
        "optimizer": _cpu(optimizer.state_dict()),
        "rng": {"torch": torch.get_rng_state(),
                "loader": loader_gen.get_state() if loader_gen is not None else torch.zeros(0, dtype=torch.uint8)},
        "stats": runtime_stats_state(model),
    }
    return atomic_write(path, lambda p: torch.save(payload, p))


def _runtime_stats_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Brevitas quantizer parts that collect statistics for their first ``collect_stats_steps`` training
    steps (``ParameterFromRuntimeStatsScaling``, ``ParameterFromRuntimeZeroPoint``): a step counter and a
    running ``buffer`` that their ``state_dict`` leaves out."""
    return {name: m for name, m in model.named_modules()
            if hasattr(m, "collect_stats_steps") and hasattr(m, "counter")
            and isinstance(getattr(m, "buffer", None), torch.Tensor)}


def runtime_stats_state(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Where each statistics-collecting quantizer part stands (counter, running buffer, raw value).
    Loading a state dict ends Brevitas' collection phase at once (it takes the saved value as learned),
    so a QAT resumed inside that phase would diverge from the uninterrupted run without this."""
    out = {}
    for name, m in _runtime_stats_modules(model).items():
        entry = {"counter": torch.tensor(int(m.counter)), "buffer": m.buffer.detach().cpu().clone()}
        if isinstance(getattr(m, "value", None), torch.Tensor):
            entry["value"] = m.value.detach().cpu().clone()
        out[name] = entry
    return out


def restore_runtime_stats(model: nn.Module, saved: dict[str, dict[str, torch.Tensor]]) -> None:
    """Put each statistics-collecting part back where :func:`runtime_stats_state` found it."""
    for name, m in _runtime_stats_modules(model).items():
        entry = saved.get(name)
        if entry is None:
            continue
        with torch.no_grad():
            m.buffer.copy_(entry["buffer"].to(m.buffer.device))
            if "value" in entry:
                m.value.copy_(entry["value"].to(m.value.device))
        m.counter = int(entry["counter"])


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


def _changed_settings(saved: dict[str, Any], cfg: QATConfig) -> list[str]:
    """The settings in which a state file's fingerprint differs from ``cfg`` (files written before
    a setting existed ran with its old behaviour, :data:`_LATER_SETTINGS`)."""
    now = json.loads(json.dumps(cfg.fingerprint()))
    saved = {**_LATER_SETTINGS, **{k: v for k, v in saved.items() if k != "torch_device"}}
    return sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))


def load_qat_state(path: str | Path, model: nn.Module, cfg: QATConfig,
                   loader_gen: torch.Generator | None) -> tuple[int, TrainResult, torch.optim.Optimizer]:
    """Restore model, optimizer and RNG from ``path``; returns ``(epochs done, history, optimizer)``.

    The optimizer is made after the model state is loaded: loading a Brevitas state
    dict replaces some parameters (quantizer scales), which an earlier optimizer would miss."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path} is not a readable QAT state ({first[:160]}); delete it to start over") from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a qnas QAT state file; delete it or pass another state path")
    if payload.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path} has QAT state version {payload.get('version')}, this qnas reads {STATE_VERSION}")
    diff = _changed_settings(json.loads(payload["config_json"]), cfg)
    if diff:
        raise CheckpointError(f"{path} was written with other QAT settings ({', '.join(diff)}); resume with the "
                              "same settings or delete it to start over")
    load_state(model, payload["model"], source=str(path))
    restore_runtime_stats(model, payload.get("stats", {}))  # state files before it: the collection phase ends
    optimizer = make_optimizer(model, cfg.train_config())
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path} holds an optimizer state that does not fit this model ({e})") from None
    torch.set_rng_state(payload["rng"]["torch"])
    if loader_gen is not None and payload["rng"]["loader"].numel():
        loader_gen.set_state(payload["rng"]["loader"])
    history = TrainResult([EpochStats(**d) for d in json.loads(payload["history_json"])])
    best = json.loads(payload.get("best_json", "{}"))
    if best.get("best_epoch") is not None and payload.get("best_model"):
        history.best_epoch, history.best_val_acc = int(best["best_epoch"]), best["best_val_acc"]
        history.best_state = dict(payload["best_model"])
    return int(payload["epoch"]), history, optimizer


# ---- the run -----------------------------------------------------------------------
def qat(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    config: QATConfig | None = None,
    teacher: nn.Module | None = None,
    state_path: str | Path | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> QATResult:
    """QAT ``model`` in place; see the module docstring. ``teacher(x)`` gives the float logits
    for a batch (run in eval mode without gradients). Raises :class:`TrainingError` when the
    loss becomes NaN/Inf and :class:`CheckpointError` for a ``state_path`` from other settings."""
    cfg = (config or QATConfig()).validate()
    tcfg = cfg.train_config()
    device = resolve_torch_device(cfg.torch_device)
    device = qdist.init_distributed(device).device(device)
    model.to(device)  # before the optimizer is made or loaded: its state follows the parameters' device
    if teacher is not None:
        teacher.to(device)
    gen = _loader_generator(train_loader)
    if state_path is not None and Path(state_path).is_file():
        start, history, optimizer = load_qat_state(state_path, model, cfg, gen)
    else:
        start, history, optimizer = 0, TrainResult(), make_optimizer(model, tcfg)

    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    if teacher is not None and cfg.kd_weight > 0:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

        def distill(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t_logits = teacher(x)
            t_logits = t_logits.value if hasattr(t_logits, "value") else t_logits
            return kd_loss(logits, t_logits.float(), y, cfg.kd_weight, cfg.kd_temperature, cfg.label_smoothing)

        loss_fn = distill

    freeze_at = cfg.bn_freeze_start()

    def on_start(epoch: int) -> None:
        if epoch >= freeze_at:
            freeze_batchnorm(model)

    def on_end(stats: EpochStats) -> None:
        if state_path is not None:
            if qdist.context().is_main:
                save_qat_state(state_path, model, optimizer, stats.epoch, history, cfg, gen)
            qdist.barrier()
        if on_epoch:
            on_epoch(stats)

    # a fresh start seeds torch with cfg.seed (in train()); a resume has restored the RNG instead
    train(model, train_loader, val_loader, tcfg, loss_fn, on_end, optimizer=optimizer, start_epoch=start,
          history=history, on_epoch_start=on_start)
    return QATResult(history.epochs, history.best_epoch, history.best_val_acc, history.stopped_early_after,
                     resumed_from_epoch=start,
                     bn_frozen_from_epoch=freeze_at + 1 if freeze_at < cfg.epochs else None,
                     distilled=loss_fn is not None)
