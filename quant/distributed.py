"""Data-parallel training across the processes ``torchrun`` starts (DDP), in one small place.

``torchrun --nproc_per_node N ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
address; :func:`init_distributed` joins that process group (NCCL for CUDA, gloo for the CPU) and
returns a :class:`DistContext`. Without those variables, or with ``WORLD_SIZE=1``, nothing is
initialised and every training loop runs exactly as a plain single process.

How the loops use it (:mod:`qnas.quant.train`, :mod:`qnas.supernet.train`):

* every rank draws the *same* global batches (same sampler, same seed) but reads only its
  contiguous slice of each (:class:`ShardedBatchSampler`, the slice of :func:`torch.tensor_split`):
  a loader from :meth:`qnas.data.ImageDataset.loader` or
  :meth:`qnas.streaming.StreamingImageDataset.loader` is re-made around that sampler
  (:func:`shard_loader`, or ``loader(..., shard=ctx)``), so a rank loads, decodes and augments only
  its images; augmentation is seeded per image and the elastic resolution per global batch, so the
  slices equal those of the single-process batches. The global batch size, the number of steps and
  the learning-rate schedule do not depend on the world size; a rank's loss is weighted by its share
  ``world * n_local / n_global`` of the global batch (the sampler knows every global batch's length,
  :func:`global_batch_sizes`), so the averaged gradient is the global batch's mean gradient even for
  uneven slices. A loader this module cannot re-make (not a map-style ``DataLoader``, or a batch
  sampler that does not state its batch lengths) still yields global batches, and the loop slices
  them (:func:`shard_batch`);
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
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, Sampler

__all__ = ["DistContext", "ShardedBatchSampler", "all_reduce_gradients", "all_reduce_sum", "barrier",
           "broadcast_object", "broadcast_state", "context", "global_batch_sizes", "init_distributed",
           "launched_by_torchrun", "shard_batch", "shard_bounds", "shard_loader", "wrap_ddp"]


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
    of its mean loss (so that averaging the ranks' gradients gives the global mean gradient); for
    loaders that yield global batches (those :func:`shard_loader` cannot re-make)."""
    if not ctx.enabled:
        return x, y, 1.0
    n = len(y)
    xs, ys = torch.tensor_split(x, ctx.world_size)[ctx.rank], torch.tensor_split(y, ctx.world_size)[ctx.rank]
    return xs, ys, ctx.world_size * len(ys) / max(1, n)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous part of ``n`` items: the part
    :func:`torch.tensor_split` gives (the first ``n % world_size`` ranks get one item more)."""
    q, r = divmod(n, world_size)
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


def _batch_sizes(batches: Any) -> list[int] | None:
    """The length of every batch a batch sampler yields, from its ``batch_size``, ``drop_last`` and
    sample count (``num_samples`` or ``len(sampler)``); None when it does not say."""
    size, drop = getattr(batches, "batch_size", None), getattr(batches, "drop_last", None)
    n = getattr(batches, "num_samples", None)
    if n is None and getattr(batches, "sampler", None) is not None:
        try:
            n = len(batches.sampler)
        except TypeError:
            return None
    if not isinstance(size, int) or size < 1 or not isinstance(n, int) or not isinstance(drop, bool):
        return None
    full, rest = divmod(n, size)
    sizes = [size] * full + ([rest] if rest and not drop else [])
    try:
        return sizes if len(sizes) == len(batches) else None
    except TypeError:
        return None


class ShardedBatchSampler(Sampler[list]):
    """This rank's contiguous slice of every global batch of ``batches``.

    ``batches`` is a batch sampler (:class:`torch.utils.data.BatchSampler`, or one with
    ``batch_size``, ``drop_last`` and ``num_samples``) that draws the same index lists on every rank
    (same seed); each is cut as :func:`torch.tensor_split` cuts it (:func:`shard_bounds`), so the
    ranks' slices, in rank order, are the global batch. A rank whose slice is empty (a global batch
    shorter than the world size) gets an empty list, so every rank sees the same number of batches.
    :meth:`global_sizes` gives the global batch lengths (for the loss weight ``world * n_local / n_global``)."""

    def __init__(self, batches: Iterable[Sequence], rank: int, world_size: int):
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) \
                or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank!r}, world_size={world_size!r}")
        sizes = _batch_sizes(batches)
        if sizes is None:
            raise ValueError(f"{type(batches).__name__} does not say how long its batches are (batch_size, "
                             "drop_last and num_samples or sampler)")
        self.batches, self.rank, self.world_size, self._sizes = batches, rank, world_size, sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def global_sizes(self) -> list[int]:
        """The length of every global batch of an epoch, in order."""
        return list(self._sizes)

    def __iter__(self) -> Iterator[list]:
        for batch in self.batches:
            start, stop = shard_bounds(len(batch), self.rank, self.world_size)
            yield list(batch[start:stop])


class _CollateSlices:
    """``collate`` for a non-empty slice; an empty slice (a global batch shorter than the world size,
    which the loops skip) collates to empty tensors instead of failing."""

    def __init__(self, collate: Any):
        self.collate = collate

    def __call__(self, batch: Sequence) -> Any:
        if len(batch) == 0:
            return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
        return self.collate(batch)


def shard_loader(loader: Any, ctx: DistContext | None = None) -> Any:
    """``loader`` re-made so that it yields this rank's slice of each of its global batches.

    The new :class:`~torch.utils.data.DataLoader` shares the data set, the batch sampler (so its
    epoch counter), the generator (so the order and the state :mod:`qnas.quant.qat` saves), the
    workers and the collate function of ``loader``: the ranks' batches, in rank order, are the
    batches ``loader`` would have yielded. Returned unchanged in a single process, when it is
    already sharded for ``ctx``, or when it cannot be re-made (not a map-style ``DataLoader``, or
    a batch sampler that does not say its batch lengths): then it yields global batches, and
    :func:`global_batch_sizes` says so by returning None."""
    ctx = ctx or context()
    if not ctx.enabled or not isinstance(loader, DataLoader):
        return loader
    bs = loader.batch_sampler
    if isinstance(bs, ShardedBatchSampler):
        if (bs.rank, bs.world_size) != (ctx.rank, ctx.world_size):
            raise ValueError(f"the loader is sharded for rank {bs.rank} of {bs.world_size}, "
                             f"this process is rank {ctx.rank} of {ctx.world_size}")
        return loader
    if bs is None or isinstance(loader.dataset, IterableDataset) or _batch_sizes(bs) is None:
        return loader
    kw: dict[str, Any] = {"num_workers": loader.num_workers, "collate_fn": _CollateSlices(loader.collate_fn),
                          "pin_memory": loader.pin_memory, "timeout": loader.timeout,
                          "worker_init_fn": loader.worker_init_fn,
                          "multiprocessing_context": loader.multiprocessing_context,
                          "generator": loader.generator, "persistent_workers": loader.persistent_workers}
    if loader.num_workers > 0:
        kw["prefetch_factor"] = loader.prefetch_factor
    if hasattr(loader, "in_order"):
        kw["in_order"] = loader.in_order
    # a DataLoader subclass that keeps DataLoader's constructor (e.g. one that adds to __iter__) stays itself
    cls = type(loader) if type(loader).__init__ is DataLoader.__init__ else DataLoader
    return cls(loader.dataset, batch_sampler=ShardedBatchSampler(bs, ctx.rank, ctx.world_size), **kw)


def global_batch_sizes(loader: Any) -> list[int] | None:
    """The global batch lengths of a loader :func:`shard_loader` made (None: it yields global batches)."""
    bs = getattr(loader, "batch_sampler", None)
    return bs.global_sizes() if isinstance(bs, ShardedBatchSampler) else None


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
