"""Reading a user's JSON file with one-line errors (a run's config, an arch, a fitted model)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qnas.errors import ConfigError, QnasError


def read_json(path: str | Path, what: str, fix: str, error: type[QnasError] = ConfigError) -> Any:
    """The JSON value stored in ``path``. A missing, unreadable or malformed file raises
    ``error`` with one line: ``"{what} not found: {path}; {fix}"`` or
    ``"cannot read {what} {path}: not valid JSON (...); {fix}"``."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} not found: {p}; {fix}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise error(f"cannot read {what} {p}: not valid JSON ({e.msg} at line {e.lineno}); {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {what} {p} ({type(e).__name__}); {fix}") from None
    except RecursionError:
        raise error(f"cannot read {what} {p}: nested too deeply; {fix}") from None
