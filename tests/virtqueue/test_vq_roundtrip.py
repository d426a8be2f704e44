"""Driver <-> device traffic through real rings: bytes on the wire, reclaim, wrap, reset, rewind, misuse."""

from __future__ import annotations

import pytest
from vq_helpers import RAM0, Rig

from pyvirtio.errors import InvalidStateError, QueueError
from pyvirtio.spec.constants import DescFlag
from pyvirtio.virtqueue import Descriptor, DeviceQueue, DriverQueue, QueueFull, RingLayout

NEXT, WRITE, INDIRECT = int(DescFlag.NEXT), int(DescFlag.WRITE), int(DescFlag.INDIRECT)


def test_bytes_on_the_wire(make_rig):
    """virtio 1.4 §2.7.13.1-3 and §2.7.8: descriptors chained with NEXT, WRITE on device-writable elements,
    head in avail.ring[idx % size], then idx; the device writes {id, len} then used.idx."""
    rig = make_rig(8)
    a, b, c = rig.buf(12, b"header-bytes"), rig.buf(5, b"hello"), rig.buf(32)
    head = rig.drv.add([(a, 12), (b, 5)], [(c, 32)], "tok")
    assert head == 0
    d = rig.layout.desc
    assert Descriptor.load(rig.mem, d) == Descriptor(a, 12, NEXT, 1)
    assert Descriptor.load(rig.mem, d + 16) == Descriptor(b, 5, NEXT, 2)
    assert Descriptor.load(rig.mem, d + 32).flags == WRITE  # last: no NEXT
    assert rig.u16(rig.layout.avail + 4) == 0 and rig.u16(rig.layout.avail + 2) == 1
    chain = rig.dev.pop()
    assert chain is not None and chain.error is None
    assert chain.readable == [(a, 12), (b, 5)] and chain.writable == [(c, 32)]
    assert chain.read(rig.mem) == b"header-byteshello"
    assert chain.write(rig.mem, b"reply") == 5
    rig.dev.push(chain.head, 5)
    assert rig.used_elem(0) == (0, 5) and rig.used_idx == 1
    assert rig.drv.get_used() == ("tok", 5)
    assert rig.mem.read(c, 5) == b"reply"
    assert rig.drv.num_free == 8 and rig.drv.in_flight == 0


def test_queue_full_and_limits(make_rig):
    """virtio 1.4 §2.7.13.1: the driver needs free descriptors for a buffer (QueueFull otherwise) and MUST NOT
    create a chain longer than Queue Size (§2.7.5.3.1: QueueError, never QueueFull)."""
    rig = make_rig(4)
    a = rig.buf(8)
    rig.drv.add([(a, 8)] * 3, [], 1)
    assert rig.drv.num_free == 1
    with pytest.raises(QueueFull):
        rig.drv.add([(a, 8)], [(a, 8)], 2)
    assert rig.drv.num_free == 1 and rig.drv.avail_idx == 1, "a failed add changes nothing"
    rig.drv.add([(a, 8)], [], 3)
    with pytest.raises(QueueFull):
        rig.drv.add([(a, 8)], [], 4)
    with pytest.raises(QueueError) as exc:
        rig.drv.add([(a, 8)] * 5, [], 5)
    assert not isinstance(exc.value, QueueFull)
    with pytest.raises(ValueError):
        rig.drv.add([], [], 6)
    with pytest.raises(ValueError):
        rig.drv.add([(a, 8)], [], None)
    with pytest.raises(ValueError):
        rig.drv.add([(a, 1 << 32)], [], 7)


def test_indirect_uses_one_descriptor_and_frees_table(make_rig):
    """virtio 1.4 §2.7.5.3: with VIRTIO_F_INDIRECT_DESC a multi-segment buffer takes one ring descriptor that
    points at a table of len/16 entries; the table is released when the buffer is reclaimed."""
    rig = make_rig(4, indirect=True)
    bufs = [rig.buf(8) for _ in range(6)]
    allocs = rig.alloc.allocations
    head = rig.drv.add([(x, 8) for x in bufs[:2]], [(x, 8) for x in bufs[2:4]], "t")
    assert rig.drv.num_free == 3
    d = Descriptor.load(rig.mem, rig.layout.desc + 16 * head)
    assert d.flags == INDIRECT and d.len == 64
    assert Descriptor.load(rig.mem, d.addr + 48) == Descriptor(bufs[3], 8, WRITE, 4)
    chain = rig.dev.pop()
    assert chain is not None
    assert chain.readable == [(bufs[0], 8), (bufs[1], 8)] and chain.writable == [(bufs[2], 8), (bufs[3], 8)]
    rig.dev.push(chain.head, 16)
    assert rig.drv.get_used() == ("t", 16)
    assert rig.alloc.allocations == allocs
    single = rig.drv.add([(bufs[0], 8)], [], "one")  # Linux: one segment never goes indirect
    assert Descriptor.load(rig.mem, rig.layout.desc + 16 * single).flags == 0


def test_indirect_falls_back_to_direct_when_allocator_is_full(make_rig):
    """Linux virtqueue_add_split: if the indirect table cannot be allocated, use direct descriptors."""
    rig = make_rig(8, indirect=True)
    a = rig.buf(8)
    while True:
        try:
            rig.alloc.alloc(16, 16)
        except MemoryError:
            break
    rig.drv.add([(a, 8), (a, 8)], [(a, 8)], "direct")
    assert rig.drv.num_free == 5
    chain = rig.dev.pop()
    assert chain is not None and chain.error is None and len(chain.readable) == 2


def test_out_of_order_completion_across_u16_wrap(make_rig):
    """virtio 1.4 §2.7.13.3: avail and used idx are free-running and wrap naturally at 65536; completion order
    is the device's (§2.7.8), so buffers are reclaimed out of order across the 65535 -> 0 wrap."""
    rig = make_rig(8, indirect=False)
    a, b = rig.buf(64), rig.buf(64)
    token = 0
    reclaimed: list[tuple[object, int]] = []
    expected: list[tuple[object, int]] = []
    while token < 0x10000 + 0x40:  # past the wrap of every index
        batch = []
        for _ in range(2):
            rig.drv.add([(a, 16)], [(b, 8), (b, 8), (b, 8)], token)
            batch.append(token)
            token += 1
        chains = [rig.dev.pop(), rig.dev.pop()]
        for chain, tok in reversed(list(zip(chains, batch, strict=True))):
            assert chain is not None and chain.writable_len == 24
            rig.dev.push(chain.head, tok % 25)
            expected.append((tok, tok % 25))
        reclaimed += rig.drv.drain_used()
    assert reclaimed == expected
    assert rig.drv.avail_idx == token & 0xFFFF == rig.dev.next_avail == rig.dev.next_used == rig.used_idx
    assert rig.drv.num_free == rig.drv.num_max


@pytest.mark.parametrize(
    ("what", "corrupt"),
    [
        ("used idx jumps past what is in flight", lambda r: r.mem.write_u16(r.layout.used + 2, 3)),
        ("used id out of range", lambda r: r.mem.write_u32(r.layout.used + 4, 8)),
        ("used id not in flight", lambda r: r.mem.write_u32(r.layout.used + 4, 5)),
        ("used len beyond the writable part", lambda r: r.mem.write_u32(r.layout.used + 8, 17)),
    ],
)
def test_driver_detects_broken_used_ring(make_rig, what, corrupt):
    """virtio 1.4 §2.7.8: id is the head of a chain the driver made available and len at most the bytes the
    device could write; anything else is device garbage: Linux BAD_RING -> QueueError, queue broken."""
    rig = make_rig(8)
    a = rig.buf(16)
    rig.drv.add([(a, 4)], [(a, 16)], "x")
    chain = rig.dev.pop()
    assert chain is not None
    rig.dev.push(chain.head, 16)
    corrupt(rig)
    with pytest.raises(QueueError, match="broken ring"):
        rig.drv.get_used()
    assert rig.drv.broken, what
    with pytest.raises(QueueError):
        rig.drv.add([(a, 4)], [], "y")
    with pytest.raises(QueueError):
        rig.drv.get_used()


def test_detach_unused_after_reset_and_reinit(make_rig):
    """virtio 1.4 §2.4 (reset) + Linux virtqueue_detach_unused_buf: after a device reset the driver reclaims
    every outstanding token (avail.idx stepped back once per buffer, as Linux does), then re-initialises."""
    rig = make_rig(8, indirect=True)
    a = rig.buf(16)
    allocs = rig.alloc.allocations
    for t in ("p", "q", "r"):
        rig.drv.add([(a, 4), (a, 4)], [(a, 8)], t)
    assert rig.dev.pop() is not None
    rig.dev.reset()
    with pytest.raises(QueueError, match="outstanding"):
        rig.drv.reinit()
    assert sorted(rig.drv.detach_unused()) == ["p", "q", "r"]
    assert rig.drv.num_free == rig.drv.num_max and rig.drv.in_flight == 0
    assert rig.drv.avail_idx == 0 and rig.u16(rig.layout.avail + 2) == 0
    assert rig.alloc.allocations == allocs
    rig.drv.reinit()
    dev = rig.dev
    dev.desc_table, dev.avail_ring, dev.used_ring = rig.layout.desc, rig.layout.avail, rig.layout.used
    dev.indirect = True
    dev.activate()
    rig.drv.add([(a, 4)], [(a, 8)], "again")
    chain = dev.pop()
    assert chain is not None
    dev.push(chain.head, 8)
    assert rig.drv.get_used() == ("again", 8)


def test_rewind_reexposes_popped_chains(make_rig):
    """virtio 1.4 §2.7.6 (the device reads the avail ring in order): rewinding next_avail by the chains popped
    but not used (Firecracker's quiesce) makes the device pop exactly those chains again."""
    rig = make_rig(8)
    a = rig.buf(8)
    heads = [rig.drv.add([(a, 8)], [], i) for i in range(4)]
    popped = [rig.dev.pop() for _ in range(3)]
    assert [c.head for c in popped if c] == heads[:3]
    rig.dev.push(heads[0], 0)
    with pytest.raises(ValueError):
        rig.dev.rewind(3)
    rig.dev.rewind(2)
    assert rig.dev.next_avail == 1 and rig.dev.in_flight == 0
    again = DeviceQueue.from_state(rig.mem, rig.dev.state())  # survives a snapshot too
    assert [c.head for c in iter(again.pop, None)] == heads[1:]


def test_device_push_misuse_raises_queue_error(make_rig):
    """virtio 1.4 §2.7.8: a used element names a chain the device took (head < size, one push per pop) and a
    le32 len; pushes that cannot be right raise QueueError, the only exception push raises."""
    rig = make_rig(8)
    with pytest.raises(QueueError, match="without a popped chain"):
        rig.dev.push(0, 0)
    rig.drv.add([(rig.buf(8), 8)], [], 1)
    assert rig.dev.pop() is not None
    with pytest.raises(QueueError):
        rig.dev.push(8, 0)
    with pytest.raises(QueueError):
        rig.dev.push(0, 1 << 32)
    q = DeviceQueue(rig.mem, 8)
    with pytest.raises(QueueError, match="not ready"):
        q.push(0, 0)
    assert q.pop() is None and q.avail_pending() == 0 and q.needs_notification() is False


def test_configuration_locked_while_ready_and_reset(make_rig):
    """virtio 1.4 §4.1.4.3.2 MUST: the driver configures the queue fields before enabling the queue; the device
    model refuses changes to an enabled queue, and reset() (§2.4) returns every field to its default."""
    rig = make_rig(8, event_idx=True)
    dev = rig.dev
    for attr, value in (
        ("desc_table", 0x2000),
        ("avail_ring", 0x2000),
        ("used_ring", 0x2000),
        ("event_idx", False),
        ("indirect", True),
    ):
        with pytest.raises(InvalidStateError):
            setattr(dev, attr, value)
    assert dev.set_size(4) is False and dev.size == 8
    rig.drv.add([(rig.buf(8), 8)], [], 1)
    assert dev.pop() is not None
    dev.reset()
    assert (dev.size, dev.desc_table, dev.avail_ring, dev.used_ring) == (8, 0, 0, 0)
    assert (dev.ready, dev.event_idx, dev.indirect) == (False, False, False)
    assert (dev.next_avail, dev.next_used) == (0, 0)
    with pytest.raises(ValueError):
        dev.desc_table = -1
    dev.desc_table, dev.avail_ring, dev.used_ring = rig.layout.desc, rig.layout.avail, rig.layout.used
    dev.ready = True
    assert dev.ready


def test_driver_rejects_bad_layout():
    """virtio 1.4 §2.7.1 MUST: the driver places each part at its alignment, inside memory it owns."""
    rig = Rig(8)
    try:
        with pytest.raises(QueueError, match="aligned"):
            DriverQueue(rig.mem, RingLayout(8, 0x1008, 0x2000, 0x3000))
        with pytest.raises(QueueError, match="inside guest memory"):
            DriverQueue(rig.mem, RingLayout.contiguous(RAM0[1] - 0x40, 8))
        with pytest.raises(ValueError):
            DriverQueue(rig.mem, RingLayout.contiguous(0x1000, 8), indirect=True)
    finally:
        rig.mem.close()


def test_same_list_as_out_and_in(make_rig):
    """virtio 1.4 §2.7.8: the used len is bounded by the device-writable part only — also when the caller
    passes one list object as both the readable and the writable segments."""
    rig = make_rig(8)
    segs = [(rig.buf(8), 8)]
    rig.drv.add(segs, segs, "t")
    chain = rig.dev.pop()
    assert chain is not None and chain.readable_len == chain.writable_len == 8
    rig.dev.push(chain.head, 9)
    with pytest.raises(QueueError, match="exceeds the 8 device-writable bytes"):
        rig.drv.get_used()
