"""Guest memory: bounds-checked regions, memfd backing, zero-copy views."""

from __future__ import annotations

import mmap
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvirtio.errors import GuestMemoryError
from pyvirtio.memory import Backing, GuestMemory


def test_two_regions_and_hole() -> None:
    mem = GuestMemory.from_ranges([(0, 0x1000), (0x10000, 0x1000)])
    mem.write(0x10FF0, b"x" * 16)
    assert mem.read(0x10FF0, 16) == b"x" * 16
    with pytest.raises(GuestMemoryError):
        mem.read(0x2000, 1)  # hole
    with pytest.raises(GuestMemoryError):
        mem.write(0xFF8, b"y" * 16)  # crosses the end of region 0
    assert mem.read(0xFF8, 8) == bytes(8)  # nothing written


def test_little_endian_helpers() -> None:
    mem = GuestMemory(0x1000)
    mem.write_u64(8, 0x0102030405060708)
    assert mem.read(8, 8) == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert mem.read_u32(8) == 0x05060708 and mem.read_u16(14) == 0x0102
    with pytest.raises(GuestMemoryError):
        mem.read_u32(0xFFE)


def test_memfd_backing_is_shareable() -> None:
    mem = GuestMemory(0x2000, backing=Backing.MEMFD)
    r = mem.regions[0]
    other = mmap.mmap(r.fd, r.size, flags=mmap.MAP_SHARED)
    mem.write(0x100, b"shared")
    assert other[0x100:0x106] == b"shared"
    other.close()
    assert os.fstat(r.fd).st_size == 0x2000


def test_view_is_zero_copy() -> None:
    mem = GuestMemory(0x1000)
    v = mem.view(0x10, 4)
    v[:] = b"abcd"
    assert mem.read(0x10, 4) == b"abcd"
    v.release()


@given(st.integers(-10, 0x3000), st.integers(0, 0x3000))
def test_access_inside_or_refused(addr: int, n: int) -> None:
    """Property: an access either lies inside one region or raises GuestMemoryError — never anything else."""
    mem = GuestMemory.from_ranges([(0, 0x1000), (0x2000, 0x800)])
    inside = (addr >= 0 and addr + n <= 0x1000) or (addr >= 0x2000 and addr + n <= 0x2800)
    try:
        assert len(mem.read(addr, n)) == n
        assert inside
    except GuestMemoryError:
        assert not inside
