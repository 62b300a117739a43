"""Build calibration sets: class-balanced, seeded samples of the *training*
split (the same seeded split search and finishing use, so test images never
calibrate a model), resized to the model's resolution and normalized the way
the model expects."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from qnas.calib_data.calibration import CALIB_FORMAT, CALIB_VERSION, CalibrationSet, _version
from qnas.data import load_dataset, split as split_dataset
from qnas.dataset_kinds import DATASET_KINDS, needs_path
from qnas.errors import DataError

__all__ = ["build_calibration_set", "build_calibration_file", "resolve_arch", "model_preprocessing", "CALIB_SPLITS"]

PathLike = Union[str, "os.PathLike[str]"]
#: Parts of the seeded split a calibration set may be drawn from (never "test").
CALIB_SPLITS: tuple[str, ...] = ("train", "val")


def _err(msg: str) -> DataError:
    return DataError(" ".join(str(msg).split()))


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def resolve_arch(arch: Any):
    """The :class:`~qnas.arch.Arch` ``arch`` names: an Arch, an arch JSON file, a run directory or a
    finished model checkpoint (``.pt``), as :func:`qnas.rundir.resolve_arch` reads them."""
    from qnas.rundir import resolve_arch as resolve

    return resolve(arch, validate=False).arch  # only the resolution is used here


def model_preprocessing(model: PathLike) -> dict[str, Any]:
    """What a finished model (``model.pt`` or its run directory) expects as input:
    ``{"resolution", "mean", "std", "data", "data_path", "split_seed"}`` (missing keys are None)."""
    from qnas.model_io import resolve_model_path
    from qnas.quant.checkpoint import load_checkpoint

    p = resolve_model_path(os.fspath(model))
    _state, meta = load_checkpoint(p)
    data = meta.get("data") or {}
    arch = meta.get("arch") or {}
    return {
        "resolution": arch.get("resolution"),
        "mean": data.get("mean"),
        "std": data.get("std"),
        "data": data.get("data"),
        "data_path": data.get("data_path"),
        "split_seed": data.get("split_seed"),
        "model": str(p),
    }


def _balanced_indices(labels: np.ndarray, n: int, seed: int, min_per_class: int,
                      where: str) -> np.ndarray:
    """Seeded class-balanced sample of ``n`` indices into ``labels`` (shuffled)."""
    classes = np.unique(labels)
    k = len(classes)
    if k == 0:
        raise _err(f"the {where} has no samples; use more data")
    if n < k * min_per_class:
        raise _err(f"--n {n} gives fewer than {min_per_class} sample(s) per class for {k} classes; "
                   f"raise --n to at least {k * min_per_class}")
    rng = np.random.default_rng(int(seed))
    quota = np.full(k, n // k, dtype=np.int64)
    extra = n % k
    if extra:
        quota[rng.choice(k, size=extra, replace=False)] += 1
    groups = [np.flatnonzero(labels == c) for c in classes]
    avail = np.array([len(g) for g in groups])
    short = np.flatnonzero(avail < quota)
    if short.size:
        i = int(short[np.argmin(avail[short] - quota[short])])
        max_n = int(avail.min()) * k
        raise _err(f"class {int(classes[i])} has only {int(avail[i])} samples in the {where} but "
                   f"{int(quota[i])} are needed for --n {n} over {k} classes; lower --n to at most "
                   f"{max_n} (or use a larger data set)")
    picked = [rng.choice(g, size=int(q), replace=False) for g, q in zip(groups, quota)]
    idx = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return rng.permutation(idx).astype(np.int64)


def build_calibration_set(
    source: str,
    src_path: PathLike | None = None,
    n: int = 512,
    resolution: int | None = None,
    seed: int = 0,
    split: str = "train",
    min_per_class: int = 1,
    split_seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    arch: Any = None,
    model: PathLike | None = None,
    stream: bool = False,
) -> CalibrationSet:
    """Draw a class-balanced, seeded calibration set.

    Args:
        source: data set kind (``digits``, ``imagefolder``, ``cifar10``, ``npz``).
        src_path: its location (none for ``digits``).
        n: number of images; each class gets ``n // classes`` and the remainder
            goes, one each, to classes picked with ``seed``.
        resolution: output size (square). Defaults to the arch's / model's
            resolution, else the data's own.
        seed: sampling seed.
        split: ``"train"`` (default) or ``"val"`` part of the seeded
            train/val/test split (the one search and finishing use, with
            ``split_seed``); the test part is never used.
        min_per_class: every class must get at least this many images.
        mean, std: normalization the model expects (default: the data set's own
            statistics, which is what search/finishing apply).
        arch: an Arch (or arch JSON / run directory / model.pt) whose
            resolution sets ``resolution``.
        model: a finished model (``model.pt`` or run dir): its resolution,
            normalization and split seed are used.
        stream: read the data lazily (:func:`qnas.streaming.open_stream`): only
            the ``n`` chosen images are decoded.
    """
    kind = source.strip().lower() if isinstance(source, str) else source
    if kind not in DATASET_KINDS:
        raise _err(f"unknown calibration source {source!r}; valid: {', '.join(DATASET_KINDS)}")
    if not _is_int(n) or int(n) < 1:
        raise _err(f"--n must be a positive integer, got {n!r}; pass e.g. --n 512")
    if not _is_int(seed):
        raise _err(f"--seed must be an integer, got {seed!r}")
    if not _is_int(min_per_class) or int(min_per_class) < 1:
        raise _err(f"min_per_class must be a positive integer, got {min_per_class!r}")
    if split not in CALIB_SPLITS:
        hint = " (the test split is never used for calibration)" if split == "test" else ""
        raise _err(f"split must be one of {', '.join(CALIB_SPLITS)}, got {split!r}{hint}")
    if resolution is not None and (not _is_int(resolution) or int(resolution) < 1):
        raise _err(f"--resolution must be a positive integer, got {resolution!r}; pass e.g. --resolution 16")
    n, seed = int(n), int(seed)

    pre: dict[str, Any] = {}
    if model is not None:
        pre = model_preprocessing(model)
        if mean is None and pre.get("mean") is not None:
            mean = pre["mean"]
        if std is None and pre.get("std") is not None:
            std = pre["std"]
        same_data = pre.get("data") == kind and (kind == "digits" or (
            pre.get("data_path") is not None and src_path is not None
            and Path(str(pre["data_path"])).expanduser().resolve() == Path(os.fspath(src_path)).expanduser().resolve()))
        if same_data and pre.get("split_seed") is not None:
            split_seed = int(pre["split_seed"])
    if not _is_int(split_seed):
        raise _err(f"split_seed must be an integer, got {split_seed!r}")
    sources: dict[str, int] = {}
    if arch is not None:
        a = resolve_arch(arch)
        sources["arch"] = int(a.resolution)
    if pre.get("resolution") is not None:
        sources["model"] = int(pre["resolution"])
    if resolution is not None:
        sources["--resolution"] = int(resolution)
    if len(set(sources.values())) > 1:
        raise _err("conflicting resolutions: " + ", ".join(f"{k} {v}" for k, v in sources.items())
                   + "; pass only one of them")
    res = next(iter(sources.values())) if sources else None

    norm = {**({"mean": mean} if mean is not None else {}), **({"std": std} if std is not None else {})}
    if stream and kind != "digits":
        from qnas.streaming import open_stream

        ds = open_stream(kind, src_path, size=res if kind == "imagefolder" else None, **norm)
    else:
        ds = load_dataset(kind, None if kind == "digits" else src_path, **norm)
    parts = split_dataset(ds, seed=int(split_seed))
    pool = getattr(parts, split)
    idx = _balanced_indices(pool.labels.numpy(), n, seed, int(min_per_class),
                            where=f"{split} split")
    sub = pool.subset(idx)
    if res is not None:
        sub = sub.at_resolution(res)
    meta = {
        "format": CALIB_FORMAT,
        "version": CALIB_VERSION,
        "source": kind,
        "src_path": None if src_path is None else str(Path(os.fspath(src_path)).expanduser().resolve()),
        "split": split,
        "split_seed": int(split_seed),
        "seed": seed,
        "n": len(sub),
        "num_classes": int(ds.num_classes),
        "resolution": int(sub.resolution[0]),
        "native_resolution": [int(v) for v in ds.resolution],
        "channels": int(sub.channels),
        "mean": list(sub.mean),
        "std": list(sub.std),
        "created_by": f"qnas {_version()}",
    }
    if pre.get("model"):
        meta["model"] = pre["model"]
    return CalibrationSet(sub.images.clone(), sub.labels.clone(), meta)




def build_calibration_file(out: PathLike, source: str, src_path: PathLike | None = None, *,
                           overwrite: bool = False, **options: Any) -> tuple[CalibrationSet, Path]:
    """Build a calibration set (:func:`build_calibration_set` with ``options``) and save it to ``out``.

    Refuses, before any work, an ``out`` that is a directory or exists (unless ``overwrite``), and a
    data location given to a bundled kind or missing for one that needs it. Returns the set and the
    path written."""
    out_path = Path(os.fspath(out)).expanduser()
    if out_path.is_dir():
        raise _err(f"--out {out_path} is a directory; pass a file path such as calib.npz")
    if out_path.exists() and not overwrite:
        raise _err(f"{out_path} already exists; choose another --out or pass --force to overwrite it")
    if source in DATASET_KINDS and not needs_path(source) and src_path is not None:
        raise _err(f"--from {source} is bundled and takes no SRC (got {src_path}); omit it")
    if source in DATASET_KINDS and needs_path(source) and src_path is None:
        raise _err(f"--from {source} needs SRC, the data location; e.g. --from {source} PATH")
    cs = build_calibration_set(source, src_path, **options)
    return cs, cs.save(out_path, overwrite=overwrite)
