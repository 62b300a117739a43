"""Calibration sets: a small, class-balanced sample of preprocessed images that
post-training quantization (``qnas.quant.ptq``) and the TFLite representative
data set read.

On disk a calibration set is a NumPy ``.npz`` archive (written without
pickles, read with ``allow_pickle=False``) holding:

* ``images`` -- float32 ``(N, C, H, W)``, already resized and normalized the
  way the model expects;
* ``labels`` -- int64 ``(N,)`` class indices (used only for per-class counts);
* ``meta``   -- a one-element unicode array with a JSON object: ``format``,
  ``version``, ``source``, ``src_path``, ``seed``, ``n``, ``resolution``,
  ``mean``, ``std``, ``created_by`` and, when known, ``split``/``split_seed``.

Every problem a user can cause is a :class:`qnas.errors.DataError` with a
one-line message; nothing is written when a check fails.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np
import torch

from qnas.data import NCHWImages, open_npz
from qnas.errors import DataError
from qnas.quant.checkpoint import atomic_write

__all__ = ["CalibrationSet", "CALIB_FORMAT", "CALIB_VERSION"]

CALIB_FORMAT = "qnas-calibration-set"
CALIB_VERSION = 1
PathLike = Union[str, "os.PathLike[str]"]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _err(msg: str) -> DataError:
    return DataError(_one_line(msg))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("qnas")
    except Exception:  # pragma: no cover - not installed as a distribution
        return "unknown"


def _shape_str(chw: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in chw)


@dataclass
class CalibrationSet(NCHWImages):
    """Preprocessed calibration images plus where they came from.

    Attributes:
        images: float32 ``(N, C, H, W)`` tensor, resized and normalized.
        labels: int64 ``(N,)`` tensor of class indices.
        meta: JSON-serialisable dict (source, src_path, seed, n, resolution,
            mean, std, created_by, ...).
    """

    images: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        imgs, labs = self.images, self.labels
        if isinstance(imgs, np.ndarray):
            imgs = torch.from_numpy(np.ascontiguousarray(imgs))
        if isinstance(labs, np.ndarray):
            labs = torch.from_numpy(np.ascontiguousarray(labs))
        if not isinstance(imgs, torch.Tensor) or imgs.dim() != 4:
            shape = tuple(imgs.shape) if hasattr(imgs, "shape") else type(imgs).__name__
            raise _err(f"calibration images must be a 4-D (N, C, H, W) array, got shape {shape}; "
                       "rebuild the set with `qnas calib build`")
        if imgs.dtype not in (torch.float32, torch.float64):
            raise _err(f"calibration images must be float32 (normalized), got {imgs.dtype}; "
                       "rebuild the set with `qnas calib build`")
        if imgs.shape[0] == 0 or 0 in imgs.shape:
            raise _err(f"calibration set is empty (images of shape {tuple(imgs.shape)}); "
                       "rebuild it with --n of at least the number of classes")
        if not bool(torch.isfinite(imgs).all()):
            raise _err("calibration images contain NaN or Inf values; rebuild the set from clean data")
        imgs = imgs.to(torch.float32).contiguous()
        if not bool(torch.isfinite(imgs).all()):
            raise _err("calibration images overflow float32; rebuild the set from normalized data")
        if not isinstance(labs, torch.Tensor) or labs.dim() != 1:
            shape = tuple(labs.shape) if hasattr(labs, "shape") else type(labs).__name__
            raise _err(f"calibration labels must be a 1-D integer array, got shape {shape}; "
                       "rebuild the set with `qnas calib build`")
        if torch.is_floating_point(labs) or torch.is_complex(labs) or labs.dtype == torch.bool:
            raise _err(f"calibration labels must be integers, got {labs.dtype}; "
                       "rebuild the set with `qnas calib build`")
        if labs.shape[0] != imgs.shape[0]:
            raise _err(f"calibration set has {imgs.shape[0]} images but {labs.shape[0]} labels; "
                       "rebuild it so there is exactly one label per image")
        labs = labs.to(torch.int64)
        if labs.numel() and int(labs.min()) < 0:
            raise _err(f"calibration labels must be non-negative class indices, found {int(labs.min())}; "
                       "rebuild the set with `qnas calib build`")
        if not isinstance(self.meta, dict):
            raise _err(f"calibration metadata must be a JSON object, got {type(self.meta).__name__}; "
                       "rebuild the set with `qnas calib build`")
        self.images, self.labels = imgs, labs
        self.meta = dict(self.meta)
        self.meta.setdefault("format", CALIB_FORMAT)
        self.meta.setdefault("version", CALIB_VERSION)
        self.meta.setdefault("n", int(imgs.shape[0]))
        self.meta.setdefault("resolution", int(imgs.shape[2]))

    # ------------------------------------------------------------------ #
    # properties
    # ------------------------------------------------------------------ #
    @property
    def n(self) -> int:
        return len(self)

    @property
    def mean(self) -> tuple[float, ...] | None:
        m = self.meta.get("mean")
        return tuple(float(v) for v in m) if m is not None else None

    @property
    def std(self) -> tuple[float, ...] | None:
        s = self.meta.get("std")
        return tuple(float(v) for v in s) if s is not None else None

    def class_counts(self) -> dict[int, int]:
        """Samples per class index, in class order."""
        vals, counts = torch.unique(self.labels, return_counts=True)
        return {int(v): int(c) for v, c in zip(vals, counts)}

    # ------------------------------------------------------------------ #
    # use
    # ------------------------------------------------------------------ #
    def check_for(self, in_channels: int, resolution: int | Sequence[int],
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> "CalibrationSet":
        """Raise :class:`DataError` unless the images fit a model taking
        ``in_channels x resolution x resolution`` inputs (and, when given, were
        normalized with ``mean``/``std``). Returns ``self``."""
        if isinstance(resolution, (tuple, list)):
            rh, rw = int(resolution[0]), int(resolution[-1])
        else:
            rh = rw = int(resolution)
        have = (self.channels, *self.resolution)
        want = (int(in_channels), rh, rw)
        if have != want:
            if have[0] != want[0]:
                fix = (f"rebuild it from a data set with {want[0]} channel(s) "
                       f"(e.g. the one the model was trained on)")
            else:
                fix = f"rebuild with --resolution {rh}" if rh == rw else f"rebuild at {rh}x{rw}"
            raise _err(f"calibration images are {_shape_str(have)} but the model expects "
                       f"{_shape_str(want)}; {fix}")
        for name, want_v, have_v in (("mean", mean, self.mean), ("std", std, self.std)):
            if want_v is None or have_v is None:
                continue
            want_t = tuple(float(v) for v in want_v)
            if len(want_t) != len(have_v) or any(
                    not math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(want_t, have_v)):
                raise _err(f"calibration images were normalized with {name} "
                           f"{[round(v, 5) for v in have_v]} but the model expects "
                           f"{[round(v, 5) for v in want_t]}; rebuild with --model pointing at the model")
        return self

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Image batches of at most ``batch_size`` in stored order."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise _err(f"batch_size must be a positive integer, got {batch_size!r}; pass e.g. 64")
        for i in range(0, len(self), int(batch_size)):
            yield self.images[i:i + int(batch_size)]

    def representative_data(self, limit: int | None = None, layout: str = "NCHW") -> Iterator[list[np.ndarray]]:
        """TFLite-style representative data: one ``[float32 array of shape (1, C, H, W)]``
        per image (``layout="NHWC"`` transposes), at most ``limit`` images."""
        if layout not in ("NCHW", "NHWC"):
            raise _err(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        count = len(self) if limit is None else min(len(self), int(limit))
        for i in range(count):
            x = self.images[i:i + 1].numpy()
            yield [np.ascontiguousarray(x.transpose(0, 2, 3, 1) if layout == "NHWC" else x)]

    def describe(self) -> str:
        """A few human-readable lines: metadata and per-class counts."""
        m = self.meta
        lines = [
            f"calibration set: {len(self)} images of {_shape_str((self.channels, *self.resolution))}",
            f"source: {m.get('source')}" + (f" ({m.get('src_path')})" if m.get("src_path") else "")
            + (f", split {m.get('split')} (split seed {m.get('split_seed')})" if m.get("split") else ""),
            f"seed: {m.get('seed')}",
            f"resolution: {m.get('resolution')}",
            f"normalization: mean {m.get('mean')} std {m.get('std')}",
            f"created by: {m.get('created_by')}",
            "per-class counts: " + ", ".join(f"{k}: {v}" for k, v in self.class_counts().items()),
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------------ #
    # files
    # ------------------------------------------------------------------ #
    def save(self, path: PathLike, overwrite: bool = False) -> Path:
        """Write the set atomically to ``path`` (an ``.npz``; no pickles).

        Refuses to replace an existing file unless ``overwrite``."""
        p = Path(os.fspath(path)).expanduser()
        if p.is_dir():
            raise _err(f"{p} is a directory; pass a file path such as calib.npz")
        if p.exists() and not overwrite:
            raise _err(f"{p} already exists; choose another --out or pass --force to overwrite it")
        try:
            meta_json = json.dumps(self.meta, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise _err(f"calibration metadata is not JSON-serialisable ({exc}); pass plain values") from None
        images = self.images.detach().cpu().to(torch.float32).numpy()
        labels = self.labels.detach().cpu().to(torch.int64).numpy()

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: numpy must not append ".npz"
                np.savez(f, images=images, labels=labels, meta=np.array([meta_json]))

        try:
            return atomic_write(p, write, overwrite=overwrite)
        except DataError:
            raise
        except Exception as exc:  # CheckpointError (exists) or OSError
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise _err(f"cannot write calibration set {p} ({msg}); check the path and permissions") from None

    @classmethod
    def load(cls, path: PathLike) -> "CalibrationSet":
        """Read and validate a calibration set written by :meth:`save`."""
        p = Path(os.fspath(path)).expanduser()
        if not p.exists():
            raise _err(f"calibration set not found: {p}; build one with `qnas calib build`")
        if p.is_dir():
            raise _err(f"calibration set path is a directory: {p}; pass the .npz file")
        z = open_npz(p, "build a calibration set with `qnas calib build`")
        with z:
            missing = [k for k in ("images", "labels", "meta") if k not in z.files]
            if missing:
                raise _err(f"{p} lacks {', '.join(repr(k) for k in missing)} (found: "
                           f"{', '.join(z.files) or 'none'}); it is not a qnas calibration set, "
                           "build one with `qnas calib build --from npz FILE`")
            arrays = {}
            for k in ("images", "labels", "meta"):
                try:
                    arrays[k] = z[k]
                except ValueError:
                    raise _err(f"array {k!r} in {p} needs pickle to load (refused for safety); "
                               "rebuild the set with `qnas calib build`") from None
                except (OSError, zipfile.BadZipFile, EOFError) as exc:
                    raise _err(f"array {k!r} in {p} is corrupt ({type(exc).__name__}); "
                               "rebuild the set with `qnas calib build`") from None
        images, labels, meta_arr = arrays["images"], arrays["labels"], arrays["meta"]
        if meta_arr.dtype.kind != "U" or meta_arr.size != 1:
            raise _err(f"metadata in {p} is not a JSON string (dtype {meta_arr.dtype}, shape "
                       f"{meta_arr.shape}); rebuild the set with `qnas calib build`")
        try:
            meta = json.loads(str(meta_arr.reshape(-1)[0]))
        except json.JSONDecodeError as exc:
            raise _err(f"metadata in {p} is not valid JSON ({exc.msg}); rebuild the set "
                       "with `qnas calib build`") from None
        if not isinstance(meta, dict):
            raise _err(f"metadata in {p} is not a JSON object; rebuild the set with `qnas calib build`")
        if meta.get("format", CALIB_FORMAT) != CALIB_FORMAT:
            raise _err(f"{p} is a {meta.get('format')!r} file, not a qnas calibration set; "
                       "build one with `qnas calib build`")
        if int(meta.get("version", CALIB_VERSION)) > CALIB_VERSION:
            raise _err(f"{p} has calibration-set version {meta.get('version')}, this qnas reads "
                       f"up to {CALIB_VERSION}; upgrade qnas or rebuild the set")
        if labels.dtype == np.uint64 and labels.size and int(labels.max()) > np.iinfo(np.int64).max:
            raise _err(f"labels in {p} are too large for class indices; rebuild the set")
        if labels.dtype.kind not in "iu":
            raise _err(f"labels in {p} have dtype {labels.dtype}; expected integers, rebuild the set with "
                       "`qnas calib build`")
        try:  # the constructor checks shapes, dtypes, NaN/Inf and lengths
            cs = cls(torch.from_numpy(np.ascontiguousarray(images)),
                     torch.from_numpy(np.ascontiguousarray(labels.astype(np.int64))), meta)
        except DataError as e:
            raise _err(f"{p}: {e}") from None
        res = meta.get("resolution")
        if res is not None and isinstance(res, int) and res != cs.resolution[0]:
            raise _err(f"{p} says resolution {res} but its images are "
                       f"{cs.resolution[0]}x{cs.resolution[1]}; the file was altered, rebuild it")
        return cs
