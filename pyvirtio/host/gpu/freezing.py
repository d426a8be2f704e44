"""virtio-gpu with the device side of the abandoned 2023 FREEZING proposal (reference §2.8).

``VIRTIO_GPU_CMD_STATUS_FREEZING`` (0x0400, ``{hdr, le32 freezing}``) behind feature bit 5, which is today's
BLOB_ALIGNMENT, so a device offers one or the other, never both.

Contract. :class:`PmGpu` adds one command to :class:`~pyvirtio.host.gpu.device.Gpu`'s table and nothing else:
STATUS_FREEZING sets the device core's ``retain_state_on_reset`` policy, which ``Gpu.on_reset`` honours (the
resources survive a reset; QEMU's base reset still disables every scanout, so the driver must replay its
modeset). The freeze_mode proposal sets the same policy from the transport.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pyvirtio.host.gpu.base import Pending, Reply
from pyvirtio.host.gpu.device import HANDLERS, Gpu, Handler, unknown_command
from pyvirtio.spec import gpu_wire
from pyvirtio.spec.constants import GPU_CTRL_HDR_SIZE, GpuCmd, GpuFeature, GpuResp
from pyvirtio.trace import Kind


class PmGpu(Gpu):
    """virtio-gpu with the device side of the 2023 proposals."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        """The arguments of :class:`~pyvirtio.host.gpu.device.Gpu` (``offer_freezing`` offers the command)."""
        super().__init__(*args, **kw)
        self.freezing = False

    def _status_freezing(self, p: Pending) -> Reply:
        if not self.offer_freezing:
            raise unknown_command(GpuCmd.STATUS_FREEZING)
        if not self.negotiated(GpuFeature.FREEZING):
            self.violation("2023 FREEZING: STATUS_FREEZING without VIRTIO_GPU_F_FREEZING")
            return GpuResp.ERR_UNSPEC, b""
        (value,) = gpu_wire.STATUS_FREEZING_BODY.unpack_from(p.raw, GPU_CTRL_HDR_SIZE)
        self.freezing = bool(value)
        self.retain_state_on_reset = self.freezing
        self.trace(Kind.PM, event="gpu_freezing", freezing=int(self.freezing))
        return GpuResp.OK_NODATA, b""

    handlers: ClassVar[Mapping[int, Handler]] = {**HANDLERS, GpuCmd.STATUS_FREEZING: _status_freezing}
