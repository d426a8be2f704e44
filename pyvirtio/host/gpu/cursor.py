"""The virtio-gpu cursor queue (virtio 1.4 §5.7.6.10): UPDATE_CURSOR and MOVE_CURSOR, one cursor per scanout.

Contract. Cursor commands take effect at once and, like QEMU, get no response data (used length 0). A request
shorter than ``struct virtio_gpu_update_cursor``, a control command on this queue, a scanout out of range or a
cursor resource that is not 64x64 is ignored with a traced violation.
"""

from __future__ import annotations

from pyvirtio.host.gpu.base import GpuBase
from pyvirtio.host.gpu.display import Cursor
from pyvirtio.spec import gpu_formats as formats
from pyvirtio.spec import gpu_wire as protocol
from pyvirtio.spec.constants import (
    GPU_BYTES_PER_PIXEL,
    GPU_CTRL_HDR_SIZE,
    GPU_CURSOR_SIZE,
    GPU_CURSORQ,
    GpuCmd,
    GpuFormat,
)
from pyvirtio.spec.gpu_wire import CtrlHdr
from pyvirtio.trace import Kind
from pyvirtio.virtqueue.chain import DescriptorChain


class CursorQueue(GpuBase):
    """The cursor queue of :class:`~pyvirtio.host.gpu.device.Gpu`."""

    def _process_cursorq(self) -> None:
        """Take every available cursor request and answer each at once (used length 0)."""
        while self.can_process():
            chain = self.pop(GPU_CURSORQ)
            if chain is None:
                break
            self._cursor_command(chain)
            self.complete(GPU_CURSORQ, chain, 0)

    def _cursor_command(self, chain: DescriptorChain) -> None:
        size = protocol.REQUEST_SIZE[GpuCmd.UPDATE_CURSOR]
        raw = chain.read(self.ctx.memory, size)
        if len(raw) < size:
            self.violation("§5.7.6.10 cursor request shorter than struct virtio_gpu_update_cursor", length=len(raw))
            return
        hdr = CtrlHdr.unpack(raw)
        if hdr.type not in (GpuCmd.UPDATE_CURSOR, GpuCmd.MOVE_CURSOR):
            self.violation("§5.7.2 only cursor commands belong on the cursor queue", type=hdr.type)
            return
        sid, x, y, _, rid, hot_x, hot_y, _ = protocol.CURSOR_BODY.unpack_from(raw, GPU_CTRL_HDR_SIZE)
        name = protocol.command_name(hdr.type)
        self.commands[name] += 1
        if sid >= self.num_scanouts:
            self.violation("§5.7.6.10 cursor scanout id out of range", scanout_id=sid)
            return
        c = self.scanouts[sid].cursor
        c.x, c.y = x, y
        if hdr.type == GpuCmd.UPDATE_CURSOR:
            c.hot_x, c.hot_y = hot_x, hot_y
            c.resource_id = rid
            if rid:
                self._load_cursor(c, rid)
        self.trace(Kind.DEVICE, event="gpu_cursor", cmd=name, scanout=sid, resource_id=c.resource_id)

    def _load_cursor(self, c: Cursor, rid: int) -> None:
        """Copy the 64x64 cursor image out of resource ``rid`` as a8r8g8b8, whatever its format (QEMU
    ``virtio_gpu_update_cursor_data`` copies the raw pixels)."""
        res = self.resources.get(rid)
        n = GPU_CURSOR_SIZE
        if res is None:
            self.violation("§5.7.6.6 cursor resource does not exist", resource_id=rid)
            return
        if res.image is not None and res.width == n and res.height == n:
            # QEMU copies the resource's 32-bit pixels into its a8r8g8b8 cursor whatever the resource's format:
            # Linux's cursor is an XRGB dumb buffer whose X byte carries the alpha (found with the real driver)
            c.image = formats.to_rgba(res.image.reshape(n, n, 4), GpuFormat.B8G8R8A8_UNORM)
        elif res.blob is not None and res.backing and res.backing_size >= n * n * GPU_BYTES_PER_PIXEL:
            raw = res.backing_bytes(self.ctx.memory, 0, n * n * GPU_BYTES_PER_PIXEL, copy=True)
            c.image = formats.to_rgba(raw.reshape(n, n, 4), GpuFormat.B8G8R8A8_UNORM)
        else:
            self.violation("§5.7.6.6 cursor resource MUST be 64x64", resource_id=rid)


__all__ = ["CursorQueue"]
