"""A transport with no PCI at all: the device's :class:`DeviceContext` and a driver that talks to the device core
directly (feature bits, status writes, queue setup, kicks) with :class:`DriverQueue` rings in guest memory.

It plays the part a vhost-user frontend would: it owns the rings' addresses, forwards kicks and counts the
device's notifications. Nothing here imports ``pyvirtio.host.pci`` or ``pyvirtio.machine``.
"""

from __future__ import annotations

from collections.abc import Callable

from pyvirtio.clock import MS, Scheduler
from pyvirtio.dma import GuestAllocator
from pyvirtio.host.device import VirtioDevice
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import Feature, Status, bit
from pyvirtio.trace import Trace
from pyvirtio.virtqueue.driver import DriverQueue
from pyvirtio.virtqueue.layout import RingLayout

HEAP_BASE = 1 << 20


class LoopbackContext:
    """A :class:`~pyvirtio.host.context.DeviceContext`: memory, a virtual-time scheduler, a trace, and the two
    notifications recorded instead of delivered."""

    def __init__(self, memory_size: int = 32 << 20, seed: int = 0) -> None:
        self.scheduler = Scheduler(seed)
        self.trace = Trace(self.scheduler)
        self.memory = GuestMemory(memory_size)
        self.queue_notifications: list[int] = []
        self.config_notifications = 0

    def notify_queue(self, index: int) -> None:
        self.queue_notifications.append(index)

    def notify_config(self) -> None:
        self.config_notifications += 1


class LoopbackDriver:
    """The §3.1.1 init sequence and queue traffic against a device attached to a :class:`LoopbackContext`."""

    def __init__(self, device: VirtioDevice, ctx: LoopbackContext | None = None) -> None:
        self.ctx = ctx or LoopbackContext()
        self.dev = device
        device.attach(self.ctx)
        self.alloc = GuestAllocator(self.ctx.memory, HEAP_BASE, self.ctx.memory.size - HEAP_BASE)
        self.vqs: list[DriverQueue] = []

    def init(self, want: int = 0, queue_size: int = 16) -> int:
        """Reset, negotiate ``want`` (plus VERSION_1, EVENT_IDX, INDIRECT_DESC, SUSPEND when offered), set up
        every queue and set DRIVER_OK. Returns the negotiated features."""
        d = self.dev
        d.write_status(0)
        d.write_status(Status.ACKNOWLEDGE)
        d.write_status(Status.ACKNOWLEDGE | Status.DRIVER)
        base = bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX) | bit(Feature.INDIRECT_DESC) | bit(Feature.SUSPEND)
        features = (want | base) & d.offered_features()
        d.set_driver_features(features)
        status = Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK
        d.write_status(status)
        assert d.status & Status.FEATURES_OK, "device refused the features"
        self.vqs = []
        for i, dq in enumerate(d.queues):
            size = min(queue_size, dq.max_size)
            base_addr = self.alloc.alloc(RingLayout.contiguous(0, size).total_bytes, 4096)
            layout = RingLayout.contiguous(base_addr, size)
            self.ctx.memory.fill(base_addr, layout.total_bytes, 0)
            assert dq.set_size(size)
            dq.desc_table, dq.avail_ring, dq.used_ring = layout.desc, layout.avail, layout.used
            assert d.enable_queue(i)
            self.vqs.append(DriverQueue(self.ctx.memory, layout, event_idx=bool(features & bit(Feature.EVENT_IDX)),
                                        indirect=bool(features & bit(Feature.INDIRECT_DESC)), alloc=self.alloc))
        d.write_status(status | Status.DRIVER_OK)
        return features

    def submit(self, queue: int, out: bytes, in_len: int, token: object = "buf") -> tuple[int, int]:
        """Make a buffer available (``out`` readable, ``in_len`` writable bytes) and kick if the device wants it.
        Returns the addresses of the two parts."""
        vq = self.vqs[queue]
        out_addr = self.alloc.alloc_bytes(out) if out else 0
        in_addr = self.alloc.alloc(in_len) if in_len else 0
        vq.add([(out_addr, len(out))] if out else [], [(in_addr, in_len)] if in_len else [], token)
        if vq.kick_prepare():
            self.dev.kick(queue)
        return out_addr, in_addr

    def run_until(self, predicate: Callable[[], bool], timeout: int = 100 * MS) -> bool:
        """Run the context's clock until ``predicate`` holds."""
        return self.ctx.scheduler.run_until(predicate, timeout)

    def wait_used(self, queue: int, timeout: int = 100 * MS) -> tuple[object, int]:
        """The next used buffer of ``queue`` as ``(token, len)``; AssertionError if none comes in time."""
        vq = self.vqs[queue]
        got: list[tuple[object, int]] = []

        def done() -> bool:
            u = vq.get_used()
            if u is not None:
                got.append(u)
            return bool(got)

        assert self.run_until(done, timeout), f"queue {queue}: no used buffer"
        return got[0]
