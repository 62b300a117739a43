"""Argument helpers shared by the command groups: number types, the data / latency / run flags,
and filling a typed option object from parsed flags.

Every flag whose ``dest`` is a field of an option class (:mod:`qnas.options`) is copied into it by
:func:`option_fields`; defaults come from those classes, so each is written once.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import fields
from typing import Any

from qnas.dataset_kinds import DATASET_KINDS, path_kinds
from qnas.errors import ConfigError

LATENCY_KINDS = ["analytic", "table", "measured", "hybrid"]


def positive_float(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {v!r}") from None
    if not f > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v!r}")
    return f


def non_negative_int(v: str) -> int:
    try:
        i = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {v!r}") from None
    if i < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v!r}")
    return i


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


def add_latency_args(p: argparse.ArgumentParser, default: str = "analytic") -> None:
    p.add_argument("--latency", dest="latency_kind", default=default, choices=LATENCY_KINDS,
                   help="latency predictor: the device profile's roofline (default), a per-layer table measured on "
                        "the device (--latency-table), measured here on demand (cpu-ort only), or hybrid "
                        "(table/analytic + learned correction, --latency-hybrid)")
    p.add_argument("--latency-table", metavar="PATH", help="per-layer latency table (JSON/CSV)")
    p.add_argument("--latency-hybrid", metavar="PATH", help="fitted hybrid correction (JSON) for --latency hybrid")


def add_force_progress(p: argparse.ArgumentParser, force_help: str) -> None:
    """``--force`` (dest ``overwrite``) and ``--no-progress`` (dest ``progress``)."""
    p.add_argument("--force", dest="overwrite", action="store_true", help=force_help)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
