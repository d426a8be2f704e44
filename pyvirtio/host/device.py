"""The transport-independent virtio device core (virtio 1.4 §2.1 status, §2.2 features, §2.4 reset, Device Suspend).

Contract. A concrete device (rng, gpu, ...) subclasses :class:`VirtioDevice`, sets ``device_id`` and
``queue_sizes`` and implements ``process_queue`` and the config hooks. It reaches the outside world only through
its :class:`~pyvirtio.host.context.DeviceContext` (guest memory, scheduler, trace, the two notifications), so the
same model runs behind the virtio-pci function, behind a vhost-user connection, or behind a test harness.

The core owns everything generic:

* feature negotiation: FEATURES_OK is not latched when the driver accepts a bit that was not offered or omits
  VERSION_1 (§3.1.1);
* the lifecycle, as data (:mod:`pyvirtio.host.lifecycle`): each driver status write is screened for the spec's
  answer (a write of 0 resets; a write that clears a bit without a reset is a driver error and is ignored, the
  only clears being the device's own for SUSPEND), then becomes at most one table lookup;
* DEVICE_NEEDS_RESET with a configuration-change notification when DRIVER_OK is set (§2.1.2);
* Device Suspend (virtio 1.4): SUSPEND is ignored unless DRIVER_OK is set and VIRTIO_F_SUSPEND negotiated; the
  device stops consuming buffers, lets in-flight requests complete (with used notifications), and only then
  presents SUSPEND=1/DRIVER_OK=0. While suspended it sends no notification, touches no queue and does not change
  its config space; a config change is applied and notified once on resume; a failed suspend or resume sets
  DEVICE_NEEDS_RESET;
* virtqueue reset (§2.6.1, VIRTIO_F_RING_RESET): everything taken from the queue is cancelled — scheduled work
  for it never runs, its chains are the driver's again (never written, used or notified) — and the queue is
  back to its defaults; a reset that cancelled work stays in progress for one device step
  (:meth:`VirtioDevice.queue_reset_pending`, what ``queue_reset`` reads), and a SUSPEND waits for it.

What a transport calls (the device side of any transport): :meth:`VirtioDevice.attach`, ``offered_features``,
``set_driver_features``, ``write_status``, ``reset``, ``enable_queue``, ``queue_reset``, ``kick``,
``queue_reset_pending``, ``set_bus_master``, ``config_size`` / ``read_config`` / ``write_config`` (after
``accepts_config_write``).

Devices work in scheduled steps on the context's clock: a kick schedules ``process_queue`` after ``latency`` ns;
a device may hold a request in flight and complete it later with :meth:`VirtioDevice.after` (naming the queue,
so that a queue reset cancels it). Every guest-caused error becomes the spec's answer; nothing raised by a device
step escapes into the transport.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, ClassVar

from pyvirtio.clock import US
from pyvirtio.errors import GuestMemoryError, QueueError
from pyvirtio.host.lifecycle import QUIESCENT, DeviceLifecycle, LifecycleEvent, next_state
from pyvirtio.spec.constants import DeviceId, Feature, Status, bit
from pyvirtio.trace import Kind
from pyvirtio.virtqueue.chain import DescriptorChain
from pyvirtio.virtqueue.device import DeviceQueue

if TYPE_CHECKING:
    from pyvirtio.host.context import Cancellable, DeviceContext

_L = DeviceLifecycle
_E = LifecycleEvent
#: Status bits as plain ints: the hot paths test ``int(self.status) & bit`` (IntFlag arithmetic runs in Python)
_DRIVER_OK = int(Status.DRIVER_OK)
#: the quiescent states as a tuple: membership by identity, without hashing the enum member in Python
_QUIESCENT = tuple(QUIESCENT)


@dataclass
class Faults:
    """Fault injection for power-management tests. All off by default.

    Two switches make the device deliberately NON-CONFORMING (no real device should behave so; they exist to
    test how a driver copes): ``quiesce_never_completes`` breaks Device Suspend's "the device MUST suspend or
    set DEVICE_NEEDS_RESET" (§3.4), and ``backend_hangs`` never completes a request. The other two are the
    spec's own failure answer (DEVICE_NEEDS_RESET) and stay conforming.
    """

    quiesce_never_completes: bool = False  # NON-CONFORMING: in-flight requests never finish once SUSPEND is written
    backend_hangs: bool = False  # NON-CONFORMING: in-flight requests never finish at all (a wedged backend)
    suspend_fails: bool = False  # conforming: the device cannot suspend and sets DEVICE_NEEDS_RESET
    resume_fails: bool = False  # conforming: the device cannot resume and sets DEVICE_NEEDS_RESET


class VirtioDevice:
    """Base of every device model. Subclasses set ``device_id``, ``queue_sizes`` and implement the hooks."""

    device_id: ClassVar[DeviceId]
    #: max size of each virtqueue, by index
    queue_sizes: tuple[int, ...] = (256,)

    def __init__(self, name: str, *, offer_suspend: bool = True, latency: int = 10 * US) -> None:
        """A device called ``name`` (unique on its bus); each step takes ``latency`` ns; SUSPEND offered or not."""
        self.name = name
        self.latency = latency
        self.offer_suspend = offer_suspend
        self.faults = Faults()
        self._ctx: DeviceContext | None = None
        self.queues: list[DeviceQueue] = []
        self.driver_features = 0
        self.status = 0  # the value the device presents
        self.config_generation = 0
        self._lifecycle = DeviceLifecycle.RESET
        self._quiet = False  # lifecycle in QUIESCENT (kept by _fire: the hot paths read it)
        self._labels: dict[str, str] = {}  # label -> "name:label" (scheduled events' labels, formatted once)
        self.disabled = False  # bus mastering off (QEMU virtio_set_disabled); orthogonal to the lifecycle
        self._taken: list[dict[int, DescriptorChain]] = []  # per queue: chains popped, not completed (by id)
        self._held: list[Callable[[], None]] = []  # device steps waiting for bus mastering (see :meth:`after`)
        #: the value of ``config_generation`` the driver read last; a change never presents it again
        self._generation_read: int | None = None
        #: called with the new state after every lifecycle transition (the transport's hook, e.g. MSI-X)
        self.lifecycle_listeners: list[Callable[[DeviceLifecycle], None]] = []
        self._scheduled: set[int] = set()
        self._epoch = 0  # bumps on reset: stale completions are dropped
        self._queue_epoch: list[int] = []  # per queue, bumps on a queue reset: that queue's work is dropped
        self._queue_resetting: set[int] = set()  # queue resets still cancelling taken work (queue_reset reads 1)
        self._deferred_config: list[Callable[[], None]] = []
        #: further bits to offer (set before plugging; transports declare theirs with ``attach``). NON-CONFORMING
        #: unless the device implements them: a test hook for a device that offers what it cannot honour (§2.2.2).
        self.extra_features = 0
        self.transport_features = 0
        #: while set, a reset keeps device-type state (the 2023 FREEZING / freeze_mode proposals)
        self.retain_state_on_reset = False

    # -- wiring -----------------------------------------------------------------------------------------------

    def attach(self, ctx: DeviceContext, *, transport_features: int = 0) -> None:
        """Called once by the transport when the device is plugged: the queues live in ``ctx.memory``.

        ``transport_features`` are bits the transport implements on the device's behalf (the freeze_mode
        proposal's bit); they are part of the offer from then on."""
        self._ctx = ctx
        self.transport_features = transport_features
        self.queues = [DeviceQueue(ctx.memory, n) for n in self.queue_sizes]
        # per queue: the step a kick schedules, and its label (made once)
        self._queue_steps = [(partial(self._run_queue, i), f"q{i}") for i in range(len(self.queues))]
        self._taken = [{} for _ in self.queues]
        self._queue_epoch = [0] * len(self.queues)
        self._queue_resetting = set()

    @property
    def ctx(self) -> DeviceContext:
        """The context the device is attached to; RuntimeError before :meth:`attach`."""
        if self._ctx is None:
            raise RuntimeError(f"device {self.name} is not plugged")
        return self._ctx

    @property
    def now(self) -> int:
        """The context's clock, in ns."""
        return self.ctx.scheduler.now

    def trace(self, kind: Kind, **detail: object) -> None:
        """Record a trace event under the device's name."""
        self.ctx.trace.record(kind, self.name, **detail)

    def violation(self, rule: str, **detail: object) -> None:
        """Record that the guest broke a normative statement (the device already gave the spec's answer)."""
        self.trace(Kind.VIOLATION, rule=rule, **detail)

    # -- lifecycle (read-only views kept for callers of the former booleans) -----------------------------------

    @property
    def lifecycle(self) -> DeviceLifecycle:
        """Where the device is in its life; it only moves by a transition of the table."""
        return self._lifecycle

    def _fire(self, event: LifecycleEvent) -> None:
        self._lifecycle = next_state(self._lifecycle, event)
        self._quiet = self._lifecycle in _QUIESCENT
        for listener in self.lifecycle_listeners:
            listener(self._lifecycle)

    @property
    def suspending(self) -> bool:
        """SUSPEND was written and the device is quiescing (lifecycle SUSPENDING)."""
        return self.lifecycle is _L.SUSPENDING

    @property
    def suspended(self) -> bool:
        """SUSPEND is acknowledged (SUSPENDED, or RESUMING until the device presents DRIVER_OK again)."""
        return self._lifecycle is _L.SUSPENDED or self._lifecycle is _L.RESUMING

    @property
    def resuming(self) -> bool:
        """DRIVER_OK was written to a suspended device and the resume is under way."""
        return self.lifecycle is _L.RESUMING

    def request_stuck(self) -> bool:
        """Fault injection: a request in flight must not complete now (:class:`Faults`)."""
        return self.faults.backend_hangs or (self.faults.quiesce_never_completes and self.suspending)

    @property
    def quiescent(self) -> bool:
        """Suspending, suspended or resuming: no buffer taken, no notification, config changes deferred."""
        return self._quiet

    # -- hooks for subclasses ---------------------------------------------------------------------------------

    def device_features(self) -> int:
        """Device-type feature bits offered (bits 0..23 etc.)."""
        return 0

    def config_size(self) -> int:
        """Bytes of device-specific configuration (0: the device has none)."""
        return 0

    def read_config(self, offset: int, size: int) -> int:
        """Device-specific config read; offset/size already range-checked by the transport."""
        return 0

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Device-specific config write (only called when the device accepts config writes)."""

    def process_queue(self, index: int) -> None:
        """Consume available buffers of queue ``index``. Use :meth:`pop` and :meth:`complete`."""

    def on_reset(self) -> None:
        """Drop device-specific state on reset (QEMU: the device's reset handler)."""

    def on_driver_ok(self) -> None:
        """The driver set DRIVER_OK."""

    def on_features_ok(self) -> None:
        """FEATURES_OK was latched; ``driver_features`` is final."""

    def on_queue_reset(self, index: int) -> None:
        """The driver reset queue ``index`` (§2.6.1): drop device-specific work taken from it (requests queued
        inside the device). The core has already dropped its scheduled work and taken chains."""

    def state_bytes(self) -> int:
        """How many bytes of device-type state a freeze must preserve (gpu: resource memory)."""
        return 0

    def quiesced(self) -> bool:
        """Device-specific work (fences, pending commands) finished; the core also waits for in-flight chains."""
        return True

    # -- features ---------------------------------------------------------------------------------------------

    def offered_features(self) -> int:
        """Every feature bit the device offers: device-type bits, the transport bits pyvirtio implements, extras."""
        # spec: dev:reserved-features#1, dev:features#3, dev:features#1, dev:reserved-features#5
        # VERSION_1 always; then only bits the core implements, none of which needs another (EVENT_IDX,
        # INDIRECT_DESC, RING_RESET, SUSPEND); never SR_IOV (no SR-IOV capability) nor any other bit of §6.
        feats = self.device_features() | bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX)
        feats |= bit(Feature.INDIRECT_DESC) | bit(Feature.RING_RESET)
        if self.offer_suspend:
            feats |= bit(Feature.SUSPEND)
        return feats | self.extra_features | self.transport_features

    def negotiated(self, feature: int) -> bool:
        """``feature`` was accepted by the driver and FEATURES_OK is latched."""
        return bool(self.status & Status.FEATURES_OK) and bool(self.driver_features & bit(feature))

    def set_driver_features(self, value: int) -> None:
        """The driver's feature bits; ignored (a violation) once FEATURES_OK is latched (§2.2)."""
        if self.status & Status.FEATURES_OK:
            self.violation("§2.2 driver MUST NOT accept new feature bits after FEATURES_OK", value=value)
            return
        self.driver_features = value

    # -- status writes ----------------------------------------------------------------------------------------

    def _present(self, value: int) -> None:
        if value != self.status:
            self.status = value
            self.trace(Kind.STATUS, status=value)

    def write_status(self, value: int) -> None:
        """A driver write of ``device status`` (already width-checked by the transport).

        A write of 0 is the reset (:meth:`reset`). Any other write is screened for the spec's answer, then handed
        to the handler of the current lifecycle state; at most one lifecycle transition follows.
        """
        value &= 0xFF
        if value == 0:
            self.reset()
            return
        cur = self.status
        # DEVICE_NEEDS_RESET is the device's bit; a driver write neither sets nor clears it.
        value = (value & ~Status.DEVICE_NEEDS_RESET) | (cur & Status.DEVICE_NEEDS_RESET)
        self._STATUS_WRITE[self.lifecycle](self, cur, value)

    def _screen(self, cur: int, value: int) -> tuple[int, bool] | None:
        """The spec's answer to a non-zero status write: the value to present and whether SUSPEND is requested,
        or None when the write is ignored. Violations are traced here."""
        want_suspend = bool(value & Status.SUSPEND) and not (cur & Status.SUSPEND)
        # spec: dev:suspend#1
        if want_suspend and not (cur & Status.DRIVER_OK and self.driver_features & bit(Feature.SUSPEND)):
            self.violation("Device Suspend: device MUST ignore SUSPEND unless DRIVER_OK and VIRTIO_F_SUSPEND",
                           value=value)
            value &= ~Status.SUSPEND
            want_suspend = False
        cleared = cur & ~value & 0xFF
        if self.lifecycle in (_L.SUSPENDING, _L.RESUMING):
            cleared &= ~(Status.SUSPEND | Status.DRIVER_OK)
        if cleared:
            self.violation("§2.1 driver MUST NOT clear a device status bit (only reset)", was=cur, value=value)
            return None
        if value & Status.FEATURES_OK and not cur & Status.FEATURES_OK and not self._features_acceptable():
            value &= ~Status.FEATURES_OK  # spec: dev:features#2 (a refused set: FEATURES_OK does not stick)
        if value & Status.DRIVER_OK and not cur & Status.DRIVER_OK and not value & Status.FEATURES_OK:
            self.violation("§3.1.1 driver sets DRIVER_OK only after FEATURES_OK", value=value)
            value &= ~Status.DRIVER_OK
        return value, want_suspend

    def _write_configuring(self, cur: int, value: int) -> None:
        """RESET, CONFIGURING, LIVE: the driver's init sequence (§3.1.1), and SUSPEND from LIVE."""
        screened = self._screen(cur, value)
        if screened is None:
            return
        value, want_suspend = screened
        if self.lifecycle is _L.RESET and value:
            self._fire(_E.CONFIGURE)
        self._present(value)
        if want_suspend:  # SUSPEND written, not yet acknowledged: the device still shows DRIVER_OK
            self._begin_suspend()
            return
        if value & Status.FEATURES_OK and not cur & Status.FEATURES_OK:
            self.on_features_ok()
        if value & Status.DRIVER_OK and not cur & Status.DRIVER_OK:
            self._fire(_E.DRIVER_OK)
            self.on_driver_ok()
            for i, q in enumerate(self.queues):
                if q.ready:
                    self.kick(i)

    def _write_in_transition(self, cur: int, value: int) -> None:
        """SUSPENDING, RESUMING: the pending transition decides what the device presents; the write is ignored."""
        self._screen(cur, value)

    def _write_suspended(self, cur: int, value: int) -> None:
        """SUSPENDED: DRIVER_OK resumes (Device Suspend); other bits may be added, none cleared."""
        if value & Status.DRIVER_OK:
            self._begin_resume(value)
            return
        screened = self._screen(cur, value)
        if screened is not None:
            self._present(screened[0])

    def _write_needs_reset(self, cur: int, value: int) -> None:
        """NEEDS_RESET: bits may be added (FAILED, say) but nothing starts: only a reset leaves this state."""
        screened = self._screen(cur, value)
        if screened is None:
            return
        value, want_suspend = screened
        if want_suspend:
            self.trace(Kind.DEVICE, event="suspend_ignored", why="device needs reset")
            value &= ~Status.SUSPEND
        self._present(value)
        if value & Status.FEATURES_OK and not cur & Status.FEATURES_OK:
            self.on_features_ok()

    _STATUS_WRITE: ClassVar[dict[DeviceLifecycle, Callable[[VirtioDevice, int, int], None]]] = {
        _L.RESET: _write_configuring,
        _L.CONFIGURING: _write_configuring,
        _L.LIVE: _write_configuring,
        _L.SUSPENDING: _write_in_transition,
        _L.SUSPENDED: _write_suspended,
        _L.RESUMING: _write_in_transition,
        _L.NEEDS_RESET: _write_needs_reset,
    }

    def _features_acceptable(self) -> bool:
        # spec: dev:features#2, dev:features#4
        # Any subset of the offer that includes VERSION_1 is accepted, and the answer depends on nothing but the
        # offer: a set accepted once is accepted again after any reset.
        offered = self.offered_features()
        extra = self.driver_features & ~offered
        if extra:
            self.violation("§2.2 driver MUST NOT accept a feature the device did not offer", extra=extra)
            return False
        if not self.driver_features & bit(Feature.VERSION_1):
            self.violation("§2.2 driver MUST accept VERSION_1 if offered (modern device refuses)")
            return False
        return True

    def reset(self) -> None:
        """Device reset (§2.4), the one path for every reset: a status write of 0, a transport or bus reset.

        Status 0, queues non-live, in-flight work dropped, device-type state dropped unless
        ``retain_state_on_reset``. The transport resets its own state (vectors, selectors) itself.
        """
        # spec: dev:reset#2
        # Work scheduled before the reset is dropped (epoch), the queues are no longer live, nothing taken
        # survives: after status reads 0 the device neither notifies nor touches a queue until re-initialised.
        self._epoch += 1
        for q in self.queues:
            q.reset()
        self._taken = [{} for _ in self.queues]
        self._queue_resetting.clear()
        self._scheduled.clear()
        self._held.clear()
        self.driver_features = 0
        self._fire(_E.RESET)
        self.on_reset()
        # Config changes deferred while suspended are applied now (they happened; only the notification is lost).
        deferred, self._deferred_config = self._deferred_config, []
        for fn in deferred:
            fn()
        if deferred:
            self._bump_generation()  # spec: dev:pci/common-cfg#5
        self.trace(Kind.RESET)
        self._present(0)  # spec: dev:reset#1

    def needs_reset(self, why: str) -> None:
        """Enter DEVICE_NEEDS_RESET; notify a config change if DRIVER_OK was set (§2.1.2)."""
        if self.lifecycle is _L.NEEDS_RESET:
            return
        self.trace(Kind.DEVICE, event="needs_reset", why=why)
        was_live = bool(self.status & Status.DRIVER_OK)
        self._fire(_E.ERROR)
        self._present(self.status | Status.DEVICE_NEEDS_RESET)  # spec: dev:status#2
        if was_live:
            self.ctx.notify_config()  # spec: dev:status#3

    # -- bus mastering (QEMU: clearing COMMAND.MASTER drops DRIVER_OK and disables the device) ------------------

    def set_bus_master(self, enabled: bool) -> None:
        """The transport turned bus mastering on or off.

        Off: the device may not touch guest memory, so every step that may (:meth:`after`) waits; a LIVE device
        drops the presented DRIVER_OK (QEMU ``virtio_write_config``). During a SUSPEND or resume transition the
        transition alone decides what is presented: SUSPEND=1/DRIVER_OK=0 only once the device is suspended.
        On: the held steps run, in order, and every queue is looked at again.
        """
        self.disabled = not enabled
        # spec: dev:suspend#6, dev:suspend#7
        if not enabled and self.status & Status.DRIVER_OK and self.lifecycle not in (_L.SUSPENDING, _L.RESUMING):
            self._fire(_E.DRIVER_OK_CLEARED)
            self._present(self.status & ~Status.DRIVER_OK)
        if enabled:
            held, self._held = self._held, []
            for run in held:
                self.ctx.scheduler.schedule(0, run, label=f"{self.name}:bus-master")
            for i in range(len(self.queues)):
                self.kick(i)

    # -- Device Suspend (virtio 1.4) --------------------------------------------------------------------------

    def _begin_suspend(self) -> None:
        self.trace(Kind.PM, event="suspend_requested")
        self._fire(_E.SUSPEND)
        if self.faults.suspend_fails:
            self.needs_reset("suspend failed")  # spec: dev:suspend#6 (cannot suspend: DEVICE_NEEDS_RESET)
            return
        self.after(self.latency, self._try_finish_suspend, label="suspend", dma=False)

    def inflight(self) -> int:
        """Chains popped and not yet completed (nor cancelled by a queue reset), over every queue."""
        return sum(len(t) for t in self._taken)

    def _try_finish_suspend(self) -> None:
        if self.lifecycle is not _L.SUSPENDING:
            return
        # A queue reset still cancelling work is work in progress: the cancelled requests are not "used", and
        # the device only presents SUSPEND once nothing it took can still touch guest memory.
        if self.inflight() or self._queue_resetting or not self.quiesced() or self.faults.quiesce_never_completes:
            return  # re-checked after every completion and every finished queue reset
        # spec: dev:suspend#6, dev:suspend#8
        # Nothing is taken any more (no new buffer since SUSPEND: can_process), every request was used and
        # notified: only now SUSPEND=1, DRIVER_OK=0.
        self._fire(_E.QUIESCED)
        self._present((self.status | Status.SUSPEND) & ~Status.DRIVER_OK)
        self.trace(Kind.PM, event="suspended")

    def _begin_resume(self, value: int) -> None:
        if value & ~self.status & ~(Status.DRIVER_OK | Status.SUSPEND) & 0xFF:
            self.violation("Device Suspend: resume writes DRIVER_OK only", value=value)
        self._fire(_E.RESUME)
        self._present(self.status | Status.DRIVER_OK)
        self.trace(Kind.PM, event="resume_requested")
        self.after(self.latency, self._finish_resume, label="resume", dma=False)

    def _finish_resume(self) -> None:
        if self.lifecycle is not _L.RESUMING:
            return  # an error in between already set DEVICE_NEEDS_RESET
        if self.faults.resume_fails:
            self.needs_reset("resume failed")  # spec: dev:suspend#7 (cannot resume: DEVICE_NEEDS_RESET)
            return
        # spec: dev:suspend#7
        self._fire(_E.RESUMED)
        self._present((self.status & ~Status.SUSPEND) | Status.DRIVER_OK)
        self.trace(Kind.PM, event="resumed")
        deferred, self._deferred_config = self._deferred_config, []
        for fn in deferred:
            fn()
        if deferred:
            self._bump_generation()
            self.ctx.notify_config()  # spec: dev:suspend#5
        # Requests or kicks that arrived while suspended are looked at now (Cloud Hypervisor's livelock lesson).
        for i in range(len(self.queues)):
            self.kick(i)

    # -- config changes ---------------------------------------------------------------------------------------

    def _bump_generation(self) -> None:
        """The config changed: a new 8-bit generation, never the one the driver read last (so a driver comparing
        its before and after reads sees the change, however many changes wrapped the counter meanwhile)."""
        # spec: dev:pci/common-cfg#5
        gen = (self.config_generation + 1) & 0xFF
        if gen == self._generation_read:
            gen = (gen + 1) & 0xFF
        self.config_generation = gen

    def read_generation(self) -> int:
        """``config_generation`` as a driver reads it through the transport (remembered, see above)."""
        self._generation_read = self.config_generation
        return self.config_generation

    def config_change(self, apply: Callable[[], None]) -> None:
        """A device-initiated config change. Applied and notified now, or deferred until resume if suspended."""
        if self.quiescent:  # spec: dev:suspend#3, dev:suspend#4
            self._deferred_config.append(apply)
            self.trace(Kind.DEVICE, event="config_change_deferred")
            return
        apply()
        self._bump_generation()
        if self.status & Status.DRIVER_OK:
            self.ctx.notify_config()

    def accepts_config_write(self) -> bool:
        """Whether a driver write of the device config may go through (not while suspended, Device Suspend)."""
        if self.quiescent:  # spec: dev:suspend#2
            self.violation("Device Suspend: driver MUST NOT write device config while suspended")
            return False
        return True

    # -- queues -----------------------------------------------------------------------------------------------

    def can_process(self) -> bool:
        """The device may take buffers now: DRIVER_OK presented, LIVE, bus mastering on."""
        # spec: dev:status#1, dev:suspend#3
        return self._lifecycle is _L.LIVE and not self.disabled and int(self.status) & _DRIVER_OK != 0

    def enable_queue(self, index: int) -> bool:
        """The driver enabled queue ``index`` (§2.7): take EVENT_IDX / INDIRECT_DESC from the driver's features,
        validate the rings and make the queue live. Unusable rings: DEVICE_NEEDS_RESET, False. While a reset of
        the queue is still in progress the enable is refused (a driver violation, §4.1.4.3.2) and False."""
        if index in self._queue_resetting:
            self.violation("§4.1.4.3.2 driver MUST NOT enable a queue whose reset is still in progress", queue=index)
            return False
        dq = self.queues[index]
        # spec: dev:vq-reenable#1
        # A re-enabled queue is activated from the fields as the driver programmed them since the reset (size,
        # ring addresses) and the negotiated ring features, exactly as at first set-up.
        dq.event_idx = bool(self.driver_features & bit(Feature.EVENT_IDX))
        dq.indirect = bool(self.driver_features & bit(Feature.INDIRECT_DESC))
        try:
            dq.activate()
        except QueueError as e:
            self.violation("§2.7 queue rings must be aligned and inside guest memory", queue=index, error=str(e))
            self.needs_reset(f"queue {index}: {e}")
            return False
        return True

    def kick(self, index: int) -> None:
        """The driver notified queue ``index`` (or the core wants it looked at): schedule a processing step.

        Ignored while quiescent: the device looks at every queue again when it resumes."""
        if not 0 <= index < len(self.queues):
            self.violation("§4.1.4.5 notification for a queue that does not exist", queue=index)
            return
        if self._quiet or index in self._scheduled:  # spec: dev:suspend#3
            return
        self._scheduled.add(index)
        step, label = self._queue_steps[index]
        self.after(self.latency, step, label=label)

    def _run_queue(self, index: int) -> None:
        self._scheduled.discard(index)
        # spec: dev:split/avail-event#3
        # A notification is only a reason to look: a queue with nothing new (or not ready) is left as it is.
        if not self.can_process() or not self.queues[index].ready:
            return
        try:  # guarded(), inline
            self.process_queue(index)
        except Exception as e:
            self._step_failed(e)

    def guarded(self, step: Callable[[], None]) -> None:
        """Run a device step; any error becomes DEVICE_NEEDS_RESET instead of escaping."""
        try:
            step()
        except Exception as e:
            self._step_failed(e)

    def _step_failed(self, e: Exception) -> None:
        """What :meth:`guarded` does with an error a step raised: DEVICE_NEEDS_RESET (and a trace of why)."""
        if isinstance(e, (QueueError, GuestMemoryError)):
            self.violation("guest structure invalid", error=str(e))
            self.needs_reset(str(e))  # spec: dev:status#2
        else:  # a device bug must not take the machine down either
            self.trace(Kind.DEVICE, event="device_error", error=repr(e))
            self.needs_reset(f"internal error: {e!r}")

    def pop(self, index: int) -> DescriptorChain | None:
        """Next valid chain of queue ``index``; malformed chains are answered (used, len 0) and skipped."""
        q = self.queues[index]
        while True:
            chain = q.pop()
            if chain is None:
                return None
            if chain.error is None:
                self._taken[index][id(chain)] = chain
                return chain
            self.violation("§2.7 malformed descriptor chain", queue=index, head=chain.head, error=chain.error)
            q.push(chain.head, 0)
            self._maybe_notify(index)

    def complete(self, index: int, chain: DescriptorChain, written: int) -> None:
        """Return ``chain`` to the driver with ``written`` bytes in its writable part, and notify if due.

        A chain that is no longer taken (its queue or the device was reset since :meth:`pop`) is dropped: it is
        the driver's again, so it goes to no used ring and causes no notification."""
        if self._taken[index].pop(id(chain), None) is not chain:
            # spec: dev:vq-reset#1
            self.trace(Kind.QUEUE, event="cancelled_completion_dropped", queue=index, head=chain.head)
            return
        q = self.queues[index]
        q.push(chain.head, written)
        if q.needs_notification():  # _maybe_notify, inline
            (self._ctx or self.ctx).notify_queue(index)
        if self._lifecycle is _L.SUSPENDING:
            self.after(0, self._try_finish_suspend, label="suspend", dma=False)

    def _maybe_notify(self, index: int) -> None:
        if self.queues[index].needs_notification():
            self.ctx.notify_queue(index)

    def after(self, delay: int, fn: Callable[[], None], label: str = "", *, queue: int | None = None,
              dma: bool = True) -> Cancellable:
        """Schedule device work; dropped if the device is reset first. Errors become DEVICE_NEEDS_RESET.

        Work for a request taken from queue ``queue`` names it: it is then also dropped if that queue is reset
        first (§2.6.1.1.1), so it never writes the request's buffers nor completes it.

        A step that may touch guest memory (``dma``, the default) does not run while bus mastering is off: it
        waits and runs, in order, when bus mastering is back (:meth:`set_bus_master`); status-only steps pass
        ``dma=False``. A PCI function may not master the bus while COMMAND.BME is 0. QEMU (commit 9d7bd0826f,
        "virtio-pci: disable vring processing when bus-mastering is disabled", 5.0) sets ``vdev->disabled`` in
        ``virtio_write_config``; then ``virtqueue_pop`` takes nothing, ``virtqueue_fill``/``virtqueue_flush``
        return early (no used element, ``inuse`` decremented) and ``virtio_notify_vector`` sends nothing: a
        request completing meanwhile is *dropped*, not deferred. pyvirtio defers it instead, so guest memory is
        untouched while BME is 0 and no buffer is lost.
        """
        # spec: dev:vq-reset#1
        # The queue's epoch as it is now: work of a queue reset in between never runs.
        qepoch = self._queue_epoch[queue] if queue is not None else 0
        full = self._labels.get(label)
        if full is None:
            full = self._labels[label] = f"{self.name}:{label}"
        # (a partial of a method rather than a closure: one object per step instead of a function and its cells)
        step = partial(self._step, self._epoch, queue, qepoch, dma, fn)
        return (self._ctx or self.ctx).scheduler.schedule(delay, step, label=full)

    def _step(self, epoch: int, queue: int | None, qepoch: int, dma: bool, fn: Callable[[], None]) -> None:
        """A step scheduled by :meth:`after` comes due: dropped if the device (or its queue) was reset since, held
        while bus mastering is off (``dma``), else run guarded."""
        if epoch != self._epoch:
            return
        if queue is not None and qepoch != self._queue_epoch[queue]:
            return
        if dma and self.disabled:
            self._held.append(partial(self._step, epoch, queue, qepoch, dma, fn))  # spec: dev:pci#1
            return
        try:  # guarded(), inline
            fn()
        except Exception as e:
            self._step_failed(e)

    # -- virtqueue reset (virtio 1.4 §2.6.1, VIRTIO_F_RING_RESET) ---------------------------------------------

    def queue_reset(self, index: int) -> None:
        """The driver reset queue ``index`` (§2.6.1; the transport checked VIRTIO_F_RING_RESET).

        Everything taken from the queue is cancelled: scheduled work for it is dropped (its queue epoch moves),
        chains popped and not completed are forgotten (they are the driver's again: never written, never used,
        never notified), and the device type drops what it queued internally (:meth:`on_queue_reset`). The
        queue returns to its reset defaults at once. A reset that cancelled work takes one device step
        (``latency``: the backend abandoning what it had taken, as a vhost-user backend stopping a ring does);
        until then :meth:`queue_reset_pending` is True (``queue_reset`` reads 1, §4.1.4.3.2) and a SUSPEND in
        progress waits for it. With nothing taken the reset is over at once, as in QEMU.
        """
        # spec: dev:vq-reset#1
        self._queue_epoch[index] += 1
        cancelled = len(self._taken[index])
        self._taken[index].clear()
        self._scheduled.discard(index)
        self.on_queue_reset(index)
        # spec: dev:vq-reset#2
        self.queues[index].reset()
        if cancelled or index in self._queue_resetting:
            self._queue_resetting.add(index)
            self.trace(Kind.QUEUE, event="reset_cancelling", queue=index, cancelled=cancelled)
            self.after(self.latency, lambda: self._finish_queue_reset(index), label=f"q{index}-reset", queue=index,
                       dma=False)
        elif self.lifecycle is _L.SUSPENDING:
            self.after(0, self._try_finish_suspend, label="suspend", dma=False)  # device-internal work may have gone

    def _finish_queue_reset(self, index: int) -> None:
        self._queue_resetting.discard(index)
        self.trace(Kind.QUEUE, event="reset_done", queue=index)
        if self.lifecycle is _L.SUSPENDING:
            self._try_finish_suspend()

    def queue_reset_pending(self, index: int) -> bool:
        """Whether a reset of queue ``index`` is still in progress (what ``queue_reset`` reads, §4.1.4.3.2)."""
        return index in self._queue_resetting
