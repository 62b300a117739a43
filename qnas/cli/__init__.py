"""The ``qnas`` command line: parses arguments, fills the typed options of :mod:`qnas.options`
and calls the library; a user error exits 2 with one line.

One module per command group (``search``/``demo``, ``export``, ``finish``, ``calib``, ``latency``,
``supernet``), shared flags in :mod:`qnas.cli._args`. Building the parser imports no torch, so
``qnas --help`` stays fast; each command imports the library when it runs.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from typing import Sequence

from qnas.cli._args import OneLineErrorParser
from qnas.cli.calib import add_calib_parser
from qnas.cli.diagnose import add_diagnose_parser
from qnas.cli.export import add_export_parser
from qnas.cli.finish import add_finish_parser
from qnas.cli.latency import add_latency_parser
from qnas.cli.search import add_demo_parser, add_search_parser
from qnas.cli.supernet import add_supernet_parser
from qnas.errors import QnasError

__all__ = ["build_parser", "describe_unexpected", "main", "run_parsed"]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="qnas", description="Quantization-aware, hardware-aware NAS: "
                                "search -> finish -> export -> verify.")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error (qnas --debug COMMAND ...)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_demo_parser(sub)
    add_search_parser(sub)
    add_export_parser(sub)
    add_supernet_parser(sub)
    add_finish_parser(sub)
    add_calib_parser(sub)
    add_latency_parser(sub)
    add_diagnose_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_parsed(build_parser().parse_args(argv))


def run_parsed(args: argparse.Namespace) -> int:
    """Run a parsed command. A user error (bad input, a full disk, a path that is not a directory,
    input nested too deeply or too large for memory) prints one line and exits 2; anything else one
    line and exits 1. ``--debug`` (or ``QNAS_DEBUG=1``) lets the traceback through instead."""
    warnings.filterwarnings("ignore", message=".*fast_hadamard_transform.*")
    # torch.load(weights_only=True) warns before refusing a plain pickle; the refusal is the one line
    warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
    debug = bool(getattr(args, "debug", False) or os.environ.get("QNAS_DEBUG"))
    try:
        return int(args.func(args) or 0)
    except QnasError as e:
        print(f"qnas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qnas: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        message, code = describe_unexpected(e)
        print(f"qnas: error: {message}", file=sys.stderr)
        return code


def describe_unexpected(e: BaseException) -> tuple[str, int]:
    """One line (and the exit code) for an exception that is not a :class:`QnasError`."""
    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        fix = "free some disk space or write elsewhere" if e.errno == errno.ENOSPC else "check the path"
        return f"{e.strerror or type(e).__name__}{where}; {fix}", 2
    if isinstance(e, MemoryError):
        return "out of memory: an input (resolution, data set, batch) is too large for this machine", 2
    if isinstance(e, RecursionError):
        return "an input file is nested too deeply to read", 2
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return f"unexpected {type(e).__name__}: {first} (rerun with qnas --debug ... for the traceback)", 1
