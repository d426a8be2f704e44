"""The virtio-gpu driver flavours the PM experiment compares, and the one table that names them.

* ``no-hooks`` — :class:`~pyvirtio.guest.gpu.driver.GpuDriver` as Linux <= 7.2: no freeze/restore at all.
* :class:`BasicHooksGpuDriver` (``basic-hooks``) — the 2023 series: ``.freeze`` drains, resets and deletes the
  queues; ``.restore`` re-creates them, sets DRIVER_OK and replays the modeset (``drm_mode_config_helper_resume``),
  no object replay.
* :class:`FreezingGpuDriver` (``freezing``) — the same plus ``CMD_STATUS_FREEZING`` 1 before the freeze and 0
  after the restore (feature bit 5 read as FREEZING: a 2023 driver predates BLOB_ALIGNMENT).
* :class:`S4ReplayGpuDriver` (``s4-replay``) — Linux 7.3: a PM notifier refuses S4 while virgl objects exist and
  sets the hibernation flag; freeze drains both queues with a time-out (-ETIMEDOUT aborts the freeze), unrefs
  every restorable object on the host when hibernating, deletes the queues; restore re-creates every restorable
  object (create, attach backing, UUID) before the first display command.

Every flavour restores through the same building blocks of :class:`~pyvirtio.guest.gpu.driver.GpuDriver`:
``recreate`` for each restorable object and ``replay_modeset`` over the object bindings (so a blob scanout comes
back as the blob), and saves the same :class:`~pyvirtio.guest.gpu.objects.GpuDriverState` in an S4 image.

:data:`FLAVOURS` maps each :class:`GpuDriverKind` to its class; S4 images store the kind's value.
"""

from __future__ import annotations

import contextlib
from enum import Enum
from typing import Any, ClassVar

from pyvirtio.clock import MS
from pyvirtio.errors import DriverError
from pyvirtio.guest.gpu.driver import GpuDriver
from pyvirtio.guest.kernel import PmEvent, SleepRefused
from pyvirtio.spec import gpu_wire
from pyvirtio.spec.constants import GpuCmd, GpuFeature


class GpuDriverKind(Enum):
    """Which virtio-gpu driver the guest kernel runs."""

    NO_HOOKS = "no-hooks"  # Linux <= 7.2
    BASIC_HOOKS = "basic-hooks"  # 2023 series: re-create the queues and replay the modeset, no object replay
    FREEZING = "freezing"  # basic hooks + CMD_STATUS_FREEZING around the freeze
    S4_REPLAY = "s4-replay"  # Linux 7.3


class BasicHooksGpuDriver(GpuDriver):
    """2023 series: ``.freeze``/``.restore`` that rebuild the queues and replay the modeset."""

    has_pm_hooks: ClassVar[bool] = True
    DRAIN_TIMEOUT = 200 * MS

    def drain(self) -> None:
        """Wait until both queues are empty (``num_free == num_max``), with a time-out (-ETIMEDOUT; a device that
        needs a reset fails it at once, :meth:`wait_for`)."""
        def empty() -> bool:
            for i, vq in enumerate(self.vqs):
                self.vq_callback(i)
                if vq.num_free != vq.num_max:
                    return False
            return not self.pending

        self.wait_for(empty, self.DRAIN_TIMEOUT, "queues did not drain (-ETIMEDOUT)")

    def driver_freeze(self) -> None:
        """``.freeze``: drain both queues, then the driver's recipe (reset, reclaim, delete the queues)."""
        self.drain()
        super().driver_freeze()

    def driver_restore(self) -> None:
        """``.restore``: re-create the queues, set DRIVER_OK, :meth:`before_modeset`, then replay the modeset
        from the object bindings (``drm_mode_config_helper_resume``)."""
        self.find_vqs()
        self.device_ready()
        self.before_modeset()
        self.replay_modeset()

    def before_modeset(self) -> None:
        """Hook between DRIVER_OK and the first display command."""


class FreezingGpuDriver(BasicHooksGpuDriver):
    """2023 v1-v4: tell the device it is freezing, so the reset that follows keeps the resources.

    A 2023 driver knows feature bit 5 as FREEZING; it predates BLOB_ALIGNMENT (the same bit), so it reads no
    blob_alignment field (:attr:`GpuDriver.BIT5_IS_FREEZING`).
    """

    BIT5_IS_FREEZING: ClassVar[bool] = True

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("want_blob_alignment", False)
        super().__init__(*args, **kw)
        self.wanted_features |= 1 << GpuFeature.FREEZING

    def set_freezing(self, value: bool) -> None:
        """The 2023 proposal's STATUS_FREEZING command (fenced, waited for)."""
        self.wait(self.submit(GpuCmd.STATUS_FREEZING, gpu_wire.STATUS_FREEZING_BODY.pack(int(value)), fence=True))

    def driver_freeze(self) -> None:
        """STATUS_FREEZING 1 (when negotiated; an error answer or none aborts the freeze), then the basic
        ``.freeze``; if that fails (the queues did not drain), STATUS_FREEZING 0 withdraws the request, as our
        Linux patch does (``guest/linux/virtio-gpu-freezing.patch``)."""
        if not self.has(GpuFeature.FREEZING):
            super().driver_freeze()
            return
        self.set_freezing(True)
        try:
            super().driver_freeze()
        except DriverError:
            with contextlib.suppress(DriverError):
                self.set_freezing(False)
            raise

    def before_modeset(self) -> None:
        """STATUS_FREEZING 0 (when negotiated) before the modeset replay."""
        if self.has(GpuFeature.FREEZING):
            self.set_freezing(False)


class S4ReplayGpuDriver(BasicHooksGpuDriver):
    """Linux 7.3 virtio-gpu freeze/restore with the restore list."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.restored_objects = 0

    def pm_notifier(self, event: PmEvent) -> None:
        """PM notifier: refuse hibernation while virgl objects exist (they cannot be re-created), else note
        that an S4 is in progress until it is over."""
        if event is PmEvent.HIBERNATION_PREPARE:
            virgl = [o.id for o in self.objects if not o.restorable]
            if virgl:
                raise SleepRefused(f"{self.name}: hibernation refused: {len(virgl)} virgl objects cannot be "
                                   "restored")
            self.hibernation = True
        elif event in (PmEvent.POST_HIBERNATION, PmEvent.POST_RESTORE):
            self.hibernation = False

    def driver_freeze(self) -> None:
        """``.freeze``: drain; when hibernating RESOURCE_UNREF every restorable object on the host first
        (§5.7.6.8), so a failed host-side hibernation leaves no duplicates (v7); then the basic recipe."""
        self.drain()
        if self.hibernation:
            for obj in list(self.objects.restorable()):
                with contextlib.suppress(DriverError):
                    self.wait(self.submit(GpuCmd.RESOURCE_UNREF, gpu_wire.RESOURCE_ID_BODY.pack(obj.id, 0)))
                obj.attached = False
        super().driver_freeze()

    def before_modeset(self) -> None:
        """Re-create the restore list before the first display command when hibernating (or when an object
        lost its host copy)."""
        if self.hibernation or any(not o.attached for o in self.objects.restorable()):
            self.restore_objects()

    def restore_objects(self) -> None:
        """:meth:`GpuDriver.recreate` every restorable object (pixels are in guest RAM); counts them."""
        objs = self.objects.restorable()
        for obj in objs:
            self.recreate(obj)
        self.restored_objects = len(objs)


#: The driver class for each kind: an explicit table, filled by nobody at import time.
FLAVOURS: dict[GpuDriverKind, type[GpuDriver]] = {
    GpuDriverKind.NO_HOOKS: GpuDriver,
    GpuDriverKind.BASIC_HOOKS: BasicHooksGpuDriver,
    GpuDriverKind.FREEZING: FreezingGpuDriver,
    GpuDriverKind.S4_REPLAY: S4ReplayGpuDriver,
}
