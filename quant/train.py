"""QAT training loop: SGD/Adam, cosine schedule, optional label smoothing,
progress bar, evaluation. Works on any ``nn.Module`` classifier."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from qnas.quant.configs import OptimizerConfig, TrainConfig
from qnas.quant.errors import TrainingError


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
    epochs: list[EpochStats] = field(default_factory=list)

    @property
    def final_val_acc(self) -> float | None:
        return self.epochs[-1].val_acc if self.epochs else None

    def to_dicts(self) -> list[dict]:
        return [asdict(e) for e in self.epochs]


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
def predict(model: nn.Module, loader: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over a loader (model in eval mode)."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x).float())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, loader: Iterable) -> float:
    """Top-1 accuracy in [0, 1]."""
    logits, labels = predict(model, loader)
    return float((logits.argmax(1) == labels).float().mean())


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
    """Train ``model`` in place (QAT when it is a Brevitas model).

    ``loss_fn(logits, labels, inputs)`` replaces cross-entropy (e.g. for
    distillation). Raises :class:`TrainingError` when the loss becomes NaN/Inf.

    For resuming (see :mod:`qnas.quant.qat`): ``optimizer`` (with its restored
    state), ``start_epoch`` (epochs already done; the cosine schedule continues
    from there and the global seed is not reset, so the caller restores the
    RNG), ``history`` (their stats). ``on_epoch_start(epoch)`` runs after
    ``model.train()`` at the start of every epoch (e.g. to freeze BN);
    ``on_epoch(stats)`` after every epoch.
    """
    cfg = (cfg or TrainConfig()).validate()
    if start_epoch == 0:
        torch.manual_seed(cfg.seed)
    ce = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    loss_fn = loss_fn or (lambda logits, y, _x: ce(logits, y))
    opt = optimizer if optimizer is not None else make_optimizer(model, cfg)
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    result = history if history is not None else TrainResult()
    step = start_epoch * steps_per_epoch
    bar = tqdm(total=total - step, desc=cfg.desc, disable=not cfg.progress, leave=False, unit="step")
    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            if on_epoch_start:
                on_epoch_start(epoch)
            t0 = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            lr = cfg.lr
            for x, y in train_loader:
                lr = cosine_lr(step, total, cfg.lr, warmup)
                for g in opt.param_groups:
                    g["lr"] = lr
                logits = model(x)
                loss = loss_fn(logits, y, x)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                        f"lower the learning rate (now {cfg.lr:g}) or check the data for NaN/Inf")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            val = evaluate(model, val_loader) if val_loader is not None else None
            stats = EpochStats(epoch + 1, loss_sum / max(1, seen), correct / max(1, seen), val,
                               lr, time.perf_counter() - t0)
            result.epochs.append(stats)
            if on_epoch:
                on_epoch(stats)
    finally:
        bar.close()
    return result
