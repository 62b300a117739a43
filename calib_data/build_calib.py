"""Script entry point of the calibration commands (they live in :mod:`qnas.cli.calib`):

    python calib_data/build_calib.py build --from digits --n 512 --out calib.npz
    python calib_data/build_calib.py show calib.npz

(the same as ``python -m qnas.calib_data ...`` and ``qnas calib ...``).
"""
from __future__ import annotations

import sys
import warnings
from typing import Any, Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None, prog: str = "python -m qnas.calib_data") -> int:
    from qnas.cli.calib import main as calib_main

    return calib_main(argv, prog)


def __getattr__(name: str) -> Any:
    # the parser and commands moved to qnas.cli.calib; the old names stay importable for one release
    if name in ("add_calib_parser", "build_parser", "cmd_calib_build", "cmd_calib_show"):
        warnings.warn(f"qnas.calib_data.build_calib.{name} is deprecated; use qnas.cli.calib.{name}",
                      DeprecationWarning, stacklevel=2)
        import qnas.cli.calib

        return getattr(qnas.cli.calib, name)
    raise AttributeError(f"module 'qnas.calib_data.build_calib' has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main(prog="build_calib.py"))
