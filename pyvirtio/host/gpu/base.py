"""What every virtio-gpu command handler shares (virtio 1.4 §5.7.6): the device state and the common checks.

Contract. :class:`GpuBase` declares the state the handlers of :mod:`~pyvirtio.host.gpu.commands_2d`,
:mod:`~pyvirtio.host.gpu.commands_3d` and :mod:`~pyvirtio.host.gpu.cursor` work on (resources, contexts,
scanouts, host memory in use) and the checks they share. A check that fails raises :class:`GpuError` with the
response code the spec (or QEMU) gives; the control-queue pump in :mod:`~pyvirtio.host.gpu.device` turns it into
that response and a traced violation, so no handler lets an exception out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.gpu.display import Display, Rect, Scanout
from pyvirtio.host.gpu.resources import Context, MemEntry, Resource
from pyvirtio.spec import gpu_wire as protocol
from pyvirtio.spec.constants import (
    GPU_CTRL_HDR_SIZE,
    GPU_EDID_MAX_MODE,
    GPU_MAX_DIMENSION,
    GPU_MAX_MEM_ENTRIES,
    GPU_MEM_ENTRY_SIZE,
    GPU_MIN_SCANOUT_SIZE,
    GpuCmd,
    GpuResp,
)
from pyvirtio.spec.gpu_wire import MEM_ENTRY, CtrlHdr
from pyvirtio.virtqueue.chain import DescriptorChain

#: ``protocol.body`` of every command, looked up per command (None entries left out)
_BODY = {int(c): st for c in GpuCmd if (st := protocol.body(c)) is not None}


class GpuError(Exception):
    """Internal: a command fails with response ``code``; ``rule`` is recorded as a violation."""

    def __init__(self, code: GpuResp, rule: str, **detail: object) -> None:
        super().__init__(rule)
        self.code = code
        self.rule = rule
        self.detail = detail


@dataclass
class Pending:
    """A control request popped from the queue, read once, waiting for its turn."""

    chain: DescriptorChain
    raw: bytes
    hdr: CtrlHdr | None
    cost: int


Reply = tuple[int, bytes]  # response type, payload after the header


class GpuBase(VirtioDevice):
    """The state and checks of :class:`~pyvirtio.host.gpu.device.Gpu` that its command handlers use."""

    num_scanouts: int
    host_memory_limit: int
    blob_alignment: int
    offer_blob_alignment: bool
    num_capsets: int
    displays: list[Display]
    resources: dict[int, Resource]
    contexts: dict[int, Context]
    scanouts: list[Scanout]
    hostmem: int
    commands: Counter[str]

    # -- helpers ----------------------------------------------------------------------------------------------

    def _body(self, p: Pending) -> tuple[Any, ...]:
        assert p.hdr is not None
        st = _BODY.get(p.hdr.type) or protocol.body(p.hdr.type)
        assert st is not None
        return st.unpack_from(p.raw, GPU_CTRL_HDR_SIZE)

    def _resource(self, rid: int) -> Resource:
        res = self.resources.get(rid)
        if res is None:
            raise GpuError(GpuResp.ERR_INVALID_RESOURCE_ID, "§5.7.6.8 unknown resource id", resource_id=rid)
        return res

    def _scanout_id(self, sid: int) -> Scanout:
        if sid >= self.num_scanouts:
            raise GpuError(GpuResp.ERR_INVALID_SCANOUT_ID, "§5.7.6.8 scanout id out of range", scanout_id=sid)
        return self.scanouts[sid]

    def _new_id(self, rid: int) -> None:
        if rid == 0:
            raise GpuError(GpuResp.ERR_INVALID_RESOURCE_ID, "§5.7.6.8 resource id 0 is not allowed")
        if rid in self.resources:
            raise GpuError(GpuResp.ERR_INVALID_RESOURCE_ID, "§5.7.6.8 resource id already exists",
                           resource_id=rid)

    def _reserve_hostmem(self, need: int) -> None:
        if self.hostmem + need > self.host_memory_limit:
            raise GpuError(GpuResp.ERR_OUT_OF_MEMORY, "host memory limit reached", need=need,
                           used=self.hostmem, limit=self.host_memory_limit)

    def _mem_entries(self, p: Pending, offset: int, count: int) -> list[MemEntry]:
        """Read and validate ``count`` mem entries at ``offset`` in the request (QEMU create_mapping_iov)."""
        if count > GPU_MAX_MEM_ENTRIES:
            raise GpuError(GpuResp.ERR_UNSPEC, "nr_entries above 16384", nr_entries=count)
        if len(p.raw) < offset + count * GPU_MEM_ENTRY_SIZE:
            raise GpuError(GpuResp.ERR_UNSPEC, "§5.7.6.8 request shorter than its nr_entries mem entries",
                           nr_entries=count, length=len(p.raw))
        mem = self.ctx.memory
        out = []
        for i in range(count):
            addr, length, _ = MEM_ENTRY.unpack_from(p.raw, offset + i * GPU_MEM_ENTRY_SIZE)
            if not mem.contains(addr, length):
                raise GpuError(GpuResp.ERR_UNSPEC, "mem entry outside guest memory", entry=i, addr=addr,
                               length=length)
            out.append(MemEntry(addr, length))
        return out

    @staticmethod
    def _check_dims(width: int, height: int) -> None:
        if not (1 <= width <= GPU_MAX_DIMENSION and 1 <= height <= GPU_MAX_DIMENSION):
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "resource width/height must be 1..16384",
                           width=width, height=height)

    @staticmethod
    def _check_rect_in(r: Rect, width: int, height: int, what: str) -> None:
        """QEMU's bounds test for transfer and flush rects."""
        if (r.x > width or r.y > height or r.width > width or r.height > height
                or r.x + r.width > width or r.y + r.height > height):
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, f"§5.7.6.8 {what} rectangle outside the resource",
                           rect=str(r), width=width, height=height)

    @staticmethod
    def _check_scanout_rect(r: Rect, width: int, height: int) -> None:
        """§5.7.6.8 "Scanout rectangles must be completely covered by the underlying resource" (+ QEMU 16x16)."""
        if (r.width < GPU_MIN_SCANOUT_SIZE or r.height < GPU_MIN_SCANOUT_SIZE
                or r.x + r.width > width or r.y + r.height > height):
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER,
                           "§5.7.6.8 scanout rectangle must be completely covered by the resource",
                           rect=str(r), width=width, height=height)

    def _unbind_scanout(self, sid: int) -> None:
        s = self.scanouts[sid]
        old = self.resources.get(s.resource_id)
        if old is not None:
            old.scanouts.discard(sid)
        s.disable()

    def _destroy(self, res: Resource) -> None:
        for sid in sorted(res.scanouts):
            self._unbind_scanout(sid)
        for cid in res.contexts:
            ctx = self.contexts.get(cid)
            if ctx is not None:
                ctx.resources.discard(res.id)
        self.hostmem -= res.hostmem
        del self.resources[res.id]


def intersects(a: Rect, b: Rect) -> bool:
    """The two rectangles overlap."""
    return a.x < b.x + b.width and b.x < a.x + a.width and a.y < b.y + b.height and b.y < a.y + a.height


def check_mode(width: int, height: int) -> None:
    """ValueError unless ``width`` x ``height`` is a display mode the EDID can describe (host-side setting)."""
    if not (1 <= width <= GPU_EDID_MAX_MODE and 1 <= height <= GPU_EDID_MAX_MODE):
        raise ValueError(f"display mode {width}x{height}: each side must be 1..{GPU_EDID_MAX_MODE}")


__all__ = ["GpuBase", "GpuError", "Pending", "Reply", "check_mode", "intersects"]
