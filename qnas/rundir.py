"""A run directory: config, history (JSON lines, flushed per evaluation),
front, model, exported files, plots and the report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qnas.errors import ConfigError
from qnas.quant.checkpoint import atomic_write


class RunDir:
    """Owns the files of one run. Refuses a non-empty directory unless ``overwrite``."""

    def __init__(self, path: str | Path, overwrite: bool = False, resume: bool = False):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run directory {self.path} is a file; choose another --out")
        if self.path.is_dir() and any(self.path.iterdir()) and not (overwrite or resume):
            raise ConfigError(f"run directory {self.path} is not empty; choose another --out or pass --force to overwrite")
        self.path.mkdir(parents=True, exist_ok=True)
        if overwrite and not resume:
            (self.path / "history.jsonl").unlink(missing_ok=True)
        if resume:
            self._drop_torn_history()

    def _drop_torn_history(self) -> None:
        """A run killed mid-write leaves a torn last line: keep only the complete records."""
        p = self.file("history.jsonl")
        if p.exists():
            good = self.read_history()
            text = "".join(json.dumps(r) + "\n" for r in good)
            if text != p.read_text():
                atomic_write(p, lambda tmp: tmp.write_text(text))

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
        return atomic_write(self.file(name), lambda p: p.write_text(text))

    def append_history(self, record: dict[str, Any]) -> None:
        with open(self.file("history.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def read_history(self) -> list[dict[str, Any]]:
        p = self.file("history.jsonl")
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a killed run: drop it and re-evaluate
        return out
