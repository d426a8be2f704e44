"""Notification suppression, both directions, with and without VIRTIO_F_EVENT_IDX, across the u16 wrap."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from vq_helpers import Rig

from pyvirtio.spec.constants import VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_USED_F_NO_NOTIFY
from pyvirtio.virtqueue import DeviceQueue
from pyvirtio.virtqueue.layout import vring_need_event

_U16 = struct.Struct("<H")


def roundtrip(rig: Rig, n: int = 1) -> None:
    """Driver adds ``n`` one-segment buffers; device pops and pushes them (no notification checks)."""
    for _ in range(n):
        rig.drv.add([(rig.buf(8), 8)], [], object())
    for _ in range(n):
        chain = rig.dev.pop()
        assert chain is not None
        rig.dev.push(chain.head, 0)


# -- used buffer notifications (device -> driver), §2.7.7


@pytest.mark.spec("dev:split/used-event#1", "dev:split/used-event#2", "dev:split/used-event#3")
def test_used_notify_flags_without_event_idx(make_rig):
    """virtio 1.4 §2.7.7.2 MUST/SHOULD NOT: without EVENT_IDX the device MUST notify when avail.flags is 0 and
    SHOULD NOT when it is 1 (VIRTQ_AVAIL_F_NO_INTERRUPT); used_event is ignored."""
    rig = make_rig(8)
    assert rig.dev.needs_notification() is False, "nothing pushed yet"
    roundtrip(rig)
    assert rig.dev.needs_notification() is True
    assert rig.dev.needs_notification() is False, "already signalled"
    rig.drv.disable_cb()
    assert rig.u16(rig.layout.avail) == VIRTQ_AVAIL_F_NO_INTERRUPT
    roundtrip(rig)
    assert rig.dev.needs_notification() is False
    rig.drv.drain_used()
    assert rig.drv.enable_cb() is True, "nothing pending"
    assert rig.u16(rig.layout.avail) == 0
    rig.mem.pack_into(_U16, rig.layout.avail + 4 + 2 * 8, 0x1234)  # used_event must be ignored
    roundtrip(rig)
    assert rig.dev.needs_notification() is True


def test_enable_cb_reports_pending(make_rig):
    """virtio 1.4 §2.7.14 (note): after re-enabling, the driver re-checks used.idx to avoid a missed
    notification; enable_cb() returns False when used entries are already pending."""
    for event_idx in (False, True):
        rig = make_rig(8, event_idx=event_idx)
        rig.drv.disable_cb()
        roundtrip(rig)
        assert rig.drv.enable_cb() is False
        assert len(rig.drv.drain_used()) == 1
        assert rig.drv.enable_cb() is True


@pytest.mark.spec("dev:split/used-event#4", "dev:split/used-event#5", "dev:split/used-event#6")
def test_used_event_with_event_idx(make_rig):
    """virtio 1.4 §2.7.7.2 MUST: with EVENT_IDX the device MUST notify when the used idx it wrote the entry at
    equals used_event, otherwise SHOULD NOT; the low bit of avail.flags is ignored."""
    rig = make_rig(8, event_idx=True)
    rig.mem.pack_into(_U16, rig.layout.avail, VIRTQ_AVAIL_F_NO_INTERRUPT)  # must be ignored
    roundtrip(rig)  # entry written at used idx 0 == used_event 0
    assert rig.dev.needs_notification() is True
    rig.drv.drain_used()  # Linux get_buf: used_event = last_used = 1
    assert rig.used_event == 1
    rig.mem.pack_into(_U16, rig.layout.avail + 4 + 2 * 8, 3)  # driver: "interrupt me at entry 3"
    roundtrip(rig)  # entry 1
    assert rig.dev.needs_notification() is False
    roundtrip(rig)  # entry 2
    assert rig.dev.needs_notification() is False
    roundtrip(rig)  # entry 3
    assert rig.dev.needs_notification() is True


@pytest.mark.spec("dev:split/used-event#5", "dev:split/used-event#6")
def test_used_event_batch(make_rig):
    """virtio 1.4 §2.7.7.2 (Linux/QEMU vring_need_event): a batch of pushes notifies once if it passed
    used_event anywhere inside the batch, and not if used_event lies outside it."""
    rig = make_rig(8, event_idx=True)
    rig.mem.pack_into(_U16, rig.layout.avail + 4 + 2 * 8, 2)
    roundtrip(rig, 4)  # entries 0..3 include 2
    assert rig.dev.needs_notification() is True
    roundtrip(rig, 4)  # entries 4..7 do not
    assert rig.dev.needs_notification() is False


def test_driver_disable_cb_with_event_idx(make_rig):
    """virtio 1.4 §2.7.7.1: with EVENT_IDX the driver suppresses interrupts through used_event only (flags
    stay 0); disable_cb parks used_event behind last_used so no batch of in-flight buffers can reach it."""
    rig = make_rig(8, event_idx=True)
    rig.drv.disable_cb()
    assert rig.u16(rig.layout.avail) == 0, "driver MUST set flags to 0 with EVENT_IDX"
    roundtrip(rig, 8)
    assert rig.dev.needs_notification() is False
    assert len(rig.drv.drain_used()) == 8
    assert rig.used_event == 0xFFFF, "get_used does not re-arm while callbacks are disabled"
    assert rig.drv.enable_cb() is True
    assert rig.used_event == 8
    roundtrip(rig)
    assert rig.dev.needs_notification() is True


def _device_at(rig: Rig, idx: int) -> DeviceQueue:
    """The rig's device queue moved (through a validated QueueState) to next_avail = next_used = idx."""
    st_ = dataclasses.replace(rig.dev.state(), next_avail=idx, next_used=idx, signalled_used=idx)
    rig.set_avail_idx(idx)
    rig.mem.pack_into(_U16, rig.layout.used + 2, idx)
    return DeviceQueue.from_state(rig.mem, st_)


@pytest.mark.spec("dev:split/used-event#5", "dev:split/used-event#6")
def test_used_event_u16_wrap(make_rig):
    """virtio 1.4 §2.7.7.2 + §2.7.13.3 (idx wraps naturally at 65536): used_event comparisons work across the
    65535 -> 0 wrap of used.idx."""
    rig = make_rig(4, event_idx=True)
    dev = _device_at(rig, 0xFFFE)
    rig.mem.pack_into(_U16, rig.layout.avail + 4 + 2 * 4, 0)  # entry 0, i.e. after the wrap
    for head in (0, 1, 2):
        rig.desc(head, rig.buf(8), 8)
        rig.publish(head)
    for expected in (False, False, True):  # entries 0xFFFE, 0xFFFF, 0x0000
        chain = dev.pop()
        assert chain is not None
        dev.push(chain.head, 0)
        assert dev.needs_notification() is expected
    assert dev.next_used == 1
    assert rig.used_idx == 1


def test_used_event_spec_example_65536(make_rig):
    """virtio 1.4 §2.7.7.2 note: with used_event 0 the device notifies after the first buffer "and again after
    the 65536th buffer". Counting exactly: entry k is written at used idx (k-1) mod 2^16, so the second
    notification comes with buffer 65537 (used.idx 0 -> 1 for the second time)."""
    rig = make_rig(1, event_idx=True)
    rig.desc(0, rig.buf(8), 8)
    dev = rig.dev
    notified = []
    for k in range(1, 65538):
        rig.publish(0)
        chain = dev.pop()
        assert chain is not None
        dev.push(0, 0)
        if dev.needs_notification():
            notified.append(k)
    assert notified == [1, 65537]


# -- available buffer notifications (driver -> device), §2.7.10


@pytest.mark.spec("dev:split/avail-event#1")
def test_avail_notify_flags_without_event_idx(make_rig):
    """virtio 1.4 §2.7.10.1 MUST/SHOULD NOT: without EVENT_IDX the driver MUST kick when used.flags is 0 and
    SHOULD NOT when it is VIRTQ_USED_F_NO_NOTIFY; the driver initialises used.flags to 0."""
    rig = make_rig(8)
    assert rig.u16(rig.layout.used) == 0
    assert rig.drv.kick_prepare() is False, "nothing added"
    rig.drv.add([(rig.buf(8), 8)], [], "a")
    assert rig.drv.kick_prepare() is True
    rig.dev.set_notification(False)
    assert rig.u16(rig.layout.used) == VIRTQ_USED_F_NO_NOTIFY
    rig.drv.add([(rig.buf(8), 8)], [], "b")
    assert rig.drv.kick_prepare() is False
    rig.dev.set_notification(True)
    assert rig.u16(rig.layout.used) == 0
    rig.drv.add([(rig.buf(8), 8)], [], "c")
    assert rig.drv.kick_prepare() is True


def test_avail_event_with_event_idx(make_rig):
    """virtio 1.4 §2.7.10.1 MUST: with EVENT_IDX the driver MUST kick when the avail idx it wrote the entry at
    equals avail_event. The device keeps avail_event = next_avail while popping (QEMU virtqueue_pop), so a
    device that is behind gets no kicks and a device that caught up gets exactly one."""
    rig = make_rig(8, event_idx=True)
    rig.mem.pack_into(_U16, rig.layout.used, VIRTQ_USED_F_NO_NOTIFY)  # low bit ignored with EVENT_IDX
    rig.drv.add([(rig.buf(8), 8)], [], 0)  # entry 0 == avail_event 0
    assert rig.drv.kick_prepare() is True
    rig.drv.add([(rig.buf(8), 8)], [], 1)  # device has not caught up: avail_event still 0
    assert rig.drv.kick_prepare() is False
    assert rig.dev.pop() is not None and rig.dev.pop() is not None
    assert rig.avail_event == 2
    rig.drv.add([(rig.buf(8), 8)], [], 2)
    rig.drv.add([(rig.buf(8), 8)], [], 3)
    assert rig.drv.kick_prepare() is True, "batch [2, 4) contains avail_event 2"


@pytest.mark.spec("dev:split/avail-event#2")
def test_device_disable_notification_with_event_idx(make_rig):
    """virtio 1.4 §2.7.10.2: with EVENT_IDX the device MUST keep used.flags 0 and suppresses kicks through
    avail_event; disabling parks it where the driver cannot reach it, enabling asks for the next buffer."""
    rig = make_rig(8, event_idx=True)
    rig.dev.set_notification(False)
    assert rig.u16(rig.layout.used) == 0
    for i in range(8):
        rig.drv.add([(rig.buf(8), 8)], [], i)
    assert rig.drv.kick_prepare() is False
    assert [c.head for c in iter(rig.dev.pop, None)] == list(range(8))
    assert rig.avail_event == 0xFFFF, "pop does not re-arm while disabled"
    rig.dev.set_notification(True)
    assert rig.avail_event == 8
    for c in range(8):
        rig.dev.push(c, 0)
    rig.drv.drain_used()
    rig.drv.add([(rig.buf(8), 8)], [], "x")
    assert rig.drv.kick_prepare() is True


def test_avail_event_u16_wrap(make_rig):
    """virtio 1.4 §2.7.10.1 + §2.7.13.3: avail_event comparisons work across the 65535 -> 0 wrap of avail idx
    (driver and device both wrapped by real traffic)."""
    rig = make_rig(2, event_idx=True)
    buf = rig.buf(8)
    kicks = 0
    for _ in range(0x10000 - 1):  # avail idx -> 0xFFFF
        rig.drv.add([(buf, 8)], [], 1)
        kicks += rig.drv.kick_prepare()
        chain = rig.dev.pop()
        assert chain is not None
        rig.dev.push(chain.head, 0)
        rig.drv.get_used()
    assert kicks == 0xFFFF, "a caught-up device is kicked for every buffer"
    assert rig.drv.avail_idx == 0xFFFF and rig.avail_event == 0xFFFF
    rig.drv.add([(rig.buf(8), 8)], [], "a")  # entry 0xFFFF
    rig.drv.add([(rig.buf(8), 8)], [], "b")  # entry 0x0000
    assert rig.drv.kick_prepare() is True
    assert rig.drv.avail_idx == 1
    assert rig.dev.pop() is not None and rig.dev.pop() is not None
    assert rig.avail_event == 1 and rig.dev.next_avail == 1
    rig.dev.set_notification(False)  # parks avail_event at 0 = behind
    assert rig.avail_event == 0


@given(event=st.integers(0, 0xFFFF), old=st.integers(0, 0xFFFF), added=st.integers(0, 0xFFFF))
def test_vring_need_event_matches_definition(event, old, added):
    """virtio 1.4 §2.7.7.2/§2.7.10.1: "notify iff the entry at the event index was written", for a batch of
    entries old .. old+added-1 (mod 2^16) — the closed form vring_need_event agrees with enumeration."""
    new = (old + added) & 0xFFFF
    batch = range(old, old + added)  # the indices written, before reduction mod 2^16
    expected = event in batch or event + 0x10000 in batch
    assert vring_need_event(event, new, old) is expected


def test_notification_wish_before_enable(make_rig):
    """virtio 1.4 §2.7.10.2: a device that asked for no kicks before the queue was enabled gets
    VIRTQ_USED_F_NO_NOTIFY written when it is enabled, and the driver then does not kick."""
    rig = make_rig(8)
    q = DeviceQueue(rig.mem, 8)
    q.set_notification(False)
    q.desc_table, q.avail_ring, q.used_ring = rig.layout.desc, rig.layout.avail, rig.layout.used
    assert rig.u16(rig.layout.used) == 0
    q.activate()
    assert rig.u16(rig.layout.used) == VIRTQ_USED_F_NO_NOTIFY
    rig.drv.add([(rig.buf(8), 8)], [], 1)
    assert rig.drv.kick_prepare() is False


def test_enable_notification_with_backlog(make_rig):
    """virtio 1.4 §2.7.10.2: with EVENT_IDX, a device that re-enables kicks while it still has a backlog asks
    for the *next new* buffer (avail_event = the driver's avail.idx, QEMU virtio_queue_set_notification), not
    for the first unconsumed one the driver has already passed."""
    rig = make_rig(8, event_idx=True)
    rig.dev.set_notification(False)
    for i in range(3):
        rig.drv.add([(rig.buf(8), 8)], [], i)
    assert rig.drv.kick_prepare() is False
    assert rig.dev.pop() is not None
    rig.dev.set_notification(True)
    assert rig.avail_event == 3 and rig.dev.avail_pending() == 2
    rig.drv.add([(rig.buf(8), 8)], [], 3)
    assert rig.drv.kick_prepare() is True
