"""The guest driver core, with Linux semantics (``drivers/virtio/virtio.c`` + ``virtio_pci_common.c``).

:class:`VirtioDriver` writes the device initialization sequence once (virtio 1.4 §3.1.1, rcore virtio-drivers'
``begin_init``/``finish_init``): :meth:`VirtioDriver.probe` and :meth:`VirtioDriver.restore` share it; probe
negotiates features, restore re-writes the ones negotiated before (Linux ``virtio_device_restore``: reset first,
no new negotiation). Freeze/restore follow ``virtio_device_freeze``/``virtio_device_restore``, and the virtio
1.4 Device Suspend flow is :meth:`VirtioDriver.suspend_bit`/:meth:`VirtioDriver.resume_bit`. Device
drivers override the hooks ``setup``, ``driver_freeze``, ``driver_restore``, ``reclaim_unused``,
``config_changed`` and ``vq_callback``.

The driver takes its transport as a parameter: a PCI function (wrapped in
:class:`~pyvirtio.guest.transport.PciTransport`) or, with ``transport=``, any
:class:`~pyvirtio.guest.transport.Transport` — tests use :mod:`pyvirtio.guest.fake` to run a driver with no
device behind it. The state kept in the S4 image is a validated :class:`DriverState`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from pyvirtio.clock import MS
from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import DriverError, DriverTimeout, InvalidStateError
from pyvirtio.guest.transport import PciFunctionAccess, PciTransport, Platform, Transport
from pyvirtio.spec.constants import VIRTIO_MSI_NO_VECTOR, VIRTIO_PCI_ISR_CONFIG, Feature, Status, bit
from pyvirtio.virtqueue.driver import DriverQueue
from pyvirtio.virtqueue.layout import RingLayout

__all__ = [
    "TRANSPORT_FEATURES",
    "DriverState",
    "VirtioDriver",
    "state_bool",
    "state_error",
    "state_fields",
    "state_int",
]

#: Transport features a pyvirtio driver understands (Linux ``vring_transport_features`` + SUSPEND).
TRANSPORT_FEATURES = (
    bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX) | bit(Feature.INDIRECT_DESC) | bit(Feature.RING_RESET)
)

_FEATURE_LIMIT = 1 << 64
_RING_ALIGN = 4096  # Linux allocates vrings page-aligned


# -- state for the S4 image ----------------------------------------------------------------------------------------


def state_error(what: str, name: str, value: object, why: str) -> InvalidStateError:
    """The one-line :class:`InvalidStateError` for field ``name`` of ``what`` (value shown, shortened)."""
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return InvalidStateError(f"{what} field {name!r} = {shown}: {why}")


def state_fields(what: str, data: object, names: tuple[str, ...], *, strict: bool = True) -> Mapping[str, object]:
    """``data`` as a mapping that has every key in ``names`` (and, when ``strict``, no other key)."""
    if not isinstance(data, dict):
        raise InvalidStateError(f"{what}: expected an object, got {type(data).__name__}")
    missing = [n for n in names if n not in data]
    extra = sorted(str(k) for k in data if k not in names) if strict else []
    if missing or extra:
        raise InvalidStateError(f"{what}: missing fields {missing}, unknown fields {extra}")
    return data


def state_bool(what: str, data: Mapping[str, object], name: str) -> bool:
    """Field ``name`` of ``data``, which must be a bool."""
    v = data[name]
    if type(v) is not bool:
        raise state_error(what, name, v, "not a boolean")
    return v


def state_int(what: str, data: Mapping[str, object], name: str, lo: int, hi: int) -> int:
    """Field ``name`` of ``data``, which must be an int (not a bool) in ``lo <= v < hi``."""
    v = data[name]
    if type(v) is not int:
        raise state_error(what, name, v, "not an integer")
    if not lo <= v < hi:
        raise state_error(what, name, v, f"not in [{lo:#x}, {hi:#x})")
    return v


@dataclass(frozen=True)
class DriverState:
    """What the guest kernel keeps of a bound virtio driver in guest RAM (Linux ``struct virtio_device``):
    the negotiated features (always with VERSION_1, virtio 1.4 "Reserved Feature Bits"), ``failed`` and a
    config change not yet delivered. Untrusted when read from an image: :meth:`from_dict` re-validates every
    field."""

    features: int
    failed: bool
    config_change_pending: bool

    WHAT: ClassVar[str] = "driver state"
    KEYS: ClassVar[tuple[str, ...]] = ("features", "failed", "config_change_pending")

    def to_dict(self) -> dict[str, object]:
        """JSON-able form (what the image header stores)."""
        return {"features": self.features, "failed": self.failed, "config_change_pending": self.config_change_pending}

    @classmethod
    def core_from_dict(cls, data: object, *, strict: bool = True) -> DriverState:
        """Parse the :class:`DriverState` fields of ``data``; with ``strict=False`` keys this class does not own
        are left for a subclass to judge. Raises :class:`InvalidStateError` naming the field."""
        d = state_fields(cls.WHAT, data, DriverState.KEYS, strict=strict)
        features = state_int(cls.WHAT, d, "features", 0, _FEATURE_LIMIT)
        if not features & bit(Feature.VERSION_1):
            raise state_error(cls.WHAT, "features", features, "VERSION_1 missing (never negotiated without it)")
        return DriverState(features, state_bool(cls.WHAT, d, "failed"),
                           state_bool(cls.WHAT, d, "config_change_pending"))

    @classmethod
    def from_dict(cls, data: object) -> DriverState:
        """Parse :meth:`to_dict` output (e.g. from JSON), rejecting unknown, missing or bad fields."""
        return cls.core_from_dict(data)


class VirtioDriver:
    """A guest driver bound to one virtio device through a :class:`~pyvirtio.guest.transport.Transport`.

    ``VirtioDriver(platform, fn, alloc)`` wraps PCI function ``fn`` in a :class:`PciTransport`;
    ``VirtioDriver(platform, None, alloc, transport=t)`` uses ``t`` as it is. ``extra_features`` are the
    transport-level bits of kernel extensions the driver offers besides its own (e.g. the freeze_mode bit,
    :meth:`pyvirtio.guest.kernel.KernelConfig.driver_features`); left at None, :meth:`Guest.bind
    <pyvirtio.guest.kernel.Guest.bind>` fills them in (the compatibility path for callers that predate it).
    """

    #: virtio device id this driver binds to
    device_id: ClassVar[int] = 0
    #: device-type feature bits the driver understands
    wanted_features: int = 0
    #: whether the device driver has ``.freeze``/``.restore`` (virtio-gpu before Linux 7.3 does not)
    has_pm_hooks: ClassVar[bool] = True
    #: default queue sizes the driver asks for (None = the device maximum)
    queue_sizes: ClassVar[tuple[int | None, ...]] = (None,)

    SUSPEND_POLL = 1 * MS
    SUSPEND_TIMEOUT = 100 * MS

    def __init__(
        self,
        platform: Platform,
        fn: PciFunctionAccess | None,
        alloc: GuestAllocator,
        *,
        name: str = "virtio",
        use_msix: bool = True,
        accept_suspend: bool = True,
        extra_features: int = 0,
        transport: Transport | None = None,
    ) -> None:
        if transport is None:
            if fn is None:
                raise TypeError(f"{name}: a driver needs a PCI function or transport=")
            transport = PciTransport(fn, platform, name)
        elif fn is not None:
            raise TypeError(f"{name}: give a PCI function or transport=, not both")
        self.platform = platform
        self.alloc = alloc
        self.name = name
        self.t: Transport = transport
        if self.device_id and self.t.device_id != self.device_id:
            raise DriverError(f"{name}: device id {self.t.device_id} is not {self.device_id}")
        self.use_msix = use_msix
        #: transport-level bits a kernel extension understands (e.g. the freeze_mode proposal's bit)
        self.extra_features = extra_features
        self.accept_suspend = accept_suspend
        self.features = 0
        self.vqs: list[DriverQueue] = []
        self._vq_mem: list[int] = []
        self.failed = False
        self.config_core_enabled = False
        self.config_change_pending = False
        self.config_changes_delivered = 0
        self.needs_reset_seen = False
        self.probed = False

    # -- feature helpers --------------------------------------------------------------------------------------

    def has(self, feature: int) -> bool:
        """Whether feature bit ``feature`` was negotiated."""
        return bool(self.features & bit(feature))

    def acceptable_features(self) -> int:
        """Every bit this driver would accept: its device bits, the transport bits, kernel extensions, SUSPEND."""
        want = self.wanted_features | TRANSPORT_FEATURES | self.extra_features
        if self.accept_suspend:
            want |= bit(Feature.SUSPEND)
        return want

    # -- the initialization sequence (virtio 1.4 §3.1.1), shared by probe and restore ---------------------------

    def _begin_init(self, *, negotiate: bool) -> None:
        """§3.1.1 steps 1-6: reset; ACKNOWLEDGE (FAILED again after a failed device, as Linux restore does);
        DRIVER; the features — negotiated from the offer when ``negotiate``, else the ones negotiated before —
        then FEATURES_OK and its re-read. Preceded by ``pci_enable_device``/``pci_set_master``."""
        t = self.t
        t.enable_device()
        t.reset()
        t.add_status(Status.ACKNOWLEDGE)
        if self.failed:
            t.add_status(Status.FAILED)
        t.add_status(Status.DRIVER)
        if negotiate:
            offered = t.device_features()
            if not offered & bit(Feature.VERSION_1):
                t.add_status(Status.FAILED)
                raise DriverError(f"{self.name}: device does not offer VERSION_1")
            self.features = offered & self.acceptable_features()
        t.set_driver_features(self.features)
        self._features_ok()

    def _finish_init(self) -> None:
        """§3.1.1 step 8 (after the device-specific step 7): DRIVER_OK unless the driver set it already
        (Linux ``virtio_dev_probe``/``virtio_device_restore``), then configuration changes and submissions."""
        if not self.t.get_status() & Status.DRIVER_OK:
            self.device_ready()
        self.config_enable()
        self.start_submissions()

    def probe(self) -> None:
        """Linux ``virtio_dev_probe``: the initialization sequence with feature negotiation around
        :meth:`setup` (virtio 1.4 §3.1.1). Raises :class:`DriverError` if the device lacks VERSION_1 or refuses
        FEATURES_OK (FAILED is set then)."""
        self._begin_init(negotiate=True)
        self.setup()
        self._finish_init()
        self.probed = True

    def _features_ok(self) -> None:
        self.t.add_status(Status.FEATURES_OK)
        if not self.t.get_status() & Status.FEATURES_OK:
            self.t.add_status(Status.FAILED)
            raise DriverError(f"{self.name}: device refused features {self.features:#x} (-ENODEV)")

    def device_ready(self) -> None:
        """``virtio_device_ready``: set DRIVER_OK (virtio 1.4 §3.1.1 step 8)."""
        self.t.add_status(Status.DRIVER_OK)

    # -- virtqueues -------------------------------------------------------------------------------------------

    def find_vqs(self, sizes: tuple[int | None, ...] | None = None) -> list[DriverQueue]:
        """Allocate and enable queues; one MSI-X vector per queue plus one for config (``vp_find_vqs_msix``)."""
        sizes = sizes if sizes is not None else self.queue_sizes
        n = len(sizes)
        if n > self.t.num_queues():
            raise DriverError(f"{self.name}: device has {self.t.num_queues()} queues, driver needs {n}")
        per_vq = self.use_msix and self.t.setup_msix(
            [self._config_irq] + [self._vq_irq_handler(i) for i in range(n)])
        if per_vq:
            if self.t.set_config_vector(0) == VIRTIO_MSI_NO_VECTOR:
                raise DriverError(f"{self.name}: config vector not accepted")
        else:
            self.t.setup_intx(self._intx_irq)
        self.vqs = []
        for i, want in enumerate(sizes):
            maxsz = self.t.queue_max_size(i)
            if maxsz == 0:
                raise DriverError(f"{self.name}: queue {i} does not exist")
            size = min(maxsz, want) if want else maxsz
            layout_len = RingLayout.contiguous(0, size).total_bytes
            base = self.alloc.alloc(layout_len, _RING_ALIGN)
            self._vq_mem.append(base)
            self.alloc.mem.fill(base, layout_len, 0)
            layout = RingLayout.contiguous(base, size)
            vq = DriverQueue(self.alloc.mem, layout, event_idx=self.has(Feature.EVENT_IDX),
                             indirect=self.has(Feature.INDIRECT_DESC), alloc=self.alloc)
            vector = i + 1 if per_vq else VIRTIO_MSI_NO_VECTOR
            got = self.t.setup_queue(i, size, layout.desc, layout.avail, layout.used, vector)
            if per_vq and got == VIRTIO_MSI_NO_VECTOR:
                raise DriverError(f"{self.name}: queue {i} vector not accepted")
            self.vqs.append(vq)
        return self.vqs

    def del_vqs(self) -> None:
        """``vp_del_vqs``: forget the queues and release their memory and vectors (the device was reset)."""
        for base in self._vq_mem:
            self.alloc.free(base)
        self._vq_mem.clear()
        self.vqs = []
        self.t.free_msix()
        self.t.setup_intx(None)

    def kick(self, index: int) -> None:
        """``virtqueue_kick``: notify the device if suppression allows it."""
        if self.vqs[index].kick_prepare():
            self.t.notify(index)

    # -- interrupts -------------------------------------------------------------------------------------------

    def _vq_irq_handler(self, index: int) -> Callable[[], None]:
        def handler() -> None:
            if index < len(self.vqs):
                self.vq_callback(index)

        return handler

    def _intx_irq(self) -> None:
        isr = self.t.read_isr()  # read-to-clear; 0 means "not ours"
        if not isr:
            return
        if isr & VIRTIO_PCI_ISR_CONFIG:
            self._config_irq()
        for i in range(len(self.vqs)):
            self.vq_callback(i)

    def _config_irq(self) -> None:
        """``virtio_config_changed``: deliver, or remember for when delivery is enabled again."""
        if self.t.get_status() & Status.DEVICE_NEEDS_RESET:
            self.needs_reset_seen = True
        if not self.config_core_enabled:
            self.config_change_pending = True
            return
        self.config_changes_delivered += 1
        self.config_changed()

    def config_enable(self) -> None:
        """``virtio_config_core_enable``: replay a change that arrived while disabled."""
        self.config_core_enabled = True
        if self.config_change_pending:
            self.config_change_pending = False
            self.config_changes_delivered += 1
            self.config_changed()

    def config_disable(self) -> None:
        """``virtio_config_core_disable``: hold configuration changes back until :meth:`config_enable`."""
        self.config_core_enabled = False

    # -- hooks for device drivers -----------------------------------------------------------------------------

    def setup(self) -> None:
        """Device-specific init between FEATURES_OK and DRIVER_OK (virtio 1.4 §3.1.1 step 7; default: create
        the queues)."""
        self.find_vqs()

    def driver_freeze(self) -> None:
        """The device driver's ``.freeze``, the common recipe (Linux ``remove_common`` pattern): reset the
        device (virtio 1.4 §2.4: it then uses no buffer), hand every buffer still on a queue to
        :meth:`reclaim_unused` (``virtqueue_detach_unused_buf``), delete the queues."""
        self.t.reset()
        for vq in self.vqs:
            for token in vq.detach_unused():
                self.reclaim_unused(token)
        self.del_vqs()

    def reclaim_unused(self, token: object) -> None:
        """A buffer the device never used, detached by :meth:`driver_freeze`: release what it holds
        (default: nothing)."""

    def driver_restore(self) -> None:
        """The device driver's ``.restore``: re-create the queues (:meth:`setup`)."""
        self.setup()

    def config_changed(self) -> None:
        """A configuration change was delivered (virtio 1.4 §2.5.1, §4.1.5.3)."""

    def vq_callback(self, index: int) -> None:
        """A used-buffer notification for queue ``index`` (virtio 1.4 §2.7.10)."""

    # -- guest-side state, for the S4 image --------------------------------------------------------------------

    def state(self) -> DriverState:
        """Guest-kernel state of this driver that lives in guest RAM (written into the hibernation image)."""
        return DriverState(self.features, self.failed, self.config_change_pending)

    def save_state(self) -> dict[str, object]:
        """:meth:`state` as a JSON-able dict (the image header stores it); subclasses add their own keys."""
        return self.state().to_dict()

    def load_state(self, state: dict[str, object]) -> None:
        """Re-create this driver's state from an image (the image kernel's copy of the driver).

        The :class:`DriverState` keys are validated here (:class:`InvalidStateError` naming the field); other
        keys belong to a subclass, which validates them. The driver counts as probed: :meth:`restore` follows.
        """
        self._apply_state(DriverState.core_from_dict(state, strict=False))

    def _apply_state(self, st: DriverState) -> None:
        self.features, self.failed, self.config_change_pending = st.features, st.failed, st.config_change_pending
        self.probed = True

    # -- power management (Linux semantics) -------------------------------------------------------------------

    def freeze(self) -> None:
        """``virtio_pci_freeze`` = ``virtio_device_freeze`` + ``pci_disable_device``: configuration changes
        held back, ``failed`` remembered, the driver's ``.freeze`` (when it has PM hooks), bus mastering off."""
        self.config_disable()
        self.failed = bool(self.t.get_status() & Status.FAILED)
        if self.has_pm_hooks:
            self.driver_freeze()
        self.t.disable_device()

    def restore(self) -> None:
        """``virtio_pci_restore`` = ``pci_enable_device`` + ``pci_set_master`` + ``virtio_device_restore``:
        the initialization sequence (virtio 1.4 §3.1.1) with the features negotiated at probe, the driver's
        ``.restore`` (when it has PM hooks) as the device-specific step."""
        self._begin_init(negotiate=False)
        if self.has_pm_hooks:
            self.driver_restore()
        self._finish_init()

    def stop_submissions(self) -> None:
        """Hook: stop making buffers available (before SUSPEND: virtio 1.4 Device Suspend, the driver MUST NOT make
        new buffers available)."""

    def start_submissions(self) -> None:
        """Hook: submissions may resume (after resume from SUSPEND)."""

    def suspend_bit(self, timeout: int | None = None) -> None:
        """Virtio 1.4 Device Suspend, driver side: set SUSPEND, poll until SUSPEND=1 and DRIVER_OK=0.

        Raises :class:`DriverTimeout` if the device does not finish quiescing in time, :class:`DriverError` if it
        enters DEVICE_NEEDS_RESET or the feature was not negotiated.
        """
        t = self.t
        if not self.has(Feature.SUSPEND):
            raise DriverError(f"{self.name}: VIRTIO_F_SUSPEND not negotiated")
        status = t.get_status()
        if status & Status.SUSPEND and not status & Status.DRIVER_OK:
            return  # already suspended
        if not status & Status.DRIVER_OK:
            raise DriverError(f"{self.name}: SUSPEND needs DRIVER_OK (status {status:#x})")
        self.stop_submissions()
        self.config_disable()
        t.set_status(status | Status.SUSPEND)
        self._poll_status(lambda s: bool(s & Status.SUSPEND) and not s & Status.DRIVER_OK,
                          timeout or self.SUSPEND_TIMEOUT, "suspend")

    def resume_bit(self, timeout: int | None = None) -> None:
        """Resume from SUSPEND (virtio 1.4 Device Suspend): write DRIVER_OK, poll until SUSPEND=0 and DRIVER_OK=1.

        Raises :class:`DriverTimeout` on a time-out, :class:`DriverError` on DEVICE_NEEDS_RESET.
        """
        t = self.t
        status = t.get_status()
        if status & Status.DRIVER_OK and not status & Status.SUSPEND:
            return
        t.set_status(status | Status.DRIVER_OK)
        self._poll_status(lambda s: not s & Status.SUSPEND and bool(s & Status.DRIVER_OK),
                          timeout or self.SUSPEND_TIMEOUT, "resume")
        self.config_enable()
        self.start_submissions()

    def _poll_status(self, done: Callable[[int], bool], timeout: int, what: str) -> None:
        result: list[int] = []

        def check() -> bool:
            s = self.t.get_status()
            result[:] = [s]
            return done(s) or bool(s & Status.DEVICE_NEEDS_RESET)

        if not self.platform.run_until(check, timeout):
            raise DriverTimeout(f"{self.name}: {what} did not complete (status {result[0]:#x})")
        if result[0] & Status.DEVICE_NEEDS_RESET:
            self.needs_reset_seen = True
            raise DriverError(f"{self.name}: device set DEVICE_NEEDS_RESET during {what}")
