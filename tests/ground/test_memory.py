"""Guest memory: bounds-checked regions, memfd backing, zero-copy views."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

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


# -- bounded memory: zeroing gives pages back, unwritten chunks are known, files load copy-on-write -------------


@pytest.mark.parametrize("backing", list(Backing))
def test_zero_fill_gives_whole_pages_back(backing: Backing) -> None:
    """fill(0) sets every byte to zero, partial pages at either end included; the whole pages in between go back
    to the kernel, so the chunks that held them read as never written."""
    mem = GuestMemory(8 << 20, backing=backing)
    r = mem.regions[0]
    assert r.written_chunks(1 << 20) == [False] * 8
    mem.fill(0x1000, (3 << 20) + 0x1000, 0xAB)
    assert r.written_chunks(1 << 20) == [True] * 4 + [False] * 4
    mem.fill(0x1001, 3 << 20, 0)
    assert r.written_chunks(1 << 20) == [True, False, False, True] + [False] * 4
    assert mem.read(0x1000, 2) == b"\xab\x00" and mem.read(0x1001 + (3 << 20) - 1, 2) == b"\x00\xab"
    assert mem.read(0x2000, 1 << 20) == bytes(1 << 20)  # (reading maps pages: they may count as written now)


def test_written_chunks_refuses_a_chunk_that_is_not_whole_pages() -> None:
    with pytest.raises(ValueError, match="page size"):
        GuestMemory(1 << 20).regions[0].written_chunks(1000)


@pytest.mark.parametrize("backing", list(Backing))
def test_load_file_replaces_the_bytes_in_place(backing: Backing, tmp_path: Path) -> None:
    """A region loaded from a file holds the file's bytes at the same address (views taken before see them);
    writes stay in guest memory, never in the file; zeroing after a load really zeroes."""
    p = tmp_path / "f"
    p.write_bytes(b"\x00" * mmap.ALLOCATIONGRANULARITY + b"F" * (2 << 20))
    mem = GuestMemory(2 << 20, backing=backing)
    mem.write(0, b"old")
    view = mem.view(0, 3)
    with open(p, "rb") as f:
        mem.regions[0].load_file(f.fileno(), mmap.ALLOCATIONGRANULARITY)
    assert bytes(view) == b"FFF" and mem.read((2 << 20) - 1, 1) == b"F"
    mem.write(0, b"new")
    mem.fill(4096, 8192, 0)
    assert mem.read(0, 4) == b"newF" and mem.read(4096, 8192) == bytes(8192)
    assert p.read_bytes()[mmap.ALLOCATIONGRANULARITY:][:4] == b"FFFF"
    assert mem.regions[0].written_chunks(1 << 20) == (None if backing is Backing.ANONYMOUS else [True, True])
    view.release()


def test_load_file_at_an_unaligned_offset_copies(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"xyz" + b"G" * 0x2000)
    mem = GuestMemory(0x2000)
    with open(p, "rb") as f:
        mem.regions[0].load_file(f.fileno(), 3)
    assert mem.read(0, 0x2000) == b"G" * 0x2000


def test_load_file_shorter_than_the_region_is_an_oserror(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"G" * 10)
    mem = GuestMemory(0x2000, backing=Backing.MEMFD)
    with open(p, "rb") as f, pytest.raises(OSError):
        mem.regions[0].load_file(f.fileno(), 0)


def test_locate_is_the_bounds_checked_buffer() -> None:
    mem = GuestMemory.from_ranges([(0, 0x1000), (0x10000, 0x1000)])
    buf, off = mem.locate(0x10010, 4)
    buf[off : off + 4] = b"abcd"
    assert mem.read(0x10010, 4) == b"abcd" and off == 0x10
    with pytest.raises(GuestMemoryError):
        mem.locate(0xFFE, 4)


def test_a_loaded_region_loads_again(tmp_path: Path) -> None:
    """A second load replaces the first one's content, guest writes included."""
    g = mmap.ALLOCATIONGRANULARITY
    p = tmp_path / "f"
    p.write_bytes(b"A" * g + b"B" * g)
    mem = GuestMemory(g)
    with open(p, "rb") as f:
        mem.regions[0].load_file(f.fileno(), 0)
        mem.write(0, b"x")
        mem.regions[0].load_file(f.fileno(), g)
    assert mem.read(0, 2) == b"BB" and mem.read(g - 1, 1) == b"B"
