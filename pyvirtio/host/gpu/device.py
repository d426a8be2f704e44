"""virtio-gpu device (id 16, virtio 1.4 §5.7), 2D with guest blobs, modelled on QEMU ``hw/display/virtio-gpu.c``.

Queues: controlq (0) and cursorq (1). Control commands run one at a time in order on the virtual clock, each
taking ``command_latency`` plus, for transfers and 3D submits, ``bytes / bytes_per_us``; a command's effect and
its response happen when it finishes, so fenced responses (§5.7.6.5 "MUST finish the processing before
returning the command") arrive later and requests stay in flight meanwhile. Cursor commands take effect at
once and, like QEMU, get no response data (used length 0).

Guest errors get the spec's ``ERR_*`` answer and a trace violation, never an exception. Choices where neither
the spec nor QEMU is exact are listed in :class:`Gpu`'s docstring.

Layout. This module holds the features, the config space, the host-side view (displays, what a scanout shows),
reset, and the control-queue pump with its command table (:data:`HANDLERS`, h11-style: dispatch is one lookup).
The handlers live in :mod:`~pyvirtio.host.gpu.commands_2d` and :mod:`~pyvirtio.host.gpu.commands_3d`, the
cursor queue in :mod:`~pyvirtio.host.gpu.cursor`, their shared state and checks in :mod:`~pyvirtio.host.gpu.base`.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from pyvirtio.clock import US
from pyvirtio.host.gpu.base import GpuError, Pending, Reply, check_mode
from pyvirtio.host.gpu.commands_2d import Commands2D
from pyvirtio.host.gpu.commands_3d import Commands3D
from pyvirtio.host.gpu.cursor import CursorQueue
from pyvirtio.host.gpu.display import Display, Scanout, compose, write_png
from pyvirtio.host.gpu.resources import Context, Resource
from pyvirtio.spec import gpu_formats as formats
from pyvirtio.spec import gpu_wire as protocol
from pyvirtio.spec.constants import (
    GPU_BYTES_PER_PIXEL,
    GPU_CONFIG_SIZE,
    GPU_CONFIG_SIZE_BLOB_ALIGNMENT,
    GPU_CONTROLQ,
    GPU_CTRL_HDR_SIZE,
    GPU_CURSORQ,
    GPU_DEFAULT_HOST_MEMORY,
    GPU_EVENT_DISPLAY,
    GPU_MAX_DIMENSION,
    GPU_MAX_SCANOUTS,
    GPU_MAX_SUBMIT_SIZE,
    GPU_RING_IDX_MAX,
    DeviceId,
    GpuCfg,
    GpuCmd,
    GpuFeature,
    GpuResp,
    bit,
)
from pyvirtio.spec.gpu_formats import Image
from pyvirtio.spec.gpu_wire import CtrlHdr
from pyvirtio.trace import Kind
from pyvirtio.virtqueue.chain import DescriptorChain

_U32 = 0xFFFFFFFF
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

#: A command handler: the device and the request in, (response type, payload after the header) out.
Handler = Callable[[Any, Pending], Reply]

#: The control-queue command table (§5.7.6.8-§5.7.6.9): one entry per command the device implements.
HANDLERS: dict[int, Handler] = {
    GpuCmd.GET_DISPLAY_INFO: Commands2D._get_display_info,
    GpuCmd.GET_EDID: Commands2D._get_edid,
    GpuCmd.RESOURCE_CREATE_2D: Commands2D._resource_create_2d,
    GpuCmd.RESOURCE_UNREF: Commands2D._resource_unref,
    GpuCmd.SET_SCANOUT: Commands2D._set_scanout,
    GpuCmd.RESOURCE_FLUSH: Commands2D._resource_flush,
    GpuCmd.TRANSFER_TO_HOST_2D: Commands2D._transfer_to_host_2d,
    GpuCmd.RESOURCE_ATTACH_BACKING: Commands2D._attach_backing,
    GpuCmd.RESOURCE_DETACH_BACKING: Commands2D._detach_backing,
    GpuCmd.RESOURCE_ASSIGN_UUID: Commands2D._assign_uuid,
    GpuCmd.RESOURCE_CREATE_BLOB: Commands2D._resource_create_blob,
    GpuCmd.SET_SCANOUT_BLOB: Commands2D._set_scanout_blob,
    GpuCmd.GET_CAPSET_INFO: Commands3D._get_capset_info,
    GpuCmd.GET_CAPSET: Commands3D._get_capset,
    GpuCmd.CTX_CREATE: Commands3D._ctx_create,
    GpuCmd.CTX_DESTROY: Commands3D._ctx_destroy,
    GpuCmd.CTX_ATTACH_RESOURCE: Commands3D._ctx_attach,
    GpuCmd.CTX_DETACH_RESOURCE: Commands3D._ctx_detach,
    GpuCmd.RESOURCE_CREATE_3D: Commands3D._resource_create_3d,
    GpuCmd.TRANSFER_TO_HOST_3D: Commands3D._transfer_3d,
    GpuCmd.TRANSFER_FROM_HOST_3D: Commands3D._transfer_3d,
    GpuCmd.SUBMIT_3D: Commands3D._submit_3d,
}


#: Command and response names (``protocol.command_name``) of every code the spec defines, looked up per command.
_NAMES: dict[int, str] = {int(c): protocol.command_name(c) for c in (*GpuCmd, *GpuResp)}
_TRANSFER_TO_HOST_2D = int(GpuCmd.TRANSFER_TO_HOST_2D)
_SUBMIT_3D = int(GpuCmd.SUBMIT_3D)
_HDR_UNPACK = protocol.HDR.unpack_from
_HDR_PACK = protocol.HDR.pack


def unknown_command(cmd: int) -> GpuError:
    """The answer to a command the device does not implement (§5.7.6.7: ERR_UNSPEC)."""
    if cmd in (GpuCmd.UPDATE_CURSOR, GpuCmd.MOVE_CURSOR):
        return GpuError(GpuResp.ERR_UNSPEC, "§5.7.2 cursor command sent on the control queue")
    return GpuError(GpuResp.ERR_UNSPEC, "§5.7.6.7 unknown or unsupported command", type=cmd)


class Gpu(Commands2D, Commands3D, CursorQueue):
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
    * a disabled scanout has no image (:meth:`scanout_image` returns None); SET_SCANOUT of a virgl resource is
      accepted whatever its format, as QEMU's virgl path does, and shows black (pyvirtio renders no 3D): no
      command sequence makes :meth:`scanout_image` or :meth:`save_png` raise;
    * a reset while ``retain_state_on_reset`` (freeze_mode FREEZE_S3, or the FREEZING command) keeps the
      resources and contexts and disables every scanout (Jiqian Chen's QEMU patch).
    """

    device_id = DeviceId.GPU
    queue_sizes = (256, 16)  # QEMU: controlq 256, cursorq 16
    #: The command table this device dispatches on; a subclass extends a copy (see PmGpu).
    handlers: ClassVar[Mapping[int, Handler]] = HANDLERS

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
        """A virtio-gpu with ``num_scanouts`` displays of ``width`` x ``height``; see the class docstring for the
        ``offer_*`` feature switches and the virtual-time costs."""
        super().__init__(name, offer_suspend=offer_suspend, latency=latency)
        if not 1 <= num_scanouts <= GPU_MAX_SCANOUTS:
            raise ValueError(f"num_scanouts must be 1..{GPU_MAX_SCANOUTS}, not {num_scanouts}")
        check_mode(width, height)
        # spec: dev:features#1 (never offer CONTEXT_INIT without VIRGL, BLOB_ALIGNMENT without RESOURCE_BLOB)
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

    # -- features and config (§5.7.3, §5.7.4) -----------------------------------------------------------------

    @property
    def offered(self) -> int:
        """The device-type feature bits offered (bit 5 is BLOB_ALIGNMENT or FREEZING, never both)."""
        # spec: dev:features#3 (only the bits this model implements; FREEZING only when asked for)
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
        """The device-type bits offered (:attr:`offered`)."""
        return self.offered

    def config_size(self) -> int:
        """``struct virtio_gpu_config``: 16 bytes, 20 with ``blob_alignment`` (§5.7.4)."""
        return GPU_CONFIG_SIZE_BLOB_ALIGNMENT if self.offer_blob_alignment else GPU_CONFIG_SIZE

    def _config_bytes(self) -> bytes:
        fields = [self.events_read, 0, self.num_scanouts, self.num_capsets]
        if self.offer_blob_alignment:
            fields.append(self.blob_alignment)
        return b"".join(v.to_bytes(4, "little") for v in fields)

    def read_config(self, offset: int, size: int) -> int:
        """events_read, events_clear (reads 0), num_scanouts, num_capsets[, blob_alignment] (§5.7.4)."""
        # spec: dev:config-space#1
        # Whatever the status: blob_alignment is there as soon as BLOB_ALIGNMENT is offered, not only negotiated.
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
        """Trace the feature dependencies §5.7.3 requires the driver to respect."""
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
        check_mode(w, h)

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
        """Height of the rectangle scanout ``index`` shows (0 when disabled)."""
        return self.scanouts[index].rect.height

    def resource_rgba(self, resource_id: int) -> Image | None:
        """The host image of a 2D resource as RGBA (alpha kept), or None."""
        res = self.resources.get(resource_id)
        if res is None or res.image is None:
            return None
        return formats.to_rgba(res.image.reshape(res.height, res.width, 4), res.format)

    # -- reset / quiesce --------------------------------------------------------------------------------------

    def on_reset(self) -> None:
        """QEMU ``virtio_gpu_reset``: drop pending commands, destroy every resource and context, disable every
        scanout and cursor. With ``retain_state_on_reset`` the resources and contexts survive; QEMU's base reset
        still unbinds every scanout, so the driver must replay its modeset."""
        self._cmdq.clear()
        self._busy = False
        if self.retain_state_on_reset:
            for sid in range(self.num_scanouts):
                self._unbind_scanout(sid)
            self.trace(Kind.DEVICE, event="resources_destroyed", count=0, kept=len(self.resources))
            return
        count = len(self.resources)
        virgl = sum(1 for r in self.resources.values() if r.virgl)
        self.resources.clear()
        self.contexts.clear()
        self.scanouts = [Scanout() for _ in range(self.num_scanouts)]
        self.hostmem = 0
        self.trace(Kind.DEVICE, event="resources_destroyed", count=count, virgl=virgl)

    def on_queue_reset(self, index: int) -> None:
        """§2.6.1: a control-queue reset drops the command running and those queued behind it (none executes
        or is answered); the cursor queue holds nothing (its requests run at once)."""
        if index == GPU_CONTROLQ:
            # spec: dev:vq-reset#1
            self._cmdq.clear()
            self._busy = False

    def state_bytes(self) -> int:
        """Host memory the resources use: what a freeze must preserve."""
        return int(self.hostmem)

    def quiesced(self) -> bool:
        """No control command queued or running."""
        return not self._cmdq and not self._busy

    # -- control queue ----------------------------------------------------------------------------------------

    def process_queue(self, index: int) -> None:
        """Control queue: queue the requests and start the next one; cursor queue: run each request at once."""
        if index == GPU_CONTROLQ:
            while self.can_process():
                chain = self.pop(index)
                if chain is None:
                    break
                self._cmdq.append(self._prepare(chain))
            self._pump()
        elif index == GPU_CURSORQ:
            self._process_cursorq()

    def _prepare(self, chain: DescriptorChain) -> Pending:
        segs = chain.readable
        n = segs[0][1] if len(segs) == 1 else chain.readable_len
        raw = chain.read((self._ctx or self.ctx).memory, n if n < _MAX_REQUEST else _MAX_REQUEST)
        hdr = CtrlHdr(*_HDR_UNPACK(raw)) if len(raw) >= GPU_CTRL_HDR_SIZE else None
        cost = self.command_latency
        if hdr is not None and (hdr.type == _TRANSFER_TO_HOST_2D or hdr.type == _SUBMIT_3D):
            cost += (self._payload_bytes(hdr.type, raw) * US) // self.bytes_per_us
        return Pending(chain, raw, hdr, cost)

    def _payload_bytes(self, cmd: int, raw: bytes) -> int:
        """Bytes a command moves (for its virtual-time cost): transfers and 3D submits."""
        if cmd == _TRANSFER_TO_HOST_2D and len(raw) >= protocol.REQUEST_SIZE[cmd]:
            _, _, w, h, *_ = protocol.TRANSFER_2D_BODY.unpack_from(raw, GPU_CTRL_HDR_SIZE)
            return int(min(w, GPU_MAX_DIMENSION) * min(h, GPU_MAX_DIMENSION) * GPU_BYTES_PER_PIXEL)
        if cmd == _SUBMIT_3D and len(raw) >= protocol.REQUEST_SIZE[cmd]:
            return int(min(protocol.SUBMIT_BODY.unpack_from(raw, GPU_CTRL_HDR_SIZE)[0], GPU_MAX_SUBMIT_SIZE))
        return 0

    def _pump(self) -> None:
        """Start the next control command if none is running."""
        if self._busy or not self._cmdq:
            return
        self._busy = True
        self.after(self._cmdq[0].cost, self._finish, label="gpu-cmd", queue=GPU_CONTROLQ)

    def _finish(self) -> None:
        # spec: dev:gpu/fencing#1
        # A command's effect and its response both happen here, when its processing time is over: a fenced
        # request is answered only once it has completed.
        self._busy = False
        faults = self.faults
        if faults.backend_hangs or (faults.quiesce_never_completes and self.suspending):  # request_stuck(), inline
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
        name = _NAMES.get(cmd) or protocol.command_name(cmd)
        self.commands[name] += 1
        try:
            reply = self._dispatch(p)
        except GpuError as e:
            self.violation(e.rule, cmd=name, resp=protocol.command_name(e.code), **e.detail)
            reply = (e.code, b"")
        resp = reply[0]
        (self._ctx or self.ctx).trace.record(Kind.DEVICE, self.name, event="gpu_cmd", cmd=name,
                                             resp=_NAMES.get(resp) or protocol.command_name(resp))
        return reply

    def _dispatch(self, p: Pending) -> Reply:
        assert p.hdr is not None
        cmd = p.hdr.type
        handler = self.handlers.get(cmd)
        if handler is None:
            raise unknown_command(cmd)
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
        reply: Reply = handler(self, p)
        return reply

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
        data = _HDR_PACK(resp, flags, fence_id, ctx_id, ring_idx)
        if payload:
            data += payload
        chain = p.chain
        if not chain.writable:
            self.violation("§5.7.2 control request without a device-writable response buffer")
            written = 0
        else:
            written = chain.write((self._ctx or self.ctx).memory, data)
            if written < len(data):
                self.violation("§5.7.6.7 response buffer too small", size=chain.writable_len, needed=len(data))
        self.complete(GPU_CONTROLQ, chain, written)  # spec: dev:split/used#2 (response written, then used.idx)


__all__ = ["HANDLERS", "Gpu", "GpuError", "Handler", "Pending", "Reply", "unknown_command"]
