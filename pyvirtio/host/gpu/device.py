"""virtio-gpu device (id 16, virtio 1.4 §5.7), 2D with guest blobs, modelled on QEMU ``hw/display/virtio-gpu.c``.

Queues: controlq (0) and cursorq (1). Control commands run one at a time in order on the virtual clock, each
taking ``command_latency`` plus, for transfers and 3D submits, ``bytes / bytes_per_us``; a command's effect and
its response happen when it finishes, so fenced responses (§5.7.6.5 "MUST finish the processing before
returning the command") arrive later and requests stay in flight meanwhile. Cursor commands take effect at
once and, like QEMU, get no response data (used length 0).

Guest errors get the spec's ``ERR_*`` answer and a trace violation, never an exception. Choices where neither
the spec nor QEMU is exact are listed in :class:`Gpu`'s docstring.
"""

from __future__ import annotations

import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pyvirtio.clock import US
from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.gpu import edid
from pyvirtio.host.gpu.display import (
    BlobFramebuffer,
    Cursor,
    Display,
    Rect,
    Scanout,
    compose,
    write_png,
)
from pyvirtio.host.gpu.resources import BlobInfo, Context, MemEntry, Resource, rows_view
from pyvirtio.spec import gpu_formats as formats
from pyvirtio.spec import gpu_wire as protocol
from pyvirtio.spec.constants import (
    GPU_BYTES_PER_PIXEL,
    GPU_CONFIG_SIZE,
    GPU_CONFIG_SIZE_BLOB_ALIGNMENT,
    GPU_CONTEXT_INIT_CAPSET_ID_MASK,
    GPU_CONTROLQ,
    GPU_CTRL_HDR_SIZE,
    GPU_CTX_DEBUG_NAME_MAX,
    GPU_CURSOR_SIZE,
    GPU_CURSORQ,
    GPU_DEFAULT_HOST_MEMORY,
    GPU_EDID_BLOCK_SIZE,
    GPU_EDID_MAX,
    GPU_EDID_MAX_MODE,
    GPU_EVENT_DISPLAY,
    GPU_MAX_DIMENSION,
    GPU_MAX_MEM_ENTRIES,
    GPU_MAX_SCANOUTS,
    GPU_MAX_SUBMIT_SIZE,
    GPU_MEM_ENTRY_SIZE,
    GPU_MIN_SCANOUT_SIZE,
    GPU_RING_IDX_MAX,
    DeviceId,
    GpuBlobMem,
    GpuCfg,
    GpuCmd,
    GpuFeature,
    GpuFormat,
    GpuResp,
    bit,
)
from pyvirtio.spec.gpu_formats import Image
from pyvirtio.spec.gpu_wire import MEM_ENTRY, CtrlHdr
from pyvirtio.trace import Kind
from pyvirtio.virtqueue.chain import DescriptorChain

_U32 = 0xFFFFFFFF
_INT_MAX = 0x7FFFFFFF
#: Largest request a control command can carry: SUBMIT_3D header plus its biggest stream.
_MAX_REQUEST = GPU_CTRL_HDR_SIZE + 8 + GPU_MAX_SUBMIT_SIZE

#: Commands that need a negotiated feature; without it they are unknown commands (ERR_UNSPEC).
_FEATURE_OF: dict[int, int] = {
    GpuCmd.GET_EDID: GpuFeature.EDID,
    GpuCmd.RESOURCE_ASSIGN_UUID: GpuFeature.RESOURCE_UUID,
    GpuCmd.RESOURCE_CREATE_BLOB: GpuFeature.RESOURCE_BLOB,
    GpuCmd.SET_SCANOUT_BLOB: GpuFeature.RESOURCE_BLOB,
    **{c: GpuFeature.VIRGL for c in GpuCmd if 0x0200 <= c < 0x0300},
}


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


class Gpu(VirtioDevice):
    """The virtio-gpu device.

    Behaviour on ambiguous or broken input (QEMU's where it has one):

    * request shorter than its command struct, or than the 24-byte header: ERR_INVALID_PARAMETER with a zeroed
      header echo (current QEMU ``VIRTIO_GPU_FILL_CMD``; QEMU up to 2025 answered OK_NODATA, or nothing for a
      short header);
    * response buffer smaller than the response: as much as fits is written (``iov_from_buf``), used length
      is what was written, a violation is traced; no writable part at all: used length 0;
    * a command of a feature that was not negotiated (EDID, UUID, BLOB, 3D): ERR_UNSPEC, as for an unknown
      command; UPDATE/MOVE_CURSOR on the control queue: ERR_UNSPEC (QEMU); control commands on the cursor
      queue are ignored (QEMU would treat any non-MOVE type as UPDATE_CURSOR);
    * width/height 0 or above 16384: ERR_INVALID_PARAMETER; host memory (stride * height for 2D) beyond
      ``host_memory_limit``: ERR_OUT_OF_MEMORY; guest blobs use no host memory;
    * TRANSFER_TO_HOST_2D whose source range ``offset + stride*(h-1) + w*bpp`` passes the end of the backing:
      ERR_INVALID_PARAMETER and nothing copied (QEMU copies what the backing has and says OK);
    * mem entries: more than 16384, fewer bytes than ``nr_entries`` announce, or an entry not inside guest
      RAM: ERR_UNSPEC and nothing attached (QEMU ``virtio_gpu_create_mapping_iov``);
    * GET_EDID for a scanout out of range: ERR_INVALID_PARAMETER (QEMU); other scanout ids out of range:
      ERR_INVALID_SCANOUT_ID; scanout rects under 16x16 are refused like QEMU;
    * GET_CAPSET_INFO / GET_CAPSET with no capsets: ERR_INVALID_PARAMETER;
    * MOVE_CURSOR ignores every field but ``pos`` (spec §5.7.6.10; QEMU also takes visibility from its
      resource_id);
    * a disabled scanout has no image (:meth:`scanout_image` returns None).
    """

    device_id = DeviceId.GPU
    queue_sizes = (256, 16)  # QEMU: controlq 256, cursorq 16

    def __init__(
        self,
        name: str = "gpu",
        *,
        num_scanouts: int = 1,
        width: int = 1024,
        height: int = 768,
        virgl: bool = False,
        context_init: bool = False,
        edid: bool = True,
        resource_uuid: bool = True,
        resource_blob: bool = True,
        enabled_scanouts: int | None = None,
        offer_blob_alignment: bool | None = None,
        offer_freezing: bool = False,
        blob_alignment_bytes: int = 4096,
        host_memory_limit: int = GPU_DEFAULT_HOST_MEMORY,
        bytes_per_us: int = 4000,
        command_latency: int = 2 * US,
        latency: int = 10 * US,
        offer_suspend: bool = True,
    ) -> None:
        super().__init__(name, offer_suspend=offer_suspend, latency=latency)
        if not 1 <= num_scanouts <= GPU_MAX_SCANOUTS:
            raise ValueError(f"num_scanouts must be 1..{GPU_MAX_SCANOUTS}, not {num_scanouts}")
        _check_mode(width, height)
        if context_init and not virgl:
            raise ValueError("VIRTIO_GPU_F_CONTEXT_INIT requires VIRTIO_GPU_F_VIRGL (§5.7.3)")
        if offer_blob_alignment and offer_freezing:
            raise ValueError("BLOB_ALIGNMENT and the abandoned FREEZING are both feature bit 5: offer one")
        if offer_blob_alignment is None:
            offer_blob_alignment = resource_blob and not offer_freezing
        if offer_blob_alignment and not resource_blob:
            raise ValueError("VIRTIO_GPU_F_BLOB_ALIGNMENT requires VIRTIO_GPU_F_RESOURCE_BLOB (§5.7.3)")
        if not (0 < blob_alignment_bytes <= 1 << 31) or blob_alignment_bytes & (blob_alignment_bytes - 1):
            raise ValueError(f"blob_alignment must be a power of two up to 2^31, not {blob_alignment_bytes}")
        self.num_scanouts = num_scanouts
        self.offer_virgl = virgl
        self.offer_context_init = context_init
        self.offer_edid = edid
        self.offer_resource_uuid = resource_uuid
        self.offer_resource_blob = resource_blob
        self.offer_blob_alignment = offer_blob_alignment
        self.offer_freezing = offer_freezing
        self.blob_alignment = blob_alignment_bytes
        self.host_memory_limit = host_memory_limit
        self.bytes_per_us = max(1, bytes_per_us)
        self.command_latency = command_latency
        self.num_capsets = 0
        if enabled_scanouts is None:
            enabled_scanouts = num_scanouts
        if not 0 <= enabled_scanouts <= num_scanouts:
            raise ValueError(f"enabled_scanouts must be 0..{num_scanouts}, not {enabled_scanouts}")
        self.displays = [Display(i < enabled_scanouts, width, height) for i in range(num_scanouts)]
        self.events_read = 0
        self.resources: dict[int, Resource] = {}
        self.contexts: dict[int, Context] = {}
        self.scanouts = [Scanout() for _ in range(num_scanouts)]
        self.hostmem = 0
        self.commands: Counter[str] = Counter()  # executed control + cursor commands by name
        self._cmdq: deque[Pending] = deque()
        self._busy = False
        self._handlers: dict[int, Callable[[Pending], Reply]] = {
            GpuCmd.GET_DISPLAY_INFO: self._get_display_info,
            GpuCmd.GET_EDID: self._get_edid,
            GpuCmd.RESOURCE_CREATE_2D: self._resource_create_2d,
            GpuCmd.RESOURCE_UNREF: self._resource_unref,
            GpuCmd.SET_SCANOUT: self._set_scanout,
            GpuCmd.RESOURCE_FLUSH: self._resource_flush,
            GpuCmd.TRANSFER_TO_HOST_2D: self._transfer_to_host_2d,
            GpuCmd.RESOURCE_ATTACH_BACKING: self._attach_backing,
            GpuCmd.RESOURCE_DETACH_BACKING: self._detach_backing,
            GpuCmd.GET_CAPSET_INFO: self._get_capset_info,
            GpuCmd.GET_CAPSET: self._get_capset,
            GpuCmd.RESOURCE_ASSIGN_UUID: self._assign_uuid,
            GpuCmd.RESOURCE_CREATE_BLOB: self._resource_create_blob,
            GpuCmd.SET_SCANOUT_BLOB: self._set_scanout_blob,
            GpuCmd.CTX_CREATE: self._ctx_create,
            GpuCmd.CTX_DESTROY: self._ctx_destroy,
            GpuCmd.CTX_ATTACH_RESOURCE: self._ctx_attach,
            GpuCmd.CTX_DETACH_RESOURCE: self._ctx_detach,
            GpuCmd.RESOURCE_CREATE_3D: self._resource_create_3d,
            GpuCmd.TRANSFER_TO_HOST_3D: self._transfer_3d,
            GpuCmd.TRANSFER_FROM_HOST_3D: self._transfer_3d,
            GpuCmd.SUBMIT_3D: self._submit_3d,
        }

    # -- features and config (§5.7.3, §5.7.4) -----------------------------------------------------------------

    @property
    def offered(self) -> int:
        """The device-type feature bits offered (bit 5 is BLOB_ALIGNMENT or FREEZING, never both)."""
        feats = 0
        for on, feat in (
            (self.offer_virgl, GpuFeature.VIRGL),
            (self.offer_edid, GpuFeature.EDID),
            (self.offer_resource_uuid, GpuFeature.RESOURCE_UUID),
            (self.offer_resource_blob, GpuFeature.RESOURCE_BLOB),
            (self.offer_context_init, GpuFeature.CONTEXT_INIT),
            (self.offer_blob_alignment, GpuFeature.BLOB_ALIGNMENT),
            (self.offer_freezing, GpuFeature.FREEZING),
        ):
            if on:
                feats |= bit(feat)
        return feats

    def device_features(self) -> int:
        return self.offered

    def config_size(self) -> int:
        return GPU_CONFIG_SIZE_BLOB_ALIGNMENT if self.offer_blob_alignment else GPU_CONFIG_SIZE

    def _config_bytes(self) -> bytes:
        fields = [self.events_read, 0, self.num_scanouts, self.num_capsets]
        if self.offer_blob_alignment:
            fields.append(self.blob_alignment)
        return b"".join(v.to_bytes(4, "little") for v in fields)

    def read_config(self, offset: int, size: int) -> int:
        return int.from_bytes(self._config_bytes()[offset : offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Only ``events_clear`` is writable: a 1 clears that bit of ``events_read`` (§5.7.4.1)."""
        lo, hi = offset, offset + size
        clear_lo, clear_hi = GpuCfg.EVENTS_CLEAR, GpuCfg.EVENTS_CLEAR + 4
        if lo < clear_lo or hi > clear_hi:
            rule = ("§5.7.4.1 driver MUST NOT write events_read" if lo < GpuCfg.EVENTS_CLEAR
                    else "§5.7.4.1 read-only gpu config field written")
            self.violation(rule, offset=offset, size=size, value=value)
            return
        self.events_read &= ~((value << (8 * (lo - clear_lo))) & _U32)

    def on_features_ok(self) -> None:
        f = self.driver_features
        if f & bit(GpuFeature.BLOB_ALIGNMENT) and self.offer_blob_alignment and not f & bit(
            GpuFeature.RESOURCE_BLOB
        ):
            self.violation("§5.7.3 BLOB_ALIGNMENT requires RESOURCE_BLOB")
        if f & bit(GpuFeature.CONTEXT_INIT) and not f & bit(GpuFeature.VIRGL):
            self.violation("§5.7.3 CONTEXT_INIT requires VIRGL")

    # -- host side: displays ----------------------------------------------------------------------------------

    def hotplug(self, scanout: int, enabled: bool, width: int | None = None, height: int | None = None) -> None:
        """Connect/disconnect or resize a display: sets EVENT_DISPLAY and notifies (deferred while suspended)."""
        if not 0 <= scanout < self.num_scanouts:
            raise ValueError(f"scanout {scanout} out of range 0..{self.num_scanouts - 1}")
        d = self.displays[scanout]
        w = d.width if width is None else width
        h = d.height if height is None else height
        _check_mode(w, h)

        def apply() -> None:
            d.enabled, d.width, d.height = enabled, w, h
            self.events_read |= GPU_EVENT_DISPLAY

        self.trace(Kind.DEVICE, event="display_change", scanout=scanout, enabled=enabled, width=w, height=h)
        self.config_change(apply)

    def resize(self, scanout: int, width: int, height: int) -> None:
        """The host window of ``scanout`` was resized (connects it if it was not)."""
        self.hotplug(scanout, True, width, height)

    # -- host side: what is shown -----------------------------------------------------------------------------

    def scanout_image(self, index: int) -> Image | None:
        """The ``(H, W, 4)`` RGBA image scanout ``index`` shows (opaque, cursor blended), or None if disabled."""
        s = self.scanouts[index]
        res = self.resources.get(s.resource_id) if s.enabled else None
        if res is None:
            return None
        return compose(s, res, self.ctx.memory)

    def save_png(self, index: int, path: str | Path) -> None:
        """Write scanout ``index`` as a PNG, atomically. ValueError if the scanout is disabled."""
        img = self.scanout_image(index)
        if img is None:
            raise ValueError(f"{self.name}: scanout {index} is disabled (no signal)")
        write_png(img, path)

    def scanout_width(self, index: int) -> int:
        """Width of the rectangle scanout ``index`` shows (0 when disabled)."""
        return self.scanouts[index].rect.width

    def scanout_height(self, index: int) -> int:
        return self.scanouts[index].rect.height

    def resource_rgba(self, resource_id: int) -> Image | None:
        """The host image of a 2D resource as RGBA (alpha kept), or None."""
        res = self.resources.get(resource_id)
        if res is None or res.image is None:
            return None
        return formats.to_rgba(res.image.reshape(res.height, res.width, 4), res.format)

    # -- reset / quiesce --------------------------------------------------------------------------------------

    def on_reset(self) -> None:
        """QEMU ``virtio_gpu_reset``: destroy every resource, disable every scanout and cursor."""
        count = len(self.resources)
        virgl = sum(1 for r in self.resources.values() if r.virgl)
        self.resources.clear()
        self.contexts.clear()
        self.scanouts = [Scanout() for _ in range(self.num_scanouts)]
        self.hostmem = 0
        self._cmdq.clear()
        self._busy = False
        self.trace(Kind.DEVICE, event="resources_destroyed", count=count, virgl=virgl)

    def quiesced(self) -> bool:
        return not self._cmdq and not self._busy

    # -- queues -----------------------------------------------------------------------------------------------

    def process_queue(self, index: int) -> None:
        if index == GPU_CONTROLQ:
            while self.can_process():
                chain = self.pop(index)
                if chain is None:
                    break
                self._cmdq.append(self._prepare(chain))
            self._pump()
        elif index == GPU_CURSORQ:
            while self.can_process():
                chain = self.pop(index)
                if chain is None:
                    break
                self._cursor_command(chain)
                self.complete(GPU_CURSORQ, chain, 0)

    def _prepare(self, chain: DescriptorChain) -> Pending:
        raw = chain.read(self.ctx.memory, min(chain.readable_len, _MAX_REQUEST))
        hdr = CtrlHdr.unpack(raw) if len(raw) >= GPU_CTRL_HDR_SIZE else None
        cost = self.command_latency
        if hdr is not None:
            cost += (self._payload_bytes(hdr.type, raw) * US) // self.bytes_per_us
        return Pending(chain, raw, hdr, cost)

    def _payload_bytes(self, cmd: int, raw: bytes) -> int:
        """Bytes a command moves (for its virtual-time cost): transfers and 3D submits."""
        if cmd == GpuCmd.TRANSFER_TO_HOST_2D and len(raw) >= protocol.REQUEST_SIZE[cmd]:
            _, _, w, h, *_ = protocol.TRANSFER_2D_BODY.unpack_from(raw, GPU_CTRL_HDR_SIZE)
            return int(min(w, GPU_MAX_DIMENSION) * min(h, GPU_MAX_DIMENSION) * GPU_BYTES_PER_PIXEL)
        if cmd == GpuCmd.SUBMIT_3D and len(raw) >= protocol.REQUEST_SIZE[cmd]:
            return int(min(protocol.SUBMIT_BODY.unpack_from(raw, GPU_CTRL_HDR_SIZE)[0], GPU_MAX_SUBMIT_SIZE))
        return 0

    def _pump(self) -> None:
        """Start the next control command if none is running."""
        if self._busy or not self._cmdq:
            return
        self._busy = True
        self.after(self._cmdq[0].cost, self._finish, label="gpu-cmd")

    def _finish(self) -> None:
        self._busy = False
        if self.faults.quiesce_never_completes and self.suspending:
            self._busy = True  # the command hangs in the backend for ever
            return
        if self.disabled or not self._cmdq:
            return  # resumed by the next kick (bus mastering back on)
        p = self._cmdq.popleft()
        resp, payload = self._execute(p)
        self._respond(p, resp, payload)
        self._pump()

    def _execute(self, p: Pending) -> Reply:
        if p.hdr is None:
            self.violation("§5.7.6.7 request shorter than struct virtio_gpu_ctrl_hdr", length=len(p.raw))
            return GpuResp.ERR_INVALID_PARAMETER, b""
        cmd = p.hdr.type
        name = protocol.command_name(cmd)
        self.commands[name] += 1
        try:
            reply = self._dispatch(p)
        except GpuError as e:
            self.violation(e.rule, cmd=name, resp=protocol.command_name(e.code), **e.detail)
            reply = (e.code, b"")
        self.trace(Kind.DEVICE, event="gpu_cmd", cmd=name, resp=protocol.command_name(reply[0]))
        return reply

    def _dispatch(self, p: Pending) -> Reply:
        assert p.hdr is not None
        cmd = p.hdr.type
        handler = self._handlers.get(cmd)
        if handler is None:
            if cmd in (GpuCmd.UPDATE_CURSOR, GpuCmd.MOVE_CURSOR):
                raise GpuError(GpuResp.ERR_UNSPEC, "§5.7.2 cursor command sent on the control queue")
            raise GpuError(GpuResp.ERR_UNSPEC, "§5.7.6.7 unknown or unsupported command", type=cmd)
        feature = _FEATURE_OF.get(cmd)
        if feature is not None and not self.negotiated(feature):
            raise GpuError(GpuResp.ERR_UNSPEC, "§5.7.3 command of a feature that was not negotiated",
                           feature=int(feature))
        size = protocol.REQUEST_SIZE[cmd]
        if len(p.raw) < size:
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "§5.7.6.8 request shorter than its command struct",
                           length=len(p.raw), expected=size)
        if p.hdr.flags & protocol.FLAG_INFO_RING_IDX:
            if not self.negotiated(GpuFeature.CONTEXT_INIT):
                self.violation("§5.7.6.7 INFO_RING_IDX without VIRTIO_GPU_F_CONTEXT_INIT")
            elif p.hdr.ring_idx > GPU_RING_IDX_MAX:
                raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "§5.7.6.7 ring_idx above 63", ring_idx=p.hdr.ring_idx)
        return handler(p)

    def _respond(self, p: Pending, resp: int, payload: bytes) -> None:
        """Write the response into the chain's writable part (QEMU ``virtio_gpu_ctrl_response``)."""
        flags = fence_id = ctx_id = ring_idx = 0
        hdr = p.hdr
        if hdr is not None and hdr.flags & protocol.FLAG_FENCE:
            # §5.7.6.7: the device MUST set FENCE and copy fence_id; it answers only now, when done
            flags, fence_id, ctx_id = protocol.FLAG_FENCE, hdr.fence_id, hdr.ctx_id
            if hdr.flags & protocol.FLAG_INFO_RING_IDX and self.negotiated(GpuFeature.CONTEXT_INIT):
                flags |= protocol.FLAG_INFO_RING_IDX
                ring_idx = hdr.ring_idx
        data = protocol.HDR.pack(resp, flags, fence_id, ctx_id, ring_idx) + payload
        chain = p.chain
        if not chain.writable:
            self.violation("§5.7.2 control request without a device-writable response buffer")
            written = 0
        else:
            written = chain.write(self.ctx.memory, data)
            if written < len(data):
                self.violation("§5.7.6.7 response buffer too small", size=chain.writable_len, needed=len(data))
        self.complete(GPU_CONTROLQ, chain, written)

    # -- helpers ----------------------------------------------------------------------------------------------

    def _body(self, p: Pending) -> tuple[Any, ...]:
        assert p.hdr is not None
        st = protocol.body(p.hdr.type)
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

    # -- 2D commands (§5.7.6.8) -------------------------------------------------------------------------------

    def _get_display_info(self, p: Pending) -> Reply:
        parts = []
        for i in range(GPU_MAX_SCANOUTS):
            d = self.displays[i] if i < self.num_scanouts else None
            if d is not None and d.enabled:
                parts.append(protocol.DISPLAY_ONE.pack(d.x, d.y, d.width, d.height, 1, 0))
            else:
                parts.append(bytes(protocol.DISPLAY_ONE.size))
        return GpuResp.OK_DISPLAY_INFO, b"".join(parts)

    def _get_edid(self, p: Pending) -> Reply:
        sid, _ = self._body(p)
        if sid >= self.num_scanouts:
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "§5.7.6.8 GET_EDID scanout out of range", scanout=sid)
        d = self.displays[sid]
        block = edid.generate(d.width, d.height, serial=sid)
        payload = protocol.RESP_EDID_BODY.pack(GPU_EDID_BLOCK_SIZE, 0) + block + bytes(GPU_EDID_MAX - len(block))
        return GpuResp.OK_EDID, payload

    def _resource_create_2d(self, p: Pending) -> Reply:
        rid, fmt, width, height = self._body(p)
        self._new_id(rid)
        if not formats.is_valid(fmt):
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "§5.7.6.8 unknown resource format", format=fmt)
        self._check_dims(width, height)
        need = width * GPU_BYTES_PER_PIXEL * height
        self._reserve_hostmem(need)
        image = np.zeros((height, width * GPU_BYTES_PER_PIXEL), dtype=np.uint8)
        self.resources[rid] = Resource(rid, fmt, width, height, image=image, hostmem=need)
        self.hostmem += need
        return GpuResp.OK_NODATA, b""

    def _destroy(self, res: Resource) -> None:
        for sid in sorted(res.scanouts):
            self._unbind_scanout(sid)
        for cid in res.contexts:
            ctx = self.contexts.get(cid)
            if ctx is not None:
                ctx.resources.discard(res.id)
        self.hostmem -= res.hostmem
        del self.resources[res.id]

    def _resource_unref(self, p: Pending) -> Reply:
        rid, _ = self._body(p)
        self._destroy(self._resource(rid))
        return GpuResp.OK_NODATA, b""

    def _set_scanout(self, p: Pending) -> Reply:
        x, y, w, h, sid, rid = self._body(p)
        s = self._scanout_id(sid)
        if rid == 0:
            self._unbind_scanout(sid)  # §5.7.6.8 resource_id 0 disables the scanout
            return GpuResp.OK_NODATA, b""
        res = self._resource(rid)
        if res.blob is not None:
            raise GpuError(GpuResp.ERR_INVALID_RESOURCE_ID, "SET_SCANOUT of a blob (use SET_SCANOUT_BLOB)",
                           resource_id=rid)
        r = Rect(x, y, w, h)
        self._check_scanout_rect(r, res.width, res.height)
        self._unbind_scanout(sid)
        s.resource_id, s.rect, s.blob_fb = rid, r, None
        res.scanouts.add(sid)
        return GpuResp.OK_NODATA, b""

    def _resource_flush(self, p: Pending) -> Reply:
        x, y, w, h, rid, _ = self._body(p)
        res = self._resource(rid)
        r = Rect(x, y, w, h)
        if res.blob is not None:
            hits = [sid for sid in res.scanouts if _intersects(r, self.scanouts[sid].rect)]
            if not hits:
                raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "flush rectangle outside the blob's scanouts",
                               rect=str(r))
        else:
            self._check_rect_in(r, res.width, res.height, "flush")
            hits = [sid for sid in res.scanouts if _intersects(r, self.scanouts[sid].rect)]
        for sid in hits:
            self.scanouts[sid].flushes += 1
            self.scanouts[sid].last_flush = r
        return GpuResp.OK_NODATA, b""

    def _transfer_to_host_2d(self, p: Pending) -> Reply:
        x, y, w, h, offset, rid, _ = self._body(p)
        res = self._resource(rid)
        if res.blob is not None:
            raise GpuError(GpuResp.ERR_INVALID_RESOURCE_ID, "TRANSFER_TO_HOST_2D on a blob", resource_id=rid)
        if res.backing is None:
            raise GpuError(GpuResp.ERR_INVALID_RESOURCE_ID, "transfer to a resource without backing",
                           resource_id=rid)
        r = Rect(x, y, w, h)
        self._check_rect_in(r, res.width, res.height, "transfer")
        if res.image is None or w == 0 or h == 0:
            return GpuResp.OK_NODATA, b""  # virgl resource: nothing to model; empty rect: nothing to copy
        bpp, stride = GPU_BYTES_PER_PIXEL, res.stride
        row = w * bpp
        span = stride * (h - 1) + row
        if offset + span > res.backing_size:
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "transfer reads beyond the attached backing",
                           offset=offset, span=span, backing=res.backing_size)
        src = res.backing_bytes(self.ctx.memory, offset, span)
        if w == res.width:  # QEMU: full rows at x=0 are one contiguous copy
            res.image[y : y + h].reshape(-1)[:] = src
        else:  # row h comes from offset + stride * h (QEMU virtio_gpu_transfer_to_host_2d)
            res.image[y : y + h, x * bpp : x * bpp + row] = rows_view(src, h, row, stride)
        return GpuResp.OK_NODATA, b""

    def _attach_backing(self, p: Pending) -> Reply:
        rid, count = self._body(p)
        res = self._resource(rid)
        if res.backing is not None:
            raise GpuError(GpuResp.ERR_UNSPEC, "resource already has backing", resource_id=rid)
        entries = self._mem_entries(p, protocol.REQUEST_SIZE[GpuCmd.RESOURCE_ATTACH_BACKING], count)
        if res.blob is not None and sum(e.length for e in entries) < res.blob.size:
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "backing smaller than the blob size",
                           resource_id=rid)
        res.attach(entries)
        return GpuResp.OK_NODATA, b""

    def _detach_backing(self, p: Pending) -> Reply:
        rid, _ = self._body(p)
        self._resource(rid).detach()
        return GpuResp.OK_NODATA, b""

    def _get_capset_info(self, p: Pending) -> Reply:
        index, _ = self._body(p)
        raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "§5.7.6.8 capset_index MUST be less than num_capsets",
                       capset_index=index, num_capsets=self.num_capsets)

    def _get_capset(self, p: Pending) -> Reply:
        capset_id, version = self._body(p)
        raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "§5.7.6.8 GET_CAPSET for a capset the device lacks",
                       capset_id=capset_id, version=version)

    def _assign_uuid(self, p: Pending) -> Reply:
        rid, _ = self._body(p)
        res = self._resource(rid)
        if res.uuid is None:
            res.uuid = uuid.UUID(int=self.ctx.scheduler.rng.getrandbits(128), version=4)
        return GpuResp.OK_RESOURCE_UUID, res.uuid.bytes

    def _resource_create_blob(self, p: Pending) -> Reply:
        assert p.hdr is not None
        rid, blob_mem, blob_flags, count, blob_id, size = self._body(p)
        self._new_id(rid)
        virgl = blob_mem in (GpuBlobMem.HOST3D, GpuBlobMem.HOST3D_GUEST)
        if blob_mem != GpuBlobMem.GUEST and not (virgl and self.negotiated(GpuFeature.VIRGL)):
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "§5.7.6.8 blob_mem must be GUEST without VIRGL",
                           blob_mem=blob_mem)
        if size == 0:
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "blob size 0")
        if self.negotiated(GpuFeature.BLOB_ALIGNMENT) and size % self.blob_alignment:
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "§5.7.6.8 driver MUST align blob size to blob_alignment",
                           size=size, blob_alignment=self.blob_alignment)
        if virgl and p.hdr.ctx_id not in self.contexts:
            raise GpuError(GpuResp.ERR_INVALID_CONTEXT_ID, "§5.7.6.8 HOST3D blob MUST come from a context",
                           ctx_id=p.hdr.ctx_id)
        entries = (self._mem_entries(p, protocol.REQUEST_SIZE[GpuCmd.RESOURCE_CREATE_BLOB], count)
                   if count else None)
        if entries is not None and sum(e.length for e in entries) < size:
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "backing smaller than the blob size", size=size)
        hostmem = size if virgl else 0
        self._reserve_hostmem(hostmem)
        res = Resource(rid, 0, 0, 0, blob=BlobInfo(blob_mem, blob_flags, blob_id, size), virgl=virgl,
                       hostmem=hostmem)
        if entries is not None:
            res.attach(entries)
        if virgl:
            res.contexts.add(p.hdr.ctx_id)
            self.contexts[p.hdr.ctx_id].resources.add(rid)
        self.resources[rid] = res
        self.hostmem += hostmem
        return GpuResp.OK_NODATA, b""

    def _set_scanout_blob(self, p: Pending) -> Reply:
        x, y, w, h, sid, rid, fb_w, fb_h, fmt, _, s0, _s1, _s2, _s3, o0, _o1, _o2, _o3 = self._body(p)
        s = self._scanout_id(sid)
        if rid == 0:
            self._unbind_scanout(sid)
            return GpuResp.OK_NODATA, b""
        res = self._resource(rid)
        if res.blob is None:
            raise GpuError(GpuResp.ERR_INVALID_RESOURCE_ID, "SET_SCANOUT_BLOB of a non-blob resource",
                           resource_id=rid)
        if res.backing is None and not res.virgl:
            raise GpuError(GpuResp.ERR_INVALID_RESOURCE_ID, "blob has no backing storage", resource_id=rid)
        if not formats.is_valid(fmt):
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "§5.7.6.8 format MUST be a virtio_gpu_formats value",
                           format=fmt)
        bpp = GPU_BYTES_PER_PIXEL
        if s0 < fb_w * bpp or s0 > _INT_MAX:
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "blob stride too small or too large", stride=s0)
        offset = o0 + x * bpp + y * s0
        if offset > _U32 or offset + s0 * h > res.blob.size:
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "scanout rectangle beyond the blob",
                           offset=offset, size=res.blob.size)
        r = Rect(x, y, w, h)
        self._check_scanout_rect(r, fb_w, fb_h)
        self._unbind_scanout(sid)
        s.resource_id, s.rect = rid, r
        s.blob_fb = BlobFramebuffer(fmt, fb_w, fb_h, s0, offset)
        res.scanouts.add(sid)
        return GpuResp.OK_NODATA, b""

    # -- 3D commands (§5.7.6.9): bookkeeping only ------------------------------------------------------------

    def _context(self, cid: int) -> Context:
        ctx = self.contexts.get(cid)
        if ctx is None:
            raise GpuError(GpuResp.ERR_INVALID_CONTEXT_ID, "§5.7.6.9 unknown context id", ctx_id=cid)
        return ctx

    def _ctx_create(self, p: Pending) -> Reply:
        assert p.hdr is not None
        nlen, context_init, name = self._body(p)
        cid = p.hdr.ctx_id
        if cid == 0 or cid in self.contexts:
            raise GpuError(GpuResp.ERR_INVALID_CONTEXT_ID, "§5.7.6.9 context id 0 or already in use", ctx_id=cid)
        if nlen > GPU_CTX_DEBUG_NAME_MAX:
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "debug_name longer than 64 bytes", nlen=nlen)
        capset = context_init & GPU_CONTEXT_INIT_CAPSET_ID_MASK
        if capset and not self.negotiated(GpuFeature.CONTEXT_INIT):
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "§5.7.6.9 context_init capset without CONTEXT_INIT")
        if capset:  # the device MUST create a context for that capset: it has none
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "§5.7.6.9 context_init names an unknown capset",
                           capset=capset)
        self.contexts[cid] = Context(cid, name[:nlen].decode("latin-1"), context_init)
        return GpuResp.OK_NODATA, b""

    def _ctx_destroy(self, p: Pending) -> Reply:
        assert p.hdr is not None
        ctx = self._context(p.hdr.ctx_id)
        for rid in ctx.resources:
            res = self.resources.get(rid)
            if res is not None:
                res.contexts.discard(ctx.id)
        del self.contexts[ctx.id]
        return GpuResp.OK_NODATA, b""

    def _ctx_attach(self, p: Pending) -> Reply:
        assert p.hdr is not None
        rid, _ = self._body(p)
        ctx = self._context(p.hdr.ctx_id)
        res = self._resource(rid)
        ctx.resources.add(rid)
        res.contexts.add(ctx.id)
        return GpuResp.OK_NODATA, b""

    def _ctx_detach(self, p: Pending) -> Reply:
        assert p.hdr is not None
        rid, _ = self._body(p)
        ctx = self._context(p.hdr.ctx_id)
        res = self._resource(rid)
        ctx.resources.discard(rid)
        res.contexts.discard(ctx.id)
        return GpuResp.OK_NODATA, b""

    def _resource_create_3d(self, p: Pending) -> Reply:
        rid, target, fmt, bind_, width, height, depth, array_size, last_level, samples, flags, _ = self._body(p)
        self._new_id(rid)
        self._check_dims(width, height)
        depth_n = max(1, min(depth, GPU_MAX_DIMENSION))
        layers = max(1, min(array_size, GPU_MAX_DIMENSION))
        need = width * height * GPU_BYTES_PER_PIXEL * depth_n * layers
        self._reserve_hostmem(need)
        self.resources[rid] = Resource(
            rid, fmt, width, height, virgl=True, hostmem=need,
            params_3d=(target, fmt, bind_, width, height, depth, array_size, last_level, samples, flags),
        )
        self.hostmem += need
        return GpuResp.OK_NODATA, b""

    def _transfer_3d(self, p: Pending) -> Reply:
        rid = self._body(p)[7]
        res = self._resource(rid)
        if not res.virgl:
            raise GpuError(GpuResp.ERR_INVALID_RESOURCE_ID, "3D transfer on a 2D resource", resource_id=rid)
        return GpuResp.OK_NODATA, b""

    def _submit_3d(self, p: Pending) -> Reply:
        assert p.hdr is not None
        size, _ = self._body(p)
        ctx = self._context(p.hdr.ctx_id)
        have = len(p.raw) - protocol.REQUEST_SIZE[GpuCmd.SUBMIT_3D]
        if size > GPU_MAX_SUBMIT_SIZE or size > have:
            raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "SUBMIT_3D size beyond the command stream",
                           size=size, have=have)
        ctx.submits += 1
        ctx.submitted_bytes += size
        return GpuResp.OK_NODATA, b""

    # -- cursor queue (§5.7.6.10) -----------------------------------------------------------------------------

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
        """Copy the 64x64 cursor image out of resource ``rid`` (QEMU ``virtio_gpu_update_cursor_data``)."""
        res = self.resources.get(rid)
        n = GPU_CURSOR_SIZE
        if res is None:
            self.violation("§5.7.6.6 cursor resource does not exist", resource_id=rid)
            return
        if res.image is not None and res.width == n and res.height == n:
            c.image = formats.to_rgba(res.image.reshape(n, n, 4), res.format)
        elif res.blob is not None and res.backing and res.backing_size >= n * n * GPU_BYTES_PER_PIXEL:
            raw = res.backing_bytes(self.ctx.memory, 0, n * n * GPU_BYTES_PER_PIXEL, copy=True)
            c.image = formats.to_rgba(raw.reshape(n, n, 4), GpuFormat.B8G8R8A8_UNORM)
        else:
            self.violation("§5.7.6.6 cursor resource MUST be 64x64", resource_id=rid)


def _intersects(a: Rect, b: Rect) -> bool:
    return a.x < b.x + b.width and b.x < a.x + a.width and a.y < b.y + b.height and b.y < a.y + a.height


def _check_mode(width: int, height: int) -> None:
    if not (1 <= width <= GPU_EDID_MAX_MODE and 1 <= height <= GPU_EDID_MAX_MODE):
        raise ValueError(f"display mode {width}x{height}: each side must be 1..{GPU_EDID_MAX_MODE}")
