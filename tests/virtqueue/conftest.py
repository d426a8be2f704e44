"""Fixtures for the split-virtqueue tests (helpers live in ``vq_helpers``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from vq_helpers import Rig


@pytest.fixture
def make_rig() -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(size: int = 8, **kw: bool) -> Rig:
        rig = Rig(size, **kw)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        assert rig.mem.misses == [], f"access outside guest RAM: {rig.mem.misses}"
        rig.mem.close()
