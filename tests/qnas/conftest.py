"""Fixtures shared by the tests of the search-side package: the default and skip spaces, random archs."""
from __future__ import annotations

import numpy as np
import pytest

from qnas.arch import Arch
from qnas.space import SearchSpace, SpaceConfig

N_RANDOM = 300


@pytest.fixture(scope="session")
def space() -> SearchSpace:
    return SearchSpace()


@pytest.fixture(scope="session")
def skip_space() -> SearchSpace:
    return SearchSpace(SpaceConfig(allow_skip=True))


@pytest.fixture(scope="session")
def archs(space) -> list[Arch]:
    """N_RANDOM archs sampled from the default space (seeded)."""
    rng = np.random.default_rng(12345)
    return [space.sample(rng) for _ in range(N_RANDOM)]


@pytest.fixture(scope="session")
def skip_archs(skip_space) -> list[Arch]:
    """N_RANDOM archs sampled from the skip space (seeded)."""
    rng = np.random.default_rng(54321)
    return [skip_space.sample(rng) for _ in range(N_RANDOM)]
