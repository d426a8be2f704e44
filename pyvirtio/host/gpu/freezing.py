"""virtio-gpu with the device side of the abandoned 2023 FREEZING proposal (reference §2.8).

``VIRTIO_GPU_CMD_STATUS_FREEZING`` (0x0400, ``{hdr, le32 freezing}``) behind feature bit 5, which is today's
BLOB_ALIGNMENT, so a device offers one or the other, never both. While freezing (or while the freeze_mode
proposal says FREEZE_S3) a reset keeps the resources; QEMU's base reset still disables every scanout, so the
driver must replay its modeset.
"""

from __future__ import annotations

from typing import Any

from pyvirtio.host.gpu.device import Gpu
from pyvirtio.spec import gpu_wire
from pyvirtio.spec.constants import GPU_CTRL_HDR_SIZE, GpuCmd, GpuFeature, GpuResp
from pyvirtio.trace import Kind


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
        (value,) = gpu_wire.STATUS_FREEZING_BODY.unpack_from(p.raw, GPU_CTRL_HDR_SIZE)
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
