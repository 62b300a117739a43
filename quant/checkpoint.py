"""Checkpoints: a model's state plus JSON metadata, written atomically and
read with ``torch.load(weights_only=True)`` (never unpickling user files)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qnas.quant.errors import CheckpointError

FORMAT = "qnas-checkpoint"
VERSION = 1


def atomic_write(path: str | Path, write: Any, overwrite: bool = True) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a crash never leaves a half-written file."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} already exists; choose another path or pass overwrite=True (--force)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any], overwrite: bool = True) -> Path:
    """Save ``model.state_dict()`` with JSON-serialisable ``meta`` (arch, space, metrics...)."""
    payload = {"format": FORMAT, "version": VERSION, "meta_json": json.dumps(meta),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    return atomic_write(path, lambda p: torch.save(payload, p), overwrite=overwrite)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(state_dict, meta)``; :class:`CheckpointError` on anything that is not a qnas checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, pickle with disallowed globals, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable qnas checkpoint ({first[:160]}); re-create it with qnas") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a qnas checkpoint (no '{FORMAT}' marker); pass a model.pt written by qnas")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}, this qnas reads {VERSION}")
    try:
        meta = json.loads(payload["meta_json"])
        state = payload["state_dict"]
    except (KeyError, json.JSONDecodeError, TypeError):
        raise CheckpointError(f"{path} has a damaged metadata block; re-create it with qnas") from None
    return state, meta


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Load ``state`` strictly; a shape/key mismatch becomes a one-line :class:`CheckpointError`."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        raise CheckpointError(f"{source} does not match the model built from its arch ({' '.join(lines)[:200]})") from None
    return model
