"""The driver side of a split virtqueue against the driver statements of virtio 1.4 §2.7 (and the entropy driver's
§5.4.6.1): what :class:`~pyvirtio.virtqueue.driver.DriverQueue` writes into guest memory, in which order, and
when it notifies. The memory records every access so the order rules can be checked."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import QueueError
from pyvirtio.guest.fake import FakeFunction, FakePlatform
from pyvirtio.guest.rng import RngDriver
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import (
    VIRTQ_AVAIL_ALIGN,
    VIRTQ_DESC_ALIGN,
    VIRTQ_USED_ALIGN,
    DescFlag,
    Feature,
    bit,
)
from pyvirtio.virtqueue.driver import DriverQueue
from pyvirtio.virtqueue.layout import RingLayout, avail_event_offset

U16 = struct.Struct("<H")
DESC = struct.Struct("<QIHH")


class RecordingMemory(GuestMemory):
    """Guest RAM (one region at 0) that records every access as ``(op, addr, size)`` (``op`` is ``"r"`` or
    ``"w"``): those through its methods, and those the queue makes straight into the ring buffers it resolved
    with :meth:`GuestMemory.locate` (the :func:`record_ring_accesses` spies; the buffer offset is the address)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.accesses: list[tuple[str, int, int]] = []
        _RECORDING[id(self.regions[0].mm)] = self

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.accesses.append(("w", addr, len(data)))
        super().write(addr, data)

    def pack_into(self, fmt: struct.Struct, addr: int, *values: int) -> None:
        self.accesses.append(("w", addr, fmt.size))
        super().pack_into(fmt, addr, *values)

    def unpack_from(self, fmt: struct.Struct, addr: int) -> tuple[int, ...]:
        self.accesses.append(("r", addr, fmt.size))
        return super().unpack_from(fmt, addr)


_RECORDING: dict[int, RecordingMemory] = {}


@pytest.fixture(autouse=True)
def record_ring_accesses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spy on the driver queue's packs and unpacks into ring buffers."""
    from pyvirtio.virtqueue import driver

    def spying(fn, op: str, size: int):  # type: ignore[no-untyped-def]
        def spy(buf, off: int, *values: int):  # type: ignore[no-untyped-def]
            mem = _RECORDING.get(id(buf))
            if mem is not None:
                mem.accesses.append((op, off, size))
            return fn(buf, off, *values)
        return spy

    monkeypatch.setattr(driver, "_U16_PACK", spying(driver._U16_PACK, "w", 2))
    monkeypatch.setattr(driver, "_U16_UNPACK", spying(driver._U16_UNPACK, "r", 2))
    monkeypatch.setattr(driver, "_USED_UNPACK", spying(driver._USED_UNPACK, "r", 8))
    monkeypatch.setattr(driver, "_DESC_PACK", spying(driver._DESC_PACK, "w", 16))


@dataclass
class Q:
    mem: RecordingMemory
    alloc: GuestAllocator
    vq: DriverQueue

    @property
    def lay(self) -> RingLayout:
        return self.vq.layout

    def desc(self, i: int, table: int | None = None) -> tuple[int, int, int, int]:
        base = self.lay.desc if table is None else table
        addr, ln, flags, nxt = DESC.unpack_from(self.mem.read(base + 16 * i, 16))
        return addr, ln, flags, nxt

    def u16(self, addr: int) -> int:
        return int(U16.unpack(self.mem.read(addr, 2))[0])

    def set_u16(self, addr: int, v: int) -> None:
        GuestMemory.pack_into(self.mem, U16, addr, v)


def q(size: int = 8, *, event_idx: bool = False, indirect: bool = False, garbage: bool = False) -> Q:
    mem = RecordingMemory(1 << 20)
    lay = RingLayout.contiguous(0x1000, size)
    if garbage:
        GuestMemory.fill(mem, 0x1000, lay.total_bytes, 0xFF)
    alloc = GuestAllocator(mem, 0x40000, 0x40000)
    return Q(mem, alloc, DriverQueue(mem, lay, event_idx=event_idx, indirect=indirect, alloc=alloc))


@pytest.mark.spec("drv:split/alignment#1", "drv:split/avail-event#1")
def test_rings_are_aligned_and_used_flags_start_at_zero() -> None:
    """§2.7.1: descriptor table, available and used rings at 16-, 2- and 4-byte aligned addresses (a misaligned
    layout is refused); §2.7.10.1: the driver MUST initialise used.flags to 0 when it allocates the ring — here
    over memory full of 0xFF."""
    r = q(garbage=True)
    assert r.lay.desc % VIRTQ_DESC_ALIGN == 0 and r.lay.avail % VIRTQ_AVAIL_ALIGN == 0
    assert r.lay.used % VIRTQ_USED_ALIGN == 0
    assert r.u16(r.lay.used) == 0
    for bad in (RingLayout(8, 0x1008, 0x2000, 0x3000), RingLayout(8, 0x1000, 0x2001, 0x3000),
                RingLayout(8, 0x1000, 0x2000, 0x3002)):
        with pytest.raises(QueueError, match="aligned"):
            DriverQueue(r.mem, bad)
    fn, platform = FakeFunction(queue_sizes=(256,)), FakePlatform()
    mem = GuestMemory(1 << 20)
    mem.fill(0, 1 << 20, 0xAA)
    drv = RngDriver(platform, fn, GuestAllocator(mem, 0x1000, 0x80000))
    drv.probe()
    lay = drv.vqs[0].layout
    assert (fn.queues[0].desc % 16, fn.queues[0].driver % 2, fn.queues[0].device % 4) == (0, 0, 0)
    assert mem.read_u16(lay.used) == 0


@pytest.mark.spec("drv:split/framing#1")
@pytest.mark.parametrize("indirect", [False, True])
def test_device_writable_descriptors_come_last(indirect: bool) -> None:
    """§2.7.4.2: the driver MUST place device-writable descriptors after device-readable ones — in the table and
    inside an indirect table."""
    r = q(indirect=indirect)
    r.vq.add([(0x9000, 4), (0x9010, 4)], [(0x9020, 8), (0x9030, 8)], "t")
    head = r.desc(0)
    if indirect:
        entries = [r.desc(i, head[0]) for i in range(head[1] // 16)]
    else:
        entries = [r.desc(0), r.desc(1), r.desc(2), r.desc(3)]
    writable = [bool(flags & DescFlag.WRITE) for _, _, flags, _ in entries]
    assert writable == [False, False, True, True]


@pytest.mark.spec("drv:split/framing#2", "drv:split/indirect#3")
def test_a_chain_is_never_longer_than_the_queue() -> None:
    """§2.7.5.3.1: a driver MUST NOT create a chain longer than the Queue Size (also through an indirect
    table); §2.7.4.2: it SHOULD NOT use an excessive number of descriptors — with INDIRECT_DESC a multi-segment
    buffer takes one slot of the ring."""
    for indirect in (False, True):
        r = q(4, indirect=indirect)
        with pytest.raises(QueueError, match="longer than queue size"):
            r.vq.add([(0x9000, 1)] * 3, [(0x9100, 1)] * 2, "too long")
        assert r.vq.num_free == 4
        r.vq.add([(0x9000, 1)] * 2, [(0x9100, 1)] * 2, "fits")
        assert r.vq.num_free == (3 if indirect else 0)


@pytest.mark.spec("drv:split/indirect#1", "drv:split/indirect#2", "drv:split/indirect#4")
def test_indirect_descriptor_rules() -> None:
    """§2.7.5.3.1: INDIRECT only when VIRTIO_F_INDIRECT_DESC is negotiated; never INDIRECT inside a table; never
    INDIRECT together with NEXT. Through the driver: a device not offering the feature gets direct chains."""
    plain = q(indirect=False)
    plain.vq.add([(0x9000, 4)], [(0x9020, 8)], "t")
    assert not any(plain.desc(i)[2] & DescFlag.INDIRECT for i in range(8))
    r = q(indirect=True)
    r.vq.add([(0x9000, 4), (0x9010, 4)], [(0x9020, 8)], "t")
    addr, ln, flags, _ = r.desc(0)
    assert flags == DescFlag.INDIRECT
    assert not any(r.desc(i, addr)[2] & DescFlag.INDIRECT for i in range(ln // 16))
    for offer, indirect in ((bit(Feature.VERSION_1), False), (bit(Feature.VERSION_1) | bit(Feature.INDIRECT_DESC),
                                                               True)):
        fn = FakeFunction(features=offer)
        mem = GuestMemory(1 << 20)
        drv = RngDriver(FakePlatform(), fn, GuestAllocator(mem, 0x1000, 0x80000))
        drv.probe()
        assert drv.vqs[0].indirect is indirect


@settings(max_examples=50, deadline=None)
@given(ops=st.lists(st.one_of(st.just("add"), st.just("use")), max_size=40))
@pytest.mark.spec("drv:split/avail#1")
def test_avail_idx_only_moves_forward(ops: list[str]) -> None:
    """§2.7.6.1: the driver MUST NOT decrement avail idx (no "unexposing"): over any interleaving of adds and
    completions (the test plays the device's used ring), the idx in memory moves by exactly +1 per add, never
    back."""
    r = q(4)
    used = 0
    heads: list[int] = []
    seen = [r.u16(r.lay.avail + 2)]
    for op in ops:
        if op == "add" and r.vq.num_free:
            heads.append(r.vq.add([(0x9000, 4)], [], "t"))
        elif op == "use" and heads:
            GuestMemory.pack_into(r.mem, struct.Struct("<II"), r.lay.used + 4 + 8 * (used % 4), heads.pop(0), 0)
            used += 1
            r.set_u16(r.lay.used + 2, used)
            assert r.vq.get_used() == ("t", 0)
        seen.append(r.u16(r.lay.avail + 2))
    assert all(b - a in (0, 1) for a, b in pairwise(seen))


@pytest.mark.spec("drv:split/avail-idx#1", "drv:split/notify#1")
@pytest.mark.parametrize("event_idx", [False, True])
def test_idx_is_written_last_and_before_the_notification_check(event_idx: bool) -> None:
    """§2.7.13.3.1: descriptors and the ring entry are written before avail idx (the barrier's job);
    §2.7.13.4.1: idx is published before the driver reads used.flags / avail_event to decide on notifying."""
    r = q(event_idx=event_idx, indirect=True)
    mark = len(r.mem.accesses)
    r.vq.add([(0x9000, 4), (0x9010, 4)], [(0x9020, 8)], "t")
    writes = [a for op, a, _ in r.mem.accesses[mark:] if op == "w"]
    idx_addr = r.lay.avail + 2
    assert writes[-1] == idx_addr and writes.count(idx_addr) == 1
    assert r.lay.avail + 4 in writes and r.lay.desc in writes  # the ring entry and the head descriptor, earlier
    mark = len(r.mem.accesses)
    r.vq.kick_prepare()
    reads = [a for op, a, _ in r.mem.accesses[mark:] if op == "r"]
    decide = r.lay.used + avail_event_offset(8) if event_idx else r.lay.used
    assert reads == [decide] and r.u16(idx_addr) == 1


@pytest.mark.spec("drv:split/used-event#1", "drv:split/used-event#2")
def test_avail_flags_with_and_without_event_idx() -> None:
    """§2.7.7.1: without EVENT_IDX the driver writes avail.flags 0 or 1 only; with EVENT_IDX it keeps them 0 and
    suppresses through used_event."""
    r = q(event_idx=False)
    r.vq.disable_cb()
    assert r.u16(r.lay.avail) == 1
    r.vq.enable_cb()
    assert r.u16(r.lay.avail) == 0
    e = q(event_idx=True)
    e.vq.disable_cb()
    e.vq.enable_cb()
    e.vq.disable_cb()
    assert e.u16(e.lay.avail) == 0
    assert not [a for op, a, _ in e.mem.accesses if op == "w" and a == e.lay.avail]  # flags never written


@pytest.mark.spec("drv:split/avail-event#2", "drv:split/avail-event#3", "drv:split/avail-event#4")
def test_notification_without_event_idx_follows_used_flags_only() -> None:
    """§2.7.10.1 without EVENT_IDX: avail_event is ignored; used.flags 0 → MUST notify, 1 → SHOULD NOT."""
    r = q(event_idx=False)
    avail_event = r.lay.used + avail_event_offset(8)
    for flags, event, want in ((0, 0, True), (0, 77, True), (1, 0, False), (1, 77, False)):
        r.set_u16(r.lay.used, flags)
        r.set_u16(avail_event, event)
        r.vq.add([(0x9000, 4)], [], "t")
        assert r.vq.kick_prepare() is want
        r.vq.detach_unused()


@pytest.mark.spec("drv:split/avail-event#5", "drv:split/avail-event#6", "drv:split/avail-event#7")
def test_notification_with_event_idx_follows_avail_event_only() -> None:
    """§2.7.10.1 with EVENT_IDX: bit 0 of used.flags is ignored; the driver MUST notify when the entry it wrote
    sits at index avail_event, and SHOULD NOT otherwise."""
    r = q(event_idx=True)
    avail_event = r.lay.used + avail_event_offset(8)
    for flags in (0, 1):
        r.set_u16(r.lay.used, flags)
        for event, want in ((0, True), (1, False), (5, False)):
            r.set_u16(avail_event, (r.vq.avail_idx + event) & 0xFFFF)
            head = r.vq.add([(0x9000, 4)], [], "t")
            assert r.vq.kick_prepare() is want, (flags, event)
            GuestMemory.pack_into(r.mem, struct.Struct("<II"), r.lay.used + 4 + 8 * (r.vq.last_used % 8), head, 0)
            r.set_u16(r.lay.used + 2, (r.vq.last_used + 1) & 0xFFFF)
            r.vq.get_used()


def rng_rig(**kw: object) -> tuple[FakeFunction, FakePlatform, GuestMemory, RngDriver]:
    fn = FakeFunction(**kw)  # type: ignore[arg-type]
    platform = FakePlatform()
    mem = GuestMemory(1 << 20)
    drv = RngDriver(platform, fn, GuestAllocator(mem, 0x1000, 0x80000), name="rng")
    drv.probe()
    return fn, platform, mem, drv


def complete(mem: GuestMemory, drv: RngDriver, head: int, length: int) -> None:
    """Play the device: used entry ``(head, length)`` and used idx + 1."""
    lay = drv.vqs[0].layout
    idx = mem.read_u16(lay.used + 2)
    mem.pack_into(struct.Struct("<II"), lay.used + 4 + 8 * (idx % lay.size), head, length)
    mem.write_u16(lay.used + 2, idx + 1)


@pytest.mark.spec("drv:split/used-event#3")
def test_spurious_notifications_are_harmless() -> None:
    """§2.7.7.1: the driver MUST handle spurious notifications: a used-buffer interrupt with nothing new changes
    nothing and raises nothing (twice, with a request outstanding)."""
    fn, platform, mem, drv = rng_rig()
    req = drv.request(8)
    assert platform.signal(fn, 1) and platform.signal(fn, 1)
    assert drv.outstanding == [req] and not req.done and not drv.vqs[0].broken


@pytest.mark.spec("drv:split/used#1", "drv:rng/operation#2")
def test_only_the_used_length_is_trusted() -> None:
    """§2.7.8.3: the driver MUST NOT assume anything about data beyond the first len bytes; §5.4.6.1: the entropy
    driver takes the used length as the number of random bytes. The device fills 16 bytes and reports 5: the
    driver gets 5."""
    fn, platform, mem, drv = rng_rig()
    req = drv.request(16)
    mem.write(req.addr, bytes(range(1, 17)))
    complete(mem, drv, 0, 5)
    platform.signal(fn, 1)
    assert req.done and req.data == bytes(range(1, 6))


@pytest.mark.spec("drv:rng/operation#1")
def test_entropy_buffers_are_device_writable_only() -> None:
    """§5.4.6.1: the entropy driver MUST NOT place driver-readable (device-readable) buffers on the queue: every
    descriptor of a request is WRITE."""
    fn, platform, mem, drv = rng_rig()
    for n in (1, 16, 4096):
        drv.request(n)
    lay = drv.vqs[0].layout
    flags = [DESC.unpack_from(mem.read(lay.desc + 16 * i, 16))[2] for i in range(3)]
    assert flags == [DescFlag.WRITE] * 3


@pytest.mark.spec("drv:reserved-features#3")
def test_the_device_is_given_guest_physical_addresses_only() -> None:
    """§6.1: if VIRTIO_F_ACCESS_PLATFORM is not offered (and pyvirtio never accepts it, having no IOMMU) the
    driver MUST pass only physical addresses: the ring areas and every buffer address lie in guest RAM, inside
    the driver's allocator."""
    fn, platform, mem, drv = rng_rig(features=bit(Feature.VERSION_1) | bit(Feature.ACCESS_PLATFORM))
    assert not drv.has(Feature.ACCESS_PLATFORM)
    drv.request(64)
    q0 = fn.queues[0]
    alloc = drv.alloc
    for addr in (q0.desc, q0.driver, q0.device, mem.read_u64(q0.desc)):
        assert alloc.base <= addr < alloc.base + alloc.size and mem.contains(addr, 1)
