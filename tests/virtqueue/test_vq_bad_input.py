"""Hostile driver input to the device side: one test per rule, each checking the answer, that nothing but the
documented QueueError escapes, and that no byte outside the used ring (nor outside guest RAM) was touched."""

from __future__ import annotations

import pytest
from vq_helpers import RAM0, RAM1, Rig, changed_outside

from pyvirtio.errors import QueueError
from pyvirtio.spec.constants import VIRTQ_MAX_CHAIN_BYTES, VIRTQ_MAX_SIZE, DescFlag
from pyvirtio.virtqueue import DescriptorChain, DeviceQueue, RingLayout

NEXT, WRITE, INDIRECT = int(DescFlag.NEXT), int(DescFlag.WRITE), int(DescFlag.INDIRECT)


def pop_bad_chain(rig: Rig) -> DescriptorChain:
    """Pop one chain that must be consumed with an error; the device can still return its head with len 0."""
    before = rig.mem.snapshot()
    na = rig.dev.next_avail
    chain = rig.dev.pop()
    assert chain is not None
    assert chain.error is not None
    assert chain.readable == [] and chain.writable == []
    assert rig.dev.next_avail == (na + 1) & 0xFFFF, "a bad chain is still consumed"
    assert changed_outside(rig.mem, before, [rig.used_ring_span()]) == []
    rig.dev.push(chain.head, 0)
    assert rig.used_elem(na) == (chain.head, 0)
    return chain


def test_descriptor_loop(make_rig):
    """virtio 1.4 §2.7.5.2 MUST: drivers MUST NOT add a chain longer than 2^32 bytes; "loops in the descriptor
    chain are forbidden". A loop is consumed as an error chain, it does not hang the device."""
    rig = make_rig(8)
    a = rig.buf(16)
    rig.desc(0, a, 16, NEXT, 1)
    rig.desc(1, a, 16, NEXT, 2)
    rig.desc(2, a, 16, NEXT, 0)
    rig.publish(0)
    assert "loop" in (pop_bad_chain(rig).error or "")


def test_self_loop_single_slot_queue(make_rig):
    """virtio 1.4 §2.7.5.2 MUST: loops are forbidden — also the one-descriptor self loop of a size-1 queue."""
    rig = make_rig(1)
    rig.desc(0, rig.buf(8), 8, NEXT, 0)
    rig.publish(0)
    assert "loop" in (pop_bad_chain(rig).error or "")


def test_indirect_loop(make_rig):
    """virtio 1.4 §2.7.5.2 MUST: loops are forbidden, inside an indirect table too (bounded by len/16)."""
    rig = make_rig(8, indirect=True)
    a = rig.buf(16)
    t = rig.table([(a, 16, NEXT, 1), (a, 16, NEXT, 0)])
    rig.desc(0, t, 32, INDIRECT, 0)
    rig.publish(0)
    assert "loop" in (pop_bad_chain(rig).error or "")


def test_next_out_of_range(make_rig):
    """virtio 1.4 §2.7.5: ``next`` indexes the table of Queue Size entries; next >= size is invalid."""
    rig = make_rig(8)
    rig.desc(3, rig.buf(8), 8, NEXT, 8)
    rig.publish(3)
    assert "next 8 >= queue size" in (pop_bad_chain(rig).error or "")


def test_indirect_next_out_of_range(make_rig):
    """virtio 1.4 §2.7.5.3: an indirect table has len/16 entries; an entry's next must index inside it."""
    rig = make_rig(8, indirect=True)
    a = rig.buf(8)
    t = rig.table([(a, 8, NEXT, 2), (a, 8, 0, 0)])
    rig.desc(0, t, 32, INDIRECT, 0)
    rig.publish(0)
    assert "next 2 >= table size 2" in (pop_bad_chain(rig).error or "")


def test_chain_longer_than_queue(make_rig):
    """virtio 1.4 §2.7.5.3.1 MUST: a driver MUST NOT create a descriptor chain longer than the Queue Size
    (here: a loop-free indirect table of size+1 entries)."""
    rig = make_rig(4, indirect=True)
    a = rig.buf(8)
    t = rig.table([(a, 8, NEXT, j + 1) for j in range(4)] + [(a, 8, 0, 0)])
    rig.desc(0, t, 80, INDIRECT, 0)
    rig.publish(0)
    assert "longer than queue size 4" in (pop_bad_chain(rig).error or "")


def test_chain_exactly_queue_size_is_fine(make_rig):
    """virtio 1.4 §2.7.5.3.1: a chain of exactly Queue Size descriptors is allowed (boundary of the rule)."""
    rig = make_rig(4, indirect=True)
    a = rig.buf(8)
    t = rig.table([(a, 8, NEXT, j + 1) for j in range(3)] + [(a, 8, 0, 0)])
    rig.desc(0, t, 64, INDIRECT, 0)
    rig.publish(0)
    chain = rig.dev.pop()
    assert chain is not None and chain.error is None and chain.readable == [(a, 8)] * 4


def test_nested_indirect(make_rig):
    """virtio 1.4 §2.7.5.3.1 MUST: the driver MUST NOT set INDIRECT within an indirect descriptor."""
    rig = make_rig(8, indirect=True)
    inner = rig.table([(rig.buf(8), 8, 0, 0)])
    t = rig.table([(inner, 16, INDIRECT, 0)])
    rig.desc(0, t, 16, INDIRECT, 0)
    rig.publish(0)
    assert "inside indirect" in (pop_bad_chain(rig).error or "")


@pytest.mark.parametrize("length", [0, 8, 24, 17])
def test_indirect_len_not_multiple_of_16(make_rig, length):
    """virtio 1.4 §2.7.5.3: the table holds len/16 descriptors, so len must be a non-zero multiple of 16."""
    rig = make_rig(8, indirect=True)
    t = rig.table([(rig.buf(8), 8, 0, 0)] * 2)
    rig.desc(0, t, length, INDIRECT, 0)
    rig.publish(0)
    assert "multiple of 16" in (pop_bad_chain(rig).error or "")


def test_indirect_table_too_many_entries(make_rig):
    """virtio 1.4 §2.7.5.3 (rust-vmm limit): more than 65535 entries cannot be chained with a le16 next."""
    rig = make_rig(8, indirect=True)
    rig.desc(0, RAM0[0], 16 * 0x10000, INDIRECT, 0)
    rig.publish(0)
    assert "65535" in (pop_bad_chain(rig).error or "")


def test_indirect_with_next(make_rig):
    """virtio 1.4 §2.7.5.3.1 MUST: a driver MUST NOT set both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT."""
    rig = make_rig(8, indirect=True)
    t = rig.table([(rig.buf(8), 8, 0, 0)])
    rig.desc(0, t, 16, INDIRECT | NEXT, 1)
    rig.desc(1, rig.buf(8), 8, 0, 0)
    rig.publish(0)
    assert "INDIRECT and NEXT" in (pop_bad_chain(rig).error or "")


def test_indirect_without_negotiation(make_rig):
    """virtio 1.4 §2.7.5.3.1 MUST: the driver MUST NOT set INDIRECT unless VIRTIO_F_INDIRECT_DESC was
    negotiated."""
    rig = make_rig(8, indirect=False)
    t = rig.table([(rig.buf(8), 8, 0, 0)])
    rig.desc(0, t, 16, INDIRECT, 0)
    rig.publish(0)
    assert "VIRTIO_F_INDIRECT_DESC" in (pop_bad_chain(rig).error or "")


@pytest.mark.spec("dev:split/indirect#1", "dev:split/indirect#2")
def test_direct_chain_then_indirect_is_valid(make_rig):
    """virtio 1.4 §2.7.5.3.2 MUST: the device MUST handle normal chained descriptors followed by one INDIRECT
    descriptor, and MUST ignore the WRITE flag of the descriptor that refers to the table."""
    rig = make_rig(8, indirect=True)
    a, b, c = rig.buf(4), rig.buf(8), rig.buf(16)
    t = rig.table([(b, 8, NEXT, 1), (c, 16, WRITE, 0)])
    rig.desc(5, a, 4, NEXT, 2)
    rig.desc(2, t, 32, INDIRECT | WRITE, 0)
    rig.publish(5)
    chain = rig.dev.pop()
    assert chain == DescriptorChain(5, [(a, 4), (b, 8)], [(c, 16)])


@pytest.mark.parametrize(
    ("addr", "length", "why"),
    [
        (RAM0[1] - 8, 16, "crosses the end of RAM0"),
        (RAM0[1] + 0x1000, 16, "in the hole between regions"),
        (RAM1[0] + RAM1[1], 1, "just past the last region"),
        (1 << 63, 16, "far above guest RAM"),
        (RAM1[0] - 1, 2, "straddles the start of RAM1"),
    ],
)
def test_segment_outside_guest_memory(make_rig, addr, length, why):
    """virtio 1.4 §2.7.5 (addr is a guest-physical address): a buffer outside guest RAM is an error chain
    and is never accessed."""
    rig = make_rig(8)
    rig.desc(0, rig.buf(8), 8, NEXT, 1)
    rig.desc(1, addr, length, WRITE, 0)
    rig.publish(0)
    assert "outside guest memory" in (pop_bad_chain(rig).error or ""), why


def test_indirect_table_outside_guest_memory(make_rig):
    """virtio 1.4 §2.7.5.3: the indirect table itself must be readable guest memory."""
    rig = make_rig(8, indirect=True)
    rig.desc(0, RAM0[1] - 16, 32, INDIRECT, 0)
    rig.publish(0)
    assert "outside guest memory" in (pop_bad_chain(rig).error or "")


def test_indirect_entry_outside_guest_memory(make_rig):
    """virtio 1.4 §2.7.5.3: segments named by an indirect table are checked like direct ones."""
    rig = make_rig(8, indirect=True)
    t = rig.table([(RAM1[0] + RAM1[1] - 4, 8, 0, 0)])
    rig.desc(0, t, 16, INDIRECT, 0)
    rig.publish(0)
    assert "outside guest memory" in (pop_bad_chain(rig).error or "")


def _big_chain(rig: Rig, seg: int, count: int) -> None:
    """``count`` direct descriptors that all name the same ``seg``-byte buffer (exact-integer total)."""
    a = 0x40000
    for i in range(count):
        rig.desc(i, a, seg, NEXT if i < count - 1 else 0, i + 1)
    rig.publish(0)


def test_chain_length_over_4gib(make_rig):
    """virtio 1.4 §2.7.5.2 MUST: drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total
    (32768 descriptors x 131073 bytes = 2^32 + 32768; the sum is computed exactly, without u32 wrap)."""
    rig = make_rig(VIRTQ_MAX_SIZE)
    _big_chain(rig, 131073, VIRTQ_MAX_SIZE)
    assert "2^32" in (pop_bad_chain(rig).error or "")


def test_chain_length_exactly_4gib_is_fine(make_rig):
    """virtio 1.4 §2.7.5.2: exactly 2^32 bytes is still allowed (the limit is "longer than 2^32")."""
    rig = make_rig(VIRTQ_MAX_SIZE)
    _big_chain(rig, 131072, VIRTQ_MAX_SIZE)
    chain = rig.dev.pop()
    assert chain is not None and chain.error is None
    assert chain.readable_len == VIRTQ_MAX_CHAIN_BYTES


def test_avail_idx_jump_beyond_size(make_rig):
    """virtio 1.4 §2.7.6 MUST: a driver MUST NOT decrement avail idx — seen by the device as idx moving by
    more than Queue Size: ring-level QueueError, nothing consumed, nothing written."""
    rig = make_rig(8)
    rig.set_avail_idx(9)
    before = rig.mem.snapshot()
    with pytest.raises(QueueError, match="more than queue size"):
        rig.dev.pop()
    with pytest.raises(QueueError):
        rig.dev.avail_pending()
    assert rig.dev.next_avail == 0
    assert changed_outside(rig.mem, before, []) == []
    rig.set_avail_idx(0xFFFF)  # "decremented" from 0
    with pytest.raises(QueueError):
        rig.dev.pop()


def test_avail_idx_exactly_size_ahead_is_fine(make_rig):
    """virtio 1.4 §2.7.6: up to Queue Size entries may be outstanding (boundary of the idx rule)."""
    rig = make_rig(8)
    for i in range(8):
        rig.desc(i, rig.buf(8), 8)
        rig.publish(i)
    assert rig.dev.avail_pending() == 8
    assert [c.head for c in iter(rig.dev.pop, None)] == list(range(8))


def test_head_out_of_range(make_rig):
    """virtio 1.4 §2.7.6: each avail ring entry is the head of a chain in the table, so head >= Queue Size is
    a ring-level QueueError; the entry is not consumed."""
    rig = make_rig(8)
    rig.publish(8)
    before = rig.mem.snapshot()
    with pytest.raises(QueueError, match="head 8"):
        rig.dev.pop()
    assert rig.dev.next_avail == 0
    assert changed_outside(rig.mem, before, []) == []


def test_readable_after_writable(make_rig):
    """virtio 1.4 §2.7.4.2 MUST: the driver MUST place any device-writable descriptor elements after any
    device-readable descriptor elements."""
    rig = make_rig(8)
    rig.desc(0, rig.buf(8), 8, WRITE | NEXT, 1)
    rig.desc(1, rig.buf(8), 8, 0, 0)
    rig.publish(0)
    assert "after a device-writable" in (pop_bad_chain(rig).error or "")


def test_readable_in_indirect_after_direct_writable(make_rig):
    """virtio 1.4 §2.7.4.2 MUST: readable-before-writable holds across the direct/indirect boundary."""
    rig = make_rig(8, indirect=True)
    t = rig.table([(rig.buf(8), 8, 0, 0)])
    rig.desc(0, rig.buf(8), 8, WRITE | NEXT, 1)
    rig.desc(1, t, 16, INDIRECT, 0)
    rig.publish(0)
    assert "after a device-writable" in (pop_bad_chain(rig).error or "")


@pytest.mark.parametrize("n", [3, 6, 12, 100, 65535, 1 << 16, -1])
def test_non_power_of_two_size(make_rig, n):
    """virtio 1.4 §2.7: Queue Size is always a power of 2, at most 32768 (and <= the device maximum)."""
    rig = make_rig(8)
    q = DeviceQueue(rig.mem, 16)
    assert q.set_size(n) is False
    assert q.size == 16
    assert q.set_size(8) is True and q.size == 8
    assert q.set_size(32) is False, "larger than max_size"
    assert q.set_size(0) is True, "0 = queue unavailable"
    with pytest.raises(QueueError):
        q.activate()
    with pytest.raises(ValueError):
        DeviceQueue(rig.mem, 24)
    with pytest.raises(ValueError):
        RingLayout.contiguous(0, 24)


@pytest.mark.parametrize(
    ("attr", "value", "match"),
    [
        ("desc_table", 0x1008, "16-byte aligned"),
        ("avail_ring", 0x3001, "2-byte aligned"),
        ("used_ring", 0x3002, "4-byte aligned"),
        ("desc_table", RAM0[1] - 0x40, "not inside guest memory"),
        ("avail_ring", RAM0[1] + 0x100, "not inside guest memory"),
        ("used_ring", RAM1[0] + RAM1[1] - 0x40, "not inside guest memory"),
    ],
)
def test_activate_rejects_bad_ring_address(make_rig, attr, value, match):
    """virtio 1.4 §2.7.1 MUST: each part aligned (desc 16, avail 2, used 4); and every part lies in guest RAM.
    activate() raises QueueError and the queue stays not ready."""
    rig = make_rig(8)
    q = DeviceQueue(rig.mem, 8)
    q.desc_table, q.avail_ring, q.used_ring = 0x1000, 0x2000, 0x3000
    setattr(q, attr, value)
    with pytest.raises(QueueError, match=match):
        q.activate()
    assert not q.ready
    assert q.pop() is None


def test_large_indirect_table_walks_only_the_chain(make_rig):
    """virtio 1.4 §2.7.5.3: a table of len/16 entries may be larger than the chain it holds (here 1000 entries,
    first at index 0, next jumping to 999 then 5); the walk visits only the chain and still bounds its length
    by Queue Size (§2.7.5.3.1), even when the table describes a much longer loop-free chain."""
    rig = make_rig(8, indirect=True)
    a = rig.buf(8)
    entries = [(a, 8, NEXT, j + 1) for j in range(1000)]
    entries[0] = (a, 8, NEXT, 999)
    entries[999] = (a, 8, NEXT | WRITE, 5)
    entries[5] = (a, 8, WRITE, 0)
    t = rig.table(entries)
    rig.desc(0, t, 16 * 1000, INDIRECT, 0)
    rig.publish(0)
    chain = rig.dev.pop()
    assert chain is not None and chain.error is None
    assert chain.readable == [(a, 8)] and chain.writable == [(a, 8), (a, 8)]
    rig.dev.push(0, 0)
    long_chain = rig.table([(a, 8, NEXT, j + 1) for j in range(999)] + [(a, 8, 0, 0)])
    rig.desc(1, long_chain, 16 * 1000, INDIRECT, 0)
    rig.publish(1)
    assert "longer than queue size 8" in (pop_bad_chain(rig).error or "")
