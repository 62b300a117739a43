"""Small torch helpers shared across qnas."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (None or 0: leave as is), restoring the count after.

    Results depend on the thread count at float rounding, and on a busy
    2-core machine one thread is often faster than two (contention)."""
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
