"""Argument helpers shared by the command groups: number types, the data / latency / run flags,
and filling a typed option object from parsed flags.

Every flag whose ``dest`` is a field of an option class (:mod:`qnas.options`) is copied into it by
:func:`option_fields`; defaults come from those classes, so each is written once.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any, Callable

from qnas.dataset_kinds import DATASET_KINDS, path_kinds
from qnas.errors import ConfigError

LATENCY_KINDS = ["auto", "analytic", "table", "measured", "hybrid"]


def _float(v: str, ok: Callable[[float], bool], expected: str) -> float:
    """``v`` as a float for which ``ok`` holds, else an argparse error naming what was ``expected``."""
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {v!r}") from None
    if not ok(f):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {v!r}")
    return f


def positive_float(v: str) -> float:
    """A finite number > 0 (NaN and infinity refused: a budget of inf or nan would switch it off)."""
    return _float(v, lambda f: 0 < f < float("inf"), "a positive finite number")


def non_negative_float(v: str) -> float:
    """A finite number >= 0."""
    return _float(v, lambda f: 0 <= f < float("inf"), "a finite number >= 0")


def fraction(v: str) -> float:
    """A share in [0, 1] (NaN refused: it would switch a comparison off)."""
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {v!r}") from None
    if not 0.0 <= f <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {v!r}")
    return f


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument error is one line and exit 2, like every other user error (the usage is on ``--help``).
    Sub-command parsers are made of the same class."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: numpy and torch both take seeds in [0, 2**32 - 1] everywhere (torch.manual_seed refuses more than 64 bits)
MAX_SEED = 2**32 - 1
#: the largest count (epochs, candidates, batch size ...) a flag takes: beyond it numpy, torch and
#: itertools overflow (2**70 raised deep inside a DataLoader) or the run would never end
MAX_COUNT = 2**31 - 1


def _int_in(v: str, what: str, lo: int, hi: int | None = MAX_COUNT, unit: str = "") -> int:
    """``v`` as an integer in [lo, hi] (no upper bound when ``hi`` is None), else an argparse error."""
    try:
        i = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer{what and ' ' + what}, got {v!r}") from None
    if i < lo or (hi is not None and i > hi):
        if hi is None or (hi == MAX_COUNT and i < lo):
            span = f">= {lo}"
        elif hi == MAX_COUNT:
            span = f"from {lo} to {hi} (2**31 - 1)"
        else:
            span = f"from {lo} to {hi}{unit}"
        raise argparse.ArgumentTypeError(f"expected {'a ' + what if what else 'an integer'} {span}, got {v}")
    return i


def seed_int(v: str) -> int:
    """A ``--seed`` value: an integer from 0 to 2**32 - 1."""
    return _int_in(v, "seed", 0, MAX_SEED)


def resolution_int(v: str) -> int:
    """An image size: an integer from 8 to :data:`qnas.space.MAX_RESOLUTION` px."""
    from qnas.space import MAX_RESOLUTION

    return _int_in(v, "resolution", 8, MAX_RESOLUTION, " px")


def non_negative_int(v: str) -> int:
    """An integer from 0 to :data:`MAX_COUNT`."""
    return _int_in(v, "", 0)


def phase_epochs(v: str, lo: int = 0) -> int | list[int]:
    """Supernet epochs: ``N`` (>= ``lo``) for every progressive-shrinking phase, or ``K,D,W,B`` (kernel,
    depth, width, bits phases), each an integer >= 0, adding up to at least ``lo``."""
    parts = v.split(",")
    if len(parts) == 1:
        return _int_in(v, "", lo)
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"expected N or four counts K,D,W,B (kernel, depth, width, bits), got {v!r}")
    counts = [_int_in(x.strip(), "", 0) for x in parts]
    if sum(counts) < lo:
        raise argparse.ArgumentTypeError(f"expected at least {lo} epoch(s) in all, got {v!r}")
    return counts


def positive_phase_epochs(v: str) -> int | list[int]:
    """:func:`phase_epochs` with at least one epoch in all."""
    return phase_epochs(v, 1)


def positive_int(v: str) -> int:
    """An integer from 1 to :data:`MAX_COUNT`."""
    return _int_in(v, "", 1)


def thread_count(v: str) -> int:
    """A thread count: an integer from 1 to 1024."""
    return _int_in(v, "thread count", 1, 1024)


def batch_size_int(v: str) -> int:
    """A training batch size: an integer from 2 (batch norm needs two images) to :data:`MAX_COUNT`."""
    return _int_in(v, "batch size", 2)


def refuse_existing(path: str | None, overwrite: bool, flag: str) -> None:
    """Refuse (one line) before any work an output file that exists, unless ``--force`` was given, or
    that cannot be written (:func:`check_out_parent`)."""
    from pathlib import Path

    check_out_parent(path, flag)
    if path and Path(path).exists() and not overwrite:
        raise ConfigError(f"{path} exists; choose another {flag} or pass --force to overwrite it")


def check_out_parent(path: str | None, flag: str) -> None:
    """Refuse (one line) before any work an output path under a regular file (``mine.txt/model.pt``):
    writing it would fail only after the work."""
    from pathlib import Path

    if not path:
        return
    for parent in Path(path).expanduser().absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {path} lies under {parent}, which is a file, not a directory; "
                                  f"choose another {flag}")
            return


def json_object(text: str | None, flag: str, example: str) -> dict[str, Any]:
    """The JSON object a flag holds ({} when not given); anything else is a one-line error."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{flag} is not valid JSON ({e.msg}); pass a JSON object, e.g. '{example}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must be a JSON object, e.g. '{example}'")
    return value


def option_fields(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags whose ``dest`` is a field of the dataclass ``cls``."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def load_space(path: str | None):
    """The search space of a ``--space`` YAML file, else None (the command's default)."""
    if not path:
        return None
    from qnas.space import SearchSpace

    return SearchSpace.from_yaml(path)


# ---- parsers and flag groups ---------------------------------------------------------------
def add_command_group(sub: Any, name: str, help: str, description: str, dest: str,
                      metavar: str = "ACTION") -> tuple[argparse.ArgumentParser, Any]:
    """Add command ``name`` whose own sub-commands (``dest``) are required; returns its parser and their
    ``subparsers``."""
    group = sub.add_parser(name, help=help, description=description)
    return group, group.add_subparsers(dest=dest, required=True, metavar=metavar)


def add_data_args(p: argparse.ArgumentParser, default: str | None, help_default: str) -> None:
    p.add_argument("--data", default=default, choices=list(DATASET_KINDS), help=f"data set kind ({help_default})")
    p.add_argument("--data-path", help=f"path for {' / '.join(path_kinds())} data")
    p.add_argument("--stream", action="store_true",
                   help="read the data from disk in DataLoader workers (with train-only augmentation) instead of "
                        "loading it whole: for data sets larger than memory (imagefolder, cifar10, uncompressed npz)")


def add_latency_args(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--latency", dest="latency_kind", default=default, choices=LATENCY_KINDS,
                   help="latency predictor: auto (default: on cpu-ort, this machine's measured table, timed once "
                        "and cached in ~/.cache/qnas or $QNAS_CACHE_DIR; elsewhere the profile's roofline, or the "
                        "--latency-table / --latency-hybrid given), analytic (the device profile's roofline), table "
                        "(a per-layer table measured on the device, --latency-table), measured (timed here on "
                        "demand, cpu-ort only) or hybrid (table/analytic + learned correction, --latency-hybrid)")
    p.add_argument("--latency-table", metavar="PATH", help="per-layer latency table (JSON/CSV)")
    p.add_argument("--latency-hybrid", metavar="PATH", help="fitted hybrid correction (JSON) for --latency hybrid")


class _DeprecatedTarget(argparse.Action):
    """``--device``: the old name of ``--target``; works, with one deprecation line."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print("qnas: warning: --device is deprecated: it names the latency target, use --target "
              "(the torch device to train on is --torch-device)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_target_args(p: argparse.ArgumentParser, default: str = "cpu-ort", help: str | None = None) -> None:
    """``--target`` (dest ``target``: the latency target profile) and its deprecated alias ``--device``.
    The value is checked where it is used (:func:`qnas.options.check_latency_target`: a one-line error)."""
    p.add_argument("--target", default=default, metavar="TARGET",
                   help=help or f"latency target: a device profile (`qnas latency show NAME`; default {default}); "
                                "not the torch device (--torch-device)")
    p.add_argument("--device", dest="target", action=_DeprecatedTarget, metavar="TARGET",
                   help="deprecated name of --target")


def add_torch_device_args(p: argparse.ArgumentParser) -> None:
    """``--torch-device`` (dest ``torch_device``) and ``--amp`` (dest ``amp``) for commands that train or evaluate;
    the option classes check the name, the run checks that the device exists (one-line errors)."""
    from qnas.quant.configs import AMP_MODES

    p.add_argument("--torch-device", default="cpu", metavar="DEVICE",
                   help="torch device to train and evaluate on: cpu (default), cuda, cuda:N, mps, or auto (cuda if "
                        "available, else mps, else cpu)")
    p.add_argument("--amp", default="off", choices=list(AMP_MODES),
                   help="automatic mixed precision of training: off (default), bf16, or fp16 (CUDA only, with "
                        "gradient scaling); quantizer arithmetic stays fp32")


def add_force_progress(p: argparse.ArgumentParser, force_help: str) -> None:
    """``--force`` (dest ``overwrite``) and ``--no-progress`` (dest ``progress``)."""
    p.add_argument("--force", dest="overwrite", action="store_true", help=force_help)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
