"""The one naming scheme of blocks and layers: a layer's plan name is its module path.

A block at position ``j`` of stage ``si`` is ``s{si}.b{j}`` (``j`` counts the
stage's positions, skipped ones included), and its layers are
``s{si}.b{j}.expand``, ``.dw`` and ``.project``; the stem is ``stem`` and the
classifier ``head``. :class:`~qnas.quant.build.QuantNet` and the supernet
register their modules under exactly these paths, so
``model.get_submodule(spec.name)`` is the layer that ``spec`` describes.

Torch-free: the search space, the latency models and the model builders all
read it.
"""
from __future__ import annotations

import re
import warnings
from typing import Any, Callable, MutableMapping

from qnas.quant.plan import BlockPlan

BLOCK_LAYERS = ("expand", "dw", "project")
"""a block's weight layers, in execution order (their module names inside the block)"""

_BLOCK_PATH = re.compile(r"^(s\d+)\.(b\d+)$")


def block_path(stage: int, index: int) -> str:
    """``"s{stage}.b{index}"``: the name (and module path) of a block position."""
    return f"s{stage}.b{index}"


def split_block_path(path: str) -> tuple[str, str]:
    """``"s1.b2"`` -> ``("s1", "b2")``: the stage module and the block module inside it."""
    m = _BLOCK_PATH.match(path)
    if m is None:
        raise ValueError(f"block name {path!r} is not of the form 's<stage>.b<index>'")
    return m.group(1), m.group(2)


def block_path_of(block: BlockPlan) -> str:
    """The block path of a :class:`BlockPlan`, read from its layer names (``s0.b1.expand`` -> ``s0.b1``).

    Raises ValueError when the layer names do not follow the scheme: a model built
    from such a plan could not name its modules after the plan."""
    path = block.name
    split_block_path(path)
    names = tuple(spec.name for spec in block.layers)
    expected = tuple(f"{path}.{layer}" for layer in block_layer_names(block.expand is not None, block.se is not None))
    if names != expected:
        raise ValueError(f"block layers {names} are not named {', '.join(map(repr, expected))}")
    return path


SE_LAYERS = ("se.reduce", "se.expand")
"""a squeeze-excite's weight layers, in execution order (module paths inside the block)"""


def block_layer_names(has_expand: bool = True, has_se: bool = False) -> tuple[str, ...]:
    """The weight layers of a block in execution order (their module paths inside the block):
    ``expand`` (unless the block has none), ``dw``, ``se.reduce`` and ``se.expand`` (with
    squeeze-excite), ``project``."""
    return (("expand",) if has_expand else ()) + ("dw",) + (SE_LAYERS if has_se else ()) + ("project",)


def rename_legacy_keys(state: MutableMapping[str, Any], prefix: str, rename: Callable[[str], str | None],
                       what: str) -> int:
    """Rename (in place) the keys under ``prefix`` that ``rename`` maps to a new name.

    ``rename`` gets the key without ``prefix`` and returns the new one (without
    ``prefix``) or None to keep it. One DeprecationWarning names ``what`` was
    converted. Returns the number of keys renamed."""
    renamed = {}
    for key in list(state):
        if not key.startswith(prefix):
            continue
        new = rename(key[len(prefix):])
        if new is not None:
            renamed[key] = prefix + new
    if renamed:
        warnings.warn(f"{what} uses the old module names (e.g. {next(iter(renamed))!r} is now "
                      f"{next(iter(renamed.values()))!r}); it was converted on load. Save it again to update it; "
                      "old names will stop loading in a future release", DeprecationWarning, stacklevel=4)
        for old, new in renamed.items():
            state[new] = state.pop(old)
    return len(renamed)


def legacy_quantnet_key(block_paths: list[str]) -> Callable[[str], str | None]:
    """The renaming of old QuantNet keys: ``blocks.{i}.rest`` -> ``{block_paths[i]}.rest``."""
    pattern = re.compile(r"^blocks\.(\d+)\.(.*)$", re.S)

    def rename(key: str) -> str | None:
        m = pattern.match(key)
        if m is None or int(m.group(1)) >= len(block_paths):
            return None
        return f"{block_paths[int(m.group(1))]}.{m.group(2)}"
    return rename


def legacy_supernet_key(key: str) -> str | None:
    """The renaming of old supernet keys: ``blocks.s{si}_b{j}.rest`` -> ``s{si}.b{j}.rest``."""
    m = re.match(r"^blocks\.s(\d+)_b(\d+)\.(.*)$", key, re.S)
    return None if m is None else f"{block_path(int(m.group(1)), int(m.group(2)))}.{m.group(3)}"
