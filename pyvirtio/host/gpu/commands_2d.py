"""virtio-gpu 2D and blob commands (virtio 1.4 §5.7.6.8): display info, EDID, resources, backing, scanouts.

Contract. Each handler takes a :class:`~pyvirtio.host.gpu.base.Pending` request whose length the pump has
already checked against the command's struct, and returns ``(response type, payload)``; a guest error raises
:class:`~pyvirtio.host.gpu.base.GpuError` with the spec's (or QEMU's) answer. Blob commands need
VIRTIO_GPU_F_RESOURCE_BLOB; the pump refuses them without it.
"""

from __future__ import annotations

import uuid

from pyvirtio.host.gpu import edid
from pyvirtio.host.gpu.base import GpuBase, GpuError, Pending, Reply, intersects
from pyvirtio.host.gpu.display import BlobFramebuffer, Rect
from pyvirtio.host.gpu.resources import BlobInfo, Resource, host_image, rows_view
from pyvirtio.spec import gpu_formats as formats
from pyvirtio.spec import gpu_wire as protocol
from pyvirtio.spec.constants import (
    GPU_BYTES_PER_PIXEL,
    GPU_EDID_BLOCK_SIZE,
    GPU_EDID_MAX,
    GPU_MAX_SCANOUTS,
    GpuBlobMem,
    GpuCmd,
    GpuFeature,
    GpuResp,
)
from pyvirtio.trace import Kind

#: A blob scanout's offset must fit 32 bits and its stride a signed int (QEMU).
_U32 = 0xFFFFFFFF
_INT_MAX = 0x7FFFFFFF


class Commands2D(GpuBase):
    """Handlers of the 2D and blob control commands (mixed into :class:`~pyvirtio.host.gpu.device.Gpu`)."""

    def _get_display_info(self, p: Pending) -> Reply:
        # spec: dev:gpu/init#1
        # The host's displays as they are (enabled ones with their preferred mode), for the driver's first modeset.
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
        # spec: dev:gpu/init#2 (an EDID for every scanout, matching the display info)
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
        image = host_image(height, width * GPU_BYTES_PER_PIXEL)
        self.resources[rid] = Resource(rid, fmt, width, height, image=image, hostmem=need)
        self.hostmem += need
        return GpuResp.OK_NODATA, b""

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
            hits = [sid for sid in res.scanouts if intersects(r, self.scanouts[sid].rect)]
            if not hits:
                raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "flush rectangle outside the blob's scanouts",
                               rect=str(r))
        else:
            self._check_rect_in(r, res.width, res.height, "flush")
            hits = [sid for sid in res.scanouts if intersects(r, self.scanouts[sid].rect)]
        for sid in hits:
            self.scanouts[sid].flushes += 1
            self.scanouts[sid].last_flush = r
        return GpuResp.OK_NODATA, b""

    def _transfer_to_host_2d(self, p: Pending) -> Reply:
        x, y, w, h, offset, rid, _ = self._body(p)
        res = self._resource(rid)
        if res.blob is not None:
            # virtio 1.4 §5.7.6.8 defines TRANSFER_TO_HOST_2D for any resource (response OK_NODATA) and forbids
            # nothing for blobs; a guest blob has no host copy to update (the scanout reads its guest pages), so
            # there is nothing to transfer. Linux 6.12 sends it on every damage of its blob dumb buffers; QEMU
            # returns early with OK_NODATA, as here.
            self.trace(Kind.DEVICE, event="transfer_to_blob", resource_id=rid)
            return GpuResp.OK_NODATA, b""
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
        # bit 5 is BLOB_ALIGNMENT only on a device that offered it (on a 2023 FREEZING device it is FREEZING)
        if self.offer_blob_alignment and self.negotiated(GpuFeature.BLOB_ALIGNMENT) and size % self.blob_alignment:
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


__all__ = ["Commands2D"]
