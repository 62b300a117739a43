"""Save and load finished models: the state plus everything needed to rebuild
them (search-space config, arch, data set, normalization)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from qnas.arch import Arch
from qnas.errors import CheckpointError, QnasError
from qnas.quant.build import QuantNet, build_model
from qnas.quant.checkpoint import load_checkpoint, load_state, save_checkpoint
from qnas.space import SearchSpace


@dataclass
class LoadedModel:
    model: QuantNet
    space: SearchSpace
    arch: Arch
    meta: dict[str, Any]


def save_model(path: str | Path, model: nn.Module, space: SearchSpace, arch: Arch,
               extra: dict[str, Any] | None = None, overwrite: bool = True) -> Path:
    meta = {"space": space.to_dict(), "arch": arch.to_dict(), **(extra or {})}
    return save_checkpoint(path, model, meta, overwrite=overwrite)


def resolve_model_path(model_or_run: str | Path) -> Path:
    """The finished model ``model_or_run`` names: a checkpoint path, or a run directory's ``model.pt``."""
    p = Path(model_or_run).expanduser()
    if p.is_dir():
        if not (p / "model.pt").is_file():
            raise CheckpointError(f"run directory {p} has no model.pt; finish a model first (qnas demo / qnas finish)")
        return p / "model.pt"
    return p


def load_model(model_or_run: str | Path) -> LoadedModel:
    """Rebuild the Brevitas model from a qnas checkpoint (``torch.load(weights_only=True)``)."""
    path = resolve_model_path(model_or_run)
    state, meta = load_checkpoint(path)
    try:
        space = SearchSpace.from_dict(meta["space"])
        arch = space.validate(Arch.from_dict(meta["arch"]))
    except KeyError as e:
        raise CheckpointError(f"{path} lacks '{e.args[0]}' in its metadata; it was not written by qnas save_model") from None
    except QnasError as e:
        raise CheckpointError(f"{path} holds an invalid space/arch: {e}") from None
    model = load_state(build_model(space, arch), state, source=str(path))
    model.eval()
    return LoadedModel(model, space, arch, meta)
