"""Supernet training: sandwich rule, progressive shrinking, in-place distillation.

Each step accumulates the gradients of

* the largest arch of the whole space in FLOAT (the teacher), on the labels;
* the largest and the smallest arch of the current phase, quantized;
* ``n_random`` random archs of the current phase, quantized;

the students learn from the teacher's soft logits (KL, ``kd_weight``) and
the labels (CE, ``1 - kd_weight``); then one optimizer step. Phases
(:class:`~qnas.supernet.sampling.Phase`) open the elastic dimensions one after
another, each with its own cosine learning-rate schedule.

Checkpoints (``checkpoint_dir/supernet.pt``) are written atomically after
every epoch with the supernet, the optimizer and the history (CPU tensors; they
load onto any device); ``resume=True`` continues from the last complete epoch.
Batch order and arch sampling come from generators seeded with ``(seed, epoch)``,
so a resumed run is the same as an uninterrupted one.

Training runs on ``torch_device`` (supernet and batches moved there), with opt-in
mixed precision (``amp``: bf16, or fp16 with a gradient scaler on CUDA; the
quantizers' arithmetic stays fp32, see :mod:`qnas.quant.torch_device`). Launched
by ``torchrun`` it is data parallel (:mod:`qnas.quant.distributed`): every rank
draws the same batches and archs but reads only its slice of each batch (a
streamed data set's loader decodes and augments only that slice), and the
accumulated gradients are averaged once per step; when a quantizer initialises
its scale from data (a bit width's first batch), rank 0's state is broadcast.
Rank 0 writes the checkpoint, the others wait at a barrier.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from qnas.arch import Arch
from qnas.augment import resize_batch
from qnas.data import Splits
from qnas.errors import CheckpointError, ConfigError, TrainingError
from qnas.quant import distributed as qdist
from qnas.quant.checkpoint import load_checkpoint, save_checkpoint
from qnas.quant.configs import OptimizerConfig, validate_run_device
from qnas.quant.torch_device import autocast, grad_scaler, resolve_torch_device, to_device, training_layout
from qnas.quant.train import cosine_lr, kd_loss, make_optimizer
from qnas.supernet.evaluate import SupernetEvaluator
from qnas.supernet.quantize import WeightQuantizers
from qnas.supernet.sampling import Phase, full_space_largest, progressive_phases
from qnas.supernet.supernet import Supernet

CHECKPOINT_NAME = "supernet.pt"
_RUN_ONLY = ("resume", "progress", "checkpoint_dir", "eval_bn_batches", "torch_device")
#: fingerprint entries added later, with the value older checkpoints ran with
_LATER_SETTINGS: dict[str, Any] = {"amp": "off", "weight_ranges": "learned"}
WEIGHT_RANGE_MODES: tuple[str, ...] = ("epoch", "learned")


@dataclass
class SupernetTrainConfig(OptimizerConfig):
    """Supernet training (:func:`train_supernet`): the phases, the sandwich (``n_random`` random
    students besides the largest and smallest), in-place distillation, and the optimizer.
    ``torch_device`` / ``amp``: where to train and with which mixed precision (``off``, ``bf16``,
    ``fp16``). ``batch_size`` is the global batch: under torchrun each rank takes a slice of it."""

    phases: tuple[Phase, ...] = field(default_factory=progressive_phases)
    batch_size: int = 64
    n_random: int = 2
    kd_weight: float = 0.5
    kd_temperature: float = 1.0
    grad_clip: float | None = 5.0
    warmup_steps: int = 0
    seed: int = 0
    checkpoint_dir: str | None = None
    resume: bool = False
    progress: bool = True
    eval_bn_batches: int = 10
    torch_device: str = "cpu"
    amp: str = "off"
    #: "epoch": every weight quantizer's thresholds restart at each epoch from the then-current weights
    #: (the error-minimising value) and are learned within it, so they follow weights that keep growing;
    #: "learned": set at a bit width's first use, then only learned (supernets trained before this option)
    weight_ranges: str = "epoch"

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def validate(self) -> "SupernetTrainConfig":
        def pos_int(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")

        def number(name: str, ok: Callable[[float], bool], what: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise ConfigError(f"{name} must be {what}, got {v!r}")

        if not isinstance(self.phases, (tuple, list)) or not self.phases \
                or not all(isinstance(p, Phase) for p in self.phases):
            raise ConfigError("phases must be a non-empty list of Phase objects (see progressive_phases())")
        for p in self.phases:
            p.validate()
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ConfigError(f"phase names must be unique, got {names}")
        if self.weight_ranges not in WEIGHT_RANGE_MODES:
            raise ConfigError(f"weight_ranges must be one of {list(WEIGHT_RANGE_MODES)}, got {self.weight_ranges!r}")
        pos_int("batch_size", 2)
        pos_int("n_random", 0)
        pos_int("warmup_steps", 0)
        pos_int("eval_bn_batches", 0)
        pos_int("seed", 0)
        self.validate_optimizer()
        number("kd_weight", lambda v: 0 <= v <= 1, "in [0, 1]")
        number("kd_temperature", lambda v: v > 0, "a positive number")
        if self.grad_clip is not None:
            number("grad_clip", lambda v: v > 0, "a positive number or None")
        validate_run_device(self.torch_device, self.amp)
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("resume=True needs checkpoint_dir (where the previous run saved supernet.pt)")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["phases"] = [p.to_dict() for p in self.phases]
        return d

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a resume: everything but the run-only switches."""
        return {k: v for k, v in self.to_dict().items() if k not in _RUN_ONLY}


# ---- pieces -----------------------------------------------------------------
def sandwich_step(supernet: Supernet, optimizer: torch.optim.Optimizer,
                  images: Mapping[int, torch.Tensor] | Callable[[int], torch.Tensor], labels: torch.Tensor,
                  students: Sequence[Arch], cfg: SupernetTrainConfig, teacher: Arch | None = None, *,
                  scaler: "torch.amp.GradScaler | None" = None, loss_weight: float = 1.0) -> dict[str, float]:
    """One optimizer step with gradients accumulated over the float teacher and ``students``.

    ``images[r]`` (or ``images(r)``) is the batch at resolution ``r``, on the supernet's device.
    Returns the teacher's CE and the students' mean loss (before the step). Under ``torchrun``
    ``loss_weight`` is this rank's share ``world * n_local / n_global`` of the global batch
    and the gradients are averaged over the ranks before clipping; ``scaler`` is the fp16 gradient
    scaler (``cfg.amp``)."""
    get = images if callable(images) else images.__getitem__
    teacher = teacher or full_space_largest(supernet.space)
    ctx = qdist.context()
    device = labels.device
    bad: list[str] = []

    def check(loss: torch.Tensor, who: str) -> None:
        if ctx.enabled:  # decided together after the backward passes: a lone raise would leave the others waiting
            if not bad and not torch.isfinite(loss):
                bad.append(f"loss of {who[:60]} became {loss.item()}")
        else:
            _check(loss, who)

    def backward(loss: torch.Tensor) -> None:
        loss = loss * loss_weight if loss_weight != 1.0 else loss
        (scaler.scale(loss) if scaler is not None else loss).backward()

    supernet.train()
    optimizer.zero_grad(set_to_none=True)
    supernet.set_active(teacher, quantize=False)
    with autocast(device, cfg.amp):
        t_logits = supernet(get(teacher.resolution))
        t_loss = F.cross_entropy(t_logits, labels)
    check(t_loss, "teacher")
    backward(t_loss)
    soft = t_logits.detach().float()
    losses = []
    for arch in students:
        supernet.set_active(arch, quantize=True)
        with autocast(device, cfg.amp):
            loss = kd_loss(supernet(get(arch.resolution)), soft, labels, cfg.kd_weight, cfg.kd_temperature)
        check(loss, arch.describe())
        backward(loss / max(1, len(students)))
        losses.append(float(loss.detach()))
    if ctx.enabled:
        if qdist.all_reduce_sum([1.0 if bad else 0.0], device)[0] > 0:
            raise TrainingError(f"{bad[0] if bad else 'a loss on another rank became NaN/Inf'}; lower the learning "
                                "rate or check the data for NaN/Inf")
        qdist.all_reduce_gradients(supernet)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(supernet.parameters(), cfg.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return {"teacher_loss": float(t_loss.detach()), "loss": float(np.mean(losses)) if losses else 0.0}


def restart_weight_ranges(supernet: nn.Module) -> None:
    """Let every weight quantizer take its thresholds afresh from the weights at its next use in training."""
    for m in supernet.modules():
        if isinstance(m, WeightQuantizers):
            m.calibrated.zero_()


def _init_flags(module: nn.Module) -> int:
    """How many "initialised"/"calibrated" flags (bool buffers) are set: it changes when a quantizer
    takes its scale from the data it sees."""
    return sum(int(b.sum()) for b in module.buffers() if b.dtype == torch.bool)


def _check(loss: torch.Tensor, who: str) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(f"loss of {who[:60]} became {loss.item()}; lower the learning rate or check the data for NaN/Inf")


# ---- checkpoint ---------------------------------------------------------------
class _Bundle:
    """What :func:`save_checkpoint` stores: supernet and optimizer tensors in one flat dict."""

    def __init__(self, supernet: nn.Module, optimizer: torch.optim.Optimizer):
        self.supernet, self.optimizer = supernet, optimizer

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"supernet.{k}": v for k, v in self.supernet.state_dict().items()}
        for idx, st in self.optimizer.state_dict()["state"].items():
            for name, v in st.items():
                out[f"optim.{idx}.{name}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
        return out

    def optimizer_groups(self) -> list[dict[str, Any]]:
        return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
                for g in self.optimizer.state_dict()["param_groups"]]

    def load(self, state: dict[str, torch.Tensor], groups: list[dict[str, Any]], source: str) -> None:
        net = {k[len("supernet."):]: v for k, v in state.items() if k.startswith("supernet.")}
        try:
            self.supernet.load_state_dict(net, strict=True)
        except RuntimeError as e:
            msg = " ".join(l.strip() for l in str(e).splitlines() if l.strip())
            raise CheckpointError(f"{source} does not fit this supernet ({msg[:200]})") from None
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in state.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = v
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})


def checkpoint_path(cfg: SupernetTrainConfig) -> Path | None:
    return Path(cfg.checkpoint_dir) / CHECKPOINT_NAME if cfg.checkpoint_dir else None


# ---- the loop -------------------------------------------------------------
def _schedule(cfg: SupernetTrainConfig) -> list[tuple[Phase, int]]:
    """(phase, epoch index within the phase) for every epoch of the run."""
    return [(p, e) for p in cfg.phases for e in range(p.epochs)]


def train_supernet(supernet: Supernet, splits: Splits, cfg: SupernetTrainConfig | None = None,
                   on_epoch: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train ``supernet`` in place on ``splits.train``; returns the per-epoch history.

    Each history entry: epoch, phase, loss (students), teacher_loss, lr (last),
    seconds, and (``eval_bn_batches > 0``) val_acc_largest / val_acc_smallest: the
    inherited accuracy of the phase's largest and smallest arch after BN
    recalibration on that many batches (the supernet's BN state is restored).
    ``on_epoch(entry)`` is called after each epoch's checkpoint is written.
    Without ``resume`` an existing checkpoint in ``checkpoint_dir`` is overwritten."""
    cfg = (cfg or SupernetTrainConfig()).validate()
    space = supernet.space
    ds = splits.train
    if (ds.channels, ds.num_classes) != (space.config.in_channels, space.config.num_classes):
        raise ConfigError(f"the supernet's space expects {space.config.in_channels} channel(s) and "
                          f"{space.config.num_classes} classes, the data has {ds.channels} and {ds.num_classes}")
    if len(ds) < 2:
        raise ConfigError(f"training needs at least 2 samples, got {len(ds)}")
    device = resolve_torch_device(cfg.torch_device)
    ctx = qdist.init_distributed(device)
    device = ctx.device(device)
    supernet.to(device)  # before the optimizer: its state lives where the parameters do
    optimizer = make_optimizer(supernet, cfg)
    bundle = _Bundle(supernet, optimizer)
    ckpt = checkpoint_path(cfg)
    history: list[dict[str, Any]] = []
    start = 0
    if cfg.resume and ckpt is not None and ckpt.is_file():
        state, meta = load_checkpoint(ckpt)
        if meta.get("kind") != "supernet-train":
            raise CheckpointError(f"{ckpt} is not a supernet training checkpoint; use another checkpoint_dir")
        same = json.loads(json.dumps({"config": cfg.fingerprint(), "supernet": supernet.config}))
        saved_cfg = {**_LATER_SETTINGS, **{k: v for k, v in (meta.get("config") or {}).items() if k not in _RUN_ONLY}}
        if {"config": saved_cfg, "supernet": meta.get("supernet")} != same:
            raise CheckpointError(f"{ckpt} was written with another config or supernet; resume with the same "
                                  "settings or use a fresh checkpoint_dir")
        bundle.load(state, meta["optimizer_groups"], str(ckpt))
        history, start = list(meta["history"]), int(meta["epoch"])
    qdist.broadcast_state(supernet)  # every rank starts from rank 0's weights (already equal: same seed or file)
    scaler = grad_scaler(device, cfg.amp)

    streamed = hasattr(ds, "source")  # a qnas.streaming data set: batches come from its DataLoader
    resized = {} if streamed else {r: ds.at_resolution(r).images for r in space.config.resolutions}
    native = ds.at_resolution(max(space.config.resolutions)) if streamed else None
    labels_all = ds.labels
    n = len(ds)
    teacher = full_space_largest(space)
    evaluator = SupernetEvaluator(supernet, splits, cfg.eval_bn_batches, cfg.batch_size, cfg.seed) \
        if cfg.eval_bn_batches else None
    schedule = _schedule(cfg)
    steps_per_epoch = n // cfg.batch_size + (1 if n % cfg.batch_size >= 2 else 0)
    bar = tqdm(total=(len(schedule) - start) * steps_per_epoch, desc="supernet",
               disable=not cfg.progress or not ctx.is_main, leave=False, unit="step")
    try:
        for epoch in range(start, len(schedule)):
            phase, phase_epoch = schedule[epoch]
            t0 = time.perf_counter()
            if cfg.weight_ranges == "epoch":
                restart_weight_ranges(supernet)
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            rng = np.random.default_rng([cfg.seed, epoch])
            order = torch.randperm(n, generator=gen)
            # streamed: each batch is read (augmented) at the largest resolution, resized per student;
            # under DDP the loader reads only this rank's slice of each global batch
            loader = native.loader(cfg.batch_size, True, seed=cfg.seed * 1_000_003 + epoch, augment=True,
                                   shard=ctx if ctx.enabled else None) if streamed else None
            global_sizes = qdist.global_batch_sizes(loader) if streamed else None
            batches = iter(loader) if streamed else None
            largest, smallest = phase.largest(space), phase.smallest(space)
            phase_steps = phase.epochs * steps_per_epoch
            sums = {"loss": 0.0, "teacher_loss": 0.0}
            lr = cfg.lr
            for step in range(steps_per_epoch):
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                n_global = len(idx)
                if streamed:
                    xb, yb = next(batches)  # under DDP: already this rank's slice
                    n_global = global_sizes[step] if global_sizes is not None else len(yb)
                    idx = torch.arange(len(yb))
                lr = cosine_lr(phase_epoch * steps_per_epoch + step, phase_steps, cfg.lr * phase.lr_scale,
                               cfg.warmup_steps)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                students = [largest, smallest] + [phase.sample(space, rng) for _ in range(cfg.n_random)]
                weight = 1.0
                if ctx.enabled and n_global < ctx.world_size:  # too small to give every rank a sample: all skip it
                    continue
                if ctx.enabled:  # this rank's slice of the global batch (a sharded loader has cut it already)
                    if global_sizes is None:
                        idx = torch.tensor_split(idx, ctx.world_size)[ctx.rank]
                    weight = ctx.world_size * len(idx) / n_global
                    flags = _init_flags(supernet)
                if streamed:
                    def view(r: int, xb=xb, idx=idx) -> torch.Tensor:
                        return training_layout(to_device(resize_batch(xb[idx], r), device))
                    labels = yb[idx]
                else:
                    def view(r: int, idx=idx) -> torch.Tensor:
                        return training_layout(to_device(resized[r][idx], device))
                    labels = labels_all[idx]
                out = sandwich_step(supernet, optimizer, view, to_device(labels, device), students, cfg, teacher,
                                    scaler=scaler, loss_weight=weight)
                if ctx.enabled:
                    if _init_flags(supernet) != flags:  # a quantizer took its scale from this rank's data
                        qdist.broadcast_state(supernet)
                    out = dict(zip(out, (v / ctx.world_size for v in qdist.all_reduce_sum(list(out.values()), device))))
                for k in sums:
                    sums[k] += out[k]
                bar.update(1)
                bar.set_postfix(phase=phase.name, loss=f"{sums['loss'] / (step + 1):.3f}")
            entry: dict[str, Any] = {
                "epoch": epoch + 1, "phase": phase.name, "loss": sums["loss"] / steps_per_epoch,
                "teacher_loss": sums["teacher_loss"] / steps_per_epoch, "lr": lr,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            if evaluator is not None:  # restores the BN state, so it does not change the run
                for tag, arch in (("largest", largest), ("smallest", smallest)):
                    entry[f"val_acc_{tag}"] = evaluator(arch)["val_acc"]
            history.append(entry)
            if ckpt is not None:
                if ctx.is_main:
                    meta = {"kind": "supernet-train", "epoch": epoch + 1, "config": cfg.fingerprint(),
                            "supernet": supernet.config, "history": history,
                            "optimizer_groups": bundle.optimizer_groups()}
                    save_checkpoint(ckpt, bundle, meta)  # type: ignore[arg-type]
                qdist.barrier()
            if on_epoch:
                on_epoch(entry)
    finally:
        bar.close()
    supernet.set_active(full_space_largest(space), quantize=True)
    supernet.eval()
    return history


def __getattr__(name: str) -> Any:
    # One release of grace: the supernet's distillation loss is now qnas.quant.train.kd_loss.
    if name == "distill_loss":
        import warnings

        warnings.warn("qnas.supernet.distill_loss is deprecated; use qnas.quant.train.kd_loss (same arguments)",
                      DeprecationWarning, stacklevel=2)
        return kd_loss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
