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

:data:`FLAVOURS` maps each :class:`GpuDriverKind` to its class; S4 images store the kind's value.
"""

from __future__ import annotations

import contextlib
from enum import Enum
from typing import Any, ClassVar

from pyvirtio.clock import MS
from pyvirtio.errors import DriverError, DriverTimeout
from pyvirtio.guest.gpu.driver import GpuDriver
from pyvirtio.guest.kernel import PmEvent, SleepRefused
from pyvirtio.spec import gpu_wire
from pyvirtio.spec.constants import GpuCfg, GpuCmd, GpuFeature


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
        """Wait until both queues are empty (``num_free == num_max``), with a time-out (-ETIMEDOUT)."""
        def empty() -> bool:
            for i, vq in enumerate(self.vqs):
                self.vq_callback(i)
                if vq.num_free != vq.num_max:
                    return False
            return not self.pending

        if not self.platform.run_until(empty, self.DRAIN_TIMEOUT):
            raise DriverTimeout(f"{self.name}: queues did not drain (-ETIMEDOUT)")

    def driver_freeze(self) -> None:
        self.drain()
        self.t.reset()
        for vq in self.vqs:
            vq.detach_unused()
        self.del_vqs()

    def driver_restore(self) -> None:
        self.find_vqs()
        self.device_ready()
        self.before_modeset()
        self.replay_modeset()

    def before_modeset(self) -> None:
        """Hook between DRIVER_OK and the first display command."""

    def replay_modeset(self) -> None:
        """``drm_mode_config_helper_resume``: re-bind every framebuffer, push its pixels, restore cursors."""
        for scanout, fb in sorted(self.framebuffers.items()):
            try:
                self.set_scanout(scanout, fb)
                rect = (0, 0, fb.width, fb.height)
                self.transfer_to_host_2d(fb, rect)
                self.resource_flush(fb, rect, wait=True)
            except DriverError:
                continue  # the resource is gone on the host: the screen stays dark
        for scanout, obj in sorted(self.cursors.items()):
            x, y = self.cursor_positions.get(scanout, (0, 0))
            try:
                self.transfer_to_host_2d(obj, (0, 0, obj.width, obj.height), wait=True)
                self.wait(self._cursor_cmd(GpuCmd.UPDATE_CURSOR, scanout, x, y, obj.id, 0, 0))
            except DriverError:
                continue


class FreezingGpuDriver(BasicHooksGpuDriver):
    """2023 v1-v4: tell the device it is freezing, so the reset that follows keeps the resources.

    A 2023 driver knows feature bit 5 as FREEZING; it predates BLOB_ALIGNMENT (the same bit).
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("want_blob_alignment", False)
        super().__init__(*args, **kw)
        self.wanted_features |= 1 << GpuFeature.FREEZING

    def setup(self) -> None:
        """As the base, but bit 5 means FREEZING here: there is no blob_alignment field to read."""
        self.num_scanouts, self.num_capsets = self.t.config_read_consistent(
            [(GpuCfg.NUM_SCANOUTS, 4), (GpuCfg.NUM_CAPSETS, 4)])
        self.find_vqs()

    def set_freezing(self, value: bool) -> None:
        self.wait(self.submit(GpuCmd.STATUS_FREEZING, gpu_wire.STATUS_FREEZING_BODY.pack(int(value)), fence=True))

    def driver_freeze(self) -> None:
        if self.has(GpuFeature.FREEZING):
            self.set_freezing(True)
        super().driver_freeze()

    def before_modeset(self) -> None:
        if self.has(GpuFeature.FREEZING):
            self.set_freezing(False)


class S4ReplayGpuDriver(BasicHooksGpuDriver):
    """Linux 7.3 virtio-gpu freeze/restore with the restore list."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.hibernation = False
        self.restored_objects = 0

    def pm_notifier(self, event: PmEvent) -> None:
        if event is PmEvent.HIBERNATION_PREPARE:
            virgl = [o.id for o in self.objects if not o.restorable]
            if virgl:
                raise SleepRefused(f"{self.name}: hibernation refused: {len(virgl)} virgl objects cannot be "
                                   "restored")
            self.hibernation = True
        elif event in (PmEvent.POST_HIBERNATION, PmEvent.POST_RESTORE):
            self.hibernation = False

    def driver_freeze(self) -> None:
        self.drain()
        if self.hibernation:
            # unref on the host first, so a failed host-side hibernation leaves no duplicates (v7)
            for obj in list(self.objects.restorable()):
                with contextlib.suppress(DriverError):
                    self.wait(self.submit(GpuCmd.RESOURCE_UNREF, gpu_wire.RESOURCE_ID_BODY.pack(obj.id, 0)))
                obj.attached = False
        super().driver_freeze()

    def before_modeset(self) -> None:
        if self.hibernation or any(not o.attached for o in self.objects.restorable()):
            self.restore_objects()

    def restore_objects(self) -> None:
        """Re-create every restorable object from guest-side metadata (pixels are in guest RAM)."""
        n = 0
        for obj in list(self.objects.restorable()):
            if obj.blob is not None:
                b = obj.blob
                body = gpu_wire.CREATE_BLOB_BODY.pack(obj.id, b.blob_mem, b.blob_flags, len(obj.backing),
                                                          b.blob_id, b.size)
                self.wait(self.submit(GpuCmd.RESOURCE_CREATE_BLOB, body + self._entries(obj.backing),
                                      fence=True))
            else:
                self.wait(self.submit(GpuCmd.RESOURCE_CREATE_2D,
                                      gpu_wire.CREATE_2D_BODY.pack(obj.id, obj.format, obj.width, obj.height),
                                      fence=True))
                if obj.backing:
                    self.attach_backing(obj)
            obj.attached = True
            if obj.uuid is not None and self.has(GpuFeature.RESOURCE_UUID):
                self.wait(self.submit(GpuCmd.RESOURCE_ASSIGN_UUID, gpu_wire.RESOURCE_ID_BODY.pack(obj.id, 0)))
            n += 1
        self.restored_objects = n

    def save_state(self) -> dict[str, object]:
        state = super().save_state()
        state["hibernation"] = self.hibernation
        return state

    def load_state(self, state: dict[str, object]) -> None:
        super().load_state(state)
        self.hibernation = bool(state.get("hibernation", False))


#: The driver class for each kind: an explicit table, filled by nobody at import time.
FLAVOURS: dict[GpuDriverKind, type[GpuDriver]] = {
    GpuDriverKind.NO_HOOKS: GpuDriver,
    GpuDriverKind.BASIC_HOOKS: BasicHooksGpuDriver,
    GpuDriverKind.FREEZING: FreezingGpuDriver,
    GpuDriverKind.S4_REPLAY: S4ReplayGpuDriver,
}
