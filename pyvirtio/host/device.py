"""The transport-independent virtio device core (virtio 1.4 §2.1 status, §2.2 features, §2.4 reset, Device Suspend).

A concrete device (rng, gpu, ...) subclasses :class:`VirtioDevice` and implements ``process_queue`` and the
config hooks. The core owns everything generic:

* feature negotiation: FEATURES_OK is not latched when the driver accepts a bit that was not offered or omits
  VERSION_1 (§3.1.1);
* the device-status state machine: a write of 0 resets; a write that clears a bit without a reset is a driver
  error and is ignored (the only clears are the device's own, for SUSPEND);
* DEVICE_NEEDS_RESET with a configuration-change notification when DRIVER_OK is set (§2.1.2);
* Device Suspend (virtio 1.4): SUSPEND is ignored unless DRIVER_OK is set and VIRTIO_F_SUSPEND negotiated; the
  device stops consuming buffers, lets in-flight requests complete (with used notifications), and only then
  presents SUSPEND=1/DRIVER_OK=0. While suspended it sends no notification, touches no queue and does not change
  its config space; a config change is applied and notified once on resume; a failed suspend or resume sets
  DEVICE_NEEDS_RESET.

Devices work in scheduled steps on the machine's virtual clock: a kick schedules ``process_queue`` after
``latency`` ns; a device may hold a request in flight and complete it later with :meth:`VirtioDevice.after`.
Every guest-caused error becomes the spec's answer; nothing raised by a device step escapes into the machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pyvirtio.clock import US, Event
from pyvirtio.errors import GuestMemoryError, QueueError
from pyvirtio.spec.constants import DeviceId, Feature, PciClass, Status, bit
from pyvirtio.trace import Kind
from pyvirtio.virtqueue.chain import DescriptorChain
from pyvirtio.virtqueue.device import DeviceQueue

if TYPE_CHECKING:
    from pyvirtio.host.context import DeviceContext


@dataclass
class Faults:
    """Fault injection for power-management tests. All off by default."""

    quiesce_never_completes: bool = False  # in-flight requests never finish once SUSPEND is requested
    suspend_fails: bool = False  # the device cannot suspend: DEVICE_NEEDS_RESET
    resume_fails: bool = False  # the device cannot resume: DEVICE_NEEDS_RESET


class VirtioDevice:
    """Base of every device model. Subclasses set ``device_id``, ``queue_sizes`` and implement the hooks."""

    device_id: ClassVar[DeviceId]
    pci_class: ClassVar[int] = PciClass.OTHERS
    #: max size of each virtqueue, by index
    queue_sizes: tuple[int, ...] = (256,)

    def __init__(self, name: str, *, offer_suspend: bool = True, latency: int = 10 * US) -> None:
        self.name = name
        self.latency = latency
        self.offer_suspend = offer_suspend
        self.faults = Faults()
        self._ctx: DeviceContext | None = None
        self.queues: list[DeviceQueue] = []
        self.driver_features = 0
        self.status = 0  # the value the device presents
        self.config_generation = 0
        self.suspending = False
        self.suspended = False
        self.resuming = False
        self.disabled = False  # bus mastering off (QEMU virtio_set_disabled)
        self._inflight: list[int] = []
        self._scheduled: set[int] = set()
        self._epoch = 0  # bumps on reset: stale completions are dropped
        self._deferred_config: list[Callable[[], None]] = []
        self._kicked_while_suspended: set[int] = set()
        #: transport-level bits an extension adds to the offer (e.g. the freeze_mode proposal's bit)
        self.extra_features = 0
        #: while set, a reset keeps device-type state (the 2023 FREEZING / freeze_mode proposals)
        self.retain_state_on_reset = False

    # -- wiring -----------------------------------------------------------------------------------------------

    def attach(self, ctx: DeviceContext) -> None:
        """Called once by the transport when the device is plugged."""
        self._ctx = ctx
        self.queues = [DeviceQueue(ctx.memory, n) for n in self.queue_sizes]
        self._inflight = [0] * len(self.queues)

    @property
    def ctx(self) -> DeviceContext:
        if self._ctx is None:
            raise RuntimeError(f"device {self.name} is not plugged")
        return self._ctx

    @property
    def now(self) -> int:
        return self.ctx.scheduler.now

    def trace(self, kind: Kind, **detail: object) -> None:
        self.ctx.trace.record(kind, self.name, **detail)

    def violation(self, rule: str, **detail: object) -> None:
        """Record that the guest broke a normative statement (the device already gave the spec's answer)."""
        self.trace(Kind.VIOLATION, rule=rule, **detail)

    # -- hooks for subclasses ---------------------------------------------------------------------------------

    def device_features(self) -> int:
        """Device-type feature bits offered (bits 0..23 etc.)."""
        return 0

    def config_size(self) -> int:
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

    def state_bytes(self) -> int:
        """How many bytes of device-type state a freeze must preserve (gpu: resource memory)."""
        return 0

    def quiesced(self) -> bool:
        """Device-specific work (fences, pending commands) finished; the core also waits for in-flight chains."""
        return True

    # -- features ---------------------------------------------------------------------------------------------

    def offered_features(self) -> int:
        feats = self.device_features() | bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX)
        feats |= bit(Feature.INDIRECT_DESC) | bit(Feature.RING_RESET)
        if self.offer_suspend:
            feats |= bit(Feature.SUSPEND)
        return feats | self.extra_features

    def negotiated(self, feature: int) -> bool:
        return bool(self.status & Status.FEATURES_OK) and bool(self.driver_features & bit(feature))

    def set_driver_features(self, value: int) -> None:
        if self.status & Status.FEATURES_OK:
            self.violation("§2.2 driver MUST NOT accept new feature bits after FEATURES_OK", value=value)
            return
        self.driver_features = value

    # -- status machine ---------------------------------------------------------------------------------------

    def _present(self, value: int) -> None:
        if value != self.status:
            self.status = value
            self.trace(Kind.STATUS, status=value)

    def write_status(self, value: int) -> None:
        """A driver write of ``device status`` (already width-checked by the transport)."""
        value &= 0xFF
        if value == 0:
            self.reset()
            return
        cur = self.status
        # DEVICE_NEEDS_RESET is the device's bit; a driver write neither sets nor clears it.
        value = (value & ~Status.DEVICE_NEEDS_RESET) | (cur & Status.DEVICE_NEEDS_RESET)
        if self.suspended and not self.resuming and value & Status.DRIVER_OK:
            self._begin_resume(value)
            return
        want_suspend = bool(value & Status.SUSPEND) and not (cur & Status.SUSPEND)
        if want_suspend and not (cur & Status.DRIVER_OK and self.driver_features & bit(Feature.SUSPEND)):
            self.violation("Device Suspend: device MUST ignore SUSPEND unless DRIVER_OK and VIRTIO_F_SUSPEND",
                           value=value)
            value &= ~Status.SUSPEND
            want_suspend = False
        cleared = cur & ~value & 0xFF
        if self.suspending or self.resuming:
            cleared &= ~(Status.SUSPEND | Status.DRIVER_OK)
        if cleared:
            self.violation("§2.1 driver MUST NOT clear a device status bit (only reset)", was=cur, value=value)
            return
        if value & Status.FEATURES_OK and not cur & Status.FEATURES_OK and not self._features_acceptable():
            value &= ~Status.FEATURES_OK
        if value & Status.DRIVER_OK and not cur & Status.DRIVER_OK and not value & Status.FEATURES_OK:
            self.violation("§3.1.1 driver sets DRIVER_OK only after FEATURES_OK", value=value)
            value &= ~Status.DRIVER_OK
        if self.suspending or self.resuming:
            return  # the device is busy changing state; the pending transition decides what it presents
        if want_suspend:
            self._present(value)  # SUSPEND written, not yet acknowledged: still shows DRIVER_OK
            self._begin_suspend()
            return
        self._present(value)
        if value & Status.FEATURES_OK and not cur & Status.FEATURES_OK:
            self.on_features_ok()
        if value & Status.DRIVER_OK and not cur & Status.DRIVER_OK:
            self.on_driver_ok()
            for i, q in enumerate(self.queues):
                if q.ready:
                    self.kick(i)

    def _features_acceptable(self) -> bool:
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
        """Device reset (§2.4): status 0, queues non-live, in-flight work dropped. The transport unmaps vectors."""
        self._epoch += 1
        for q in self.queues:
            q.reset()
        self._inflight = [0] * len(self.queues)
        self._scheduled.clear()
        self.driver_features = 0
        self.suspending = self.suspended = self.resuming = False
        self._kicked_while_suspended.clear()
        self.on_reset()
        # Config changes deferred while suspended are applied now (they happened; only the notification is lost).
        deferred, self._deferred_config = self._deferred_config, []
        for fn in deferred:
            fn()
        self.trace(Kind.RESET)
        self._present(0)

    def needs_reset(self, why: str) -> None:
        """Enter DEVICE_NEEDS_RESET; notify a config change if DRIVER_OK was set (§2.1.2)."""
        if self.status & Status.DEVICE_NEEDS_RESET:
            return
        self.trace(Kind.DEVICE, event="needs_reset", why=why)
        was_live = bool(self.status & Status.DRIVER_OK)
        self._present(self.status | Status.DEVICE_NEEDS_RESET)
        self.suspending = self.resuming = False
        if was_live:
            self.ctx.notify_config()

    # -- bus mastering (QEMU: clearing COMMAND.MASTER drops DRIVER_OK and disables the device) ------------------

    def set_bus_master(self, enabled: bool) -> None:
        self.disabled = not enabled
        if not enabled and self.status & Status.DRIVER_OK:
            self._present(self.status & ~Status.DRIVER_OK)
        if enabled:
            for i in range(len(self.queues)):
                self.kick(i)

    # -- Device Suspend (virtio 1.4) --------------------------------------------------------------------------

    def _begin_suspend(self) -> None:
        self.trace(Kind.PM, event="suspend_requested")
        if self.faults.suspend_fails:
            self.needs_reset("suspend failed")
            return
        self.suspending = True
        self.after(self.latency, self._try_finish_suspend, label="suspend")

    def inflight(self) -> int:
        return sum(self._inflight)

    def _try_finish_suspend(self) -> None:
        if not self.suspending:
            return
        if self.inflight() or not self.quiesced() or self.faults.quiesce_never_completes:
            return  # re-checked after every completion
        self.suspending = False
        self.suspended = True
        self._present((self.status | Status.SUSPEND) & ~Status.DRIVER_OK)
        self.trace(Kind.PM, event="suspended")

    def _begin_resume(self, value: int) -> None:
        if value & ~self.status & ~(Status.DRIVER_OK | Status.SUSPEND) & 0xFF:
            self.violation("Device Suspend: resume writes DRIVER_OK only", value=value)
        self.resuming = True
        self._present(self.status | Status.DRIVER_OK)
        self.trace(Kind.PM, event="resume_requested")
        self.after(self.latency, self._finish_resume, label="resume")

    def _finish_resume(self) -> None:
        self.resuming = False
        if self.faults.resume_fails:
            self.needs_reset("resume failed")
            return
        self.suspended = False
        self._present((self.status & ~Status.SUSPEND) | Status.DRIVER_OK)
        self.trace(Kind.PM, event="resumed")
        deferred, self._deferred_config = self._deferred_config, []
        for fn in deferred:
            fn()
        if deferred:
            self._bump_generation()
            self.ctx.notify_config()
        # Requests or kicks that arrived while suspended are looked at now (Cloud Hypervisor's livelock lesson).
        for i in range(len(self.queues)):
            self.kick(i)

    # -- config changes ---------------------------------------------------------------------------------------

    def _bump_generation(self) -> None:
        self.config_generation = (self.config_generation + 1) & 0xFF

    def config_change(self, apply: Callable[[], None]) -> None:
        """A device-initiated config change. Applied and notified now, or deferred until resume if suspended."""
        if self.suspending or self.suspended:
            self._deferred_config.append(apply)
            self.trace(Kind.DEVICE, event="config_change_deferred")
            return
        apply()
        self._bump_generation()
        if self.status & Status.DRIVER_OK:
            self.ctx.notify_config()

    def accepts_config_write(self) -> bool:
        if self.suspended or self.suspending:
            self.violation("Device Suspend: driver MUST NOT write device config while suspended")
            return False
        return True

    # -- queues -----------------------------------------------------------------------------------------------

    def can_process(self) -> bool:
        return (
            bool(self.status & Status.DRIVER_OK)
            and not self.status & Status.DEVICE_NEEDS_RESET
            and not self.suspending
            and not self.suspended
            and not self.disabled
        )

    def kick(self, index: int) -> None:
        """The driver notified queue ``index`` (or the core wants it looked at): schedule a processing step."""
        if not 0 <= index < len(self.queues):
            self.violation("§4.1.4.5 notification for a queue that does not exist", queue=index)
            return
        if self.suspended or self.suspending:
            if not self.resuming:
                self._kicked_while_suspended.add(index)
            return
        if index in self._scheduled:
            return
        self._scheduled.add(index)
        self.after(self.latency, lambda: self._run_queue(index), label=f"q{index}")

    def _run_queue(self, index: int) -> None:
        self._scheduled.discard(index)
        if not self.can_process() or not self.queues[index].ready:
            return
        self.guarded(lambda: self.process_queue(index))

    def guarded(self, step: Callable[[], None]) -> None:
        """Run a device step; any error becomes DEVICE_NEEDS_RESET instead of escaping."""
        try:
            step()
        except (QueueError, GuestMemoryError) as e:
            self.violation("guest structure invalid", error=str(e))
            self.needs_reset(str(e))
        except Exception as e:  # a device bug must not take the machine down either
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
                self._inflight[index] += 1
                return chain
            self.violation("§2.7 malformed descriptor chain", queue=index, head=chain.head, error=chain.error)
            q.push(chain.head, 0)
            self._maybe_notify(index)

    def complete(self, index: int, chain: DescriptorChain, written: int) -> None:
        """Return ``chain`` to the driver with ``written`` bytes in its writable part, and notify if due."""
        q = self.queues[index]
        q.push(chain.head, written)
        self._inflight[index] = max(0, self._inflight[index] - 1)
        self._maybe_notify(index)
        if self.suspending:
            self.after(0, self._try_finish_suspend, label="suspend")

    def _maybe_notify(self, index: int) -> None:
        if self.queues[index].needs_notification():
            self.ctx.notify_queue(index)

    def after(self, delay: int, fn: Callable[[], None], label: str = "") -> Event:
        """Schedule device work; dropped if the device is reset first. Errors become DEVICE_NEEDS_RESET."""
        epoch = self._epoch

        def run() -> None:
            if epoch == self._epoch:
                self.guarded(fn)

        return self.ctx.scheduler.schedule(delay, run, label=f"{self.name}:{label}")

    def queue_reset(self, index: int) -> None:
        """Per-queue reset (VIRTIO_F_RING_RESET): the queue returns to its defaults."""
        self.queues[index].reset()
        self._inflight[index] = 0
