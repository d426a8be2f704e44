"""virtio-gpu wire structures (virtio 1.4 §5.7.6.7-§5.7.6.10; pyvirtio reference §4.2-§4.4).

Every structure is a little-endian :class:`struct.Struct`. ``*_BODY`` structs start right after the 24-byte
``struct virtio_gpu_ctrl_hdr``, so a body field at reference offset ``N`` sits at ``N - 24`` in the body; the
asserts below tie each size to the reference table. Both the device and the guest driver use these layouts,
the way QEMU and Linux share ``virtio_gpu.h``; the tests check them against hand-packed bytes instead.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyvirtio.spec.constants import (
    GPU_CMD_SUBMIT_SIZE,
    GPU_CTRL_HDR_SIZE,
    GPU_CTX_CREATE_SIZE,
    GPU_CTX_DESTROY_SIZE,
    GPU_CTX_RESOURCE_SIZE,
    GPU_DISPLAY_ONE_SIZE,
    GPU_GET_CAPSET_INFO_SIZE,
    GPU_GET_CAPSET_SIZE,
    GPU_GET_EDID_SIZE,
    GPU_MEM_ENTRY_SIZE,
    GPU_RECT_SIZE,
    GPU_RESOURCE_ASSIGN_UUID_SIZE,
    GPU_RESOURCE_ATTACH_BACKING_SIZE,
    GPU_RESOURCE_CREATE_2D_SIZE,
    GPU_RESOURCE_CREATE_3D_SIZE,
    GPU_RESOURCE_CREATE_BLOB_SIZE,
    GPU_RESOURCE_DETACH_BACKING_SIZE,
    GPU_RESOURCE_FLUSH_SIZE,
    GPU_RESOURCE_MAP_BLOB_SIZE,
    GPU_RESOURCE_UNMAP_BLOB_SIZE,
    GPU_RESOURCE_UNREF_SIZE,
    GPU_RESP_CAPSET_INFO_SIZE,
    GPU_RESP_DISPLAY_INFO_SIZE,
    GPU_RESP_EDID_SIZE,
    GPU_RESP_MAP_INFO_SIZE,
    GPU_RESP_RESOURCE_UUID_SIZE,
    GPU_SET_SCANOUT_BLOB_SIZE,
    GPU_SET_SCANOUT_SIZE,
    GPU_STATUS_FREEZING_SIZE,
    GPU_TRANSFER_HOST_3D_SIZE,
    GPU_TRANSFER_TO_HOST_2D_SIZE,
    GPU_UPDATE_CURSOR_SIZE,
    GpuCmd,
    GpuFlag,
    GpuResp,
)

#: ``struct virtio_gpu_ctrl_hdr``: type, flags, le64 fence_id, ctx_id, u8 ring_idx, u8 padding[3].
HDR = struct.Struct("<IIQIB3x")
#: ``struct virtio_gpu_rect``: x, y, width, height.
RECT = struct.Struct("<IIII")
#: ``struct virtio_gpu_mem_entry``: le64 addr, le32 length, le32 padding.
MEM_ENTRY = struct.Struct("<QII")
#: ``struct virtio_gpu_display_one``: rect r, enabled, flags.
DISPLAY_ONE = struct.Struct("<IIIIII")

GET_EDID_BODY = struct.Struct("<II")  # scanout, padding
RESP_EDID_BODY = struct.Struct("<II")  # size, padding; then u8 edid[1024]
CREATE_2D_BODY = struct.Struct("<IIII")  # resource_id, format, width, height
RESOURCE_ID_BODY = struct.Struct("<II")  # resource_id, padding (unref, detach, assign_uuid, unmap_blob, ctx res)
SET_SCANOUT_BODY = struct.Struct("<IIIIII")  # rect, scanout_id, resource_id
FLUSH_BODY = struct.Struct("<IIIIII")  # rect, resource_id, padding
TRANSFER_2D_BODY = struct.Struct("<IIIIQII")  # rect, le64 offset, resource_id, padding
ATTACH_BODY = struct.Struct("<II")  # resource_id, nr_entries
GET_CAPSET_INFO_BODY = struct.Struct("<II")  # capset_index, padding
RESP_CAPSET_INFO_BODY = struct.Struct("<IIII")  # capset_id, capset_max_version, capset_max_size, padding
GET_CAPSET_BODY = struct.Struct("<II")  # capset_id, capset_version
CREATE_BLOB_BODY = struct.Struct("<IIIIQQ")  # resource_id, blob_mem, blob_flags, nr_entries, blob_id, size
SET_SCANOUT_BLOB_BODY = struct.Struct("<IIII IIIIII 4I 4I")  # rect, scanout, res, w, h, fmt, pad, strides, offsets
CTX_CREATE_BODY = struct.Struct("<II64s")  # nlen, context_init, debug_name[64]
CREATE_3D_BODY = struct.Struct("<12I")  # res, target, format, bind, w, h, depth, array, last_level, samples, flags, pad
TRANSFER_3D_BODY = struct.Struct("<6IQIIII")  # box{x,y,z,w,h,d}, le64 offset, resource_id, level, stride, layer_stride
SUBMIT_BODY = struct.Struct("<II")  # size, padding; then the command stream
MAP_BLOB_BODY = struct.Struct("<IIQ")  # resource_id, padding, le64 offset
RESP_MAP_INFO_BODY = struct.Struct("<II")  # map_info, padding
CURSOR_BODY = struct.Struct("<IIII IIII")  # pos{scanout_id, x, y, padding}, resource_id, hot_x, hot_y, padding
STATUS_FREEZING_BODY = struct.Struct("<I")  # abandoned 2023 proposal: freezing

assert HDR.size == GPU_CTRL_HDR_SIZE
assert RECT.size == GPU_RECT_SIZE
assert MEM_ENTRY.size == GPU_MEM_ENTRY_SIZE
assert DISPLAY_ONE.size == GPU_DISPLAY_ONE_SIZE

#: Fixed request size (header included) of every command: a shorter request is refused (QEMU FILL_CMD).
REQUEST_SIZE: dict[int, int] = {
    GpuCmd.GET_DISPLAY_INFO: GPU_CTRL_HDR_SIZE,
    GpuCmd.GET_EDID: GPU_GET_EDID_SIZE,
    GpuCmd.RESOURCE_CREATE_2D: GPU_RESOURCE_CREATE_2D_SIZE,
    GpuCmd.RESOURCE_UNREF: GPU_RESOURCE_UNREF_SIZE,
    GpuCmd.SET_SCANOUT: GPU_SET_SCANOUT_SIZE,
    GpuCmd.RESOURCE_FLUSH: GPU_RESOURCE_FLUSH_SIZE,
    GpuCmd.TRANSFER_TO_HOST_2D: GPU_TRANSFER_TO_HOST_2D_SIZE,
    GpuCmd.RESOURCE_ATTACH_BACKING: GPU_RESOURCE_ATTACH_BACKING_SIZE,
    GpuCmd.RESOURCE_DETACH_BACKING: GPU_RESOURCE_DETACH_BACKING_SIZE,
    GpuCmd.GET_CAPSET_INFO: GPU_GET_CAPSET_INFO_SIZE,
    GpuCmd.GET_CAPSET: GPU_GET_CAPSET_SIZE,
    GpuCmd.RESOURCE_ASSIGN_UUID: GPU_RESOURCE_ASSIGN_UUID_SIZE,
    GpuCmd.RESOURCE_CREATE_BLOB: GPU_RESOURCE_CREATE_BLOB_SIZE,
    GpuCmd.SET_SCANOUT_BLOB: GPU_SET_SCANOUT_BLOB_SIZE,
    GpuCmd.CTX_CREATE: GPU_CTX_CREATE_SIZE,
    GpuCmd.CTX_DESTROY: GPU_CTX_DESTROY_SIZE,
    GpuCmd.CTX_ATTACH_RESOURCE: GPU_CTX_RESOURCE_SIZE,
    GpuCmd.CTX_DETACH_RESOURCE: GPU_CTX_RESOURCE_SIZE,
    GpuCmd.RESOURCE_CREATE_3D: GPU_RESOURCE_CREATE_3D_SIZE,
    GpuCmd.TRANSFER_TO_HOST_3D: GPU_TRANSFER_HOST_3D_SIZE,
    GpuCmd.TRANSFER_FROM_HOST_3D: GPU_TRANSFER_HOST_3D_SIZE,
    GpuCmd.SUBMIT_3D: GPU_CMD_SUBMIT_SIZE,
    GpuCmd.RESOURCE_MAP_BLOB: GPU_RESOURCE_MAP_BLOB_SIZE,
    GpuCmd.RESOURCE_UNMAP_BLOB: GPU_RESOURCE_UNMAP_BLOB_SIZE,
    GpuCmd.UPDATE_CURSOR: GPU_UPDATE_CURSOR_SIZE,
    GpuCmd.MOVE_CURSOR: GPU_UPDATE_CURSOR_SIZE,
    GpuCmd.STATUS_FREEZING: GPU_STATUS_FREEZING_SIZE,
}

_BODIES: dict[int, struct.Struct] = {
    GpuCmd.GET_EDID: GET_EDID_BODY,
    GpuCmd.RESOURCE_CREATE_2D: CREATE_2D_BODY,
    GpuCmd.RESOURCE_UNREF: RESOURCE_ID_BODY,
    GpuCmd.SET_SCANOUT: SET_SCANOUT_BODY,
    GpuCmd.RESOURCE_FLUSH: FLUSH_BODY,
    GpuCmd.TRANSFER_TO_HOST_2D: TRANSFER_2D_BODY,
    GpuCmd.RESOURCE_ATTACH_BACKING: ATTACH_BODY,
    GpuCmd.RESOURCE_DETACH_BACKING: RESOURCE_ID_BODY,
    GpuCmd.GET_CAPSET_INFO: GET_CAPSET_INFO_BODY,
    GpuCmd.GET_CAPSET: GET_CAPSET_BODY,
    GpuCmd.RESOURCE_ASSIGN_UUID: RESOURCE_ID_BODY,
    GpuCmd.RESOURCE_CREATE_BLOB: CREATE_BLOB_BODY,
    GpuCmd.SET_SCANOUT_BLOB: SET_SCANOUT_BLOB_BODY,
    GpuCmd.CTX_CREATE: CTX_CREATE_BODY,
    GpuCmd.CTX_ATTACH_RESOURCE: RESOURCE_ID_BODY,
    GpuCmd.CTX_DETACH_RESOURCE: RESOURCE_ID_BODY,
    GpuCmd.RESOURCE_CREATE_3D: CREATE_3D_BODY,
    GpuCmd.TRANSFER_TO_HOST_3D: TRANSFER_3D_BODY,
    GpuCmd.TRANSFER_FROM_HOST_3D: TRANSFER_3D_BODY,
    GpuCmd.SUBMIT_3D: SUBMIT_BODY,
    GpuCmd.RESOURCE_MAP_BLOB: MAP_BLOB_BODY,
    GpuCmd.RESOURCE_UNMAP_BLOB: RESOURCE_ID_BODY,
    GpuCmd.UPDATE_CURSOR: CURSOR_BODY,
    GpuCmd.MOVE_CURSOR: CURSOR_BODY,
    GpuCmd.STATUS_FREEZING: STATUS_FREEZING_BODY,
}
for _cmd, _body in _BODIES.items():
    assert GPU_CTRL_HDR_SIZE + _body.size == REQUEST_SIZE[_cmd], hex(_cmd)

#: Response sizes with a payload (header included); every other response is a bare header.
RESPONSE_SIZE: dict[int, int] = {
    GpuResp.OK_DISPLAY_INFO: GPU_RESP_DISPLAY_INFO_SIZE,
    GpuResp.OK_CAPSET_INFO: GPU_RESP_CAPSET_INFO_SIZE,
    GpuResp.OK_EDID: GPU_RESP_EDID_SIZE,
    GpuResp.OK_RESOURCE_UUID: GPU_RESP_RESOURCE_UUID_SIZE,
    GpuResp.OK_MAP_INFO: GPU_RESP_MAP_INFO_SIZE,
}
assert GPU_CTRL_HDR_SIZE + 16 * DISPLAY_ONE.size == GPU_RESP_DISPLAY_INFO_SIZE
assert GPU_CTRL_HDR_SIZE + RESP_CAPSET_INFO_BODY.size == GPU_RESP_CAPSET_INFO_SIZE
assert GPU_CTRL_HDR_SIZE + RESP_MAP_INFO_BODY.size == GPU_RESP_MAP_INFO_SIZE

#: Every response code the spec defines (§5.7.6.7).
RESPONSE_CODES = frozenset(int(r) for r in GpuResp)


def body(cmd: int) -> struct.Struct | None:
    """The body struct of command ``cmd`` (None for header-only commands and unknown codes)."""
    return _BODIES.get(cmd)


@dataclass(frozen=True, slots=True)
class CtrlHdr:
    """A decoded ``struct virtio_gpu_ctrl_hdr``."""

    type: int
    flags: int = 0
    fence_id: int = 0
    ctx_id: int = 0
    ring_idx: int = 0

    @classmethod
    def unpack(cls, raw: bytes | bytearray | memoryview, offset: int = 0) -> CtrlHdr:
        """Decode the 24-byte header at ``offset``; ``struct.error`` if ``raw`` is too short."""
        return cls(*HDR.unpack_from(raw, offset))

    def pack(self) -> bytes:
        """The 24-byte wire form (padding zero)."""
        return HDR.pack(self.type, self.flags, self.fence_id, self.ctx_id, self.ring_idx)


_NAMES: dict[int, str] = {int(c): c.name for c in GpuResp} | {int(c): c.name for c in GpuCmd}

#: Flag bits as plain ints (IntFlag arithmetic is slow on the per-command path).
FLAG_FENCE = int(GpuFlag.FENCE)
FLAG_INFO_RING_IDX = int(GpuFlag.INFO_RING_IDX)


def command_name(code: int) -> str:
    """``GET_DISPLAY_INFO`` etc. for a command or response code, else its hex value."""
    name = _NAMES.get(code)
    return name if name is not None else f"{code:#x}"
