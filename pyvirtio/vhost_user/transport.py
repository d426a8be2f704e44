"""The vhost-user transport of a device model: a :class:`~pyvirtio.host.context.DeviceContext` and the driver's
side of the device core, played from what the front-end sends.

Contract. A :class:`~pyvirtio.host.device.VirtioDevice` runs here unchanged, exactly as behind the virtio-pci
function: it sees guest memory (:class:`~pyvirtio.vhost_user.memory.VhostMemory`), a scheduler (real time, or
virtual in tests), a trace (which feeds the conformance monitor) and its two notifications (used buffers: the
ring's call eventfd; configuration changes: the back-end request channel). The front-end owns the guest-visible
status byte, so :class:`ServedDevice` plays the driver's part of the device core from the vhost-user events:

* the first ring to start runs the §3.1.1 sequence on the model (reset, ACKNOWLEDGE, DRIVER, the features of
  SET_FEATURES, FEATURES_OK, DRIVER_OK); a ring starts as a queue built from its size, its addresses (user
  addresses translated to guest-physical) and its base, with the used index read from the used ring;
* GET_VRING_BASE stops a ring: the requests it has in flight are completed first (bounded by
  ``drain_timeout``), then the queue is reset and the next available index is the answer, so a restart takes
  every request the driver made available and nothing twice; requests still in flight at the bound are
  abandoned and noted;
* when every ring is stopped, :attr:`StopPolicy.RESET` resets the model (what a guest reset looks like through
  the front-end: QEMU stops every ring and restarts them) and :attr:`StopPolicy.KEEP` keeps its device-type
  state (a VM stop, a migration: the reference back-ends keep theirs). A model in DEVICE_NEEDS_RESET is reset
  when its rings restart after all were stopped (the only way a driver can get it back);
* a change of the features between two starts is a driver re-negotiation: the model is reset first.

The model is never told anything it could not learn from a real transport, and nothing here raises into the
server: problems come back as one-line strings.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from enum import Enum
from typing import Protocol

from pyvirtio.clock import MS
from pyvirtio.errors import GuestMemoryError, InvalidStateError
from pyvirtio.host.context import Cancellable, DeviceScheduler, DeviceTrace
from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.lifecycle import DeviceLifecycle
from pyvirtio.spec.constants import VIRTQ_RING_IDX, Status
from pyvirtio.trace import Kind, TraceEvent
from pyvirtio.vhost_user.memory import VhostMemory
from pyvirtio.vhost_user.monitor import Monitor
from pyvirtio.vhost_user.rings import Ring
from pyvirtio.virtqueue.device import DeviceQueue
from pyvirtio.virtqueue.layout import avail_ring_size, desc_table_size, used_ring_size
from pyvirtio.virtqueue.state import QueueState

Log = Callable[[str], None]
_L = DeviceLifecycle
#: Longest a ring stop waits for the requests in flight to complete.
DRAIN_TIMEOUT = 1000 * MS


class StopPolicy(Enum):
    """What stopping every ring means for the model's state (see the module contract)."""

    RESET = "reset"
    KEEP = "keep"


class DrainScheduler(DeviceScheduler, Protocol):
    """A device scheduler that can also run its steps until a condition holds (virtual or real time)."""

    def run_until(self, predicate: Callable[[], bool], timeout: int) -> bool:
        """Run steps until ``predicate()`` or ``timeout`` ns pass; whether the predicate held."""


class Notifier(Protocol):
    """Where a served device's notifications go: the connection's descriptors."""

    def call(self, queue: int) -> None:
        """A used-buffer notification for ``queue``."""

    def config_changed(self) -> None:
        """A configuration-change notification."""

    def device_error(self) -> None:
        """The device entered DEVICE_NEEDS_RESET."""


class _NoNotifier:
    """Between connections: notifications go nowhere."""

    def call(self, queue: int) -> None:
        del queue

    def config_changed(self) -> None:
        pass

    def device_error(self) -> None:
        pass


class HookedScheduler:
    """``inner`` with a hook run after every device step (the fault engine counts completed requests there)."""

    def __init__(self, inner: DrainScheduler, after_step: Callable[[], None]) -> None:
        self.inner = inner
        self.after_step = after_step

    @property
    def now(self) -> int:
        """The inner scheduler's time."""
        return self.inner.now

    @property
    def rng(self) -> random.Random:
        """The inner scheduler's seeded random source."""
        return self.inner.rng

    def schedule(self, delay: int, callback: Callable[[], None], label: str = "") -> Cancellable:
        """Schedule ``callback`` on the inner scheduler; the hook runs after it."""

        def step() -> None:
            try:
                callback()
            finally:
                self.after_step()

        return self.inner.schedule(delay, step, label)

    def run_until(self, predicate: Callable[[], bool], timeout: int) -> bool:
        """The inner scheduler's ``run_until``."""
        return self.inner.run_until(predicate, timeout)


class MonitorTrace:
    """The served device's trace: each event goes to the monitor (violations, status) with the device time, then
    to every listener (an extension following the model: the gpu display protocol follows its scanouts)."""

    def __init__(self, scheduler: DrainScheduler, monitor: Monitor) -> None:
        self._scheduler = scheduler
        self.monitor = monitor
        self.events = 0
        self.listeners: list[Callable[[TraceEvent], None]] = []

    def record(self, kind: Kind, src: str, /, **detail: object) -> None:
        """Hand one event to the monitor and the listeners."""
        self.events += 1
        ev = TraceEvent(self._scheduler.now, kind, src, dict(detail))
        self.monitor.trace_event(ev)
        for listener in self.listeners:
            listener(ev)


class VhostContext:
    """The :class:`~pyvirtio.host.context.DeviceContext` of a served device."""

    def __init__(self, memory: VhostMemory, scheduler: DrainScheduler, trace: DeviceTrace) -> None:
        self._memory = memory
        self._scheduler = scheduler
        self._trace = trace
        self.notifier: Notifier = _NoNotifier()

    @property
    def memory(self) -> VhostMemory:
        """The front-end's guest memory, as mapped."""
        return self._memory

    @property
    def scheduler(self) -> DrainScheduler:
        """Real time when serving, virtual time in tests (with the fault engine's hook when it counts)."""
        return self._scheduler

    @property
    def trace(self) -> DeviceTrace:
        """The monitor's trace."""
        return self._trace

    def notify_queue(self, index: int) -> None:
        """Signal ``index``'s call eventfd."""
        self.notifier.call(index)

    def notify_config(self) -> None:
        """Send CONFIG_CHANGE_MSG on the back-end channel, if there is one."""
        self.notifier.config_changed()


class ServedDevice:
    """Plays the driver's side of the device core from vhost-user events (see the module contract)."""

    def __init__(self, device: VirtioDevice, ctx: VhostContext, monitor: Monitor, *,
                 policy: StopPolicy = StopPolicy.RESET, log: Log = lambda _m: None,
                 drain_timeout: int = DRAIN_TIMEOUT) -> None:
        self.device = device
        self.ctx = ctx
        self.monitor = monitor
        self.policy = policy
        self.log = log
        self.drain_timeout = drain_timeout
        self.features: int | None = None  # virtio bits of the last SET_FEATURES (within the offer)
        self.running: set[int] = set()  # rings whose queue was started and not stopped since
        self.paused: set[int] = set()  # running rings the front-end disabled (SET_VRING_ENABLE 0)
        device.attach(ctx)
        device.lifecycle_listeners.append(self._lifecycle)

    @property
    def num_queues(self) -> int:
        """How many virtqueues the model has."""
        return len(self.device.queues)

    def _lifecycle(self, state: DeviceLifecycle) -> None:
        if state is _L.NEEDS_RESET:
            self.log(f"{self.device.name}: the device set DEVICE_NEEDS_RESET; it stops serving until the rings "
                     "restart")
            self.ctx.notifier.device_error()

    # -- features ---------------------------------------------------------------------------------------------

    def offered(self) -> int:
        """The virtio features the model offers (GET_FEATURES adds the vhost bit)."""
        return self.device.offered_features()

    def renegotiates(self, features: int) -> bool:
        """Whether SET_FEATURES with ``features`` (vhost bits removed) changes the model's negotiated set."""
        f = features & self.offered()
        return self.features is not None and f != self.features and self.device.lifecycle is not _L.RESET

    def set_features(self, features: int) -> None:
        """SET_FEATURES (vhost bits already removed): kept for the next start; a change resets the model.
        Call :meth:`stop` on running rings first."""
        offered = self.offered()
        extra = features & ~offered
        if extra:
            self.monitor.note("features", f"front-end passed feature bits {extra:#x} the device does not offer "
                                          "(ignored)")
        f = features & offered
        if self.renegotiates(features):
            self.device.reset()
            self.running.clear()
            self.paused.clear()
        if f != self.features:
            self.monitor.features(f)
        self.features = f

    # -- the model's life -------------------------------------------------------------------------------------

    def ensure_live(self) -> str | None:
        """Bring the model to DRIVER_OK with the front-end's features (§3.1.1), unless it is live already."""
        d = self.device
        if d.lifecycle is _L.NEEDS_RESET:
            if self.running:
                return None  # other rings still run: the device stays broken until all stop
            self.monitor.note("reset", "device in DEVICE_NEEDS_RESET reset as its rings restart")
            d.reset()
        if d.lifecycle is not _L.RESET and d.lifecycle is not _L.CONFIGURING:
            return None
        if self.features is None:
            return "a ring was started before SET_FEATURES"
        if d.lifecycle is _L.CONFIGURING:
            d.reset()
        d.write_status(Status.ACKNOWLEDGE)
        d.write_status(Status.ACKNOWLEDGE | Status.DRIVER)
        d.set_driver_features(self.features)
        d.write_status(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
        if not d.status & Status.FEATURES_OK:
            return f"the device refused the features {self.features:#x}"
        d.write_status(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK)
        return None

    def start(self, ring: Ring) -> str | None:
        """Start ``ring`` as the model's queue (the ring is runnable). None, or why it cannot start."""
        i, n = ring.index, ring.num
        problem = self.ensure_live()
        if problem is not None:
            return problem
        mem = self.ctx.memory
        assert ring.desc is not None and ring.avail is not None and ring.used is not None
        gpa: list[int] = []
        for what, uva, size in (("descriptor table", ring.desc, desc_table_size(n)),
                                ("available ring", ring.avail, avail_ring_size(n)),
                                ("used ring", ring.used, used_ring_size(n))):
            g = mem.uva_to_gpa(uva, size)
            if g is None:
                return f"ring {i}: {what} at user address {uva:#x} (+{size:#x}) is outside every memory region"
            gpa.append(g)
        try:
            used_idx = mem.read_u16(gpa[2] + VIRTQ_RING_IDX)
        except GuestMemoryError as e:
            return f"ring {i}: {e}"
        base = ring.base
        behind = (base - used_idx) & 0xFFFF
        if behind > n:
            return f"ring {i}: base {base} is {behind} entries ahead of used.idx {used_idx} (queue size {n})"
        if behind:
            self.monitor.note("ring", f"ring {i}: {behind} buffers taken before the last stop and never used are "
                                      f"served again (base {base}, used.idx {used_idx})")
            base = used_idx
        state = QueueState(max_size=n, size=n, ready=False, desc_table=gpa[0], avail_ring=gpa[1], used_ring=gpa[2],
                           next_avail=base, next_used=used_idx, event_idx=False, indirect=False,
                           signalled_used=used_idx)
        try:
            queue = DeviceQueue.from_state(mem, state)
        except (InvalidStateError, GuestMemoryError) as e:
            return f"ring {i}: {e}"
        d = self.device
        if d.queue_reset_pending(i):  # requests abandoned at the last stop are still being cancelled
            self.ctx.scheduler.run_until(lambda: not d.queue_reset_pending(i), self.drain_timeout)
        d.queues[i] = queue
        if not d.enable_queue(i):
            return f"ring {i}: the device refused the queue"
        self.running.add(i)
        d.kick(i)  # a started ring is looked at even before the first kick
        return None

    def stop(self, ring: Ring) -> int:
        """Stop ``ring`` (GET_VRING_BASE): drain, reset the queue, return the next available index."""
        i = ring.index
        if i not in self.running:
            return ring.base
        d = self.device

        def drained() -> bool:
            return d.queues[i].in_flight == 0

        if not drained():
            self.ctx.scheduler.run_until(drained, self.drain_timeout)
        q = d.queues[i]
        base = q.next_avail
        if q.in_flight:
            self.monitor.note("ring", f"ring {i}: {q.in_flight} requests still in flight after "
                                      f"{self.drain_timeout / MS:.0f} ms were abandoned at the stop")
        d.queue_reset(i)
        self.running.discard(i)
        self.paused.discard(i)
        if not self.running and self.policy is StopPolicy.RESET and d.lifecycle is not _L.RESET:
            d.reset()
        return base

    def pause(self, i: int) -> None:
        """SET_VRING_ENABLE 0 on a running ring: kicks are no longer passed on (the session holds them); requests
        already taken complete and are counted by GET_VRING_BASE. (The model's queue stays ready: completing a
        request needs it, and marking it not ready would make the model treat a completion as an error.)"""
        if i in self.running:
            self.paused.add(i)

    def resume(self, i: int) -> None:
        """SET_VRING_ENABLE 1 on a paused ring: the model looks at it again (a kick may have been held)."""
        if i in self.paused:
            self.paused.discard(i)
            self.device.kick(i)

    def kick(self, i: int) -> None:
        """The driver notified ring ``i``: the model looks at its queue; the monitor checks ``avail.flags``."""
        if i not in self.running:
            return
        d = self.device
        q = d.queues[i]
        if q.ready:
            try:
                flags = self.ctx.memory.read_u16(q.avail_ring)
            except GuestMemoryError:
                flags = 0
            self.monitor.avail_flags(i, flags, q.event_idx)
        d.kick(i)

    def reset(self) -> None:
        """RESET_DEVICE or the end of the connection: every queue stops, the model is reset, features forgotten."""
        self.running.clear()
        self.paused.clear()
        self.device.reset()
        self.features = None

    # -- device configuration (PROTOCOL_F_CONFIG) -------------------------------------------------------------

    def read_config(self, offset: int, size: int) -> bytes | str:
        """``size`` bytes of the device configuration at ``offset``, or why not."""
        cs = self.device.config_size()
        if offset + size > cs:
            return f"config [{offset}, +{size}) is outside the device's {cs} bytes"
        out = bytearray()
        pos = offset
        while pos < offset + size:
            width = min(4 - pos % 4, offset + size - pos)
            out += self.device.read_config(pos, width).to_bytes(width, "little")
            pos += width
        return bytes(out)

    def write_config(self, offset: int, data: bytes) -> str | None:
        """Write the device configuration at ``offset`` (a driver's write, through the front-end)."""
        cs = self.device.config_size()
        if offset + len(data) > cs:
            return f"config [{offset}, +{len(data)}) is outside the device's {cs} bytes"
        if not self.device.accepts_config_write():
            return "the device refuses config writes now (suspended)"
        pos = 0
        while pos < len(data):
            width = len(data) - pos if len(data) - pos in (1, 2, 4) and (offset + pos) % (len(data) - pos) == 0 \
                else min(4 - (offset + pos) % 4, len(data) - pos)
            self.device.write_config(offset + pos, width, int.from_bytes(data[pos:pos + width], "little"))
            pos += width
        return None


__all__ = ["DRAIN_TIMEOUT", "HookedScheduler", "MonitorTrace", "Notifier", "ServedDevice", "StopPolicy",
           "VhostContext"]
