"""Image data sets that stay on disk: decoded one image at a time, in DataLoader workers.

:func:`qnas.data.load_dataset` reads a whole data set into memory as float32
(about 770 GB for ImageNet-1k at 224 px). :func:`open_stream` opens the same
sources lazily instead:

* ``imagefolder`` -- one sub-folder per class; each image is decoded by PIL when it is read;
* ``cifar10``     -- the binary batches, one 3,073-byte record read per image;
* ``npz``         -- an *uncompressed* ``.npz`` (``numpy.savez``): each image is read from
  its offset in the archive (``savez_compressed`` archives cannot be read piecewise).

Only labels and file offsets stay in memory, so peak memory does not grow with
the data set. A :class:`StreamingImageDataset` has the interface of
:class:`qnas.data.ImageDataset` that training code uses (``len``, ``labels``,
``num_classes``, ``channels``, ``resolution``, ``mean``/``std``, ``subset``,
``at_resolution``, ``loader``), so :func:`qnas.data.split` and every trainer
take either. Its :meth:`~StreamingImageDataset.loader` adds worker processes,
train-only augmentation (:mod:`qnas.augment`) and a resolution drawn per batch
for elastic-resolution (OFA-style) supernet training.
"""
from __future__ import annotations

import functools
import os
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from qnas.augment import AUGMENT_POLICIES, eval_transform, train_transform
from qnas.data import (_CIFAR_RECORD, IMAGE_EXTENSIONS, cifar_batch_files, ImageDataset, IndexLike,
                       PathLike, _err, _existing, open_npz)
from qnas.dataset_kinds import DATASET_KINDS

__all__ = ["StreamingImageDataset", "open_stream", "STREAMABLE_KINDS", "default_workers"]

#: Kinds :func:`open_stream` reads lazily (``digits`` is tiny and bundled: it stays in memory).
STREAMABLE_KINDS: tuple[str, ...] = ("imagefolder", "cifar10", "npz")
_STATS_SAMPLE = 1000          # images read to estimate mean/std when none are given
_MATERIALIZE_LIMIT = 2 << 30  # bytes: refuse to turn more than this into one tensor


def default_workers() -> int:
    """DataLoader worker processes by default: one per spare core, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` (None where the C library is not glibc: macOS, musl, Windows); looked up
    once, on the first loader with workers."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class _HeapReturningLoader(DataLoader):
    """A DataLoader that hands the C heap it freed back to the OS after each batch from a worker.

    Batches received from worker processes leave freed heap behind that glibc keeps and does not
    reuse well: without this the main process's peak grew with the number of batches, 1.5x from
    1,000 to 50,000 32-px images (bench/streaming_memory.py); with it, 1.04x. A no-op without
    workers or outside glibc."""

    def __iter__(self) -> Iterator[Any]:
        it = super().__iter__()
        trim = _malloc_trim() if self.num_workers > 0 else None
        return it if trim is None else self._trimming(it, trim)

    @staticmethod
    def _trimming(it: Iterator[Any], trim: Any) -> Iterator[Any]:
        for batch in it:
            yield batch
            trim(0)  # the previous batch is gone by now: return what it left


# --------------------------------------------------------------------------- #
# sources: index -> uint8 (C, H, W) tensor; picklable, files opened per process
# --------------------------------------------------------------------------- #
class _RecordFile:
    """Fixed-size records at ``offset + i * record`` in one file, read with ``os.pread``."""

    def __init__(self, path: Path, offset: int, record: int):
        self.path, self.offset, self.record = path, offset, record
        self._fd: int | None = None
        self._pid = -1

    def read(self, i: int) -> bytes:
        if self._fd is None or self._pid != os.getpid():  # a forked worker opens its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        data = os.pread(self._fd, self.record, self.offset + i * self.record)
        if len(data) != self.record:
            raise _err(f"{self.path} ended early at record {i}; the file is truncated")
        return data

    def __getstate__(self) -> dict:
        return {"path": self.path, "offset": self.offset, "record": self.record, "_fd": None, "_pid": -1}


class _CifarSource:
    def __init__(self, files: Sequence[Path]):
        self.files: list[_RecordFile] = []
        self.starts: list[int] = []
        labels: list[np.ndarray] = []
        n = 0
        for f in files:
            size = f.stat().st_size
            if size == 0 or size % _CIFAR_RECORD:
                raise _err(f"CIFAR-10 file {f} has {size} bytes, not a positive multiple of "
                           f"{_CIFAR_RECORD} (1 label + 3072 pixel bytes); the file is truncated or "
                           "not the CIFAR-10 binary version")
            labels.append(_cifar_labels(f, size // _CIFAR_RECORD))
            self.files.append(_RecordFile(f, 0, _CIFAR_RECORD))
            self.starts.append(n)
            n += size // _CIFAR_RECORD
        self.labels = np.concatenate(labels)
        if self.labels.max() > 9:
            raise _err(f"labels out of range [0, 10): found {int(self.labels.max())}; "
                       "this is not a CIFAR-10 binary file (CIFAR-100 is not supported)")
        self.shape = (3, 32, 32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> torch.Tensor:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        rec = self.files[k].read(i - self.starts[k])
        return torch.frombuffer(bytearray(rec[1:]), dtype=torch.uint8).view(self.shape)


def _cifar_labels(f: Path, n: int, chunk: int = 4096) -> np.ndarray:
    """The label byte of every record, reading ``chunk`` records at a time (never the whole file)."""
    out = np.empty(n, dtype=np.int64)
    with open(f, "rb") as fh:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            buf = np.frombuffer(fh.read(m * _CIFAR_RECORD), dtype=np.uint8)
            out[start:start + m] = buf.reshape(m, _CIFAR_RECORD)[:, 0]
    return out


class _NpzSource:
    """Images of an uncompressed npz, each read from its byte offset inside the zip archive."""

    def __init__(self, path: Path):
        fix = "save the data with numpy.savez(path, images=..., labels=...)"
        z = open_npz(path, fix)
        with z:
            names = z.files
            key = next((k for k in ("images", "x") if k in names), None)
            lkey = next((k for k in ("labels", "y") if k in names), None)
            if key is None or lkey is None:
                raise _err(f"{path} needs 'images' and 'labels' arrays (found: {', '.join(names)}); {fix}")
            labels = z[lkey]
            nc = z["num_classes"] if "num_classes" in names else None
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise _err(f"labels in {path} must be 1-D integers, got {labels.dtype} {labels.shape}")
        self.labels = labels.astype(np.int64)
        self.num_classes = int(nc.reshape(())) if nc is not None else int(self.labels.max()) + 1
        offset, shape, dtype = _npy_member(path, key + ".npy")
        if dtype != np.uint8:
            raise _err(f"streamed images in {path} must be uint8 (0..255), got {dtype}; "
                       "save them as uint8 or load the file without --stream")
        if len(shape) == 3:
            shape = (shape[0], 1, shape[1], shape[2])
        if len(shape) != 4:
            raise _err(f"images in {path} have shape {shape}; expected (N, C, H, W) or (N, H, W)")
        if shape[0] != len(self.labels):
            raise _err(f"{path} has {shape[0]} images but {len(self.labels)} labels; "
                       "save exactly one label per image")
        self.channels_last = shape[-1] in (1, 3) and shape[1] not in (1, 3)
        self.item_shape = tuple(shape[1:])
        self.file = _RecordFile(path, offset, int(np.prod(self.item_shape)))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.frombuffer(bytearray(self.file.read(i)), dtype=torch.uint8).view(self.item_shape)
        return x.permute(2, 0, 1).contiguous() if self.channels_last else x


def _npy_member(path: Path, member: str) -> tuple[int, tuple[int, ...], np.dtype]:
    """Byte offset of the array data, shape and dtype of a stored (uncompressed) npz member."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            raise _err(f"{path} is compressed (numpy.savez_compressed) and cannot be streamed; "
                       "re-save it with numpy.savez, or load it without --stream")
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        if fortran:
            raise _err(f"images in {path} are stored in Fortran order; save a C-ordered array")
        return fh.tell(), tuple(int(s) for s in shape), np.dtype(dtype)


class _FolderSource:
    def __init__(self, root: Path, channels: int | None):
        from PIL import Image

        classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(classes) < 2:
            raise _err(f"image folder {root} has {len(classes)} class sub-folder(s); classification "
                       "needs at least 2, each holding its class's images")
        self.paths: list[str] = []
        labels: list[int] = []
        for ci, cdir in enumerate(classes):
            files = sorted(f for f in cdir.iterdir() if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise _err(f"class folder {cdir} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                           "add images or remove the folder")
            self.paths += [str(f) for f in files]
            labels += [ci] * len(files)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(classes)
        if channels is None:  # grayscale only if the first images of every class are
            probe = [self.paths[int(i)] for i in np.unique(np.searchsorted(self.labels, np.arange(len(classes))))]
            modes = set()
            for p in probe:
                with Image.open(p) as im:
                    modes.add(im.mode)
            channels = 1 if modes == {"L"} else 3
        if channels not in (1, 3):
            raise _err(f"channels must be 1 or 3, got {channels!r}")
        self.mode = "L" if channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        p = self.paths[i]
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert(self.mode), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise _err(f"corrupt or unreadable image file: {p} ({type(exc).__name__}); "
                       "fix or remove it") from exc
        t = torch.from_numpy(arr.copy())
        return t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------- #
# the data set
# --------------------------------------------------------------------------- #
@dataclass
class StreamingImageDataset:
    """A lazily-read image classification data set (see the module docstring).

    Attributes:
        source: the on-disk reader (index -> uint8 ``(C, H, W)``).
        indices: which of the source's images this data set holds (after :meth:`subset`).
        num_classes, name, mean, std: as in :class:`qnas.data.ImageDataset`.
        size: the output resolution (images are resized, or centre-cropped for
            ``imagenet``-policy evaluation, to ``size`` x ``size``).
        policy: augmentation policy used by ``loader(..., augment=True)``; one of
            :data:`qnas.augment.AUGMENT_POLICIES`.
    """

    source: Any
    indices: np.ndarray
    num_classes: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    policy: str
    channels: int
    labels: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64)
        self.labels = torch.from_numpy(self.source.labels[self.indices])

    # -- the ImageDataset interface ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.indices)

    @property
    def resolution(self) -> tuple[int, int]:
        """Output image height and width."""
        return self.size, self.size

    def subset(self, idx: IndexLike) -> "StreamingImageDataset":
        """The samples selected by ``idx`` (integer indices, a boolean mask or a slice)."""
        if isinstance(idx, slice):
            sel = self.indices[idx]
        else:
            a = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx)
            if a.dtype == np.bool_:
                if a.shape != (len(self),):
                    raise _err(f"boolean subset mask must have shape ({len(self)},), got {a.shape}")
                sel = self.indices[a]
            else:
                if a.size and a.dtype.kind not in "iu":
                    raise _err(f"subset indices must be integers, got {a.dtype}; pass integer indices")
                a = a.astype(np.int64).ravel()
                if a.size and (a.min() < -len(self) or a.max() >= len(self)):
                    raise _err(f"subset index out of range for a data set of {len(self)} samples; "
                               "use indices in [0, len(ds))")
                sel = self.indices[a]
        return replace(self, indices=sel)

    def at_resolution(self, resolution: int) -> "StreamingImageDataset":
        """The same images, delivered at ``resolution`` x ``resolution`` (nothing is read now)."""
        if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
            raise _err(f"resolution must be a positive integer, got {resolution!r}; pass e.g. resolution=32")
        return self if int(resolution) == self.size else replace(self, size=int(resolution))

    def loader(self, batch_size: int, shuffle: bool, seed: int = 0, *, augment: bool = False,
               workers: int | None = None, resolutions: Sequence[int] | None = None,
               drop_last: bool = False, shard: Any = None) -> DataLoader:
        """A DataLoader of normalized ``(images, labels)`` batches, decoded in worker processes.

        ``augment`` applies the training policy (use it for training only);
        ``resolutions`` draws each batch's resolution uniformly from the list
        (seeded; OFA's elastic-resolution training), else every batch is at
        :attr:`size`. ``workers`` defaults to :func:`default_workers`. The
        order, the augmentation and the resolutions depend only on ``seed``
        and the batch, not on the number of workers. ``shard`` (a
        :class:`qnas.quant.distributed.DistContext` of several ranks): read,
        decode and augment only that rank's contiguous slice of each global
        batch (:func:`qnas.quant.distributed.shard_loader`); the global order,
        each batch's resolution and every image's augmentation are the same as
        without it (augmentation is seeded per image), so the ranks' slices
        are the slices of these batches.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise _err(f"batch_size must be a positive integer, got {batch_size!r}; pass e.g. batch_size=64")
        sizes = [self.size] if not resolutions else [int(r) for r in resolutions]
        if any(r < 1 for r in sizes):
            raise _err(f"resolutions must be positive integers, got {list(resolutions or [])}")
        sampler = _BatchPlan(len(self), int(batch_size), bool(shuffle), int(seed), sizes, drop_last)
        n_workers = default_workers() if workers is None else int(workers)
        loader = _HeapReturningLoader(_Views(self, bool(augment), int(seed)), batch_sampler=sampler,
                            num_workers=n_workers, persistent_workers=False,
                            pin_memory=False)
        if shard is None:
            return loader
        from qnas.quant.distributed import shard_loader

        return shard_loader(loader, shard)

    # -- in-memory views, for the small parts that need tensors ----------------------------------
    def head(self, n: int) -> ImageDataset:
        """The first ``n`` images as an in-memory :class:`~qnas.data.ImageDataset` (evaluation view)."""
        sub = self.subset(slice(0, int(n)))
        views = _Views(sub, augment=False, seed=0)
        images = torch.stack([views[(i, sub.size, 0)][0] for i in range(len(sub))]) if len(sub) \
            else torch.zeros(0, self.channels, self.size, self.size)
        return ImageDataset(images, sub.labels.clone(), self.num_classes, self.name, self.mean, self.std)

    @property
    def images(self) -> torch.Tensor:
        """Every image in memory (evaluation view): only for small sets, e.g. a test split to verify an export."""
        need = len(self) * self.channels * self.size * self.size * 4
        if need > _MATERIALIZE_LIMIT:
            raise _err(f"{self.name}: {len(self)} images at {self.size} px need {need / 2**30:.1f} GiB "
                       "in memory; iterate ds.loader(...) instead, or take ds.head(n)")
        return self.head(len(self)).images

    def __repr__(self) -> str:
        return (f"StreamingImageDataset(name={self.name!r}, n={len(self)}, channels={self.channels}, "
                f"size={self.size}, num_classes={self.num_classes}, policy={self.policy!r})")


class _Views(Dataset):
    """Item ``(i, size, batch_seed)`` -> normalized, transformed image ``i`` at ``size`` and its label."""

    def __init__(self, ds: StreamingImageDataset, augment: bool, seed: int):
        self.ds, self.augment, self.seed = ds, augment, seed
        c = ds.channels
        self.mean = torch.tensor(ds.mean, dtype=torch.float32).view(c, 1, 1)
        self.std = torch.tensor(ds.std, dtype=torch.float32).view(c, 1, 1)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, size, batch_seed = item
        raw = self.ds.source[int(self.ds.indices[i])].to(torch.float32).div_(255.0)
        if self.augment:
            gen = torch.Generator().manual_seed(batch_seed * 1_000_003 + i)
            x = train_transform(raw, size, self.ds.policy, gen)
        else:
            x = eval_transform(raw, size, self.ds.policy)
        return (x - self.mean) / self.std, self.ds.labels[i]


class _BatchPlan(Sampler):
    """Yields each batch as ``[(index, resolution, batch_seed), ...]``: the resolution and the
    augmentation seed travel with the indices, so workers need no shared state (and a rank that
    keeps a slice of the batch, :class:`qnas.quant.distributed.ShardedBatchSampler`, gets the
    global batch's resolution and its images' augmentation)."""

    def __init__(self, n: int, batch: int, shuffle: bool, seed: int, sizes: list[int], drop_last: bool):
        self.n, self.batch, self.shuffle, self.seed, self.sizes = n, batch, shuffle, seed, sizes
        self.drop_last = drop_last
        self.epoch = 0

    @property
    def batch_size(self) -> int:
        return self.batch

    @property
    def num_samples(self) -> int:
        return self.n

    def __len__(self) -> int:
        return self.n // self.batch if self.drop_last else -(-self.n // self.batch)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        gen = torch.Generator().manual_seed(self.seed + 7919 * self.epoch)
        self.epoch += 1
        order = torch.randperm(self.n, generator=gen).tolist() if self.shuffle else list(range(self.n))
        for b in range(len(self)):
            idx = order[b * self.batch:(b + 1) * self.batch]
            size = self.sizes[int(torch.randint(len(self.sizes), (), generator=gen))] \
                if len(self.sizes) > 1 else self.sizes[0]
            batch_seed = int(torch.randint(2**31 - 1, (), generator=gen))
            yield [(i, size, batch_seed) for i in idx]


# --------------------------------------------------------------------------- #
# opening
# --------------------------------------------------------------------------- #
def _channel_stats(source: Any, channels: int, size: int, policy: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std over up to :data:`_STATS_SAMPLE` evenly spaced images (evaluation view)."""
    n = len(source)
    pick = np.unique(np.linspace(0, n - 1, min(n, _STATS_SAMPLE)).round().astype(np.int64))
    s = torch.zeros(channels, dtype=torch.float64)
    s2 = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for i in pick:
        x = eval_transform(source[int(i)].to(torch.float32) / 255.0, size, policy).to(torch.float64)
        s += x.sum(dim=(1, 2))
        s2 += (x * x).sum(dim=(1, 2))
        count += x.shape[1] * x.shape[2]
    mean = s / count
    std = (s2 / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def open_stream(kind: str, path: PathLike, *, size: int | None = None, train: bool = True,
                policy: str | None = None, channels: int | None = None,
                mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> StreamingImageDataset:
    """Open a data set for streaming; see the module docstring for the kinds.

    ``size``: the resolution images are delivered at (default: the native size
    of CIFAR/npz images; required for ``imagefolder``, whose images may differ).
    ``policy``: augmentation policy (default ``cifar`` for images up to 64 px,
    else ``imagenet``). ``channels`` (``imagefolder`` only): 1 or 3, default
    grayscale only if the probed images are. ``mean``/``std``: default
    estimated from up to 1,000 evenly spaced images. ``train`` picks CIFAR-10's
    training batches or its test batch.
    """
    k = kind.strip().lower() if isinstance(kind, str) else kind
    if k not in STREAMABLE_KINDS:
        allowed = ", ".join(STREAMABLE_KINDS)
        extra = " (digits is bundled and small: drop --stream)" if k in DATASET_KINDS else ""
        raise _err(f"cannot stream data set kind {kind!r}{extra}; streamable kinds: {allowed}")
    root = _existing(path, {"imagefolder": "image folder", "cifar10": "CIFAR-10 directory",
                            "npz": "npz file"}[k])
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1):
        raise _err(f"size must be a positive integer, got {size!r}; pass e.g. size=224")
    if k == "imagefolder":
        if not root.is_dir():
            raise _err(f"image folder path is not a directory: {root}; pass the folder that holds "
                       "one sub-folder per class")
        if size is None:
            raise _err("streaming an image folder needs size=N (its images may differ in size); "
                       "pass --resolution/size")
        source: Any = _FolderSource(root, channels)
        num_classes, ch = source.num_classes, 1 if source.mode == "L" else 3
    elif k == "cifar10":
        if not root.is_dir():
            raise _err(f"CIFAR-10 path is not a directory: {root}; pass the folder holding data_batch_*.bin")
        source, num_classes, ch = _CifarSource(cifar_batch_files(root, train)), 10, 3
    else:
        if root.is_dir():
            raise _err(f"npz path is a directory, not a file: {root}; pass the .npz file itself")
        source = _NpzSource(root)
        num_classes, ch = source.num_classes, source.item_shape[-1 if source.channels_last else 0]
    if num_classes < 2:
        raise _err(f"{root} has {num_classes} class(es) but classification needs at least 2")
    if len(source) == 0:
        raise _err(f"{root} contains no images; provide a non-empty data set")
    lo, hi = int(source.labels.min()), int(source.labels.max())
    if lo < 0 or hi >= num_classes:
        raise _err(f"labels out of range [0, {num_classes}): found {lo if lo < 0 else hi} in {root}")
    native = size or int(source[0].shape[-1])
    pol = policy or ("cifar" if native <= 64 else "imagenet")
    if pol not in AUGMENT_POLICIES:
        raise _err(f"unknown augmentation policy {policy!r}; choose one of {', '.join(AUGMENT_POLICIES)}")
    if mean is None or std is None:
        m, s = _channel_stats(source, ch, native, pol)
        mean = m if mean is None else mean
        std = s if std is None else std
    mean_t, std_t = tuple(float(v) for v in mean), tuple(max(float(v), 1e-6) for v in std)
    if len(mean_t) != ch or len(std_t) != ch:
        raise _err(f"mean/std have {len(mean_t)}/{len(std_t)} values but the images have {ch} channels")
    return StreamingImageDataset(source, np.arange(len(source)), int(num_classes), f"{k}:{root}",
                                 mean_t, std_t, int(native), pol, ch)

