"""The guest kernel's power-management core, with Linux semantics.

Per virtio PCI device, for S3/s2idle (``.suspend``/``.resume``) Linux's ``virtio_pci_common.c`` does:

* Linux >= 6.8 and the function advertises PMCSR No_Soft_Reset: nothing (``vp_supports_pm_no_reset``);
* with the virtio 1.4 SUSPEND extension (pyvirtio's model of the 2024 RFC, at bit 43): set SUSPEND and poll;
  on a time-out or DEVICE_NEEDS_RESET fall back to the freeze path;
* otherwise ``virtio_pci_freeze`` / ``virtio_pci_restore``.

Then the PCI core saves config space and puts the function in D3hot (``pci_pm_suspend_noirq``), and on resume
brings it back to D0 and restores config space before the driver's resume. Hibernation (S4) always uses
freeze/thaw/poweroff/restore. A PM notifier chain (PM_SUSPEND_PREPARE, PM_HIBERNATION_PREPARE, ...) lets drivers
refuse a transition, as the Linux 7.3 virtio-gpu notifier refuses S4 while virgl objects exist.

Which of those paths a device took is a :class:`PmPath` (kept per device in :class:`DevicePm`), so resume takes
the matching one. The kernel's extensions that need a feature bit from every driver (the freeze_mode proposal)
are announced by :meth:`KernelConfig.driver_features`; drivers are built with them (``extra_features=``) and
:meth:`Guest.bind` checks they were.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Protocol

from pyvirtio.clock import MS, S
from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import DriverError, PyvirtioError
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.guest.freeze_mode import set_freeze_mode
from pyvirtio.guest.rng import RngDriver
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import FREEZE_MODE_FEATURE_DEFAULT, Feature, FreezeMode, PowerState, bit
from pyvirtio.trace import Kind, Trace


class PmEvent(Enum):
    """Linux PM notifier events (``include/linux/suspend.h``)."""

    SUSPEND_PREPARE = "PM_SUSPEND_PREPARE"
    POST_SUSPEND = "PM_POST_SUSPEND"
    HIBERNATION_PREPARE = "PM_HIBERNATION_PREPARE"
    POST_HIBERNATION = "PM_POST_HIBERNATION"
    RESTORE_PREPARE = "PM_RESTORE_PREPARE"
    POST_RESTORE = "PM_POST_RESTORE"


class SleepRefused(PyvirtioError):
    """A PM notifier or a device's suspend callback refused the transition; the guest stays awake."""


class SleepAborted(SleepRefused):
    """A device's ``.suspend``/``.freeze`` callback failed (the others were rolled back); the guest stays awake.

    Distinct from a notifier's refusal, which happens before any device is touched."""


@dataclass(frozen=True)
class KernelConfig:
    """What the guest kernel's virtio core does on PM transitions."""

    name: str = "linux-6.1"
    pm_no_reset: bool = False  # Linux >= 6.8: skip freeze/restore for S3 when No_Soft_Reset is advertised
    suspend_bit: bool = False  # use VIRTIO_F_SUSPEND for .suspend when negotiated (and No_Soft_Reset)
    freeze_mode: bool = False  # the 2023 freeze_mode proposal: FREEZE_S3 on freeze, UNFREEZE on restore
    freeze_mode_bit: int = FREEZE_MODE_FEATURE_DEFAULT
    suspend_timeout: int = 100 * MS
    #: The hwrng core's fill thread (``hwrng_fillfn``): not freezable, so it runs inside an s2idle window.
    hwrng_fill_thread: bool = True

    def driver_features(self) -> int:
        """Transport feature bits every driver of this kernel must offer besides its own (pass them as
        ``VirtioDriver(..., extra_features=...)``): the freeze_mode bit when the proposal is on (reference §2.9),
        else none."""
        return bit(self.freeze_mode_bit) if self.freeze_mode else 0


def reseed_interval(uptime: int) -> int:
    """How long the hwrng fill thread sleeps after a round (Linux ``random.c`` ``crng_reseed_interval``, through
    ``add_hwgenerator_randomness``): half the uptime in whole seconds, at least 1 s, during the first 120 s after
    boot; 60 s afterwards. ``uptime`` in ns."""
    secs = uptime // S
    return 60 * S if secs >= 120 else max(1, secs // 2) * S


class PmPath(StrEnum):
    """Which ``dev_pm_ops`` path a device took to sleep (``virtio_pci_common.c``); the value is the text the
    notes and reports carry (``str(path)`` and f-strings give it)."""

    NONE = "none"  # Linux >= 6.8 with No_Soft_Reset: nothing to do
    SUSPEND_BIT = "suspend-bit"  # virtio 1.4 Device Suspend
    FREEZE = "freeze"  # virtio_pci_freeze / virtio_pci_restore
    FREEZE_FALLBACK = "freeze-fallback"  # SUSPEND failed or timed out, then freeze


@dataclass
class DevicePm:
    """How one driver went to sleep, so that resume takes the matching path; notes say what happened."""

    path: PmPath = PmPath.NONE
    saved_config: bytes = b""
    notes: list[str] = field(default_factory=list)


Notifier = Callable[[PmEvent], None]


class Board(Protocol):
    """What the guest kernel sees of the machine it runs on: its RAM and the trace it records PM events in."""

    @property
    def memory(self) -> GuestMemory:
        """Guest RAM (the kernel's allocator lives in it)."""
        ...

    @property
    def trace(self) -> Trace:
        """Where the kernel records its PM events."""
        ...


class Guest:
    """A guest kernel: an allocator over guest RAM, bound drivers, and the PM core."""

    def __init__(self, machine: Board, kernel: KernelConfig, *, heap_base: int = 1 << 20,
                 heap_size: int | None = None) -> None:
        self.machine = machine
        self.kernel = kernel
        size = heap_size if heap_size is not None else machine.memory.size - heap_base
        self.alloc = GuestAllocator(machine.memory, heap_base, size)
        self.drivers: list[VirtioDriver] = []
        self.notifiers: list[Notifier] = []
        self.pm: dict[str, DevicePm] = {}

    def trace(self, **detail: object) -> None:
        """Record a guest PM event in the machine's trace."""
        self.machine.trace.record(Kind.PM, "guest", **detail)

    def bind(self, drv: VirtioDriver, *, probe: bool = True) -> VirtioDriver:
        """Bind ``drv`` to this kernel (probing it unless ``probe`` is False, as for an image kernel's drivers,
        which load their state instead) and add it to the PM order.

        The driver must have been built offering :meth:`KernelConfig.driver_features` (``extra_features=``); a
        driver that lacks one raises :class:`DriverError`: the kernel never patches a driver after construction.
        """
        need = self.kernel.driver_features()
        if need & ~drv.extra_features:
            raise DriverError(f"{drv.name}: driver offers extra features {drv.extra_features:#x}, kernel "
                              f"{self.kernel.name} needs {need:#x} (pass extra_features=driver_features())")
        if probe:
            drv.probe()
        self.drivers.append(drv)
        return drv

    def driver(self, name: str) -> VirtioDriver:
        """The bound driver called ``name`` (KeyError if none)."""
        for d in self.drivers:
            if d.name == name:
                return d
        raise KeyError(name)

    def notify(self, event: PmEvent) -> None:
        """Run the PM notifier chain; a notifier raising :class:`SleepRefused` aborts the transition."""
        self.trace(event="notifier", what=event.value)
        for n in self.notifiers:
            n(event)

    # -- per-device callbacks (virtio_pci_common.c dev_pm_ops) ---------------------------------------------------

    def _uses_no_reset(self, drv: VirtioDriver) -> bool:
        return self.kernel.pm_no_reset and drv.t.supports_pm_no_reset()

    def _uses_freeze_mode(self, drv: VirtioDriver) -> bool:
        return self.kernel.freeze_mode and drv.has(self.kernel.freeze_mode_bit)

    def _set_freeze_mode(self, drv: VirtioDriver, mode: FreezeMode, pm: DevicePm | None = None) -> None:
        """The freeze_mode handshake (reference §2.9); a device that does not report ``mode`` in time is logged and
        the transition goes on (for FREEZE_S3: a plain freeze, whose reset loses the device state), as our Linux
        patch does (``guest/linux/virtio-pci-freeze-mode.patch``)."""
        try:
            set_freeze_mode(drv, mode)
        except DriverError as e:
            if pm is not None:
                pm.notes.append(f"freeze_mode {mode.name} failed ({e}); plain freeze")
            self.trace(event="freeze_mode_failed", dev=drv.name, mode=mode.name, why=str(e))
            return
        if pm is not None:
            pm.notes.append(f"freeze_mode {mode.name}")

    def _freeze(self, drv: VirtioDriver, pm: DevicePm) -> None:
        """``virtio_pci_freeze`` (``virtio_device_freeze``); with the freeze_mode proposal, FREEZE_S3 once
        configuration changes are held back and before the driver's ``.freeze``, withdrawn (UNFREEZE) when that
        ``.freeze`` fails."""
        fm = self._uses_freeze_mode(drv)
        if fm:
            drv.config_disable()
            self._set_freeze_mode(drv, FreezeMode.FREEZE_S3, pm)
        try:
            drv.freeze()
        except PyvirtioError:
            if fm:
                self._set_freeze_mode(drv, FreezeMode.UNFREEZE)
            raise

    def _restore(self, drv: VirtioDriver) -> None:
        """``virtio_pci_restore``; with the freeze_mode proposal, UNFREEZE as its last step."""
        drv.restore()
        if self._uses_freeze_mode(drv):
            self._set_freeze_mode(drv, FreezeMode.UNFREEZE)

    def dev_suspend(self, drv: VirtioDriver) -> DevicePm:
        """``.suspend`` for S3/s2idle (``virtio_pci_suspend``): the :class:`PmPath` this kernel and device allow —
        nothing with No_Soft_Reset (Linux >= 6.8), SUSPEND when enabled and negotiated (freeze if it fails),
        else freeze."""
        pm = DevicePm()
        if self._uses_no_reset(drv):
            if self.kernel.suspend_bit and drv.has(Feature.SUSPEND):
                try:
                    drv.suspend_bit(self.kernel.suspend_timeout)
                    pm.path = PmPath.SUSPEND_BIT
                except DriverError as e:
                    pm.path = PmPath.FREEZE_FALLBACK
                    pm.notes.append(f"SUSPEND failed ({e}); fell back to freeze")
                    self.trace(event="suspend_bit_fallback", dev=drv.name, why=str(e))
                    drv.freeze()
            else:
                pm.path = PmPath.NONE
        else:
            self._freeze(drv, pm)
            pm.path = PmPath.FREEZE
        return pm

    def dev_resume(self, drv: VirtioDriver, pm: DevicePm) -> None:
        """``.resume`` for S3/s2idle, matching how the device was suspended: nothing after NONE, DRIVER_OK after
        SUSPEND_BIT (a full restore if that fails), ``virtio_pci_restore`` after FREEZE and FREEZE_FALLBACK."""
        if pm.path == PmPath.NONE:
            return
        if pm.path == PmPath.SUSPEND_BIT:
            try:
                drv.resume_bit(self.kernel.suspend_timeout)
                return
            except DriverError as e:
                pm.notes.append(f"resume failed ({e}); full restore")
                self.trace(event="resume_bit_failed", dev=drv.name, why=str(e))
                drv.freeze()
        self._restore(drv)

    # -- PCI core noirq phases --------------------------------------------------------------------------------

    def _suspend_noirq(self, drv: VirtioDriver, pm: DevicePm) -> None:
        pm.saved_config = drv.t.save_config()  # pci_save_state
        drv.t.set_power_state(PowerState.D3HOT)  # pci_prepare_to_sleep (no-op without a PM capability)

    def _resume_noirq(self, drv: VirtioDriver, pm: DevicePm) -> None:
        drv.t.set_power_state(PowerState.D0)
        drv.t.restore_config(pm.saved_config)  # pci_restore_state

    # -- system transitions -----------------------------------------------------------------------------------

    def suspend(self, s2idle: bool = False) -> None:
        """Everything the guest does before the machine sleeps (S3) or idles (s2idle)."""
        self.notify(PmEvent.SUSPEND_PREPARE)
        self.trace(event="suspend_devices", state="s2idle" if s2idle else "S3")
        done: list[VirtioDriver] = []
        try:
            for drv in reversed(self.drivers):
                self.pm[drv.name] = self.dev_suspend(drv)
                done.append(drv)
        except PyvirtioError as e:
            self.trace(event="suspend_aborted", why=str(e))
            for drv in reversed(done):
                self.dev_resume(drv, self.pm[drv.name])
            self.notify(PmEvent.POST_SUSPEND)
            raise SleepAborted(f"device suspend failed: {e}") from e
        for drv in reversed(self.drivers):
            self._suspend_noirq(drv, self.pm[drv.name])

    def s2idle_window(self, uptime: int, duration: int) -> list[str]:
        """What runs while the suspending task waits in s2idle (``s2idle_loop``), ``duration`` ns from guest
        ``uptime``: timers still fire and kernel threads that are not freezable run. The hwrng fill thread does
        when its sleep (:func:`reseed_interval`) ends inside the window: on an rng whose driver was not frozen
        (No_Soft_Reset: ``.suspend`` did nothing) it requests entropy and notifies a function that is in D3hot,
        whose BARs are not decoded, so the notification is lost and the thread waits for good (holding
        ``reading_mutex``). Returns what happened, one line per driver that took a request."""
        if not self.kernel.hwrng_fill_thread or duration < reseed_interval(uptime):
            return []
        done: list[str] = []
        for drv in self.drivers:
            if isinstance(drv, RngDriver) and self.pm.get(drv.name, DevicePm()).path is PmPath.NONE:
                req = drv.fill()
                if req is not None:
                    self.trace(event="hwrng_fill", dev=drv.name, power_state=drv.t.power_state().name)
                    done.append(f"{drv.name}: the hwrng fill thread ran in the s2idle window "
                                f"(function in {drv.t.power_state().name}) and waits for its request")
        return done

    def resume(self) -> None:
        """Everything the guest does after the machine woke."""
        for drv in self.drivers:
            self._resume_noirq(drv, self.pm[drv.name])
        for drv in self.drivers:
            self.dev_resume(drv, self.pm[drv.name])
        self.notify(PmEvent.POST_SUSPEND)

    def freeze_all(self) -> None:
        """Hibernation ``.freeze`` (also ``.poweroff``): always virtio_pci_freeze, in reverse probe order."""
        done: list[VirtioDriver] = []
        try:
            for drv in reversed(self.drivers):
                pm = DevicePm(path=PmPath.FREEZE)
                self._freeze(drv, pm)
                self.pm[drv.name] = pm
                done.append(drv)
        except PyvirtioError as e:
            self.trace(event="freeze_aborted", why=str(e))
            for drv in reversed(done):
                self._restore(drv)
            raise SleepAborted(f"device freeze failed: {e}") from e

    def restore_all(self) -> None:
        """Hibernation ``.thaw`` / ``.restore``: virtio_pci_restore, in probe order."""
        for drv in self.drivers:
            self._restore(drv)

    def shutdown_all(self) -> None:
        """``device_shutdown`` (hibernation in ``shutdown`` mode powers off this way): the virtio core's
        ``.shutdown`` stops config delivery and resets each device, as the observed Debian 6.1 kernel does."""
        for drv in reversed(self.drivers):
            drv.config_disable()
            drv.reset_device()
