"""The data-set kinds qnas reads, by name: the one list that ``--data``, ``--from`` and
:func:`qnas.data.load_dataset` share.

Torch-free on purpose: the CLI builds its choices from it without importing the loaders
(:mod:`qnas.data` maps each kind to its loader).
"""
from __future__ import annotations

__all__ = ["DATASET_KINDS", "BUNDLED_KINDS", "needs_path", "path_kinds"]

#: Valid ``kind`` values for :func:`qnas.data.load_dataset`, ``--data`` and ``qnas calib build --from``.
DATASET_KINDS: tuple[str, ...] = ("digits", "imagefolder", "cifar10", "npz")
#: Kinds shipped with qnas; they take no path.
BUNDLED_KINDS: frozenset[str] = frozenset({"digits"})


def needs_path(kind: str) -> bool:
    """Whether ``kind`` reads a user's files (``data_path`` / ``--data-path``)."""
    return kind not in BUNDLED_KINDS


def path_kinds() -> tuple[str, ...]:
    """The kinds that need a path, in :data:`DATASET_KINDS` order."""
    return tuple(k for k in DATASET_KINDS if needs_path(k))
