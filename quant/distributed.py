"""Data-parallel training across the processes ``torchrun`` starts (DDP), in one small place.

``torchrun --nproc_per_node N ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
address; :func:`init_distributed` joins that process group (NCCL for CUDA, gloo for the CPU) and
returns a :class:`DistContext`. Without those variables, or with ``WORLD_SIZE=1``, nothing is
initialised and every training loop runs exactly as a plain single process.

How the loops use it (:mod:`qnas.quant.train`, :mod:`qnas.supernet.train`):

* every rank iterates the *same* global batches (same loader, same seed) and takes its contiguous
  slice (:func:`shard_batch`), so the global batch size, the number of steps and the learning-rate
  schedule do not depend on the world size; a rank's loss is weighted by its share of the global
  batch, so the averaged gradient is the global batch's mean gradient even for uneven slices;
* gradients are averaged across ranks: by :class:`~torch.nn.parallel.DistributedDataParallel`
  for QAT (one forward/backward per step) and by :func:`all_reduce_gradients` once per step for the
  supernet (the sandwich rule runs several forward passes over different sub-networks per step,
  which DDP's per-forward bucketing does not fit);
* batch norm normalises with each rank's own slice (``SyncBatchNorm`` needs CUDA in torch 2.13:
  it raises for CPU tensors), so a run at world size 2 differs from world size 1 by that, within the
  tolerance README states; running statistics and Brevitas' activation statistics are rank 0's
  (DDP broadcasts buffers; the supernet broadcasts rank 0's state when a quantizer initialises);
* rank 0 alone writes checkpoints (atomically); the others wait at :func:`barrier`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistContext", "all_reduce_gradients", "all_reduce_sum", "barrier", "broadcast_object",
           "broadcast_state", "context", "init_distributed", "launched_by_torchrun", "shard_batch", "wrap_ddp"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, local rank (GPU index on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """``device`` for this rank: a bare ``cuda`` becomes ``cuda:LOCAL_RANK``."""
        if self.enabled and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device


def launched_by_torchrun() -> bool:
    """Whether torchrun's variables say this process is one of several."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and "RANK" in os.environ


def context() -> DistContext:
    """The current :class:`DistContext` (rank 0 of 1 when no process group is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0") or 0))
    return DistContext()


def init_distributed(device: torch.device | None = None) -> DistContext:
    """Join torchrun's process group once (NCCL for CUDA, else gloo); a no-op outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return context()
    if not launched_by_torchrun():
        return DistContext()
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    return context()


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if context().enabled:
        dist.barrier()


def shard_batch(x: torch.Tensor, y: torch.Tensor, ctx: DistContext) -> tuple[torch.Tensor, torch.Tensor, float]:
    """This rank's contiguous slice of a global batch and the weight ``world * n_local / n_global``
    of its mean loss (so that averaging the ranks' gradients gives the global mean gradient)."""
    if not ctx.enabled:
        return x, y, 1.0
    n = len(y)
    xs, ys = torch.tensor_split(x, ctx.world_size)[ctx.rank], torch.tensor_split(y, ctx.world_size)[ctx.rank]
    return xs, ys, ctx.world_size * len(ys) / max(1, n)


def all_reduce_sum(values: Sequence[float], device: torch.device | None = None) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (the values themselves in a single process)."""
    if not context().enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


@torch.no_grad()
def all_reduce_gradients(model: nn.Module) -> None:
    """Average every parameter's gradient over the ranks, in one flattened all-reduce per dtype
    (parameters without a gradient on this rank contribute zeros and get none if no rank had one)."""
    ctx = context()
    if not ctx.enabled:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                       device=params[0].device if params else None)
    dist.all_reduce(has)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                      for p, h in zip(params, has.tolist()) if h > 0]) if params else torch.zeros(0)
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for p, h in zip(params, has.tolist()):
        if h <= 0:
            continue
        n = p.numel()
        g = flat[offset:offset + n].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        offset += n


@torch.no_grad()
def broadcast_state(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``model``."""
    if not context().enabled:
        return
    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable data made by this code, never read from a file)."""
    if not context().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` when several ranks train, else itself.

    ``find_unused_parameters``: a Brevitas activation scale is not used while it still collects
    statistics; ``broadcast_buffers``: rank 0's BN and quantizer statistics on every rank, so the
    scale Brevitas initialises from them is the same everywhere."""
    if not context().enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True,
                                               broadcast_buffers=True)
