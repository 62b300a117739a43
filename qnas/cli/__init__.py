"""The ``qnas`` command line: parses arguments, fills the typed options of :mod:`qnas.options`
and calls the library; a user error exits 2 with one line.

One module per command group (``search``/``demo``, ``export``, ``finish``, ``calib``, ``latency``,
``supernet``), shared flags in :mod:`qnas.cli._args`. Building the parser imports no torch, so
``qnas --help`` stays fast; each command imports the library when it runs.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from qnas.cli.calib import add_calib_parser
from qnas.cli.diagnose import add_diagnose_parser
from qnas.cli.export import add_export_parser
from qnas.cli.finish import add_finish_parser
from qnas.cli.latency import add_latency_parser
from qnas.cli.search import add_demo_parser, add_search_parser
from qnas.cli.supernet import add_supernet_parser
from qnas.errors import QnasError

__all__ = ["build_parser", "main", "run_parsed"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qnas", description="Quantization-aware, hardware-aware NAS: "
                                "search -> finish -> export -> verify.")
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
    """Run a parsed command; a user error prints one line and exits 2."""
    warnings.filterwarnings("ignore", message=".*fast_hadamard_transform.*")
    try:
        return int(args.func(args) or 0)
    except QnasError as e:
        print(f"qnas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qnas: interrupted", file=sys.stderr)
        return 130
