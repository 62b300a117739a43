"""Deprecated: ``qnas finish`` lives in :mod:`qnas.cli.finish`, its option names in :mod:`qnas.options`.

Kept importable for one release."""
from __future__ import annotations

import warnings

from qnas.cli.finish import add_finish_parser, cmd_finish
from qnas.options import INITS, PTQ_METHODS, TEACHERS

__all__ = ["INITS", "PTQ_METHODS", "TEACHERS", "add_finish_parser", "cmd_finish"]

warnings.warn("qnas.finishing_cli is deprecated; use qnas.cli.finish (add_finish_parser, cmd_finish) and "
              "qnas.options (TEACHERS, INITS, PTQ_METHODS)", DeprecationWarning, stacklevel=2)
