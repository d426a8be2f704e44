"""Virtqueue reset and re-enable, device side (virtio 1.4 §2.6.1, §4.1.4.3.2 ``queue_reset``), issue 9 defect 1.

A queue reset cancels the work the device had already taken from that queue: a request popped before the reset
never executes, never writes the driver's buffers (they are the driver's again), never lands in the used ring
and is never notified; a SUSPEND meanwhile waits for the reset and never sees the cancelled work as completed.
While work is being cancelled ``queue_reset`` reads 1; then ``queue_reset`` and ``queue_enable`` read 0.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from pyvirtio.clock import MS, US
from pyvirtio.dma import GuestAllocator
from pyvirtio.guest.rng import RngDriver
from pyvirtio.host.gpu import Gpu
from pyvirtio.host.lifecycle import DeviceLifecycle
from pyvirtio.host.rng import Rng
from pyvirtio.machine import Machine
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import (
    GPU_CONTROLQ,
    GPU_CURSORQ,
    QEMU_MODERN_BAR,
    QEMU_NOTIFY_OFFSET,
    RNG_REQUESTQ,
    CommonCfg,
    Feature,
    Status,
    bit,
)
from pyvirtio.trace import Kind
from pyvirtio.virtqueue.driver import DriverQueue
from pyvirtio.virtqueue.layout import RingLayout

from .loopback import LoopbackDriver
from .pci_helpers import cread, cwrite

S = DeviceLifecycle
RING_RESET = bit(Feature.RING_RESET)


def used_idx(mem: GuestMemory, vq: DriverQueue) -> int:
    """used.idx as the device wrote it in guest memory."""
    return int(struct.unpack("<H", mem.read(vq.layout.used + 2, 2))[0])


def slow_rng(**kw: object) -> tuple[Rng, LoopbackDriver]:
    """An rng whose 64-byte request stays in flight for about 100 us, driven with RING_RESET negotiated."""
    dev = Rng(bytes_per_us=1, latency=20 * US, **kw)  # type: ignore[arg-type]
    drv = LoopbackDriver(dev)
    assert drv.init(RING_RESET) & RING_RESET
    return dev, drv


def reenable(drv: LoopbackDriver, index: int, size: int) -> DriverQueue:
    """§2.6.1.2 re-enable, driver side: program size and fresh rings as at first set-up, then enable."""
    dq = drv.dev.queues[index]
    base = drv.alloc.alloc(RingLayout.contiguous(0, size).total_bytes, 4096)
    layout = RingLayout.contiguous(base, size)
    assert dq.set_size(size)
    dq.desc_table, dq.avail_ring, dq.used_ring = layout.desc, layout.avail, layout.used
    vq = DriverQueue(drv.ctx.memory, layout, event_idx=True, indirect=True, alloc=drv.alloc)
    assert drv.dev.enable_queue(index)
    drv.vqs[index] = vq
    return vq


# -- the device core, no transport ----------------------------------------------------------------------------


@pytest.mark.spec("dev:vq-reset#1")
def test_queue_reset_cancels_a_request_already_taken() -> None:
    """§2.6.1.1.1: after a queue reset the device MUST NOT execute any request from that queue or notify for it.
    The rng popped a request and its fill is still pending: after the reset the buffer (the driver's again) is
    never written, used.idx stays 0, no used-buffer notification comes and the device does not set
    DEVICE_NEEDS_RESET (before the fix it did all four, blaming the driver)."""
    dev, drv = slow_rng()
    mem = drv.ctx.memory
    vq = drv.vqs[RNG_REQUESTQ]
    _, buf = drv.submit(RNG_REQUESTQ, b"", 64)
    assert drv.run_until(lambda: dev.inflight() == 1)
    notes = list(drv.ctx.queue_notifications)
    dev.queue_reset(RNG_REQUESTQ)
    drv.run_until(lambda: False, 5 * MS)
    assert mem.read(buf, 64) == bytes(64)
    assert used_idx(mem, vq) == 0 and vq.get_used() is None
    assert drv.ctx.queue_notifications == notes
    assert not dev.status & Status.DEVICE_NEEDS_RESET and dev.lifecycle is S.LIVE
    assert dev.inflight() == 0 and dev.served == 0
    assert drv.ctx.trace.violations() == []


@pytest.mark.spec("dev:vq-reset#1", "dev:suspend#3", "dev:suspend#6", "dev:suspend#8")
def test_a_suspend_during_a_queue_reset_never_sees_the_cancelled_request() -> None:
    """Device Suspend + §2.6.1.1.1: SUSPEND is written while a request is in flight (the device keeps showing
    DRIVER_OK while it quiesces), then the driver resets the queue. The cancelled request does not count as
    completed: the device presents SUSPEND=1/DRIVER_OK=0 only once the queue reset is over, and the cancelled
    request never writes guest memory or the used ring — not before, not while suspended, not after resume."""
    dev, drv = slow_rng()
    mem = drv.ctx.memory
    vq = drv.vqs[RNG_REQUESTQ]
    _, buf = drv.submit(RNG_REQUESTQ, b"", 64)
    assert drv.run_until(lambda: dev.inflight() == 1)
    dev.write_status(dev.status | Status.SUSPEND)
    assert dev.lifecycle is S.SUSPENDING
    dev.queue_reset(RNG_REQUESTQ)
    assert dev.lifecycle is S.SUSPENDING
    assert drv.run_until(lambda: dev.lifecycle is S.SUSPENDED)
    assert dev.status & Status.SUSPEND and not dev.status & Status.DRIVER_OK
    drv.run_until(lambda: False, 5 * MS)
    assert mem.read(buf, 64) == bytes(64) and used_idx(mem, vq) == 0
    assert not dev.status & Status.DEVICE_NEEDS_RESET
    done = [e.t for e in drv.ctx.trace.select(Kind.QUEUE) if e.detail.get("event") == "reset_done"]
    suspended = [e.t for e in drv.ctx.trace.select(Kind.PM) if e.detail.get("event") == "suspended"]
    assert len(done) == 1 and len(suspended) == 1 and done[0] <= suspended[0]
    dev.write_status(dev.status | Status.DRIVER_OK)
    assert drv.run_until(lambda: dev.lifecycle is S.LIVE)
    drv.run_until(lambda: False, 5 * MS)
    assert mem.read(buf, 64) == bytes(64) and used_idx(mem, vq) == 0
    assert not dev.status & Status.DEVICE_NEEDS_RESET
    assert drv.ctx.trace.violations() == []


@pytest.mark.spec("dev:vq-reset#2")
def test_queue_reset_returns_the_queue_to_its_defaults() -> None:
    """§2.6.1.1.1: the device MUST reset every piece of queue state to its default, the available and used
    state included: not ready, size back to the maximum, ring addresses 0, next_avail and next_used 0, the
    negotiated ring features back to their reset values."""
    dev, drv = slow_rng()
    for _ in range(3):
        drv.submit(RNG_REQUESTQ, b"", 8)
    assert drv.run_until(lambda: dev.queues[RNG_REQUESTQ].next_used == 3)
    dq = dev.queues[RNG_REQUESTQ]
    assert dq.ready and dq.size == 16 and dq.next_avail == 3 and dq.event_idx and dq.indirect
    dev.queue_reset(RNG_REQUESTQ)
    fresh = type(dq)(drv.ctx.memory, dq.max_size)
    assert dq.state() == fresh.state()
    assert not dq.ready and dq.size == dq.max_size and dq.desc_table == dq.avail_ring == dq.used_ring == 0
    assert (dq.next_avail, dq.next_used, dq.event_idx, dq.indirect) == (0, 0, False, False)
    assert not dev.queue_reset_pending(RNG_REQUESTQ)  # nothing was in flight: done at once


@pytest.mark.spec("dev:vq-reenable#1", "dev:vq-reset#2")
def test_a_reenabled_queue_uses_the_new_size_and_rings() -> None:
    """§2.6.1.2.1: on re-enable the device MUST observe the queue configuration the driver may have changed.
    After a reset with a request cancelled, the driver re-enables the queue with a smaller size and new rings;
    the device serves requests there, with indices starting again from 0, and the old rings stay untouched."""
    dev, drv = slow_rng()
    old = drv.vqs[RNG_REQUESTQ]
    drv.submit(RNG_REQUESTQ, b"", 64)
    assert drv.run_until(lambda: dev.inflight() == 1)
    dev.queue_reset(RNG_REQUESTQ)
    assert not dev.enable_queue(RNG_REQUESTQ)  # still cancelling: re-enable refused (a driver violation)
    assert drv.run_until(lambda: not dev.queue_reset_pending(RNG_REQUESTQ))
    vq = reenable(drv, RNG_REQUESTQ, 4)
    assert dev.queues[RNG_REQUESTQ].size == 4
    for _ in range(6):  # more than the new size: the ring wraps at 4
        _, buf = drv.submit(RNG_REQUESTQ, b"", 16)
        token, length = drv.wait_used(RNG_REQUESTQ)
        assert length == 16 and drv.ctx.memory.read(buf, 16) != bytes(16)
    assert used_idx(drv.ctx.memory, vq) == 6 and used_idx(drv.ctx.memory, old) == 0
    assert not dev.status & Status.DEVICE_NEEDS_RESET
    rules = [str(e.detail["rule"]) for e in drv.ctx.trace.violations()]
    assert rules == ["§4.1.4.3.2 driver MUST NOT enable a queue whose reset is still in progress"]


@pytest.mark.spec("dev:vq-reset#1")
def test_gpu_queue_reset_drops_pending_commands_of_that_queue_only() -> None:
    """§2.6.1.1.1 for a device that queues requests internally: resetting the gpu control queue drops the
    command running and those queued behind it (none executes, none is answered); a cursor-queue reset leaves
    the control queue alone."""
    dev = Gpu(command_latency=200 * US)
    drv = LoopbackDriver(dev)
    drv.init(RING_RESET)
    hdr = struct.pack("<IIQIB3x", 0x0101, 0, 0, 0, 0)  # RESOURCE_CREATE_2D header, then rid, format, w, h
    bufs = [drv.submit(GPU_CONTROLQ, hdr + struct.pack("<IIII", rid, 1, 16, 16), 24)[1] for rid in (1, 2, 3)]
    assert drv.run_until(lambda: dev.inflight() == 3)
    dev.queue_reset(GPU_CURSORQ)
    assert not dev.queue_reset_pending(GPU_CURSORQ) and dev.inflight() == 3
    dev.queue_reset(GPU_CONTROLQ)
    assert dev.queue_reset_pending(GPU_CONTROLQ) and dev.inflight() == 0
    drv.run_until(lambda: False, 5 * MS)
    assert dev.resources == {} and dev.commands["RESOURCE_CREATE_2D"] == 0 and dev.quiesced()
    assert all(drv.ctx.memory.read(b, 24) == bytes(24) for b in bufs)
    assert used_idx(drv.ctx.memory, drv.vqs[GPU_CONTROLQ]) == 0
    reenable(drv, GPU_CONTROLQ, 8)
    drv.submit(GPU_CONTROLQ, hdr + struct.pack("<IIII", 7, 1, 16, 16), 24)
    _, length = drv.wait_used(GPU_CONTROLQ)
    assert length == 24 and set(dev.resources) == {7}
    assert not dev.status & Status.DEVICE_NEEDS_RESET


# -- through the PCI common configuration ------------------------------------------------------------------------


def _pci_rng(machine: Machine, alloc: GuestAllocator) -> tuple[Rng, RngDriver]:
    dev = Rng(bytes_per_us=1, latency=20 * US)
    fn = machine.plug(dev)
    drv = RngDriver(machine, fn, alloc, name="rng")
    drv.probe()
    assert dev.negotiated(Feature.RING_RESET)
    return dev, drv


@pytest.mark.spec("dev:pci/common-cfg#10", "dev:pci/common-cfg#11", "dev:pci/common-cfg#12", "dev:vq-reset#1")
def test_queue_reset_reads_1_while_cancelling_then_0(machine: Machine, alloc: GuestAllocator) -> None:
    """§4.1.4.3.2: the device MUST reset the queue when 1 is written to queue_reset, MUST keep presenting 1 while
    the reset is ongoing (here: while the request it had taken is being cancelled) and MUST present 0 in both
    queue_reset and queue_enable once done. The cancelled request is never answered."""
    dev, drv = _pci_rng(machine, alloc)
    req = drv.request(64)
    assert machine.run_until(lambda: dev.inflight() == 1, 1 * MS)
    pcifn = machine.function("rng")
    cwrite(pcifn, CommonCfg.QUEUE_SELECT, 2, RNG_REQUESTQ)
    assert cread(pcifn, CommonCfg.QUEUE_ENABLE, 2) == 1 and cread(pcifn, CommonCfg.QUEUE_RESET, 2) == 0
    cwrite(pcifn, CommonCfg.QUEUE_RESET, 2, 1)
    assert cread(pcifn, CommonCfg.QUEUE_RESET, 2) == 1
    assert cread(pcifn, CommonCfg.QUEUE_ENABLE, 2) == 0
    assert machine.run_until(lambda: cread(pcifn, CommonCfg.QUEUE_RESET, 2) == 0, 1 * MS)
    assert cread(pcifn, CommonCfg.QUEUE_ENABLE, 2) == 0
    machine.run_for(5 * MS)
    assert not req.done and dev.served == 0 and not dev.status & Status.DEVICE_NEEDS_RESET


@pytest.mark.spec("dev:pci/common-cfg#10", "dev:pci/common-cfg#12", "dev:vq-reenable#1")
def test_idle_queue_reset_is_immediate_and_the_queue_can_be_reenabled(machine: Machine,
                                                                      alloc: GuestAllocator) -> None:
    """§4.1.4.3.2: with nothing in flight the reset is over at once (QEMU): queue_reset and queue_enable read 0
    right after the write. §2.6.1.2.1: re-enabled with a new size through the common configuration, the queue
    serves requests on its new rings."""
    dev, drv = _pci_rng(machine, alloc)
    assert len(drv.read(8)) == 8
    fn = machine.function("rng")
    cwrite(fn, CommonCfg.QUEUE_SELECT, 2, RNG_REQUESTQ)
    cwrite(fn, CommonCfg.QUEUE_RESET, 2, 1)
    assert cread(fn, CommonCfg.QUEUE_RESET, 2) == 0 and cread(fn, CommonCfg.QUEUE_ENABLE, 2) == 0
    assert cread(fn, CommonCfg.QUEUE_SIZE, 2) == dev.queues[RNG_REQUESTQ].max_size
    size = 8
    layout = RingLayout.contiguous(alloc.alloc(RingLayout.contiguous(0, size).total_bytes, 4096), size)
    cwrite(fn, CommonCfg.QUEUE_SIZE, 2, size)
    for off, addr in ((CommonCfg.QUEUE_DESC_LO, layout.desc), (CommonCfg.QUEUE_DRIVER_LO, layout.avail),
                      (CommonCfg.QUEUE_DEVICE_LO, layout.used)):
        cwrite(fn, off, 4, addr & 0xFFFFFFFF)
        cwrite(fn, off + 4, 4, addr >> 32)
    vq = DriverQueue(machine.memory, layout, event_idx=True, indirect=True, alloc=alloc)
    cwrite(fn, CommonCfg.QUEUE_ENABLE, 2, 1)
    assert cread(fn, CommonCfg.QUEUE_ENABLE, 2) == 1 and cread(fn, CommonCfg.QUEUE_RESET, 2) == 0
    buf = alloc.alloc(32)
    vq.add([], [(buf, 32)], "x")
    fn.bar_write(QEMU_MODERN_BAR, QEMU_NOTIFY_OFFSET, 2, RNG_REQUESTQ)
    assert machine.run_until(lambda: used_idx(machine.memory, vq) == 1, 5 * MS)
    assert dev.queues[RNG_REQUESTQ].size == size and vq.get_used() == ("x", 32)
    assert [e for e in machine.trace.select(Kind.QUEUE) if e.detail.get("event") == "reset"]


# -- property: queue resets interleaved with requests, SUSPEND and resume -----------------------------------------


class QueueResetInterleavings(RuleBasedStateMachine):
    """A conforming driver makes requests, resets the queue (§2.6.1), re-enables it with a drawn size, suspends
    and resumes (Device Suspend), resets the device and lets time pass, in any order. Invariants: a request
    cancelled by a queue or device reset never writes its buffer, a reset queue's old rings are never touched
    again, while SUSPENDED the device neither writes a buffer nor the used ring, every completion is one of the
    live requests, the device never sets DEVICE_NEEDS_RESET, and with time a SUSPEND or a queue reset always
    completes."""

    def __init__(self) -> None:
        super().__init__()
        self.dev, self.drv = slow_rng()
        self.mem = self.drv.ctx.memory
        self.vq: DriverQueue | None = self.drv.vqs[RNG_REQUESTQ]
        self.live: dict[int, tuple[int, int]] = {}  # token -> (buffer, length) of requests not yet answered
        self.cancelled: list[tuple[int, int]] = []
        self.old_rings: list[tuple[DriverQueue, int]] = []  # rings of reset queues and their final used.idx
        self.frozen: tuple[int, list[int]] | None = None  # (served, used.idx of every ring) when SUSPENDED
        self.next_token = 0

    def _cancel_all(self) -> None:
        self.cancelled.extend(self.live.values())
        self.live.clear()
        if self.vq is not None:
            self.old_rings.append((self.vq, used_idx(self.mem, self.vq)))
        self.vq = None

    @rule(n=st.sampled_from([1, 16, 64]), wait=st.sampled_from([0, 25 * US, 25 * US]))
    def request(self, n: int, wait: int) -> None:
        """Make a buffer available (only on an enabled queue of a LIVE device: Device Suspend, driver side), and
        maybe give the device the time to take it (a request then stays in flight for ``n`` us)."""
        if self.vq is None or self.dev.lifecycle is not S.LIVE or not self.vq.num_free:
            return
        token = self.next_token
        self.next_token += 1
        _, buf = self.drv.submit(RNG_REQUESTQ, b"", n, token)
        self.live[token] = (buf, n)
        self.run(wait)

    @rule()
    def reset_queue(self) -> None:
        """Write queue_reset: every request the device has not answered is the driver's again."""
        self.dev.queue_reset(RNG_REQUESTQ)
        self._drain()
        self._cancel_all()

    @rule(size=st.sampled_from([1, 2, 4, 16]))
    def reenable(self, size: int) -> None:
        """Re-enable the queue once the reset reads as done (§4.1.4.3.2, driver side)."""
        if self.vq is not None or self.dev.queue_reset_pending(RNG_REQUESTQ) or self.dev.quiescent:
            return
        self.vq = reenable(self.drv, RNG_REQUESTQ, size)

    @rule()
    def suspend(self) -> None:
        if self.dev.lifecycle is S.LIVE:
            self.dev.write_status(self.dev.status | Status.SUSPEND)

    @rule()
    def resume(self) -> None:
        if self.dev.lifecycle is S.SUSPENDED:
            self.dev.write_status(self.dev.status | Status.DRIVER_OK)

    @rule()
    def reset_device(self) -> None:
        """A whole device reset and the §3.1.1 sequence again (everything outstanding is cancelled too)."""
        self._drain()
        self._cancel_all()
        self.drv.init(RING_RESET)
        self.vq = self.drv.vqs[RNG_REQUESTQ]

    @rule(ns=st.sampled_from([0, 5 * US, 30 * US, 200 * US]))
    def run(self, ns: int) -> None:
        self.drv.ctx.scheduler.run_for(ns)
        self._drain()

    @rule()
    def settle(self) -> None:
        """Dev Suspend: a SUSPEND or resume request completes; a queue reset completes (nothing here hangs)."""
        self.drv.ctx.scheduler.run_for(2 * MS)
        self._drain()
        assert self.dev.lifecycle not in (S.SUSPENDING, S.RESUMING)
        assert not self.dev.queue_reset_pending(RNG_REQUESTQ)

    def _drain(self) -> None:
        if self.vq is None:
            return
        for token, length in self.vq.drain_used():
            assert isinstance(token, int) and token in self.live, token
            buf, n = self.live.pop(token)
            assert 1 <= length <= n

    @invariant()
    def cancelled_requests_never_write(self) -> None:
        for buf, n in self.cancelled:
            assert self.mem.read(buf, n) == bytes(n)

    @invariant()
    def old_rings_are_never_touched(self) -> None:
        for vq, idx in self.old_rings:
            assert used_idx(self.mem, vq) == idx

    @invariant()
    def suspended_means_frozen(self) -> None:
        if self.dev.lifecycle is not S.SUSPENDED:
            self.frozen = None
            return
        rings = [vq for vq, _ in self.old_rings] + ([self.vq] if self.vq is not None else [])
        now = (self.dev.served, [used_idx(self.mem, vq) for vq in rings])
        if self.frozen is None:
            self.frozen = now
            self.frozen = now
        assert now == self.frozen

    @invariant()
    def never_needs_reset(self) -> None:
        assert not self.dev.status & Status.DEVICE_NEEDS_RESET
        assert self.drv.ctx.trace.violations() == []


@pytest.mark.spec("dev:vq-reset#1", "dev:vq-reset#2", "dev:vq-reenable#1", "dev:suspend#3", "dev:suspend#6",
                  "dev:suspend#7")
def test_queue_reset_interleaved_with_requests_and_suspend() -> None:
    """§2.6.1 with Device Suspend (§3.4.2), as a state machine: see :class:`QueueResetInterleavings`."""
    run_state_machine_as_test(QueueResetInterleavings, settings=settings(
        max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]))
