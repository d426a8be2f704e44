"""Guest virtio-gpu driver commands, modelled on Linux ``drivers/gpu/drm/virtio`` (virtio 1.4 §5.7).

Probe reads the config, sends GET_DISPLAY_INFO (and GET_EDID per scanout when VIRTIO_GPU_F_EDID is
negotiated), then gives every enabled scanout a framebuffer the way the Linux fbdev does: a B8G8R8X8 2D resource
backed by guest memory, attached, set as the scanout (§5.7.5, §5.7.6.1). Then: 2D resources and transfers
(§5.7.6.2), blobs (§5.7.6.8), the cursor (§5.7.6.6, §5.7.6.10) and the virgl commands power management needs to
model (§5.7.6.9). Requests, responses and fences are :mod:`pyvirtio.guest.gpu.requests`.

Everything the driver created is on :attr:`GpuDriver.objects` (:class:`~pyvirtio.guest.gpu.objects.GpuObjectList`)
with its scanout and cursor bindings: the one record of what is shown where. ``framebuffers``, ``cursors`` and
``cursor_positions`` are read-only views of it. The same record drives the one replay after a reset
(:meth:`GpuDriver.recreate`, :meth:`GpuDriver.replay_modeset`) and the S4 image state
(:class:`~pyvirtio.guest.gpu.objects.GpuDriverState`). Like Linux <= 7.2 this class has no freeze/restore
(``has_pm_hooks = False``); :mod:`pyvirtio.guest.gpu.flavours` adds them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from pyvirtio.errors import DriverError, InvalidStateError
from pyvirtio.guest.driver import Action
from pyvirtio.guest.gpu.objects import (
    BackingRange,
    BlobLayout,
    BlobParams,
    CursorBinding,
    GpuDriverState,
    GpuObject,
    GpuObjectList,
    ObjectKind,
    Rect,
    Resource3dParams,
    ScanoutBinding,
)
from pyvirtio.guest.gpu.requests import GpuCommandError, GpuRequest, GpuRequests
from pyvirtio.spec import gpu_wire as protocol
from pyvirtio.spec.constants import (
    GPU_BYTES_PER_PIXEL,
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

__all__ = [
    "BackingRange",
    "BlobLayout",
    "BlobParams",
    "CursorBinding",
    "DisplayMode",
    "GpuCommandError",
    "GpuDriver",
    "GpuDriverState",
    "GpuObject",
    "GpuObjectList",
    "GpuRequest",
    "ObjectKind",
    "Resource3dParams",
    "ScanoutBinding",
    "arrow_cursor",
]

RGBA = npt.NDArray[np.uint8]

#: The key of the GPU part in :meth:`GpuDriver.save_state` (the rest is the virtio core's).
STATE_KEY = "gpu"


@dataclass(frozen=True, slots=True)
class DisplayMode:
    """One ``virtio_gpu_display_one`` of GET_DISPLAY_INFO (§5.7.6.8)."""

    x: int
    y: int
    width: int
    height: int
    enabled: bool
    flags: int


class GpuDriver(GpuRequests):
    """The virtio-gpu guest driver."""

    device_id = DeviceId.GPU
    #: §5.7.3: CONTEXT_INIT requires VIRGL, BLOB_ALIGNMENT requires RESOURCE_BLOB (never one without the other,
    #: §2.2.1)
    FEATURE_REQUIRES: ClassVar[Mapping[int, int]] = MappingProxyType({
        GpuFeature.CONTEXT_INIT: bit(GpuFeature.VIRGL),
        GpuFeature.BLOB_ALIGNMENT: bit(GpuFeature.RESOURCE_BLOB),
    })
    has_pm_hooks: ClassVar[bool] = False  # Linux <= 7.2: no .freeze/.restore
    queue_sizes: ClassVar[tuple[int | None, ...]] = (None, None)
    #: Whether this driver reads feature bit 5 as the 2023 proposal's FREEZING: then there is no blob_alignment
    #: config field to read (bit 5 is BLOB_ALIGNMENT in the spec).
    BIT5_IS_FREEZING: ClassVar[bool] = False
    #: Linux's fbdev format (DRM_FORMAT_XRGB8888)
    FB_FORMAT = GpuFormat.B8G8R8X8_UNORM
    #: Linux's cursor format (DRM_FORMAT_ARGB8888)
    CURSOR_FORMAT = GpuFormat.B8G8R8A8_UNORM
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
        self.contexts: set[int] = set()
        #: an S4 is in progress: set by a flavour's PM notifier (s4-replay), kept in the image
        self.hibernation = False
        self.display_events_handled = 0
        self._next_resource = 1
        self._next_ctx = 1

    # -- views of the object bindings -------------------------------------------------------------------------

    @property
    def framebuffers(self) -> Mapping[int, GpuObject]:
        """Scanout -> the object it shows (read-only view of the object bindings)."""
        return MappingProxyType(self.objects.scanout_map())

    @property
    def cursors(self) -> Mapping[int, GpuObject]:
        """Scanout -> its cursor object (read-only view of the object bindings)."""
        return MappingProxyType(self.objects.cursor_map())

    @property
    def cursor_positions(self) -> Mapping[int, tuple[int, int]]:
        """Scanout -> where its cursor is (read-only view of the object bindings)."""
        cursors = self.objects.cursor_map()
        return MappingProxyType({s: (o.cursor_bindings[s].x, o.cursor_bindings[s].y) for s, o in cursors.items()})

    def feature_requires(self) -> Mapping[int, int]:
        """:attr:`FEATURE_REQUIRES`, except for a driver that reads bit 5 as the 2023 FREEZING bit (no
        dependency)."""
        if self.BIT5_IS_FREEZING:
            return {f: need for f, need in self.FEATURE_REQUIRES.items() if f != GpuFeature.BLOB_ALIGNMENT}
        return self.FEATURE_REQUIRES

    @property
    def has_blob_alignment(self) -> bool:
        """VIRTIO_GPU_F_BLOB_ALIGNMENT negotiated and read as such (not as the 2023 FREEZING bit)."""
        return self.has(GpuFeature.BLOB_ALIGNMENT) and not self.BIT5_IS_FREEZING

    # -- S4 image state ---------------------------------------------------------------------------------------

    def snapshot(self) -> GpuDriverState:
        """The driver's guest-side state: object list with bindings, contexts, id counters, hibernation flag."""
        return GpuDriverState(
            num_scanouts=self.num_scanouts, next_resource=self._next_resource, next_fence=self._next_fence,
            next_ctx=self._next_ctx, contexts=sorted(self.contexts), hibernation=self.hibernation,
            objects=list(self.objects),
        )

    def apply_state(self, state: GpuDriverState) -> None:
        """Become the driver ``state`` describes (the image kernel's copy of the driver)."""
        self.objects.clear()
        for o in state.objects:
            self.objects.add(o)
        self.num_scanouts = state.num_scanouts
        self._next_resource, self._next_fence, self._next_ctx = state.next_resource, state.next_fence, state.next_ctx
        self.contexts = set(state.contexts)
        self.hibernation = state.hibernation

    def save_state(self) -> dict[str, object]:
        """The virtio core's state plus, under ``"gpu"``, :meth:`snapshot` as plain data (guest-kernel memory in
        Linux; the pixels stay in guest RAM)."""
        state = super().save_state()
        state[STATE_KEY] = self.snapshot().to_dict()
        return state

    def load_state(self, state: dict[str, object]) -> None:
        """Re-create the driver from :meth:`save_state` output, validated (:class:`InvalidStateError` names the
        first bad field; every backing range must lie in guest RAM)."""
        if STATE_KEY not in state:
            raise InvalidStateError(f"gpu driver state: missing field {STATE_KEY!r}")
        gpu = GpuDriverState.from_dict(state[STATE_KEY], memory=self.alloc.mem)
        super().load_state({k: v for k, v in state.items() if k != STATE_KEY})
        self.apply_state(gpu)

    # -- probe (Linux virtio_gpu_init) ------------------------------------------------------------------------

    def setup(self) -> None:
        """Create controlq + cursorq, then read the config (§5.7.4: num_scanouts, num_capsets, blob_alignment when
        negotiated), before DRIVER_OK — Linux 6.12's ``virtio_gpu_init`` order, as seen through UML."""
        t = self.t
        self.find_vqs()
        # spec: drv:config-space#1
        self.num_scanouts, self.num_capsets = t.config_read_consistent(
            [(GpuCfg.NUM_SCANOUTS, 4), (GpuCfg.NUM_CAPSETS, 4)]
        )
        if not 1 <= self.num_scanouts <= GPU_MAX_SCANOUTS:
            raise DriverError(f"{self.name}: num_scanouts {self.num_scanouts} out of 1..16")
        # spec: drv:config-space#2
        if self.has_blob_alignment:
            self.blob_alignment = max(1, t.config_read(GpuCfg.BLOB_ALIGNMENT, 4))

    def probe(self) -> None:
        """The virtio core's probe, then :meth:`init_display`."""
        super().probe()
        self.init_display()

    def init_display(self) -> None:
        """After DRIVER_OK (§5.7.5): display info, EDIDs, one framebuffer per enabled scanout (or the fallback
        mode on scanout 0)."""
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
        """A B8G8R8X8 resource with guest backing, shown on ``scanout`` (§5.7.6.1: the fbdev / initial
        modeset)."""
        fb = self.create_resource_2d(width, height, self.FB_FORMAT)
        self.set_scanout(scanout, fb)
        self.resource_flush(fb, (0, 0, width, height), wait=True)
        return fb

    def probe_alive(self, timeout: int | None = None) -> bool:
        """Whether the device still answers the control queue (a GET_DISPLAY_INFO round trip)."""
        if not self.vqs:
            return False
        try:
            req = self.wait(self.cmd_get_display_info(), check=False, timeout=timeout)
        except DriverError:
            return False
        return req.ok

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
        """Queue GET_DISPLAY_INFO (§5.7.6.8); its answer updates :attr:`display_info`."""
        return self.submit(GpuCmd.GET_DISPLAY_INFO, resp_len=protocol.RESPONSE_SIZE[GpuResp.OK_DISPLAY_INFO],
                           on_done=self._store_display_info)

    def get_display_info(self) -> list[DisplayMode]:
        """GET_DISPLAY_INFO (§5.7.6.8), waited for: one mode per scanout."""
        self.wait(self.cmd_get_display_info())
        return self.display_info

    def cmd_get_edid(self, scanout: int) -> GpuRequest:
        """Queue GET_EDID for ``scanout`` (§5.7.6.8); its answer updates :attr:`edids`."""
        return self.submit(GpuCmd.GET_EDID, protocol.GET_EDID_BODY.pack(scanout, 0),
                           resp_len=protocol.RESPONSE_SIZE[GpuResp.OK_EDID], on_done=self._store_edid(scanout))

    def get_edid(self, scanout: int) -> bytes:
        """GET_EDID (§5.7.6.8), waited for: the EDID blob of ``scanout``."""
        self.wait(self.cmd_get_edid(scanout))
        return self.edids[scanout]

    # -- config change (§5.7.4.2) -----------------------------------------------------------------------------

    def config_changed(self) -> None:
        """Linux ``virtio_gpu_config_changed_work_func``: on EVENT_DISPLAY re-query, then write events_clear.

        Runs in interrupt context: the commands are queued, their answers update ``display_info``/``edids``.
        Only while the device is live and submissions run: configuration changes are held back while it is
        suspended (Device Suspend: no buffers, no configuration writes), so this never runs then.
        """
        events = self.t.config_read(GpuCfg.EVENTS_READ, 4)
        clear = 0
        if events & GPU_EVENT_DISPLAY:
            if self.num_scanouts and self.vqs and self.submitting:
                if self.has(GpuFeature.EDID):
                    for i in range(self.num_scanouts):
                        self.cmd_get_edid(i)
                self.cmd_get_display_info()
            clear |= GPU_EVENT_DISPLAY
            self.display_events_handled += 1
        if self.allows(Action.WRITE_CONFIG):
            self.write_config(GpuCfg.EVENTS_CLEAR, 4, clear)

    # -- resources (§5.7.6.8) ---------------------------------------------------------------------------------

    def new_resource_id(self) -> int:
        """The next resource id (ids are never reused, as Linux's ida with a cyclic start)."""
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
        """RESOURCE_CREATE_2D (§5.7.6.8), then (``attach``) zeroed guest backing + RESOURCE_ATTACH_BACKING."""
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
        """RESOURCE_ATTACH_BACKING (§5.7.6.8) of ``obj.backing``, the mem entries as a second segment."""
        req = self.submit(GpuCmd.RESOURCE_ATTACH_BACKING,
                          protocol.ATTACH_BODY.pack(obj.id, len(obj.backing)), extra=self._entries(obj.backing))
        req = self._finish(req, wait)
        obj.attached = True
        return req

    def detach_backing(self, obj: GpuObject, *, wait: bool = True) -> GpuRequest:
        """RESOURCE_DETACH_BACKING (§5.7.6.8); the guest backing stays allocated."""
        req = self._finish(self.submit(GpuCmd.RESOURCE_DETACH_BACKING, protocol.RESOURCE_ID_BODY.pack(obj.id, 0)),
                           wait)
        obj.attached = False
        return req

    def unref(self, obj: GpuObject, *, wait: bool = True) -> GpuRequest:
        """RESOURCE_UNREF (§5.7.6.8): ``obj`` leaves the list with its bindings; the guest backing is freed once
        the device answered (it detaches it)."""
        self.objects.remove(obj.id)

        def release(req: GpuRequest) -> None:
            self._free_backing(obj)

        return self._finish(self.submit(GpuCmd.RESOURCE_UNREF, protocol.RESOURCE_ID_BODY.pack(obj.id, 0),
                                        on_done=release), wait)

    def set_scanout(self, scanout: int, obj: GpuObject | None, rect: Rect | None = None) -> None:
        """SET_SCANOUT (§5.7.6.8) of ``rect`` (default: all of ``obj``); ``obj`` None disables the scanout."""
        rid = obj.id if obj is not None else 0
        if rect is None:
            rect = (0, 0, obj.width, obj.height) if obj is not None else (0, 0, 0, 0)
        self.wait(self.submit(GpuCmd.SET_SCANOUT, protocol.SET_SCANOUT_BODY.pack(*rect, scanout, rid)))
        self.objects.bind_scanout(scanout, obj, ScanoutBinding(rect))

    def transfer_to_host_2d(self, obj: GpuObject, rect: Rect, offset: int | None = None, *,
                            fence: bool = True, wait: bool = False) -> GpuRequest:
        """TRANSFER_TO_HOST_2D (§5.7.6.8) of ``rect``; the source offset defaults to y*stride + x*bpp (Linux)."""
        x, y, _, _ = rect
        if offset is None:
            offset = y * obj.stride + x * GPU_BYTES_PER_PIXEL
        req = self.submit(GpuCmd.TRANSFER_TO_HOST_2D, protocol.TRANSFER_2D_BODY.pack(*rect, offset, obj.id, 0),
                          fence=fence)
        return self.wait(req) if wait else req  # (_finish, inline)

    def resource_flush(self, obj: GpuObject, rect: Rect, *, fence: bool = True, wait: bool = False) -> GpuRequest:
        """RESOURCE_FLUSH (§5.7.6.8) of ``rect``: the scanouts showing ``obj`` update."""
        req = self.submit(GpuCmd.RESOURCE_FLUSH, protocol.FLUSH_BODY.pack(*rect, obj.id, 0), fence=fence)
        return self.wait(req) if wait else req  # (_finish, inline)

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
        """Draw on what ``scanout`` shows (§5.7.6.2): pixels into guest memory, TRANSFER_TO_HOST_2D (not for a
        blob: the host reads its guest memory), then a fenced RESOURCE_FLUSH, and wait for that fence (Linux
        ``virtio_gpu_primary_plane_update``: the transfer is not fenced; commands complete in order). ``image``
        is RGBA ``(h, w, 4)`` or ``f(width, height)``."""
        fb = self.objects.on_scanout(scanout)
        if fb is None:
            raise DriverError(f"{self.name}: scanout {scanout} has no framebuffer")
        img = image(fb.width, fb.height) if callable(image) else image
        img = np.asarray(img, dtype=np.uint8)
        x, y = at
        self.write_pixels(fb, img, x, y)
        rect = (x, y, img.shape[1], img.shape[0])
        if fb.blob is None:
            self.transfer_to_host_2d(fb, rect, fence=False)
        flush = self.resource_flush(fb, rect)
        self.wait(flush, timeout=timeout)

    # -- cursor (§5.7.6.6, §5.7.6.10) -------------------------------------------------------------------------

    def _cursor_cmd(self, cmd: int, scanout: int, x: int, y: int, rid: int, hot_x: int, hot_y: int) -> GpuRequest:
        body = protocol.CURSOR_BODY.pack(scanout, x & 0xFFFFFFFF, y & 0xFFFFFFFF, 0, rid, hot_x, hot_y, 0)
        return self.submit(cmd, body, queue=GPU_CURSORQ)

    def set_cursor(self, scanout: int, x: int = 0, y: int = 0, *, image: RGBA | None = None,
                   hot: tuple[int, int] = (0, 0)) -> GpuObject:
        """§5.7.6.6: fill a 64x64 cursor resource (fenced transfer, waited for), then UPDATE_CURSOR at (x, y)
        with hotspot ``hot`` (§5.7.6.10). The resource is the scanout's cursor, else an unused cursor object,
        else a new one. ``image`` is 64x64 RGBA; default :func:`arrow_cursor`."""
        rgba = arrow_cursor() if image is None else image
        obj = self.objects.cursor_on(scanout)
        if obj is None:
            obj = next((o for o in self.objects.of_kind(ObjectKind.CURSOR) if not o.cursor_bindings), None)
        if obj is None:
            obj = self.create_resource_2d(GPU_CURSOR_SIZE, GPU_CURSOR_SIZE, self.CURSOR_FORMAT,
                                          kind=ObjectKind.CURSOR)
        self.write_pixels(obj, rgba)
        self.transfer_to_host_2d(obj, (0, 0, GPU_CURSOR_SIZE, GPU_CURSOR_SIZE), wait=True)
        self.wait(self._cursor_cmd(GpuCmd.UPDATE_CURSOR, scanout, x, y, obj.id, *hot))
        self.objects.bind_cursor(scanout, obj, CursorBinding(x, y, *hot))
        return obj

    def move_cursor(self, scanout: int, x: int, y: int) -> None:
        """MOVE_CURSOR (§5.7.6.10): only the position changes; the binding keeps its hotspot."""
        obj = self.objects.cursor_on(scanout)
        self.wait(self._cursor_cmd(GpuCmd.MOVE_CURSOR, scanout, x, y, obj.id if obj else 0, 0, 0))
        if obj is not None:
            b = obj.cursor_bindings[scanout]
            self.objects.bind_cursor(scanout, obj, CursorBinding(x, y, b.hot_x, b.hot_y))

    def cursor_position(self, scanout: int = 0) -> tuple[int, int]:
        """Where the driver last put the cursor of ``scanout`` (its hotspot); (0, 0) without a cursor."""
        return self.cursor_positions.get(scanout, (0, 0))

    def hide_cursor(self, scanout: int) -> None:
        """UPDATE_CURSOR with resource 0 (§5.7.6.10): the cursor of ``scanout`` disappears; its object stays
        listed, unbound, for the next :meth:`set_cursor`."""
        self.wait(self._cursor_cmd(GpuCmd.UPDATE_CURSOR, scanout, 0, 0, 0, 0, 0))
        self.objects.bind_cursor(scanout, None)

    # -- blobs (§5.7.6.8 RESOURCE_CREATE_BLOB / SET_SCANOUT_BLOB) ---------------------------------------------

    def create_blob(self, size: int, *, blob_mem: int = GpuBlobMem.GUEST,
                    blob_flags: int = GpuBlobFlag.USE_SHAREABLE, blob_id: int = 0, ctx_id: int = 0) -> GpuObject:
        """RESOURCE_CREATE_BLOB (§5.7.6.8); a GUEST blob gets zeroed guest memory (size rounded up to
        blob_alignment, which the driver MUST respect); a HOST3D blob is a virgl object."""
        # spec: drv:gpu/controlq#1
        align = self.blob_alignment if self.has_blob_alignment else 1
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
        """SET_SCANOUT_BLOB (§5.7.6.8): show ``rect`` of the blob read as ``width`` x ``height`` of ``fmt``
        with ``stride`` from ``offset``."""
        rect = rect or (0, 0, width, height)
        body = protocol.SET_SCANOUT_BLOB_BODY.pack(*rect, scanout, obj.id, width, height, fmt, 0,
                                                   stride, 0, 0, 0, offset, 0, 0, 0)
        self.wait(self.submit(GpuCmd.SET_SCANOUT_BLOB, body))
        obj.format, obj.width, obj.height, obj.stride = fmt, width, height, stride
        self.objects.bind_scanout(scanout, obj, ScanoutBinding(rect, BlobLayout(width, height, fmt, stride, offset)))

    def show_blob(self, scanout: int, rgba: RGBA, fmt: int = GpuFormat.B8G8R8X8_UNORM) -> GpuObject:
        """Put an RGBA image on ``scanout`` through a guest blob (§5.7.6.8): create, fill, SET_SCANOUT_BLOB,
        flush."""
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
        """RESOURCE_ASSIGN_UUID (§5.7.6.8): the UUID the device gives ``obj``, recorded on it."""
        req = self.wait(self.submit(GpuCmd.RESOURCE_ASSIGN_UUID, protocol.RESOURCE_ID_BODY.pack(obj.id, 0),
                                    resp_len=protocol.RESPONSE_SIZE[GpuResp.OK_RESOURCE_UUID]))
        obj.uuid = uuid.UUID(bytes=req.payload[:16])
        return obj.uuid

    # -- virgl (§5.7.6.9): only what power management needs to model -----------------------------------------

    def ctx_create(self, name: str = "", context_init: int = 0) -> int:
        """CTX_CREATE (§5.7.6.9) with the next context id; returns it."""
        cid = self._next_ctx
        self._next_ctx += 1
        raw = name.encode()[:GPU_CTX_DEBUG_NAME_MAX]
        self.wait(self.submit(GpuCmd.CTX_CREATE, protocol.CTX_CREATE_BODY.pack(len(raw), context_init, raw),
                              ctx_id=cid))
        self.contexts.add(cid)
        return cid

    def ctx_destroy(self, ctx_id: int) -> None:
        """CTX_DESTROY (§5.7.6.9): the context goes, and with it every object's attachment to it."""
        self.wait(self.submit(GpuCmd.CTX_DESTROY, ctx_id=ctx_id))
        self.contexts.discard(ctx_id)
        for o in self.objects:
            o.ctx_ids.discard(ctx_id)

    def ctx_attach_resource(self, ctx_id: int, obj: GpuObject) -> None:
        """CTX_ATTACH_RESOURCE (§5.7.6.9)."""
        self.wait(self.submit(GpuCmd.CTX_ATTACH_RESOURCE, protocol.RESOURCE_ID_BODY.pack(obj.id, 0), ctx_id=ctx_id))
        obj.ctx_ids.add(ctx_id)

    def ctx_detach_resource(self, ctx_id: int, obj: GpuObject) -> None:
        """CTX_DETACH_RESOURCE (§5.7.6.9)."""
        self.wait(self.submit(GpuCmd.CTX_DETACH_RESOURCE, protocol.RESOURCE_ID_BODY.pack(obj.id, 0), ctx_id=ctx_id))
        obj.ctx_ids.discard(ctx_id)

    def create_resource_3d(self, width: int, height: int, *, target: int = 2, fmt: int = GpuFormat.B8G8R8A8_UNORM,
                           bind: int = 0, depth: int = 1, array_size: int = 1, last_level: int = 0,
                           nr_samples: int = 0, flags: int = 0, ctx_id: int = 0) -> GpuObject:
        """RESOURCE_CREATE_3D (§5.7.6.9): a virgl object (not restorable from guest metadata)."""
        rid = self.new_resource_id()
        params = Resource3dParams(target, fmt, bind, width, height, depth, array_size, last_level, nr_samples,
                                  flags)
        body = protocol.CREATE_3D_BODY.pack(rid, target, fmt, bind, width, height, depth, array_size, last_level,
                                            nr_samples, flags, 0)
        self.wait(self.submit(GpuCmd.RESOURCE_CREATE_3D, body, ctx_id=ctx_id, fence=True))
        obj = GpuObject(rid, ObjectKind.VIRGL, fmt, width, height, params_3d=params)
        self.objects.add(obj)
        return obj

    def submit_3d(self, ctx_id: int, stream: bytes, *, fence: bool = True, ring_idx: int | None = None,
                  wait: bool = True) -> GpuRequest:
        """SUBMIT_3D (§5.7.6.9) of a command ``stream`` (the second readable segment)."""
        req = self.submit(GpuCmd.SUBMIT_3D, protocol.SUBMIT_BODY.pack(len(stream), 0), ctx_id=ctx_id,
                          fence=fence, ring_idx=ring_idx, extra=stream or None)
        return self._finish(req, wait)

    # -- building blocks for freeze/restore (the flavours with has_pm_hooks = True use them) -------------------

    def driver_freeze(self) -> None:
        """``.freeze`` recipe: reset, reclaim every request still in a queue (:meth:`reclaim`), delete the
        queues. The host forgets every object on reset (as QEMU ``virtio_gpu_reset``); ``objects`` keeps the
        guest's metadata and bindings for :meth:`recreate` and :meth:`replay_modeset`. Requests are reclaimed only
        after the reset made the queues non-live (§3.3.1)."""
        # spec: drv:cleanup#2
        self.reset_device()
        self.reclaim()
        self.del_vqs()

    def driver_restore(self) -> None:
        """``.restore`` default: re-read the config and re-create the queues. A restoring flavour then sets
        DRIVER_OK, :meth:`recreate`\\ s the restorable objects and :meth:`replay_modeset`\\ s."""
        self.setup()

    def recreate(self, obj: GpuObject) -> None:
        """Create ``obj`` on the host again from its metadata (Linux 7.3 ``virtio_gpu_object_restore_all``):
        RESOURCE_CREATE_BLOB with the same parameters and mem entries, or RESOURCE_CREATE_2D + ATTACH_BACKING
        (§5.7.6.8); then RESOURCE_ASSIGN_UUID again if it had one. Virgl objects cannot be: ValueError."""
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
        if obj.uuid is not None and self.has(GpuFeature.RESOURCE_UUID):
            self.assign_uuid(obj)

    def replay_modeset(self) -> None:
        """Show everything again from the object bindings (``drm_mode_config_helper_resume``), by scanout: a
        2D binding with SET_SCANOUT + a full TRANSFER_TO_HOST_2D + RESOURCE_FLUSH, a blob binding with
        SET_SCANOUT_BLOB + RESOURCE_FLUSH (§5.7.6.8); then every cursor with its image, position and hotspot
        (§5.7.6.10). A binding whose object is gone on the host is skipped: that screen stays dark."""
        for sid, obj in self.objects.scanout_map().items():
            b = obj.scanout_bindings[sid]
            try:
                if b.blob_layout is not None:
                    w, h, fmt, stride, offset = b.blob_layout
                    self.set_scanout_blob(sid, obj, w, h, fmt, stride, offset, b.rect)
                else:
                    self.set_scanout(sid, obj, b.rect)
                    self.transfer_to_host_2d(obj, (0, 0, obj.width, obj.height))
                self.resource_flush(obj, b.rect, wait=True)
            except DriverError:
                continue
        for sid, obj in self.objects.cursor_map().items():
            c = obj.cursor_bindings[sid]
            try:
                self.transfer_to_host_2d(obj, (0, 0, obj.width, obj.height), wait=True)
                self.wait(self._cursor_cmd(GpuCmd.UPDATE_CURSOR, sid, c.x, c.y, obj.id, c.hot_x, c.hot_y))
            except DriverError:
                continue


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

