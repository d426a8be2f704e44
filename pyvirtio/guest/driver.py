"""The guest driver core, with Linux semantics (``drivers/virtio/virtio.c`` + ``virtio_pci_common.c``).

:class:`VirtioDriver` writes the init sequence once (probe: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK
and re-read, queues, DRIVER_OK), freeze/restore exactly as Linux ``virtio_device_freeze`` /
``virtio_device_restore`` (restore always resets first and re-writes the same features), and the virtio 1.4
SUSPEND flow. Device drivers override the hooks ``setup``, ``driver_freeze``, ``driver_restore``,
``config_changed`` and ``vq_callback``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from pyvirtio.clock import MS
from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import DriverError, DriverTimeout
from pyvirtio.guest.transport import PciFunctionAccess, PciTransport, Platform
from pyvirtio.spec.constants import VIRTIO_MSI_NO_VECTOR, VIRTIO_PCI_ISR_CONFIG, Feature, Status, bit
from pyvirtio.virtqueue.driver import DriverQueue
from pyvirtio.virtqueue.layout import RingLayout

#: Transport features a pyvirtio driver understands (Linux ``vring_transport_features`` + SUSPEND).
TRANSPORT_FEATURES = (
    bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX) | bit(Feature.INDIRECT_DESC) | bit(Feature.RING_RESET)
)


class VirtioDriver:
    """A guest driver bound to one virtio PCI function."""

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
        fn: PciFunctionAccess,
        alloc: GuestAllocator,
        *,
        name: str = "virtio",
        use_msix: bool = True,
        accept_suspend: bool = True,
    ) -> None:
        self.platform = platform
        self.alloc = alloc
        self.name = name
        self.t = PciTransport(fn, platform, name)
        if self.device_id and self.t.device_id != self.device_id:
            raise DriverError(f"{name}: device id {self.t.device_id} is not {self.device_id}")
        self.use_msix = use_msix
        #: transport-level bits a kernel extension understands (e.g. the freeze_mode proposal's bit)
        self.extra_features = 0
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
        return bool(self.features & bit(feature))

    # -- probe ------------------------------------------------------------------------------------------------

    def probe(self) -> None:
        """Linux ``virtio_dev_probe`` preceded by ``pci_enable_device``/``pci_set_master``."""
        t = self.t
        t.enable_device()
        t.reset()
        t.add_status(Status.ACKNOWLEDGE)
        t.add_status(Status.DRIVER)
        offered = t.device_features()
        if not offered & bit(Feature.VERSION_1):
            t.add_status(Status.FAILED)
            raise DriverError(f"{self.name}: device does not offer VERSION_1")
        want = self.wanted_features | TRANSPORT_FEATURES | self.extra_features
        if self.accept_suspend:
            want |= bit(Feature.SUSPEND)
        self.features = offered & want
        t.set_driver_features(self.features)
        self._features_ok()
        self.setup()
        self.device_ready()
        self.config_enable()
        self.start_submissions()
        self.probed = True

    def _features_ok(self) -> None:
        self.t.add_status(Status.FEATURES_OK)
        if not self.t.get_status() & Status.FEATURES_OK:
            self.t.add_status(Status.FAILED)
            raise DriverError(f"{self.name}: device refused features {self.features:#x} (-ENODEV)")

    def device_ready(self) -> None:
        """``virtio_device_ready``: set DRIVER_OK."""
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
            base = self.alloc.alloc(layout_len, 4096)
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
        self.config_core_enabled = False

    # -- hooks for device drivers -----------------------------------------------------------------------------

    def setup(self) -> None:
        """Device-specific init between FEATURES_OK and DRIVER_OK (default: create the queues)."""
        self.find_vqs()

    def driver_freeze(self) -> None:
        """The device driver's ``.freeze``: the common recipe — reset, reclaim, delete the queues."""
        self.t.reset()
        for vq in self.vqs:
            vq.detach_unused()
        self.del_vqs()

    def driver_restore(self) -> None:
        """The device driver's ``.restore``: re-create the queues."""
        self.setup()

    def config_changed(self) -> None:
        """A configuration change was delivered."""

    def vq_callback(self, index: int) -> None:
        """A used-buffer notification for queue ``index``."""

    # -- guest-side state, for the S4 image --------------------------------------------------------------------

    def save_state(self) -> dict[str, object]:
        """Guest-kernel state of this driver that lives in guest RAM (written into the hibernation image)."""
        return {"features": self.features, "failed": self.failed,
                "config_change_pending": self.config_change_pending}

    def load_state(self, state: dict[str, object]) -> None:
        """Re-create this driver's state from an image (the image kernel's copy of the driver)."""
        features, failed, pending = state["features"], state["failed"], state["config_change_pending"]
        if not isinstance(features, int) or not isinstance(failed, bool) or not isinstance(pending, bool):
            raise DriverError(f"{self.name}: malformed driver state in image")
        self.features, self.failed, self.config_change_pending = features, failed, pending
        self.probed = True

    # -- power management (Linux semantics) -------------------------------------------------------------------

    def freeze(self) -> None:
        """``virtio_pci_freeze`` = ``virtio_device_freeze`` + ``pci_disable_device``."""
        self.config_disable()
        self.failed = bool(self.t.get_status() & Status.FAILED)
        if self.has_pm_hooks:
            self.driver_freeze()
        self.t.disable_device()

    def restore(self) -> None:
        """``virtio_pci_restore`` = ``pci_enable_device`` + ``pci_set_master`` + ``virtio_device_restore``."""
        t = self.t
        t.enable_device()
        t.reset()  # always reset first
        t.add_status(Status.ACKNOWLEDGE)
        if self.failed:
            t.add_status(Status.FAILED)
        t.add_status(Status.DRIVER)
        t.set_driver_features(self.features)  # the same features, no new negotiation
        self._features_ok()
        if self.has_pm_hooks:
            self.driver_restore()
        if not t.get_status() & Status.DRIVER_OK:
            self.device_ready()
        self.config_enable()
        self.start_submissions()

    def stop_submissions(self) -> None:
        """Hook: stop making buffers available (before SUSPEND)."""

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
        """Resume from SUSPEND: write DRIVER_OK, poll until SUSPEND=0 and DRIVER_OK=1."""
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
