"""Layout arithmetic, descriptor encoding, DescriptorChain gather/scatter and the guest allocator."""

from __future__ import annotations

import pytest
from vq_helpers import ALLOC_BASE, RAM0, make_memory

from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import InvalidStateError
from pyvirtio.virtqueue import (
    Descriptor,
    DescriptorChain,
    RingLayout,
    avail_ring_size,
    desc_table_size,
    used_ring_size,
)


@pytest.mark.parametrize("n", [1, 2, 256, 32768])
def test_part_sizes(n):
    """virtio 1.4 §2.7 table: Descriptor Table 16*N, Available Ring 6+2*N, Used Ring 6+8*N bytes."""
    assert desc_table_size(n) == 16 * n
    assert avail_ring_size(n) == 6 + 2 * n
    assert used_ring_size(n) == 6 + 8 * n


def test_contiguous_layout_alignment():
    """virtio 1.4 §2.7.1 MUST: each part starts at a multiple of its alignment (16, 2, 4)."""
    lay = RingLayout.contiguous(0x1000, 1)  # avail ends at 0x1010 + 8 -> used aligned up to 0x1018
    assert (lay.desc, lay.avail, lay.used) == (0x1000, 0x1010, 0x1018)
    assert lay.total_bytes == 16 + 8 + 14
    lay = RingLayout.contiguous(0x1000, 2)  # avail ends at 0x1020 + 10 = 0x102A -> used at 0x102C
    assert (lay.avail, lay.used) == (0x1020, 0x102C)
    assert lay.total_bytes == 0x2C + 22
    lay = RingLayout.contiguous(0, 256)
    assert (lay.avail, lay.used, lay.total_bytes) == (4096, 4616, 4616 + 2054)  # 4096 + 518 -> 4616
    with pytest.raises(ValueError):
        RingLayout.contiguous(0x1008, 8)


def test_legacy_layout():
    """virtio 1.4 §2.7.2 (legacy): desc table, avail ring, padding to Queue Align, used ring; total
    ALIGN(16N + 2(3+N)) + ALIGN(2*3 + 8N) (the spec's ALIGN macro itself is mis-written, see the report)."""
    lay = RingLayout.legacy(0x10000, 256)
    assert lay.avail == 0x10000 + 4096
    assert lay.used == 0x10000 + 8192  # 4096 + 518 rounded up to a page
    assert lay.total_bytes == 8192 + 2054  # the last page is allocated whole by the driver: ALIGN(2054) = 4096


def test_descriptor_encoding():
    """virtio 1.4 §2.7.5: struct virtq_desc = le64 addr, le32 len, le16 flags, le16 next (16 bytes)."""
    d = Descriptor(0x1122334455667788, 0xAABBCCDD, 0x0003, 0x0102)
    raw = d.to_bytes()
    assert raw == bytes.fromhex("8877665544332211ddccbbaa03000201")
    assert Descriptor.from_bytes(raw) == d
    mem = make_memory()
    try:
        d.store(mem, 0x100)
        assert Descriptor.load(mem, 0x100) == d
    finally:
        mem.close()


@pytest.mark.spec("dev:split/framing#1", "dev:split/desc#1")
def test_chain_gather_scatter():
    """virtio 1.4 §2.7.4: the buffer is the concatenation of its readable (then writable) segments, whatever
    their arrangement; the device never writes past the writable part (§2.7.5.1 MUST NOT write readable)."""
    mem = make_memory()
    try:
        mem.write(0x100, b"abc")
        mem.write(0x200, b"defgh")
        chain = DescriptorChain(3, [(0x100, 3), (0x200, 5)], [(0x300, 2), (0x400, 4)])
        assert (chain.readable_len, chain.writable_len) == (8, 6)
        assert chain.read(mem) == b"abcdefgh"
        assert chain.read(mem, 4) == b"abcd"
        assert chain.read(mem, 3, offset=2) == b"cde"
        assert chain.read(mem, 100, offset=6) == b"gh"
        assert chain.read(mem, offset=9) == b""
        assert chain.write(mem, b"0123456789") == 6
        assert mem.read(0x300, 2) == b"01" and mem.read(0x400, 4) == b"2345"
        assert mem.read(0x404, 4) == b"\0" * 4, "truncated, nothing past the writable part"
        assert chain.write(mem, b"XY", offset=1) == 2
        assert mem.read(0x300, 2) == b"0X" and mem.read(0x400, 1) == b"Y"
        assert chain.write(mem, b"Z", offset=6) == 0
        one = DescriptorChain(0, [(0x200, 5)], [])
        assert one.read(mem, 2) == b"de" and one.read(mem) == b"defgh"
        with pytest.raises(ValueError):
            chain.read(mem, offset=-1)
    finally:
        mem.close()


def test_allocator_basics():
    """pyvirtio.dma: aligned first-fit inside [base, base+size); MemoryError when exhausted; free coalesces;
    ``allocation(addr)`` gives a block's length."""
    mem = make_memory()
    try:
        al = GuestAllocator(mem, ALLOC_BASE + 4, 0x100)
        a = al.alloc(10, 16)
        assert a % 16 == 0 and a >= ALLOC_BASE + 4
        b = al.alloc_bytes(b"xyz", 1)
        assert mem.read(b, 3) == b"xyz"
        assert (al.allocation(a), al.allocation(b), al.allocation(b + 1)) == (10, 3, None)
        with pytest.raises(MemoryError):
            al.alloc(0x100)
        al.free(a)
        al.free(b)
        with pytest.raises(ValueError):
            al.free(b)
        assert al.alloc(0x100, 1) == ALLOC_BASE + 4
        for bad in (lambda: al.alloc(0), lambda: al.alloc(4, 3)):
            with pytest.raises(ValueError):
                bad()
        with pytest.raises(ValueError):
            GuestAllocator(mem, RAM0[1] - 0x10, 0x20)
    finally:
        mem.close()


def test_allocator_state_round_trip():
    """GuestAllocator.save_state/from_state (S4 image): the restored allocator has the same blocks and
    hands out the same free space; malformed or overlapping block lists are rejected with InvalidStateError
    (the one error type for bad state). Field-by-field rejection is in
    tests/test_state_roundtrip.py."""
    mem = make_memory()
    try:
        al = GuestAllocator(mem, ALLOC_BASE, 0x1000)
        blocks = [al.alloc(n, 64) for n in (10, 100, 7)]
        al.free(blocks[1])
        st = al.save_state()
        again = GuestAllocator.from_state(mem, st)
        assert again.save_state() == st
        assert again.free_bytes == al.free_bytes
        assert again.alloc(100, 64) == al.alloc(100, 64)
        bad = {**st, "allocated": [[ALLOC_BASE, 16], [ALLOC_BASE + 8, 16]]}
        with pytest.raises(InvalidStateError, match=r"'allocated\[1\]'"):
            GuestAllocator.from_state(mem, bad)
        with pytest.raises(InvalidStateError, match="not inside guest memory"):
            GuestAllocator.from_state(mem, {**st, "base": RAM0[1] - 0x10, "allocated": []})
        assert GuestAllocator.from_state(mem, al.state()).state() == al.state()
    finally:
        mem.close()
