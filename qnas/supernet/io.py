"""Load a trained supernet from its training checkpoint (``torch.load(weights_only=True)``)."""
from __future__ import annotations

from pathlib import Path

from qnas.errors import CheckpointError, QnasError
from qnas.quant.checkpoint import load_checkpoint
from qnas.space import SearchSpace
from qnas.supernet.supernet import Supernet


def load_supernet(path: str | Path) -> Supernet:
    """A :class:`Supernet` with the weights of ``path`` (a ``supernet.pt`` or the directory holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "supernet.pt"
    state, meta = load_checkpoint(p)
    if meta.get("kind") != "supernet-train" or "supernet" not in meta:
        raise CheckpointError(f"{p} is not a qnas supernet checkpoint; train one with `qnas supernet train`")
    cfg = meta["supernet"]
    try:
        supernet = Supernet(SearchSpace.from_dict(cfg["space"]), bn_per_bits=cfg["bn_per_bits"],
                            kernel_transform=cfg["kernel_transform"],
                            act_ranges=cfg.get("act_ranges", "learned"))  # older checkpoints: learned ranges
    except (KeyError, TypeError, QnasError) as e:
        raise CheckpointError(f"{p} has a damaged supernet config ({e}); re-train the supernet") from None
    net = {k[len("supernet."):]: v for k, v in state.items() if k.startswith("supernet.")}
    try:
        supernet.load_state_dict(net, strict=True)
    except RuntimeError as e:
        msg = " ".join(l.strip() for l in str(e).splitlines() if l.strip())
        raise CheckpointError(f"{p} does not fit its supernet config ({msg[:200]})") from None
    supernet.eval()
    return supernet
