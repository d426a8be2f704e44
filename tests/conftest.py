"""Shared fixtures: a machine with a device plugged and a guest allocator."""

from __future__ import annotations

import pytest

from pyvirtio.dma import GuestAllocator
from pyvirtio.machine import Machine

HEAP_BASE = 1 << 20
HEAP_SIZE = 12 << 20


@pytest.fixture
def machine() -> Machine:
    return Machine(16 << 20, seed=1)


@pytest.fixture
def alloc(machine: Machine) -> GuestAllocator:
    return GuestAllocator(machine.memory, HEAP_BASE, HEAP_SIZE)
