"""virtio-gpu power-management variants: the 2023 FREEZING command (device side) and three driver flavours.

* :class:`PmGpu` — the device with the abandoned 2023 ``VIRTIO_GPU_CMD_STATUS_FREEZING`` (0x0400,
  ``{hdr, le32 freezing}``, feature bit 5 = today's BLOB_ALIGNMENT, so never both) and "retain on reset": while
  freezing (or while the freeze_mode proposal says FREEZE_S3) a reset keeps resources; QEMU's base reset still
  disables the scanouts, so the driver must replay its modeset.
* :class:`BasicHooksGpuDriver` — freeze (drain, reset, delete queues) and restore (queues, DRIVER_OK, modeset
  replay as ``drm_mode_config_helper_resume``), no object replay: the 2023 kernel series.
* :class:`FreezingGpuDriver` — the same plus STATUS_FREEZING 1 before the freeze and 0 after the restore.
* :class:`S4ReplayGpuDriver` — Linux 7.3: a PM notifier refuses S4 while virgl objects exist and sets the
  hibernation flag; freeze drains both queues with a time-out (ETIMEDOUT aborts the freeze), unrefs every
  object on the host when hibernating, deletes the queues; restore re-creates every restorable object (create,
  attach backing, UUID) right after the queues come back and before the first display command.

Every flavour saves its guest-side state (object list, framebuffer and cursor bindings) for the S4 image.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any, ClassVar

from pyvirtio.clock import MS
from pyvirtio.constants import GPU_CTRL_HDR_SIZE, GpuCmd, GpuFeature, GpuResp
from pyvirtio.devices.gpu import Gpu
from pyvirtio.devices.gpu import protocol as gpu_protocol
from pyvirtio.drivers.gpu import (
    GpuDriver,
    register_driver_class,
)
from pyvirtio.errors import DriverError, DriverTimeout
from pyvirtio.pm.guest import PmEvent, SleepRefused
from pyvirtio.trace import Kind

_FREEZING = struct.Struct("<I")
gpu_protocol.REQUEST_SIZE.setdefault(GpuCmd.STATUS_FREEZING, GPU_CTRL_HDR_SIZE + _FREEZING.size)


class PmGpu(Gpu):
    """virtio-gpu with the device side of the 2023 proposals."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.freezing = False
        if self.offer_freezing:
            self._handlers[GpuCmd.STATUS_FREEZING] = self._status_freezing

    def _status_freezing(self, p: Any) -> tuple[int, bytes]:
        if not self.negotiated(GpuFeature.FREEZING):
            self.violation("2023 FREEZING: STATUS_FREEZING without VIRTIO_GPU_F_FREEZING")
            return GpuResp.ERR_UNSPEC, b""
        (value,) = _FREEZING.unpack_from(p.raw, GPU_CTRL_HDR_SIZE)
        self.freezing = bool(value)
        self.retain_state_on_reset = self.freezing
        self.trace(Kind.PM, event="gpu_freezing", freezing=int(self.freezing))
        return GpuResp.OK_NODATA, b""

    def state_bytes(self) -> int:
        return int(self.hostmem)

    def on_reset(self) -> None:
        if not self.retain_state_on_reset:
            super().on_reset()
            return
        # Jiqian Chen's QEMU patch: resources survive, virtio_gpu_base_reset still unbinds every scanout.
        for s in self.scanouts:
            s.disable()
        self._cmdq.clear()
        self._busy = False
        self.trace(Kind.DEVICE, event="resources_destroyed", count=0, kept=len(self.resources))


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
        from pyvirtio.constants import GpuCfg

        self.num_scanouts, self.num_capsets = self.t.config_read_consistent(
            [(GpuCfg.NUM_SCANOUTS, 4), (GpuCfg.NUM_CAPSETS, 4)])
        self.find_vqs()

    def set_freezing(self, value: bool) -> None:
        self.wait(self.submit(GpuCmd.STATUS_FREEZING, _FREEZING.pack(int(value)), fence=True))

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
                    self.wait(self.submit(GpuCmd.RESOURCE_UNREF, gpu_protocol.RESOURCE_ID_BODY.pack(obj.id, 0)))
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
                body = gpu_protocol.CREATE_BLOB_BODY.pack(obj.id, b.blob_mem, b.blob_flags, len(obj.backing),
                                                          b.blob_id, b.size)
                self.wait(self.submit(GpuCmd.RESOURCE_CREATE_BLOB, body + self._entries(obj.backing),
                                      fence=True))
            else:
                self.wait(self.submit(GpuCmd.RESOURCE_CREATE_2D,
                                      gpu_protocol.CREATE_2D_BODY.pack(obj.id, obj.format, obj.width, obj.height),
                                      fence=True))
                if obj.backing:
                    self.attach_backing(obj)
            obj.attached = True
            if obj.uuid is not None and self.has(GpuFeature.RESOURCE_UUID):
                self.wait(self.submit(GpuCmd.RESOURCE_ASSIGN_UUID, gpu_protocol.RESOURCE_ID_BODY.pack(obj.id, 0)))
            n += 1
        self.restored_objects = n

    def save_state(self) -> dict[str, object]:
        state = super().save_state()
        state["hibernation"] = self.hibernation
        return state

    def load_state(self, state: dict[str, object]) -> None:
        super().load_state(state)
        self.hibernation = bool(state.get("hibernation", False))


register_driver_class("basic-hooks", BasicHooksGpuDriver)
register_driver_class("freezing", FreezingGpuDriver)
register_driver_class("s4-replay", S4ReplayGpuDriver)
