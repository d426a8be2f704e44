"""virtio-gpu 3D commands (virtio 1.4 §5.7.6.9) and capsets: bookkeeping only, no rendering.

Contract. pyvirtio does not render: contexts, their resources and submitted command streams are tracked so that
power management can see what a guest cannot re-create after a reset (Linux keeps virgl objects off its restore
list). The device offers no capsets, so GET_CAPSET_INFO and GET_CAPSET always fail with ERR_INVALID_PARAMETER.
Handlers follow the contract of :mod:`~pyvirtio.host.gpu.commands_2d`; 3D commands need VIRTIO_GPU_F_VIRGL.
"""

from __future__ import annotations

from pyvirtio.host.gpu.base import GpuBase, GpuError, Pending, Reply
from pyvirtio.host.gpu.resources import Context, Resource
from pyvirtio.spec import gpu_wire as protocol
from pyvirtio.spec.constants import (
    GPU_BYTES_PER_PIXEL,
    GPU_CONTEXT_INIT_CAPSET_ID_MASK,
    GPU_CTX_DEBUG_NAME_MAX,
    GPU_MAX_DIMENSION,
    GPU_MAX_SUBMIT_SIZE,
    GpuCmd,
    GpuFeature,
    GpuResp,
)


class Commands3D(GpuBase):
    """Handlers of the capset and virgl control commands (mixed into :class:`~pyvirtio.host.gpu.device.Gpu`)."""

    def _get_capset_info(self, p: Pending) -> Reply:
        index, _ = self._body(p)
        raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "§5.7.6.8 capset_index MUST be less than num_capsets",
                       capset_index=index, num_capsets=self.num_capsets)

    def _get_capset(self, p: Pending) -> Reply:
        capset_id, version = self._body(p)
        raise GpuError(GpuResp.ERR_INVALID_PARAMETER, "§5.7.6.8 GET_CAPSET for a capset the device lacks",
                       capset_id=capset_id, version=version)

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


__all__ = ["Commands3D"]
