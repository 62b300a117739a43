"""Image classification data sets for qnas.

Every loader returns an :class:`ImageDataset`: a float32 ``(N, C, H, W)`` tensor
normalized per channel, int64 labels, and the normalization that was applied
(so calibration and export tooling can record it). Supported sources:

* ``digits``      -- scikit-learn's bundled 8x8 handwritten digits (no network).
* ``imagefolder`` -- one sub-folder per class, image files inside (PIL).
* ``cifar10``     -- the CIFAR-10 *binary* version (``data_batch_N.bin``).
* ``npz``         -- a NumPy ``.npz`` archive with ``images`` and ``labels``.

Every problem a user can cause is reported as :class:`qnas.errors.DataError`
with a one-line message saying what is wrong and how to fix it.
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from qnas.dataset_kinds import DATASET_KINDS, needs_path
from qnas.errors import DataError

__all__ = [
    "ImageDataset",
    "Splits",
    "split",
    "normalize",
    "load_digits",
    "load_image_folder",
    "load_cifar10",
    "load_npz",
    "load_dataset",
    "DATASET_KINDS",
    "IMAGE_EXTENSIONS",
]

PathLike = Union[str, "os.PathLike[str]"]
IndexLike = Union[Sequence[int], np.ndarray, torch.Tensor, slice]

# DATASET_KINDS (the valid ``kind`` values of :func:`load_dataset`) lives in the torch-free
# qnas.dataset_kinds so that the CLI can offer them without importing this module.
#: File extensions (lower case) that :func:`load_image_folder` reads.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

_STD_FLOOR = 1e-6
_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_SUBDIR = "cifar-10-batches-bin"
_RESIZE_CHUNK = 1024


def _one_line(text: str) -> str:
    """Collapse whitespace/newlines so an error message stays on one line."""
    return " ".join(str(text).split())


def _err(msg: str) -> DataError:
    return DataError(_one_line(msg))


# --------------------------------------------------------------------------- #
# normalization
# --------------------------------------------------------------------------- #
def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[torch.Tensor, tuple[float, ...], tuple[float, ...]]:
    """Normalize ``(N, C, H, W)`` images per channel.

    If ``mean``/``std`` are not given they are computed from ``images`` over the
    N, H and W axes (population std, floored at 1e-6 so constant channels do not
    divide by zero). Returns ``(normalized_float32_images, mean, std)``.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise _err(f"normalize expects a 4-D (N, C, H, W) tensor, got {shape}; "
                   "add a channel axis or reshape the images")
    c = images.shape[1]
    x = images.to(torch.float32)
    if mean is None or std is None:
        if images.shape[0] == 0:
            raise _err("cannot compute normalization statistics of an empty image set; "
                       "provide at least one image or pass mean= and std=")
        x64 = images.to(torch.float64)
        m = x64.mean(dim=(0, 2, 3))
        s = x64.std(dim=(0, 2, 3), unbiased=False)
        if mean is None:
            mean = tuple(float(v) for v in m)
        if std is None:
            std = tuple(float(v) for v in s)
    mean_t = tuple(float(v) for v in mean)
    std_t = tuple(max(float(v), _STD_FLOOR) for v in std)
    if len(mean_t) != c or len(std_t) != c:
        raise _err(f"normalization has {len(mean_t)} mean and {len(std_t)} std values but "
                   f"the images have {c} channels; pass one value per channel")
    if not all(math.isfinite(v) for v in mean_t + std_t):
        raise _err("normalization mean/std contain NaN or Inf; pass finite values")
    m_t = torch.tensor(mean_t, dtype=torch.float32).view(1, c, 1, 1)
    s_t = torch.tensor(std_t, dtype=torch.float32).view(1, c, 1, 1)
    return (x - m_t) / s_t, mean_t, std_t


# --------------------------------------------------------------------------- #
# data set container
# --------------------------------------------------------------------------- #
class NCHWImages:
    """Size queries of a class holding an ``images`` tensor ``(N, C, H, W)``
    (:class:`ImageDataset`, :class:`~qnas.calib_data.calibration.CalibrationSet`)."""

    images: torch.Tensor

    @property
    def channels(self) -> int:
        """Number of image channels (C)."""
        return int(self.images.shape[1])

    @property
    def resolution(self) -> tuple[int, int]:
        """Image height and width ``(H, W)``."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class ImageDataset(NCHWImages):
    """An in-memory, already-normalized image classification data set.

    Attributes:
        images: float32 tensor ``(N, C, H, W)``, normalized per channel.
        labels: int64 tensor ``(N,)`` with values in ``[0, num_classes)``.
        num_classes: number of classes (at least 2).
        name: where the data came from, e.g. ``"digits"`` or ``"npz:/path"``.
        mean: per-channel mean that was subtracted.
        std: per-channel std that was divided by.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dim() != 4:
            shape = tuple(self.images.shape) if isinstance(self.images, torch.Tensor) else None
            raise _err(f"images must be a 4-D (N, C, H, W) tensor, got shape {shape}; "
                       "reshape the images to N x C x H x W")
        if not torch.is_floating_point(self.images):
            raise _err(f"images must be a float tensor, got {self.images.dtype}; "
                       "convert and normalize them (see qnas.data.normalize)")
        if self.images.dtype != torch.float32:
            self.images = self.images.to(torch.float32)
        if not isinstance(self.labels, torch.Tensor) or self.labels.dim() != 1:
            shape = tuple(self.labels.shape) if isinstance(self.labels, torch.Tensor) else None
            raise _err(f"labels must be a 1-D tensor, got shape {shape}; "
                       "pass one integer class index per image")
        if torch.is_floating_point(self.labels) or self.labels.dtype == torch.bool \
                or torch.is_complex(self.labels):
            raise _err(f"labels must be integers, got {self.labels.dtype}; "
                       "pass integer class indices")
        if self.labels.dtype != torch.int64:
            self.labels = self.labels.to(torch.int64)
        if self.images.shape[0] != self.labels.shape[0]:
            raise _err(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels; "
                       "pass exactly one label per image")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, (int, np.integer)):
            raise _err(f"num_classes must be an int, got {self.num_classes!r}; pass an integer >= 2")
        self.num_classes = int(self.num_classes)
        if self.num_classes < 2:
            raise _err(f"a classification data set needs at least 2 classes, got "
                       f"{self.num_classes}; add data for more classes")
        if self.labels.numel():
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= self.num_classes:
                bad = lo if lo < 0 else hi
                raise _err(f"labels out of range [0, {self.num_classes}): found {bad}; "
                           "use class indices 0..num_classes-1 or raise num_classes")
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        c = self.images.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise _err(f"mean/std have {len(self.mean)}/{len(self.std)} values but images have "
                       f"{c} channels; pass one value per channel")

    def at_resolution(self, resolution: int) -> "ImageDataset":
        """Return a copy with every image bilinearly resized to ``resolution`` x ``resolution``.

        Uses ``F.interpolate(mode="bilinear", align_corners=False)`` with
        anti-aliasing when shrinking. Returns ``self`` unchanged if the images
        already have that size.
        """
        if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) \
                or int(resolution) < 1:
            raise _err(f"resolution must be a positive integer, got {resolution!r}; "
                       "pass e.g. resolution=32")
        r = int(resolution)
        h, w = self.resolution
        if (h, w) == (r, r):
            return self
        antialias = r < h or r < w
        if len(self) == 0:
            out = self.images.new_zeros((0, self.channels, r, r))
        else:
            chunks = [
                F.interpolate(self.images[i:i + _RESIZE_CHUNK], size=(r, r), mode="bilinear",
                              align_corners=False, antialias=antialias)
                for i in range(0, len(self), _RESIZE_CHUNK)
            ]
            out = torch.cat(chunks, dim=0)
        return ImageDataset(out.contiguous(), self.labels, self.num_classes, self.name,
                            self.mean, self.std)

    def subset(self, idx: IndexLike) -> "ImageDataset":
        """Return the samples selected by ``idx`` (integer indices, a boolean mask or a slice)."""
        if isinstance(idx, slice):
            index = torch.arange(len(self))[idx]
        else:
            t = torch.as_tensor(np.asarray(idx) if not isinstance(idx, torch.Tensor) else idx)
            if t.dtype == torch.bool:
                if t.dim() != 1 or t.numel() != len(self):
                    raise _err(f"boolean subset mask must have shape ({len(self)},), got "
                               f"{tuple(t.shape)}; pass one flag per sample")
                index = torch.nonzero(t, as_tuple=False).flatten()
            else:
                if t.numel() == 0:
                    t = t.to(torch.int64)
                if torch.is_floating_point(t) or torch.is_complex(t):
                    raise _err(f"subset indices must be integers, got {t.dtype}; pass integer indices")
                index = t.to(torch.int64).flatten()
                if index.numel():
                    lo, hi = int(index.min()), int(index.max())
                    if lo < -len(self) or hi >= len(self):
                        raise _err(f"subset index out of range for a data set of {len(self)} "
                                   f"samples: found {hi if hi >= len(self) else lo}; "
                                   "use indices in [0, len(ds))")
        return ImageDataset(self.images[index], self.labels[index], self.num_classes,
                            self.name, self.mean, self.std)

    def head(self, n: int) -> "ImageDataset":
        """The first ``n`` samples (as :meth:`qnas.streaming.StreamingImageDataset.head`, which reads only those)."""
        return self.subset(slice(0, int(n)))

    def loader(self, batch_size: int, shuffle: bool, seed: int = 0, *, shard: Any = None) -> DataLoader:
        """A single-process :class:`DataLoader` over ``(image, label)`` pairs.

        When ``shuffle`` is true the order comes from a ``torch.Generator``
        seeded with ``seed``, so runs are reproducible. ``shard`` (a
        :class:`qnas.quant.distributed.DistContext` of several ranks) makes it yield
        only that rank's contiguous slice of each of these global batches
        (:func:`qnas.quant.distributed.shard_loader`; the training loops do this
        themselves under ``torchrun``).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or int(batch_size) < 1:
            raise _err(f"batch_size must be a positive integer, got {batch_size!r}; "
                       "pass e.g. batch_size=64")
        generator = None
        if shuffle:
            generator = torch.Generator()
            generator.manual_seed(int(seed))
        loader = DataLoader(TensorDataset(self.images, self.labels), batch_size=int(batch_size),
                            shuffle=bool(shuffle), num_workers=0, generator=generator)
        if shard is None:
            return loader
        from qnas.quant.distributed import shard_loader

        return shard_loader(loader, shard)

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, n={len(self)}, shape={tuple(self.images.shape[1:])}, "
                f"num_classes={self.num_classes})")


@dataclass
class Splits:
    """Train / validation / test partitions of one :class:`ImageDataset`."""

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset


def split(
    ds: ImageDataset,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.2,
    stratify: bool = True,
) -> Splits:
    """Split ``ds`` into train/val/test with a seeded ``numpy`` Generator.

    With ``stratify`` each class is split separately in the given proportions
    (every class with at least 3 samples gets at least one sample in each
    split); otherwise the whole set is permuted once. Indices inside each split
    are kept in ascending (original) order. Raises :class:`DataError` for bad
    fractions or a data set too small to give three non-empty splits.
    """
    for nm, v in (("val_frac", val_frac), ("test_frac", test_frac)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                or not math.isfinite(float(v)) or not 0.0 < float(v) < 1.0:
            raise _err(f"{nm} must be a number strictly between 0 and 1, got {v!r}; "
                       f"pass e.g. {nm}=0.15")
    vf, tf = float(val_frac), float(test_frac)
    if vf + tf >= 1.0:
        raise _err(f"val_frac + test_frac must be below 1 so training data remains, got "
                   f"{vf} + {tf} = {vf + tf:g}; lower one of them")
    rng = np.random.default_rng(int(seed))
    labels = ds.labels.numpy()
    n = len(ds)
    tr: list[np.ndarray] = []
    va: list[np.ndarray] = []
    te: list[np.ndarray] = []
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if stratify \
        else [np.arange(n)]
    for g in groups:
        perm = rng.permutation(g)
        m = len(perm)
        n_te = int(round(m * tf))
        n_va = int(round(m * vf))
        if m >= 3:
            n_te, n_va = max(1, n_te), max(1, n_va)
        while n_te + n_va > m - 1 and (n_te > 0 or n_va > 0):
            if n_te >= n_va:
                n_te -= 1
            else:
                n_va -= 1
        te.append(perm[:n_te])
        va.append(perm[n_te:n_te + n_va])
        tr.append(perm[n_te + n_va:])
    parts = [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in (tr, va, te)]
    if any(len(p) == 0 for p in parts):
        raise _err(f"data set of {n} samples is too small to give non-empty train/val/test "
                   f"splits with val_frac={vf}, test_frac={tf}; use more data or larger fractions")
    return Splits(*(ds.subset(p.astype(np.int64)) for p in parts))


# --------------------------------------------------------------------------- #
# helpers shared by loaders
# --------------------------------------------------------------------------- #
def _existing(path: PathLike, what: str) -> Path:
    if path is None:
        raise _err(f"{what} path is required; pass path=...")
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise _err(f"{what} not found: {p}; check the path")
    return p


#: the most classes a data set may have (ImageNet-21k has 21,841)
MAX_CLASSES = 100_000


def _finish(x: torch.Tensor, labels: np.ndarray, num_classes: int, name: str,
            mean: Sequence[float] | None, std: Sequence[float] | None) -> ImageDataset:
    """Validate raw [0,1]-scaled images + labels, normalize and wrap them."""
    if x.shape[0] == 0:
        raise _err(f"{name} contains no images; provide a non-empty data set")
    if not bool(torch.isfinite(x).all()):
        raise _err(f"{name} images contain NaN or Inf values; clean the data before loading")
    if num_classes < 2:
        raise _err(f"{name} has {num_classes} class(es) but classification needs at least 2; "
                   "add data for more classes")
    if num_classes > MAX_CLASSES:  # the classifier would need num_classes x channels weights (10**12: petabytes)
        raise _err(f"{name} has {num_classes} classes (labels up to {num_classes - 1}); at most {MAX_CLASSES} "
                   "are supported: store class indices 0..num_classes-1")
    lab = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))
    xn, m, s = normalize(x, mean, std)
    return ImageDataset(xn.contiguous(), lab, int(num_classes), name, m, s)


# --------------------------------------------------------------------------- #
# loaders
# --------------------------------------------------------------------------- #
def load_digits(mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> ImageDataset:
    """scikit-learn's bundled handwritten digits: 1797 images of 1x8x8, 10 classes.

    Pixel values 0..16 are scaled to [0, 1] and then normalized with the data's
    own mean/std (or the given ``mean``/``std``). Needs no network access.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:  # pragma: no cover - sklearn is a dependency
        raise _err(f"the digits data set needs scikit-learn ({exc}); "
                   "install it with `pip install scikit-learn`") from exc
    d = _sk_load_digits()
    x = torch.from_numpy(np.asarray(d.images, dtype=np.float32) / 16.0).unsqueeze(1)
    y = np.asarray(d.target, dtype=np.int64)
    return _finish(x, y, 10, "digits", mean, std)


def load_image_folder(path: PathLike, size: int | None = None,
                      mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None) -> ImageDataset:
    """Load a class-per-subfolder image tree.

    Sub-folders of ``path`` (sorted by name; hidden ones skipped) are the
    classes, numbered from 0; files ending in .png/.jpg/.jpeg/.bmp/.gif inside
    each are its images (only the first frame of animations). If ``size`` is
    given every image is resized (PIL bilinear) to ``size`` x ``size``;
    otherwise all images must already share one size. Images stay 1-channel if
    every one is grayscale (PIL mode ``"L"``), else all are converted to RGB.
    """
    from PIL import Image, UnidentifiedImageError

    root = _existing(path, "image folder")
    if not root.is_dir():
        raise _err(f"image folder path is not a directory: {root}; pass the folder that holds "
                   "one sub-folder per class")
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer))
                             or int(size) < 1):
        raise _err(f"size must be a positive integer or None, got {size!r}; pass e.g. size=32")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise _err(f"no class sub-folders in image folder {root}; put each class's images "
                   "in its own sub-folder")
    if len(classes) < 2:
        raise _err(f"image folder {root} has only 1 class sub-folder ({classes[0].name}); "
                   "classification needs at least 2")

    arrays: list[np.ndarray] = []
    labels: list[int] = []
    all_gray = True
    first_size: tuple[int, int] | None = None
    first_file: Path | None = None
    for ci, cdir in enumerate(classes):
        files = sorted(f for f in cdir.iterdir()
                       if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                       and not f.name.startswith("."))
        if not files:
            raise _err(f"class folder {cdir} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                       "add images or remove the folder")
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    gray = im.mode == "L"
                    img = im.copy() if gray else im.convert("RGB")
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
                    Image.DecompressionBombError) as exc:
                raise _err(f"corrupt or unreadable image file: {f} ({type(exc).__name__}); "
                           "fix or remove it") from exc
            if size is not None:
                if img.size != (int(size), int(size)):
                    img = img.resize((int(size), int(size)), Image.BILINEAR)
            else:
                if first_size is None:
                    first_size, first_file = img.size, f
                elif img.size != first_size:
                    raise _err(f"images have different sizes ({first_size[0]}x{first_size[1]} in "
                               f"{first_file}, {img.size[0]}x{img.size[1]} in {f}); "
                               "pass size=N to resize them all to N x N")
            all_gray = all_gray and gray
            arrays.append(np.asarray(img, dtype=np.uint8))
            labels.append(ci)

    if all_gray:
        stacked = np.stack(arrays)[:, None, :, :]
    else:
        stacked = np.stack([a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2)
                            for a in arrays]).transpose(0, 3, 1, 2)
    x = torch.from_numpy(np.ascontiguousarray(stacked)).to(torch.float32) / 255.0
    return _finish(x, np.asarray(labels, dtype=np.int64), len(classes),
                   f"imagefolder:{root}", mean, std)


def _read_cifar_file(f: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = np.fromfile(f, dtype=np.uint8)
    except OSError as exc:
        raise _err(f"cannot read CIFAR-10 file {f} ({exc}); check permissions") from exc
    if raw.size == 0 or raw.size % _CIFAR_RECORD != 0:
        raise _err(f"CIFAR-10 file {f} has {raw.size} bytes, not a positive multiple of "
                   f"{_CIFAR_RECORD} (1 label + 3072 pixel bytes); the file is truncated or "
                   "not the CIFAR-10 binary version")
    rec = raw.reshape(-1, _CIFAR_RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise _err(f"labels out of range [0, 10): found {int(labels.max())} in {f}; "
                   "this is not a CIFAR-10 binary file (CIFAR-100 is not supported)")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def cifar_batch_files(root: Path, train: bool) -> list[Path]:
    """The CIFAR-10 binary files to read under ``root`` (or its ``cifar-10-batches-bin``):
    every ``data_batch_N.bin`` in numeric order for ``train``, else ``test_batch.bin``."""

    def _has_batches(d: Path) -> bool:
        return (d / "test_batch.bin").is_file() or any(d.glob("data_batch_*.bin"))

    if not _has_batches(root) and (root / _CIFAR_SUBDIR).is_dir():
        root = root / _CIFAR_SUBDIR
    if not train:
        f = root / "test_batch.bin"
        if not f.is_file():
            raise _err(f"CIFAR-10 test file not found: {f}; download the CIFAR-10 binary version "
                       "(cifar-10-binary.tar.gz) and pass its cifar-10-batches-bin folder")
        return [f]

    def _num(p: Path) -> tuple[int, str]:
        tail = p.stem[len("data_batch_"):]
        return (int(tail), p.name) if tail.isdigit() else (10 ** 9, p.name)

    files = sorted((p for p in root.glob("data_batch_*.bin") if p.is_file()), key=_num)
    if not files:
        raise _err(f"no data_batch_*.bin files in {root}; download the CIFAR-10 binary "
                   "version (cifar-10-binary.tar.gz) and pass its cifar-10-batches-bin folder")
    return files


def load_cifar10(path: PathLike, train: bool = True,
                 mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> ImageDataset:
    """Load the CIFAR-10 binary version (3x32x32 RGB, 10 classes).

    ``path`` is the directory holding ``data_batch_1.bin`` .. ``data_batch_5.bin``
    and ``test_batch.bin`` (or its parent containing ``cifar-10-batches-bin``).
    ``train=True`` reads every ``data_batch_*.bin`` present (at least one);
    ``train=False`` reads ``test_batch.bin``. Each record is one label byte
    followed by 3072 channel-major pixel bytes.
    """
    root = _existing(path, "CIFAR-10 directory")
    if not root.is_dir():
        raise _err(f"CIFAR-10 path is not a directory: {root}; pass the folder holding "
                   "data_batch_*.bin and test_batch.bin")
    files = cifar_batch_files(root, train)
    parts = [_read_cifar_file(f) for f in files]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32) / 255.0
    return _finish(x, labels, 10, f"cifar10:{root}", mean, std)


def _npz_get(z: Any, keys: tuple[str, ...], p: Path, what: str) -> np.ndarray:
    for k in keys:
        if k in z.files:
            try:
                return z[k]
            except ValueError as exc:
                raise _err(f"array {k!r} in {p} cannot be loaded without pickle (object arrays "
                           "are refused for safety); save plain numeric arrays") from exc
            except (OSError, zipfile.BadZipFile, EOFError) as exc:
                raise _err(f"array {k!r} in {p} is corrupt ({type(exc).__name__}); "
                           "re-create the .npz file") from exc
    raise _err(f"{p} has no {' or '.join(repr(k) for k in keys)} array (found: "
               f"{', '.join(z.files) or 'none'}); save the {what} under key {keys[0]!r}")


def open_npz(p: Path, fix: str) -> Any:
    """``np.load`` an .npz without pickles; anything else is a one-line DataError ending in ``fix``."""
    try:
        z = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _err(f"{p} is not an npz file ({type(exc).__name__}); {fix}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise _err(f"{p} is a single .npy array, not an npz file; {fix}")
    return z


def load_npz(path: PathLike, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None) -> ImageDataset:
    """Load images and labels from a NumPy ``.npz`` archive (never unpickles).

    Keys: ``images`` (or ``x``) and ``labels`` (or ``y``), plus optional integer
    ``num_classes`` (default ``labels.max() + 1``). Images may be NCHW, NHWC
    (detected when the last axis is 1 or 3 and axis 1 is not) or NHW
    (grayscale); uint8 (and other integer types within 0..255) are scaled by
    1/255, floats are used as they are. Labels must be 1-D integers, one per image.
    """
    p = _existing(path, "npz file")
    if p.is_dir():
        raise _err(f"npz path is a directory, not a file: {p}; pass the .npz file itself")
    z = open_npz(p, "save the data with numpy.savez(path, images=..., labels=...)")
    with z:
        try:
            files = z.files
        except Exception as exc:  # pragma: no cover - defensive
            raise _err(f"{p} is not a valid .npz file ({type(exc).__name__}); re-create it") from exc
        imgs = _npz_get(z, ("images", "x"), p, "images")
        labs = _npz_get(z, ("labels", "y"), p, "labels")
        nc_arr = _npz_get(z, ("num_classes",), p, "num_classes") if "num_classes" in files else None

    name = f"npz:{p}"
    if imgs.dtype.kind not in "uif" and imgs.dtype != np.bool_:
        raise _err(f"images in {p} have dtype {imgs.dtype}; save them as uint8 (0..255) or float")
    if imgs.ndim == 3:
        imgs = imgs[:, None, :, :]
    elif imgs.ndim == 4:
        if imgs.shape[-1] in (1, 3) and imgs.shape[1] not in (1, 3):
            imgs = imgs.transpose(0, 3, 1, 2)
    else:
        raise _err(f"images in {p} have shape {imgs.shape}; expected 3-D (N, H, W) or 4-D "
                   "(N, C, H, W) / (N, H, W, C)")
    if imgs.shape[0] == 0 or 0 in imgs.shape:
        raise _err(f"images in {p} are empty (shape {imgs.shape}); save at least one image")
    if imgs.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(imgs)).to(torch.float32) / 255.0
    elif imgs.dtype.kind in "iu":
        lo, hi = int(imgs.min()), int(imgs.max())
        if lo < 0 or hi > 255:
            raise _err(f"integer images in {p} have values in [{lo}, {hi}], outside 0..255; "
                       "save them as uint8 or as float")
        x = torch.from_numpy(np.ascontiguousarray(imgs).astype(np.float32)) / 255.0
    elif imgs.dtype == np.bool_:
        x = torch.from_numpy(np.ascontiguousarray(imgs).astype(np.float32))
    else:
        if not np.isfinite(imgs).all():
            raise _err(f"images in {p} contain NaN or Inf values; clean the data before saving")
        x = torch.from_numpy(np.ascontiguousarray(imgs).astype(np.float32))
        if not bool(torch.isfinite(x).all()):
            raise _err(f"images in {p} overflow float32 (values too large); rescale them")

    if labs.ndim != 1:
        raise _err(f"labels in {p} have shape {labs.shape}; expected 1-D (N,) integer class indices")
    if labs.dtype.kind not in "iu":
        raise _err(f"labels in {p} have dtype {labs.dtype}; save them as integer class indices")
    if labs.shape[0] != x.shape[0]:
        raise _err(f"{p} has {x.shape[0]} images but {labs.shape[0]} labels; "
                   "save exactly one label per image")
    if labs.dtype == np.uint64 and labs.size and int(labs.max()) > np.iinfo(np.int64).max:
        raise _err(f"labels in {p} are too large for class indices; use small non-negative ints")
    labs64 = labs.astype(np.int64)
    if nc_arr is not None:
        if nc_arr.shape not in ((), (1,)) or nc_arr.dtype.kind not in "iu":
            raise _err(f"num_classes in {p} must be a single integer, got dtype {nc_arr.dtype} "
                       f"shape {nc_arr.shape}; save it as num_classes=int")
        num_classes = int(nc_arr.reshape(()))
    else:
        num_classes = int(labs64.max()) + 1 if labs64.size else 0
    if labs64.size:
        lo, hi = int(labs64.min()), int(labs64.max())
        if lo < 0 or hi >= max(num_classes, 0):
            bad = lo if lo < 0 else hi
            raise _err(f"labels out of range [0, {num_classes}): found {bad}; in {p} use class "
                       "indices 0..num_classes-1" + (" or raise num_classes" if nc_arr is not None
                                                     else ""))
    return _finish(x, labs64, num_classes, name, mean, std)


#: kind -> (loader, the keyword options it takes); the kinds are :data:`DATASET_KINDS`.
_LOADERS: dict[str, tuple[Callable[..., ImageDataset], frozenset[str]]] = {
    "digits": (load_digits, frozenset({"mean", "std"})),
    "imagefolder": (load_image_folder, frozenset({"size", "mean", "std"})),
    "cifar10": (load_cifar10, frozenset({"train", "mean", "std"})),
    "npz": (load_npz, frozenset({"mean", "std"})),
}


def load_dataset(kind: str, path: PathLike | None = None, **kw: Any) -> ImageDataset:
    """Load a data set by kind: one of ``digits``, ``imagefolder``, ``cifar10``, ``npz``.

    ``path`` is required for every kind except ``digits`` (which takes none).
    Extra keyword arguments go to the matching loader (``size`` for
    ``imagefolder``, ``train`` for ``cifar10``; ``mean``/``std`` for all).
    """
    k = kind.strip().lower() if isinstance(kind, str) else kind
    if k not in DATASET_KINDS:
        raise _err(f"unknown data set kind {kind!r}; valid kinds: {', '.join(DATASET_KINDS)}")
    loader, options = _LOADERS[k]
    bad = sorted(set(kw) - options)
    if bad:
        raise _err(f"data set kind {k!r} does not accept option(s) {', '.join(bad)}; valid: "
                   f"{', '.join(sorted(options)) or 'none'}")
    if not needs_path(k):
        if path is not None:
            raise _err(f"data set kind {k!r} is bundled and takes no path (got {path}); "
                       "omit the path")
        return loader(**kw)
    if path is None or (isinstance(path, str) and not path.strip()):
        raise _err(f"data set kind {k!r} needs a path; pass path=... (the data location)")
    return loader(path, **kw)


class ResizedSplits:
    """The splits of a data set at each resolution an arch asks for, resized once."""

    def __init__(self, splits: Splits):
        self.splits = splits
        self._cache: dict[tuple[str, int], ImageDataset] = {}

    def __call__(self, part: str, resolution: int) -> ImageDataset:
        key = (part, resolution)
        if key not in self._cache:
            self._cache[key] = getattr(self.splits, part).at_resolution(resolution)
        return self._cache[key]

    def __getstate__(self) -> dict:  # ship only the raw splits to remote workers
        return {"splits": self.splits, "_cache": {}}
