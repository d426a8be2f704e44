"""Guest memory mapped from a front-end's descriptors: offsets, translation, and every region a hostile
front-end could send (vhost-user.rst "Memory access", SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG)."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

import pytest

from pyvirtio.errors import GuestMemoryError
from pyvirtio.vhost_user.memory import VhostMemory
from pyvirtio.vhost_user.messages import MemRegion

PAGE = mmap.PAGESIZE
UVA = 0x7F00_0000_0000


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = os.memfd_create("pv-test", os.MFD_CLOEXEC)
    os.ftruncate(fd, 16 * PAGE)
    yield fd
    os.close(fd)


@pytest.fixture
def mem() -> Iterator[VhostMemory]:
    m = VhostMemory()
    yield m
    m.clear()


def test_mapped_region_shares_bytes_with_the_front_end(mem: VhostMemory, memfd: int) -> None:
    """A region at mmap_offset maps those bytes of the file: a write on either side is seen on the other."""
    assert mem.set_table((MemRegion(0x10000, 4 * PAGE, UVA, 2 * PAGE),), (memfd,)) is None
    front = mmap.mmap(memfd, 16 * PAGE)
    front[2 * PAGE: 2 * PAGE + 4] = b"abcd"
    assert mem.read(0x10000, 4) == b"abcd"
    mem.write_u32(0x10000 + 8, 0x11223344)
    assert front[2 * PAGE + 8: 2 * PAGE + 12] == bytes.fromhex("44332211")
    front.close()


def test_unaligned_mmap_offset(mem: VhostMemory, memfd: int) -> None:
    """An mmap_offset that is not page-aligned still lands on the right byte."""
    os.pwrite(memfd, b"XYZ", PAGE + 24)
    assert mem.set_table((MemRegion(0, PAGE, UVA, PAGE + 24),), (memfd,)) is None
    assert mem.read(0, 3) == b"XYZ"


def test_accesses_outside_the_regions_are_refused(mem: VhostMemory, memfd: int) -> None:
    """Nothing outside a region is reachable: before, after, across the end, in a hole."""
    assert mem.set_table((MemRegion(0, PAGE, UVA, 0), MemRegion(4 * PAGE, PAGE, UVA + 4 * PAGE, PAGE)),
                         (memfd, memfd)) is None
    for addr, n in ((PAGE, 1), (PAGE - 2, 4), (2 * PAGE, 8), (5 * PAGE, 1), (-1, 1)):
        with pytest.raises(GuestMemoryError):
            mem.read(addr, n)
    assert not mem.contains(PAGE - 2, 4) and mem.contains(4 * PAGE, PAGE)


def test_user_addresses_translate_within_one_region(mem: VhostMemory, memfd: int) -> None:
    """Ring addresses are front-end user addresses: translated when one region holds the whole range."""
    assert mem.set_table((MemRegion(0x100000, 2 * PAGE, UVA, 0),), (memfd,)) is None
    assert mem.uva_to_gpa(UVA + 16, 32) == 0x100010
    assert mem.uva_to_gpa(UVA + 2 * PAGE - 8, 16) is None
    assert mem.uva_to_gpa(UVA - 1, 1) is None


@pytest.mark.parametrize(("regions", "why"), [
    ((MemRegion(0, PAGE, UVA, 0), MemRegion(PAGE // 2, PAGE, UVA + 8 * PAGE, 0)), "overlaps"),
    ((MemRegion(0, PAGE, UVA, 0), MemRegion(8 * PAGE, PAGE, UVA + PAGE // 2, 0)), "uva"),
    ((MemRegion(0, 0, UVA, 0),), "size 0"),
    ((MemRegion(0, 17 * PAGE, UVA, 0),), "outside the file"),
    ((MemRegion(0, 2 * PAGE, UVA, 15 * PAGE),), "outside the file"),
    ((MemRegion((1 << 64) - PAGE, 2 * PAGE, UVA, 0),), "wraps"),
])
def test_bad_tables_change_nothing(mem: VhostMemory, memfd: int, regions: tuple[MemRegion, ...], why: str) -> None:
    """Overlapping regions, regions outside the file, empty or wrapping ones: refused, the old map stays."""
    assert mem.set_table((MemRegion(0, PAGE, UVA, 0),), (memfd,)) is None
    problem = mem.set_table(regions, tuple(memfd for _ in regions))
    assert problem is not None and why in problem, problem
    assert [m.gpa for m in mem.mapped] == [0]


def test_descriptor_that_is_not_a_file(mem: VhostMemory) -> None:
    """An eventfd (or any non-regular file) is not guest memory."""
    efd = os.eventfd(0)
    try:
        problem = mem.set_table((MemRegion(0, PAGE, UVA, 0),), (efd,))
        assert problem is not None and "not a mappable file" in problem
    finally:
        os.close(efd)


def test_add_and_remove_regions(mem: VhostMemory, memfd: int) -> None:
    """CONFIGURE_MEM_SLOTS: regions come and go one at a time; removing matches gpa, uva and size only."""
    r0, r1 = MemRegion(0, PAGE, UVA, 0), MemRegion(8 * PAGE, PAGE, UVA + 8 * PAGE, PAGE)
    assert mem.add(r0, memfd) is None and mem.add(r1, memfd) is None
    assert mem.add(MemRegion(PAGE // 2, PAGE, UVA + 20 * PAGE, 0), memfd) is not None
    assert mem.remove(MemRegion(8 * PAGE, PAGE, UVA + 8 * PAGE, 12345)) is None  # offset ignored
    assert mem.remove(r1) is not None  # gone already
    assert [m.gpa for m in mem.mapped] == [0]
    with pytest.raises(GuestMemoryError):
        mem.read(8 * PAGE, 1)


def test_slots_are_bounded(memfd: int) -> None:
    """No more regions than the slots GET_MAX_MEM_SLOTS announced."""
    m = VhostMemory(max_slots=2)
    assert m.add(MemRegion(0, PAGE, UVA, 0), memfd) is None
    assert m.add(MemRegion(PAGE, PAGE, UVA + PAGE, PAGE), memfd) is None
    problem = m.add(MemRegion(2 * PAGE, PAGE, UVA + 2 * PAGE, 2 * PAGE), memfd)
    assert problem is not None and "slots" in problem
    m.clear()


def test_clear_waits_for_live_views(mem: VhostMemory, memfd: int) -> None:
    """A region whose bytes are still viewed is unmapped once the view is released (no BufferError)."""
    assert mem.set_table((MemRegion(0, PAGE, UVA, 0),), (memfd,)) is None
    view = mem.view(0, 16)
    mem.clear()
    assert mem.mapped == () and mem.size == 0
    view.release()
    assert mem.set_table((MemRegion(0, PAGE, UVA, 0),), (memfd,)) is None  # the zombie is closed on the way
