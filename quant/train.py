"""QAT training loop: SGD/Adam, cosine schedule, optional label smoothing,
progress bar, evaluation. Works on any ``nn.Module`` classifier.

The loop runs on ``TrainConfig.torch_device`` (model and every batch moved there; predictions come
back on the CPU), with opt-in mixed precision (``amp``, :mod:`qnas.quant.torch_device`), and data
parallel when launched by ``torchrun`` (:mod:`qnas.quant.distributed`: each rank reads and trains on
only its slice of every global batch under DDP). With a validation loader it can keep the best
epoch's weights (``keep_best``) and stop early (``early_stop``)."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from qnas.quant import distributed as qdist
from qnas.quant.configs import OptimizerConfig, TrainConfig
from qnas.quant.errors import TrainingError
from qnas.quant.torch_device import autocast, grad_scaler, module_device, resolve_torch_device, to_device


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    val_acc: float | None
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """Per-epoch stats; with ``keep_best``, the epoch (1-based) whose weights the model ends with and
    its validation accuracy; ``stopped_early_after``: the last epoch run when early stopping ended
    the run (None: it ran every epoch)."""

    epochs: list[EpochStats] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_acc: float | None = None
    stopped_early_after: int | None = None
    #: CPU copy of the best epoch's state (``keep_best``), until the run ends
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def final_val_acc(self) -> float | None:
        """Validation accuracy of the weights the run ended with (the best epoch's with ``keep_best``)."""
        if self.best_epoch is not None:
            return self.best_val_acc
        return self.epochs[-1].val_acc if self.epochs else None

    def to_dicts(self) -> list[dict]:
        return [asdict(e) for e in self.epochs]

    def selection(self) -> dict[str, int | float | None]:
        """Which epoch's weights were kept and why: ``kept_epoch``, ``kept_val_acc``, ``kept``
        (``"best"`` on validation or ``"last"``), ``stopped_early_after``."""
        last = self.epochs[-1].epoch if self.epochs else None
        if self.best_epoch is not None:
            return {"kept": "best", "kept_epoch": self.best_epoch, "kept_val_acc": self.best_val_acc,
                    "stopped_early_after": self.stopped_early_after}
        return {"kept": "last", "kept_epoch": last, "kept_val_acc": self.epochs[-1].val_acc if self.epochs else None,
                "stopped_early_after": self.stopped_early_after}


def make_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam or Nesterov SGD (:class:`~qnas.quant.configs.OptimizerConfig`) with weight decay on
    conv/linear weights only.

    No decay on BN, biases, quantizer scales (decaying a learned scale towards
    zero collapses the quantization grid) or the supernet's kernel transforms:
    decay applies to parameters named ``weight`` with two or more dimensions."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if name.rsplit(".", 1)[-1] == "weight" and p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.Adam(groups, lr=cfg.lr)


def kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor, kd_weight: float,
            temperature: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Knowledge distillation: ``(1 - a) * CE(logits, labels) + a * T^2 * KL(softmax(teacher/T) || softmax(logits/T))``
    with ``a = kd_weight``, ``T = temperature``; plain CE when there is no teacher or ``a == 0``.
    The supernet's in-place distillation and QAT finishing both use it."""
    if teacher_logits is None or kd_weight == 0:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    t = temperature
    kl = F.kl_div(F.log_softmax(logits / t, 1), F.softmax(teacher_logits.detach() / t, 1), reduction="batchmean")
    loss = kd_weight * t * t * kl
    if kd_weight < 1:
        loss = (1.0 - kd_weight) * F.cross_entropy(logits, labels, label_smoothing=label_smoothing) + loss
    return loss


def cosine_lr(step: int, total: int, base: float, warmup: int = 0) -> float:
    """Learning rate at ``step`` of ``total``: linear warm-up over ``warmup`` steps, then a
    half cosine from ``base`` to 0 (held at 0 after ``total``)."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over a loader (model in eval mode), on the CPU; batches run on ``device``
    (default: the model's)."""
    device = device or module_device(model)
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(to_device(x, device)).float().cpu())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | None = None) -> float:
    """Top-1 accuracy in [0, 1], batches run on ``device`` (default: the model's). Under ``torchrun``
    every rank reads and scores its slice of each batch and the counts are summed (all ranks must
    call it)."""
    ctx = qdist.context()
    if not ctx.enabled:
        logits, labels = predict(model, loader, device)
        return float((logits.argmax(1) == labels).float().mean())
    device = device or module_device(model)
    was_training = model.training
    model.eval()
    correct = total = 0
    loader = qdist.shard_loader(loader, ctx)
    sliced = qdist.global_batch_sizes(loader) is not None  # else global batches: slice them here
    for x, y in loader:
        xs, ys = (x, y) if sliced else qdist.shard_batch(x, y, ctx)[:2]
        if len(ys):
            correct += int((model(to_device(xs, device)).float().argmax(1).cpu() == ys).sum())
            total += len(ys)
    model.train(was_training)
    correct, total = qdist.all_reduce_sum([correct, total], device)
    return correct / max(1.0, total)


def train(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    cfg: TrainConfig | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    start_epoch: int = 0,
    history: TrainResult | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place (QAT when it is a Brevitas model) on ``cfg.torch_device``.

    ``loss_fn(logits, labels, inputs)`` replaces cross-entropy (e.g. for
    distillation). Raises :class:`TrainingError` when the loss becomes NaN/Inf.

    For resuming (see :mod:`qnas.quant.qat`): ``optimizer`` (with its restored
    state, made for the model on its device), ``start_epoch`` (epochs already done;
    the cosine schedule continues from there and the global seed is not reset, so
    the caller restores the RNG), ``history`` (their stats, and the best epoch so far).
    ``on_epoch_start(epoch)`` runs after ``model.train()`` at the start of every epoch
    (e.g. to freeze BN); ``on_epoch(stats)`` after every epoch (``history`` is
    up to date by then).

    With ``cfg.keep_best`` and a ``val_loader`` the model ends with the weights of the
    first epoch of highest validation accuracy (``TrainResult.best_epoch``);
    ``cfg.early_stop = N`` ends the run after N epochs without a better one. Under
    ``torchrun`` each rank reads and trains on its slice of every global batch (DDP): a
    loader :func:`qnas.quant.distributed.shard_loader` can re-make (those of
    :mod:`qnas.data` and :mod:`qnas.streaming`) is re-made to yield only that slice, any
    other is sliced here; batches too small to give every rank two samples are skipped.
    """
    cfg = (cfg or TrainConfig()).validate()
    device = resolve_torch_device(cfg.torch_device)
    ctx = qdist.init_distributed(device)
    device = ctx.device(device)
    if start_epoch == 0:
        torch.manual_seed(cfg.seed)
    model.to(device)
    ce = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    loss_fn = loss_fn or (lambda logits, y, _x: ce(logits, y))
    opt = optimizer if optimizer is not None else make_optimizer(model, cfg)
    net = qdist.wrap_ddp(model, device)
    scaler = grad_scaler(device, cfg.amp)
    train_loader = qdist.shard_loader(train_loader, ctx)  # under DDP: this rank's slices only
    global_sizes = qdist.global_batch_sizes(train_loader)  # None: global batches, sliced below
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    result = history if history is not None else TrainResult()
    track_best = cfg.keep_best and val_loader is not None
    step = start_epoch * steps_per_epoch
    bar = tqdm(total=total - step, desc=cfg.desc, disable=not cfg.progress or not ctx.is_main, leave=False,
               unit="step")
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if _patience_spent(result, cfg, epoch):
                result.stopped_early_after = epoch
                break
            model.train()
            if on_epoch_start:
                on_epoch_start(epoch)
            t0 = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            lr = cfg.lr
            for i, (x, y) in enumerate(train_loader):
                lr = cosine_lr(step, total, cfg.lr, warmup)
                for g in opt.param_groups:
                    g["lr"] = lr
                weight = 1.0
                if ctx.enabled:
                    n_global = global_sizes[i] if global_sizes is not None else len(y)
                    if n_global < 2 * ctx.world_size:  # every rank knows the global length: all skip it
                        step += 1
                        bar.update(1)
                        continue
                    if global_sizes is None:
                        x, y, weight = qdist.shard_batch(x, y, ctx)
                    else:
                        weight = ctx.world_size * len(y) / n_global
                x, y = to_device(x, device), to_device(y, device)
                with autocast(device, cfg.amp):
                    logits = net(x)
                    loss = loss_fn(logits, y, x)
                finite = bool(torch.isfinite(loss))
                if ctx.enabled:  # one rank's NaN must stop every rank, not leave them waiting in backward
                    finite = qdist.all_reduce_sum([0.0 if finite else 1.0], device)[0] == 0
                if not finite:
                    raise TrainingError(
                        f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                        f"lower the learning rate (now {cfg.lr:g}) or check the data for NaN/Inf")
                opt.zero_grad(set_to_none=True)
                scaled = loss * weight if weight != 1.0 else loss
                if scaler is not None:
                    scaler.scale(scaled).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    scaled.backward()
                    opt.step()
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / max(1, seen):.3f}", acc=f"{correct / max(1, seen):.3f}")
            if ctx.enabled:
                loss_sum, correct, seen = qdist.all_reduce_sum([loss_sum, correct, seen], device)
            val = evaluate(model, val_loader, device) if val_loader is not None else None
            stats = EpochStats(epoch + 1, loss_sum / max(1, seen), correct / max(1, seen), val,
                               lr, time.perf_counter() - t0)
            result.epochs.append(stats)
            if track_best and val is not None and (result.best_val_acc is None or val > result.best_val_acc):
                result.best_epoch, result.best_val_acc = epoch + 1, val
                result.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if on_epoch:
                on_epoch(stats)
    finally:
        bar.close()
    if track_best and result.best_state is not None and result.epochs \
            and result.best_epoch != result.epochs[-1].epoch:
        model.load_state_dict(result.best_state)
    return result


def _patience_spent(result: TrainResult, cfg: TrainConfig, epoch: int) -> bool:
    """Whether ``cfg.early_stop`` epochs have passed since the best validation accuracy (before ``epoch``)."""
    if cfg.early_stop is None or not result.epochs or result.epochs[-1].val_acc is None:
        return False
    vals = [e.val_acc for e in result.epochs if e.val_acc is not None]
    best_at = next(e.epoch for e in result.epochs if e.val_acc == max(vals))
    return epoch - best_at >= cfg.early_stop
