"""Guest virtio-gpu driver, modelled on Linux ``drivers/gpu/drm/virtio`` (virtio 1.4 §5.7).

Probe reads the config, sends GET_DISPLAY_INFO (and GET_EDID per scanout when VIRTIO_GPU_F_EDID is
negotiated), then gives every enabled scanout a framebuffer the way the Linux fbdev does: a B8G8R8X8 2D resource
backed by guest memory, attached, set as the scanout. Every command is one chain ``[request (readable),
response (writable)]`` (``virtio_gpu_queue_ctrl_buffer``); mem entries and 3D streams travel as a second
readable segment; cursor commands carry no response buffer. Responses are reclaimed in :meth:`vq_callback`.
Fenced commands get increasing fence ids; :meth:`GpuDriver.wait_fence` runs the machine until the fence is
signalled (completing fence N signals every fence <= N, like ``virtio_gpu_fence_event_process``).

Everything the driver created is on :attr:`GpuDriver.objects` (:class:`GpuObjectList`): the metadata an S4
restore would need to re-create it. Like Linux <= 7.2 the driver has no freeze/restore (``has_pm_hooks =
False``); a subclass can add them by overriding ``driver_freeze``/``driver_restore`` and replaying
``objects``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pyvirtio.clock import MS
from pyvirtio.errors import DriverError, DriverTimeout
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.spec import gpu_wire as protocol
from pyvirtio.spec.constants import (
    GPU_BYTES_PER_PIXEL,
    GPU_CONTROLQ,
    GPU_CTRL_HDR_SIZE,
    GPU_CTX_DEBUG_NAME_MAX,
    GPU_CURSOR_SIZE,
    GPU_CURSORQ,
    GPU_EDID_MAX,
    GPU_EVENT_DISPLAY,
    GPU_MAX_SCANOUTS,
    DeviceId,
    GpuBlobFlag,
    GpuBlobMem,
    GpuCfg,
    GpuCmd,
    GpuFeature,
    GpuFormat,
    GpuResp,
    bit,
)
from pyvirtio.spec.gpu_formats import from_rgba
from pyvirtio.virtqueue.driver import QueueFull

__all__ = [
    "BackingRange",
    "BlobParams",
    "CursorBinding",
    "DisplayMode",
    "GpuCommandError",
    "GpuDriver",
    "GpuObject",
    "GpuObjectList",
    "GpuRequest",
    "ObjectKind",
    "ScanoutBinding",
    "arrow_cursor",
]

RGBA = npt.NDArray[np.uint8]
Rect = tuple[int, int, int, int]  # x, y, width, height


class GpuCommandError(DriverError):
    """The device answered a command with an error response (Linux logs ``response 0x%x (command 0x%x)``)."""

    def __init__(self, cmd: int, resp: int) -> None:
        super().__init__(f"{protocol.command_name(cmd)} answered {protocol.command_name(resp)}")
        self.cmd = cmd
        self.resp = resp


# -- the object list ----------------------------------------------------------------------------------------------


class ObjectKind(Enum):
    TWO_D = "2d"
    BLOB = "blob"
    CURSOR = "cursor"
    VIRGL = "virgl"


@dataclass(frozen=True, slots=True)
class BackingRange:
    """One guest memory range of an object's backing (one ``virtio_gpu_mem_entry``)."""

    addr: int
    length: int


@dataclass(frozen=True, slots=True)
class BlobParams:
    blob_mem: int
    blob_flags: int
    blob_id: int
    size: int


@dataclass(frozen=True, slots=True)
class ScanoutBinding:
    """How an object is shown on a scanout: the rect, and for a blob the SET_SCANOUT_BLOB layout."""

    rect: Rect
    blob_layout: tuple[int, int, int, int, int] | None = None  # width, height, format, stride, offsets[0]


@dataclass(frozen=True, slots=True)
class CursorBinding:
    """An object used as the cursor image of a scanout."""

    x: int
    y: int
    hot_x: int
    hot_y: int


@dataclass
class GpuObject:
    """A host object this driver created, with what it takes to create it again (Linux ``virtio_gpu_object``)."""

    id: int
    kind: ObjectKind
    format: int = 0
    width: int = 0
    height: int = 0
    stride: int = 0
    backing: list[BackingRange] = field(default_factory=list)
    attached: bool = False  # backing attached on the host
    blob: BlobParams | None = None
    scanouts: set[int] = field(default_factory=set)  # scanouts showing it
    cursor_scanouts: set[int] = field(default_factory=set)  # scanouts using it as cursor image
    scanout_bindings: dict[int, ScanoutBinding] = field(default_factory=dict)  # how it is shown, per scanout
    cursor_bindings: dict[int, CursorBinding] = field(default_factory=dict)  # cursor position + hotspot
    uuid: uuid.UUID | None = None
    ctx_ids: set[int] = field(default_factory=set)
    params_3d: dict[str, int] | None = None

    @property
    def size(self) -> int:
        return sum(r.length for r in self.backing)

    @property
    def restorable(self) -> bool:
        """Whether guest-side metadata suffices to re-create it (virgl objects are not, as in Linux 7.3)."""
        return self.kind is not ObjectKind.VIRGL


class GpuObjectList:
    """Every live object the driver created, by resource id, in creation order."""

    def __init__(self) -> None:
        self._objects: dict[int, GpuObject] = {}

    def add(self, obj: GpuObject) -> None:
        if obj.id in self._objects:
            raise ValueError(f"object {obj.id} is already listed")
        self._objects[obj.id] = obj

    def remove(self, obj_id: int) -> GpuObject:
        return self._objects.pop(obj_id)

    def get(self, obj_id: int) -> GpuObject | None:
        return self._objects.get(obj_id)

    def __getitem__(self, obj_id: int) -> GpuObject:
        return self._objects[obj_id]

    def __contains__(self, obj_id: object) -> bool:
        return obj_id in self._objects

    def __iter__(self) -> Iterator[GpuObject]:
        return iter(list(self._objects.values()))

    def __len__(self) -> int:
        return len(self._objects)

    def ids(self) -> list[int]:
        return list(self._objects)

    def of_kind(self, kind: ObjectKind) -> list[GpuObject]:
        return [o for o in self._objects.values() if o.kind is kind]

    def restorable(self) -> list[GpuObject]:
        return [o for o in self._objects.values() if o.restorable]

    def clear(self) -> None:
        self._objects.clear()


# -- requests ---------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class GpuRequest:
    """One submitted command and, once ``done``, its response."""

    cmd: int
    queue: int
    block: int  # guest allocation: request, then response
    resp_addr: int
    resp_len: int
    fence_id: int | None = None
    extra: int | None = None  # guest allocation of the second readable segment
    on_done: Callable[[GpuRequest], None] | None = None
    done: bool = False
    resp_type: int = 0
    resp_flags: int = 0
    resp_fence_id: int = 0
    resp_ctx_id: int = 0
    resp_ring_idx: int = 0
    response: bytes = b""
    written: int = 0
    lost: bool = False  # reclaimed unanswered after a reset

    @property
    def ok(self) -> bool:
        return self.queue == GPU_CURSORQ or GpuResp.OK_NODATA <= self.resp_type < GpuResp.ERR_UNSPEC

    @property
    def payload(self) -> bytes:
        return self.response[GPU_CTRL_HDR_SIZE:]


@dataclass(frozen=True, slots=True)
class DisplayMode:
    """One ``virtio_gpu_display_one`` of GET_DISPLAY_INFO."""

    x: int
    y: int
    width: int
    height: int
    enabled: bool
    flags: int


# -- the driver -------------------------------------------------------------------------------------------------


class GpuDriver(VirtioDriver):
    """The virtio-gpu guest driver."""

    device_id = DeviceId.GPU
    has_pm_hooks: ClassVar[bool] = False  # Linux <= 7.2: no .freeze/.restore
    queue_sizes: ClassVar[tuple[int | None, ...]] = (None, None)
    #: Linux's fbdev format (DRM_FORMAT_XRGB8888)
    FB_FORMAT = GpuFormat.B8G8R8X8_UNORM
    #: Linux's cursor format (DRM_FORMAT_ARGB8888)
    CURSOR_FORMAT = GpuFormat.B8G8R8A8_UNORM
    TIMEOUT = 1000 * MS
    #: fallback mode when no display is enabled (§5.7.5 "MAY choose ... 1024x768 at display 0")
    FALLBACK_MODE = (1024, 768)

    def __init__(
        self,
        *args: Any,
        want_virgl: bool = False,
        want_context_init: bool = False,
        want_edid: bool = True,
        want_uuid: bool = True,
        want_blob: bool = True,
        want_blob_alignment: bool = True,
        create_framebuffers: bool = True,
        backing_chunk: int | None = None,
        **kw: Any,
    ) -> None:
        kw.setdefault("name", "gpu")
        super().__init__(*args, **kw)
        self.wanted_features = 0
        for on, feat in (
            (want_virgl, GpuFeature.VIRGL),
            (want_context_init, GpuFeature.CONTEXT_INIT),
            (want_edid, GpuFeature.EDID),
            (want_uuid, GpuFeature.RESOURCE_UUID),
            (want_blob, GpuFeature.RESOURCE_BLOB),
            (want_blob_alignment and want_blob, GpuFeature.BLOB_ALIGNMENT),
        ):
            if on:
                self.wanted_features |= bit(feat)
        self.create_framebuffers = create_framebuffers
        self.backing_chunk = backing_chunk
        self.num_scanouts = 0
        self.num_capsets = 0
        self.blob_alignment = 1
        self.display_info: list[DisplayMode] = []
        self.edids: dict[int, bytes] = {}
        self.objects = GpuObjectList()
        self.framebuffers: dict[int, GpuObject] = {}
        self.cursors: dict[int, GpuObject] = {}
        self.cursor_positions: dict[int, tuple[int, int]] = {}
        self.contexts: set[int] = set()
        self.errors: list[tuple[int, int]] = []  # (command, error response) pairs
        self.lost: list[GpuRequest] = []  # requests reclaimed unanswered by driver_freeze
        self.display_events_handled = 0
        self.last_fence = 0
        self._next_fence = 1
        self._next_resource = 1
        self._next_ctx = 1
        self._pending: set[GpuRequest] = set()

    # -- S4 image state ---------------------------------------------------------------------------------------

    def save_state(self) -> dict[str, object]:
        """The object list, framebuffer/cursor bindings and id counters (guest-kernel memory in Linux)."""
        return _save_gpu_state(self, super().save_state())

    def load_state(self, state: dict[str, object]) -> None:
        super().load_state(state)
        _load_gpu_state(self, state)

    # -- probe (Linux virtio_gpu_init) ------------------------------------------------------------------------

    def setup(self) -> None:
        """Read the config and create controlq + cursorq (before DRIVER_OK)."""
        t = self.t
        self.num_scanouts, self.num_capsets = t.config_read_consistent(
            [(GpuCfg.NUM_SCANOUTS, 4), (GpuCfg.NUM_CAPSETS, 4)]
        )
        if not 1 <= self.num_scanouts <= GPU_MAX_SCANOUTS:
            raise DriverError(f"{self.name}: num_scanouts {self.num_scanouts} out of 1..16")
        if self.has(GpuFeature.BLOB_ALIGNMENT):
            self.blob_alignment = max(1, t.config_read(GpuCfg.BLOB_ALIGNMENT, 4))
        self.find_vqs()

    def probe(self) -> None:
        super().probe()
        self.init_display()

    def init_display(self) -> None:
        """After DRIVER_OK: display info, EDIDs, one framebuffer per enabled scanout."""
        self.get_display_info()
        if self.has(GpuFeature.EDID):
            for i in range(self.num_scanouts):
                self.get_edid(i)
        if not self.create_framebuffers:
            return
        enabled = [m for m in self.display_info[: self.num_scanouts] if m.enabled]
        for i, m in enumerate(self.display_info[: self.num_scanouts]):
            if m.enabled:
                self.create_framebuffer(i, m.width, m.height)
        if not enabled:
            self.create_framebuffer(0, *self.FALLBACK_MODE)

    def create_framebuffer(self, scanout: int, width: int, height: int) -> GpuObject:
        """A B8G8R8X8 resource with guest backing, shown on ``scanout`` (the fbdev / initial modeset)."""
        fb = self.create_resource_2d(width, height, self.FB_FORMAT)
        self.set_scanout(scanout, fb)
        self.framebuffers[scanout] = fb
        self.resource_flush(fb, (0, 0, width, height), wait=True)
        return fb

    # -- submission -------------------------------------------------------------------------------------------

    def submit(
        self,
        cmd: int,
        body: bytes = b"",
        *,
        queue: int = GPU_CONTROLQ,
        fence: bool = False,
        ctx_id: int = 0,
        ring_idx: int | None = None,
        resp_len: int = GPU_CTRL_HDR_SIZE,
        extra: bytes | None = None,
        on_done: Callable[[GpuRequest], None] | None = None,
    ) -> GpuRequest:
        """Queue one command: ``[header+body, extra?]`` readable, a ``resp_len`` response writable."""
        flags = 0
        fence_id = 0
        if fence:
            flags |= protocol.FLAG_FENCE
            fence_id = self._next_fence
            self._next_fence += 1
        if ring_idx is not None:
            flags |= protocol.FLAG_INFO_RING_IDX
        req_bytes = protocol.HDR.pack(cmd, flags, fence_id, ctx_id, ring_idx or 0) + body
        if queue == GPU_CURSORQ:
            resp_len = 0
        block = self.alloc.alloc(len(req_bytes) + resp_len, 8)
        self.alloc.mem.write(block, req_bytes + bytes(resp_len))  # request, then a zeroed response buffer
        resp_addr = block + len(req_bytes)
        out = [(block, len(req_bytes))]
        extra_addr = None
        if extra:
            extra_addr = self.alloc.alloc_bytes(extra, 8)
            out.append((extra_addr, len(extra)))
        req = GpuRequest(cmd, queue, block, resp_addr, resp_len, fence_id if fence else None, extra_addr, on_done)
        ins = [(resp_addr, resp_len)] if resp_len else []
        self._add(queue, out, ins, req)
        self._pending.add(req)
        self.kick(queue)
        return req

    def _add(self, queue: int, out: list[tuple[int, int]], ins: list[tuple[int, int]], req: GpuRequest) -> None:
        """``virtqueue_add_sgs``; when the ring is full wait for the device to return buffers (Linux
        ``virtio_gpu_queue_ctrl_sgs`` waits on ``ctrlq.ack_queue``)."""
        vq = self.vqs[queue]
        while True:
            try:
                vq.add(out, ins, req)
                return
            except QueueFull:
                self.kick(queue)
                if not self.platform.run_until(lambda: vq.num_free >= len(out) + len(ins), self.TIMEOUT):
                    raise DriverTimeout(f"{self.name}: queue {queue} stayed full") from None

    def vq_callback(self, index: int) -> None:
        """Reclaim used buffers (Linux ``virtio_gpu_dequeue_ctrl_func`` / ``_cursor_func``)."""
        if index >= len(self.vqs):
            return
        for token, length in self.vqs[index].drain_used():
            assert isinstance(token, GpuRequest)
            self._complete(token, length)

    def _complete(self, req: GpuRequest, length: int) -> None:
        mem = self.alloc.mem
        req.written = length
        if req.resp_len:
            req.response = mem.read(req.resp_addr, min(length, req.resp_len))
        if len(req.response) >= GPU_CTRL_HDR_SIZE:
            h = protocol.CtrlHdr.unpack(req.response)
            req.resp_type, req.resp_flags = h.type, h.flags
            req.resp_fence_id, req.resp_ctx_id, req.resp_ring_idx = h.fence_id, h.ctx_id, h.ring_idx
            if h.flags & protocol.FLAG_FENCE:
                self.last_fence = max(self.last_fence, h.fence_id)
        elif req.queue == GPU_CONTROLQ:
            req.resp_type = GpuResp.ERR_UNSPEC  # no response header at all
        if not req.ok:
            self.errors.append((req.cmd, req.resp_type))
        self.alloc.free(req.block)
        if req.extra is not None:
            self.alloc.free(req.extra)
        req.done = True
        self._pending.discard(req)
        if req.on_done is not None:
            req.on_done(req)

    # -- waiting ----------------------------------------------------------------------------------------------

    def wait(self, req: GpuRequest, *, check: bool = True, timeout: int | None = None) -> GpuRequest:
        """Run the machine until ``req`` is answered; raise :class:`GpuCommandError` on an error response."""
        if not self.platform.run_until(lambda: req.done, timeout or self.TIMEOUT):
            raise DriverTimeout(f"{self.name}: no response to {protocol.command_name(req.cmd)}")
        if check and not req.ok:
            raise GpuCommandError(req.cmd, req.resp_type)
        return req

    def wait_fence(self, fence_id: int) -> None:
        """Wait until fence ``fence_id`` (and so every earlier one) is signalled."""
        if not self.platform.run_until(lambda: self.last_fence >= fence_id, self.TIMEOUT):
            raise DriverTimeout(f"{self.name}: fence {fence_id} not signalled")

    def probe_alive(self, timeout: int | None = None) -> bool:
        """Whether the device still answers the control queue (a GET_DISPLAY_INFO round trip)."""
        if not self.vqs:
            return False
        req = self.cmd_get_display_info()
        return self.platform.run_until(lambda: req.done, timeout or self.TIMEOUT) and req.ok

    def wait_idle(self) -> None:
        """Wait until every submitted command is answered."""
        if not self.platform.run_until(lambda: not self._pending, self.TIMEOUT):
            raise DriverTimeout(f"{self.name}: {len(self._pending)} commands still pending")

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _finish(self, req: GpuRequest, wait: bool) -> GpuRequest:
        return self.wait(req) if wait else req

    # -- display info / EDID (§5.7.6.8) -----------------------------------------------------------------------

    def _store_display_info(self, req: GpuRequest) -> None:
        if req.resp_type != GpuResp.OK_DISPLAY_INFO:
            return
        data = req.payload
        modes = []
        for i in range(GPU_MAX_SCANOUTS):
            x, y, w, h, enabled, flags = protocol.DISPLAY_ONE.unpack_from(data, i * protocol.DISPLAY_ONE.size)
            modes.append(DisplayMode(x, y, w, h, bool(enabled), flags))
        self.display_info = modes

    def _store_edid(self, scanout: int) -> Callable[[GpuRequest], None]:
        def store(req: GpuRequest) -> None:
            if req.resp_type == GpuResp.OK_EDID:
                size = protocol.RESP_EDID_BODY.unpack_from(req.payload)[0]
                self.edids[scanout] = req.payload[8 : 8 + min(size, GPU_EDID_MAX)]

        return store

    def cmd_get_display_info(self) -> GpuRequest:
        return self.submit(GpuCmd.GET_DISPLAY_INFO, resp_len=protocol.RESPONSE_SIZE[GpuResp.OK_DISPLAY_INFO],
                           on_done=self._store_display_info)

    def get_display_info(self) -> list[DisplayMode]:
        self.wait(self.cmd_get_display_info())
        return self.display_info

    def cmd_get_edid(self, scanout: int) -> GpuRequest:
        return self.submit(GpuCmd.GET_EDID, protocol.GET_EDID_BODY.pack(scanout, 0),
                           resp_len=protocol.RESPONSE_SIZE[GpuResp.OK_EDID], on_done=self._store_edid(scanout))

    def get_edid(self, scanout: int) -> bytes:
        self.wait(self.cmd_get_edid(scanout))
        return self.edids[scanout]

    # -- config change (§5.7.4.2) -----------------------------------------------------------------------------

    def config_changed(self) -> None:
        """Linux ``virtio_gpu_config_changed_work_func``: on EVENT_DISPLAY re-query, then write events_clear.

        Runs in interrupt context: the commands are queued, their answers update ``display_info``/``edids``.
        """
        events = self.t.config_read(GpuCfg.EVENTS_READ, 4)
        clear = 0
        if events & GPU_EVENT_DISPLAY:
            if self.num_scanouts and self.vqs:
                if self.has(GpuFeature.EDID):
                    for i in range(self.num_scanouts):
                        self.cmd_get_edid(i)
                self.cmd_get_display_info()
            clear |= GPU_EVENT_DISPLAY
            self.display_events_handled += 1
        self.t.config_write(GpuCfg.EVENTS_CLEAR, 4, clear)

    # -- resources --------------------------------------------------------------------------------------------

    def new_resource_id(self) -> int:
        rid = self._next_resource
        self._next_resource += 1
        return rid

    def _alloc_backing(self, size: int, align: int = 4096) -> list[BackingRange]:
        """Guest memory for a backing: one block, or ``backing_chunk``-sized blocks (a scatter list)."""
        chunk = self.backing_chunk or size
        out = []
        left = size
        while left > 0:
            n = min(chunk, left)
            out.append(BackingRange(self.alloc.alloc(n, align), n))
            left -= n
        return out

    def _free_backing(self, obj: GpuObject) -> None:
        for r in obj.backing:
            self.alloc.free(r.addr)
        obj.backing = []

    @staticmethod
    def _entries(backing: list[BackingRange]) -> bytes:
        return b"".join(protocol.MEM_ENTRY.pack(r.addr, r.length, 0) for r in backing)

    def create_resource_2d(
        self, width: int, height: int, fmt: int = GpuFormat.B8G8R8X8_UNORM, *,
        kind: ObjectKind = ObjectKind.TWO_D, attach: bool = True,
    ) -> GpuObject:
        """RESOURCE_CREATE_2D, then (``attach``) guest backing + RESOURCE_ATTACH_BACKING."""
        rid = self.new_resource_id()
        self.wait(self.submit(GpuCmd.RESOURCE_CREATE_2D, protocol.CREATE_2D_BODY.pack(rid, fmt, width, height),
                              fence=True))
        stride = width * GPU_BYTES_PER_PIXEL
        obj = GpuObject(rid, kind, fmt, width, height, stride)
        self.objects.add(obj)
        if attach:
            obj.backing = self._alloc_backing(stride * height)
            for r in obj.backing:
                self.alloc.mem.fill(r.addr, r.length, 0)
            self.attach_backing(obj)
        return obj

    def attach_backing(self, obj: GpuObject, *, wait: bool = True) -> GpuRequest:
        req = self.submit(GpuCmd.RESOURCE_ATTACH_BACKING,
                          protocol.ATTACH_BODY.pack(obj.id, len(obj.backing)), extra=self._entries(obj.backing))
        req = self._finish(req, wait)
        obj.attached = True
        return req

    def detach_backing(self, obj: GpuObject, *, wait: bool = True) -> GpuRequest:
        req = self._finish(self.submit(GpuCmd.RESOURCE_DETACH_BACKING, protocol.RESOURCE_ID_BODY.pack(obj.id, 0)),
                           wait)
        obj.attached = False
        return req

    def unref(self, obj: GpuObject, *, wait: bool = True) -> GpuRequest:
        """RESOURCE_UNREF; the guest backing is freed once the device answered (it detaches it)."""
        self.objects.remove(obj.id)
        for s in list(obj.scanouts):
            self.framebuffers.pop(s, None)
        for s in list(obj.cursor_scanouts):
            self.cursors.pop(s, None)

        def release(req: GpuRequest) -> None:
            self._free_backing(obj)

        return self._finish(self.submit(GpuCmd.RESOURCE_UNREF, protocol.RESOURCE_ID_BODY.pack(obj.id, 0),
                                        on_done=release), wait)

    def set_scanout(self, scanout: int, obj: GpuObject | None, rect: Rect | None = None) -> None:
        """SET_SCANOUT (``obj`` None disables the scanout)."""
        rid = obj.id if obj is not None else 0
        if rect is None:
            rect = (0, 0, obj.width, obj.height) if obj is not None else (0, 0, 0, 0)
        self.wait(self.submit(GpuCmd.SET_SCANOUT, protocol.SET_SCANOUT_BODY.pack(*rect, scanout, rid)))
        self._bind_scanout(scanout, obj, ScanoutBinding(rect))

    def _bind_scanout(self, scanout: int, obj: GpuObject | None, binding: ScanoutBinding) -> None:
        for o in self.objects:
            o.scanouts.discard(scanout)
            o.scanout_bindings.pop(scanout, None)
        if obj is not None:
            obj.scanouts.add(scanout)
            obj.scanout_bindings[scanout] = binding

    def transfer_to_host_2d(self, obj: GpuObject, rect: Rect, offset: int | None = None, *,
                            fence: bool = True, wait: bool = False) -> GpuRequest:
        """TRANSFER_TO_HOST_2D of ``rect``; the source offset defaults to y*stride + x*bpp (Linux)."""
        x, y, _, _ = rect
        if offset is None:
            offset = y * obj.stride + x * GPU_BYTES_PER_PIXEL
        req = self.submit(GpuCmd.TRANSFER_TO_HOST_2D, protocol.TRANSFER_2D_BODY.pack(*rect, offset, obj.id, 0),
                          fence=fence)
        return self._finish(req, wait)

    def resource_flush(self, obj: GpuObject, rect: Rect, *, fence: bool = True, wait: bool = False) -> GpuRequest:
        req = self.submit(GpuCmd.RESOURCE_FLUSH, protocol.FLUSH_BODY.pack(*rect, obj.id, 0), fence=fence)
        return self._finish(req, wait)

    def write_pixels(self, obj: GpuObject, rgba: RGBA, x: int = 0, y: int = 0) -> None:
        """Write an RGBA image into ``obj``'s guest backing at (x, y), converted to its format."""
        img = np.asarray(rgba, dtype=np.uint8)
        h, w = img.shape[:2]
        if img.shape != (h, w, 4) or x < 0 or y < 0 or x + w > obj.width or y + h > obj.height:
            raise ValueError(f"image {img.shape} at ({x},{y}) does not fit {obj.width}x{obj.height}")
        packed = from_rgba(img, obj.format)
        bpp = GPU_BYTES_PER_PIXEL
        if w == obj.width:
            self._write_backing(obj, y * obj.stride, packed.reshape(-1))
            return
        for row in range(h):
            self._write_backing(obj, (y + row) * obj.stride + x * bpp, packed[row].reshape(-1))

    def _write_backing(self, obj: GpuObject, offset: int, data: npt.NDArray[np.uint8]) -> None:
        mem = self.alloc.mem
        pos = 0
        n = data.size
        base = 0
        for r in obj.backing:
            if pos >= n:
                break
            if offset + pos < base + r.length:
                rel = offset + pos - base
                take = min(r.length - rel, n - pos)
                dst = np.frombuffer(mem.view(r.addr + rel, take), dtype=np.uint8)
                dst[:] = data[pos : pos + take]
                pos += take
            base += r.length
        if pos < n:
            raise ValueError("write beyond the object's backing")

    def draw(self, scanout: int, image: RGBA | Callable[[int, int], RGBA], at: tuple[int, int] = (0, 0), *,
             timeout: int | None = None) -> None:
        """Draw on ``scanout``'s framebuffer: pixels into guest memory, TRANSFER_TO_HOST_2D, then a fenced
        RESOURCE_FLUSH, and wait for that fence (Linux ``virtio_gpu_primary_plane_update``: the transfer is not
        fenced; commands complete in order). ``image`` is RGBA ``(h, w, 4)`` or ``f(width, height)``."""
        fb = self.framebuffers.get(scanout)
        if fb is None:
            raise DriverError(f"{self.name}: scanout {scanout} has no framebuffer")
        img = image(fb.width, fb.height) if callable(image) else image
        img = np.asarray(img, dtype=np.uint8)
        x, y = at
        self.write_pixels(fb, img, x, y)
        rect = (x, y, img.shape[1], img.shape[0])
        self.transfer_to_host_2d(fb, rect, fence=False)
        flush = self.resource_flush(fb, rect)
        self.wait(flush, timeout=timeout)

    # -- cursor (§5.7.6.6, §5.7.6.10) -------------------------------------------------------------------------

    def _cursor_cmd(self, cmd: int, scanout: int, x: int, y: int, rid: int, hot_x: int, hot_y: int) -> GpuRequest:
        body = protocol.CURSOR_BODY.pack(scanout, x & 0xFFFFFFFF, y & 0xFFFFFFFF, 0, rid, hot_x, hot_y, 0)
        return self.submit(cmd, body, queue=GPU_CURSORQ)

    def set_cursor(self, scanout: int, x: int = 0, y: int = 0, *, image: RGBA | None = None,
                   hot: tuple[int, int] = (0, 0)) -> GpuObject:
        """Create/fill the 64x64 cursor resource (fenced transfer, waited for), then UPDATE_CURSOR at (x, y).

        ``image`` is 64x64 RGBA; default :func:`arrow_cursor`.
        """
        rgba = arrow_cursor() if image is None else image
        obj = self.cursors.get(scanout)
        if obj is None:
            obj = self.create_resource_2d(GPU_CURSOR_SIZE, GPU_CURSOR_SIZE, self.CURSOR_FORMAT,
                                          kind=ObjectKind.CURSOR)
            self.cursors[scanout] = obj
        self.write_pixels(obj, rgba)
        self.transfer_to_host_2d(obj, (0, 0, GPU_CURSOR_SIZE, GPU_CURSOR_SIZE), wait=True)
        self.wait(self._cursor_cmd(GpuCmd.UPDATE_CURSOR, scanout, x, y, obj.id, *hot))
        self.cursor_positions[scanout] = (x, y)
        self._unbind_cursor(scanout)
        obj.cursor_scanouts.add(scanout)
        obj.cursor_bindings[scanout] = CursorBinding(x, y, *hot)
        return obj

    def _unbind_cursor(self, scanout: int) -> None:
        for o in self.objects:
            o.cursor_scanouts.discard(scanout)
            o.cursor_bindings.pop(scanout, None)

    def move_cursor(self, scanout: int, x: int, y: int) -> None:
        obj = self.cursors.get(scanout)
        self.wait(self._cursor_cmd(GpuCmd.MOVE_CURSOR, scanout, x, y, obj.id if obj else 0, 0, 0))
        self.cursor_positions[scanout] = (x, y)
        b = obj.cursor_bindings.get(scanout) if obj is not None else None
        if obj is not None and b is not None:
            obj.cursor_bindings[scanout] = CursorBinding(x, y, b.hot_x, b.hot_y)

    def cursor_position(self, scanout: int = 0) -> tuple[int, int]:
        """Where the driver last put the cursor of ``scanout`` (its hotspot)."""
        return self.cursor_positions.get(scanout, (0, 0))

    def hide_cursor(self, scanout: int) -> None:
        self.wait(self._cursor_cmd(GpuCmd.UPDATE_CURSOR, scanout, 0, 0, 0, 0, 0))
        self._unbind_cursor(scanout)

    # -- blobs (§5.7.6.8 RESOURCE_CREATE_BLOB / SET_SCANOUT_BLOB) ---------------------------------------------

    def create_blob(self, size: int, *, blob_mem: int = GpuBlobMem.GUEST,
                    blob_flags: int = GpuBlobFlag.USE_SHAREABLE, blob_id: int = 0, ctx_id: int = 0) -> GpuObject:
        """RESOURCE_CREATE_BLOB; a GUEST blob gets guest memory (size rounded up to blob_alignment)."""
        align = self.blob_alignment if self.has(GpuFeature.BLOB_ALIGNMENT) else 1
        size = -(-size // align) * align
        rid = self.new_resource_id()
        guest = blob_mem != GpuBlobMem.HOST3D
        backing = self._alloc_backing(size, max(4096, align)) if guest else []
        for r in backing:
            self.alloc.mem.fill(r.addr, r.length, 0)
        body = protocol.CREATE_BLOB_BODY.pack(rid, blob_mem, blob_flags, len(backing), blob_id, size)
        req = self.submit(GpuCmd.RESOURCE_CREATE_BLOB, body, ctx_id=ctx_id, fence=True,
                          extra=self._entries(backing) or None)
        try:
            self.wait(req)
        except GpuCommandError:
            for r in backing:
                self.alloc.free(r.addr)
            raise
        kind = ObjectKind.BLOB if blob_mem == GpuBlobMem.GUEST else ObjectKind.VIRGL
        obj = GpuObject(rid, kind, backing=backing, attached=bool(backing),
                        blob=BlobParams(blob_mem, blob_flags, blob_id, size))
        if ctx_id:
            obj.ctx_ids.add(ctx_id)
        self.objects.add(obj)
        return obj

    def set_scanout_blob(self, scanout: int, obj: GpuObject, width: int, height: int, fmt: int, stride: int,
                         offset: int = 0, rect: Rect | None = None) -> None:
        rect = rect or (0, 0, width, height)
        body = protocol.SET_SCANOUT_BLOB_BODY.pack(*rect, scanout, obj.id, width, height, fmt, 0,
                                                   stride, 0, 0, 0, offset, 0, 0, 0)
        self.wait(self.submit(GpuCmd.SET_SCANOUT_BLOB, body))
        obj.format, obj.width, obj.height, obj.stride = fmt, width, height, stride
        self._bind_scanout(scanout, obj, ScanoutBinding(rect, (width, height, fmt, stride, offset)))

    def show_blob(self, scanout: int, rgba: RGBA, fmt: int = GpuFormat.B8G8R8X8_UNORM) -> GpuObject:
        """Put an RGBA image on ``scanout`` through a guest blob: create, fill, SET_SCANOUT_BLOB, flush."""
        img = np.asarray(rgba, dtype=np.uint8)
        h, w = img.shape[:2]
        stride = w * GPU_BYTES_PER_PIXEL
        obj = self.create_blob(stride * h)
        obj.format, obj.width, obj.height, obj.stride = fmt, w, h, stride
        self.write_pixels(obj, img)
        self.set_scanout_blob(scanout, obj, w, h, fmt, stride)
        self.resource_flush(obj, (0, 0, w, h), wait=True)
        return obj

    def assign_uuid(self, obj: GpuObject) -> uuid.UUID:
        req = self.wait(self.submit(GpuCmd.RESOURCE_ASSIGN_UUID, protocol.RESOURCE_ID_BODY.pack(obj.id, 0),
                                    resp_len=protocol.RESPONSE_SIZE[GpuResp.OK_RESOURCE_UUID]))
        obj.uuid = uuid.UUID(bytes=req.payload[:16])
        return obj.uuid

    # -- virgl (§5.7.6.9): only what power management needs to model -----------------------------------------

    def ctx_create(self, name: str = "", context_init: int = 0) -> int:
        cid = self._next_ctx
        self._next_ctx += 1
        raw = name.encode()[:GPU_CTX_DEBUG_NAME_MAX]
        self.wait(self.submit(GpuCmd.CTX_CREATE, protocol.CTX_CREATE_BODY.pack(len(raw), context_init, raw),
                              ctx_id=cid))
        self.contexts.add(cid)
        return cid

    def ctx_destroy(self, ctx_id: int) -> None:
        self.wait(self.submit(GpuCmd.CTX_DESTROY, ctx_id=ctx_id))
        self.contexts.discard(ctx_id)
        for o in self.objects:
            o.ctx_ids.discard(ctx_id)

    def ctx_attach_resource(self, ctx_id: int, obj: GpuObject) -> None:
        self.wait(self.submit(GpuCmd.CTX_ATTACH_RESOURCE, protocol.RESOURCE_ID_BODY.pack(obj.id, 0), ctx_id=ctx_id))
        obj.ctx_ids.add(ctx_id)

    def ctx_detach_resource(self, ctx_id: int, obj: GpuObject) -> None:
        self.wait(self.submit(GpuCmd.CTX_DETACH_RESOURCE, protocol.RESOURCE_ID_BODY.pack(obj.id, 0), ctx_id=ctx_id))
        obj.ctx_ids.discard(ctx_id)

    def create_resource_3d(self, width: int, height: int, *, target: int = 2, fmt: int = GpuFormat.B8G8R8A8_UNORM,
                           bind: int = 0, depth: int = 1, array_size: int = 1, last_level: int = 0,
                           nr_samples: int = 0, flags: int = 0, ctx_id: int = 0) -> GpuObject:
        rid = self.new_resource_id()
        params = {"target": target, "format": fmt, "bind": bind, "width": width, "height": height, "depth": depth,
                  "array_size": array_size, "last_level": last_level, "nr_samples": nr_samples, "flags": flags}
        body = protocol.CREATE_3D_BODY.pack(rid, *params.values(), 0)
        self.wait(self.submit(GpuCmd.RESOURCE_CREATE_3D, body, ctx_id=ctx_id, fence=True))
        obj = GpuObject(rid, ObjectKind.VIRGL, fmt, width, height, params_3d=params)
        self.objects.add(obj)
        return obj

    def submit_3d(self, ctx_id: int, stream: bytes, *, fence: bool = True, ring_idx: int | None = None,
                  wait: bool = True) -> GpuRequest:
        req = self.submit(GpuCmd.SUBMIT_3D, protocol.SUBMIT_BODY.pack(len(stream), 0), ctx_id=ctx_id,
                          fence=fence, ring_idx=ring_idx, extra=stream or None)
        return self._finish(req, wait)



    # -- building blocks for freeze/restore (a subclass with has_pm_hooks = True uses them) -------------------

    def driver_freeze(self) -> None:
        """``.freeze`` recipe: reset, reclaim every request still in a queue (guest memory freed, request marked
        ``lost``), delete the queues. Host objects are gone after the reset; ``objects`` keeps their metadata."""
        self.t.reset()
        for vq in self.vqs:
            for token in vq.detach_unused():
                if isinstance(token, GpuRequest):
                    self._abandon(token)
        self.del_vqs()
        for obj in self.objects:
            obj.attached = False

    def _abandon(self, req: GpuRequest) -> None:
        self.alloc.free(req.block)
        if req.extra is not None:
            self.alloc.free(req.extra)
        req.lost = req.done = True
        self._pending.discard(req)
        self.lost.append(req)

    def driver_restore(self) -> None:
        """``.restore`` default: re-read the config and re-create the queues. A restoring subclass then calls
        :meth:`device_ready`, :meth:`recreate` for each restorable object and :meth:`replay_modeset`."""
        self.setup()

    def recreate(self, obj: GpuObject) -> None:
        """Create ``obj`` on the host again from its metadata: same id, format, size and guest backing
        (Linux 7.3 ``virtio_gpu_object_restore_all``). Virgl objects cannot be: ValueError."""
        if not obj.restorable:
            raise ValueError(f"object {obj.id} ({obj.kind.value}) cannot be re-created from guest metadata")
        if obj.blob is not None:
            b = obj.blob
            body = protocol.CREATE_BLOB_BODY.pack(obj.id, b.blob_mem, b.blob_flags, len(obj.backing), b.blob_id,
                                                  b.size)
            self.wait(self.submit(GpuCmd.RESOURCE_CREATE_BLOB, body, fence=True,
                                  extra=self._entries(obj.backing) or None))
        else:
            body = protocol.CREATE_2D_BODY.pack(obj.id, obj.format, obj.width, obj.height)
            self.wait(self.submit(GpuCmd.RESOURCE_CREATE_2D, body, fence=True))
            if obj.backing:
                self.attach_backing(obj)
        obj.attached = bool(obj.backing)

    def replay_modeset(self) -> None:
        """Show everything again (``drm_mode_config_helper_resume``): every scanout binding with a full
        transfer + flush, every cursor with its image and position."""
        for obj in self.objects:
            for sid in sorted(obj.scanouts):
                b = obj.scanout_bindings.get(sid) or ScanoutBinding((0, 0, obj.width, obj.height))
                if b.blob_layout is not None:
                    w, h, fmt, stride, offset = b.blob_layout
                    self.set_scanout_blob(sid, obj, w, h, fmt, stride, offset, b.rect)
                else:
                    self.set_scanout(sid, obj, b.rect)
                    self.transfer_to_host_2d(obj, (0, 0, obj.width, obj.height))
                self.resource_flush(obj, b.rect, wait=True)
            for sid in sorted(obj.cursor_scanouts):
                c = obj.cursor_bindings.get(sid) or CursorBinding(*self.cursor_position(sid), 0, 0)
                self.transfer_to_host_2d(obj, (0, 0, obj.width, obj.height), wait=True)
                self.wait(self._cursor_cmd(GpuCmd.UPDATE_CURSOR, sid, c.x, c.y, obj.id, c.hot_x, c.hot_y))


def arrow_cursor() -> RGBA:
    """A 64x64 RGBA arrow: white, black outline, transparent elsewhere; hotspot (0, 0)."""
    img = np.zeros((GPU_CURSOR_SIZE, GPU_CURSOR_SIZE, 4), dtype=np.uint8)
    size = 20
    yy, xx = np.mgrid[0:GPU_CURSOR_SIZE, 0:GPU_CURSOR_SIZE]
    inside = (xx <= yy) & (yy < size)
    edge = inside & ((xx == 0) | (xx == yy) | (yy == size - 1))
    img[inside] = (255, 255, 255, 255)
    img[edge] = (0, 0, 0, 255)
    return img


# -- guest-side state for the S4 image (object list + bindings; pixels stay in guest RAM) -----------------


def _obj_to_json(o: GpuObject) -> dict[str, Any]:
    d = asdict(o)
    d["kind"] = o.kind.value
    d["scanouts"] = sorted(o.scanouts)
    d["cursor_scanouts"] = sorted(o.cursor_scanouts)
    d["ctx_ids"] = sorted(o.ctx_ids)
    d["uuid"] = str(o.uuid) if o.uuid else None
    return d


def _obj_from_json(d: dict[str, Any]) -> GpuObject:
    try:
        return GpuObject(
            id=int(d["id"]), kind=ObjectKind(d["kind"]), format=int(d["format"]), width=int(d["width"]),
            height=int(d["height"]), stride=int(d["stride"]),
            backing=[BackingRange(int(r["addr"]), int(r["length"])) for r in d["backing"]],
            attached=bool(d["attached"]), blob=BlobParams(**d["blob"]) if d["blob"] else None,
            scanouts=set(d["scanouts"]), cursor_scanouts=set(d["cursor_scanouts"]),
            uuid=uuid.UUID(d["uuid"]) if d["uuid"] else None, ctx_ids=set(d["ctx_ids"]),
            params_3d=d.get("params_3d"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DriverError(f"malformed gpu object in image: {e}") from None


def _save_gpu_state(drv: GpuDriver, base: dict[str, object]) -> dict[str, object]:
    base.update({
        "objects": [_obj_to_json(o) for o in drv.objects],
        "framebuffers": {str(k): v.id for k, v in drv.framebuffers.items()},
        "cursors": {str(k): v.id for k, v in drv.cursors.items()},
        "cursor_positions": {str(k): list(v) for k, v in drv.cursor_positions.items()},
        "next_resource": drv._next_resource,
        "next_fence": drv._next_fence,
        "num_scanouts": drv.num_scanouts,
    })
    return base


def _load_gpu_state(drv: GpuDriver, state: dict[str, object]) -> None:
    try:
        objs = [_obj_from_json(d) for d in state["objects"]]  # type: ignore[attr-defined]
        by_id = {o.id: o for o in objs}
        drv.objects.clear()
        for o in objs:
            drv.objects.add(o)
        drv.framebuffers = {int(k): by_id[v] for k, v in state["framebuffers"].items()}  # type: ignore[attr-defined]
        drv.cursors = {int(k): by_id[v] for k, v in state["cursors"].items()}  # type: ignore[attr-defined]
        drv.cursor_positions = {int(k): (int(v[0]), int(v[1]))
                                for k, v in state["cursor_positions"].items()}  # type: ignore[attr-defined]
        drv._next_resource = int(state["next_resource"])  # type: ignore[call-overload]
        drv._next_fence = int(state["next_fence"])  # type: ignore[call-overload]
        drv.num_scanouts = int(state["num_scanouts"])  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DriverError(f"{drv.name}: malformed gpu driver state in image ({e})") from None
