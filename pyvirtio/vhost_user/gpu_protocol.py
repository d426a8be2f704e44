"""The vhost-user-gpu display protocol's wire format (QEMU ``docs/interop/vhost-user-gpu.rst``).

Contract. After ``VHOST_USER_GPU_SET_SOCKET`` the back-end holds one end of a stream socket whose other end is
the front-end's display (QEMU's console). Messages are a 12-byte header — ``request`` u32, ``flags`` u32 (bit 2:
reply), ``size`` u32, in the host's byte order (little-endian on every host pyvirtio runs on) — and ``size``
bytes of payload. The back-end sends requests; the front-end answers only ``GET_PROTOCOL_FEATURES``,
``GET_DISPLAY_INFO``, ``GET_EDID`` (and ``DMABUF_UPDATE``, unused here). This module packs the requests and
parses replies incrementally (:class:`ReplyParser`); a reply larger than :data:`MAX_REPLY` is a broken stream.
Nothing here raises on a peer's bytes: problems come back as strings.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from pyvirtio.spec.constants import GPU_CURSOR_SIZE, GPU_MAX_SCANOUTS
from pyvirtio.spec.gpu_wire import DISPLAY_ONE, HDR, RESP_EDID_BODY


class GpuRequest(IntEnum):
    """``VhostUserGpuRequest``: the display socket's message types."""

    GET_PROTOCOL_FEATURES = 1
    SET_PROTOCOL_FEATURES = 2
    GET_DISPLAY_INFO = 3
    CURSOR_POS = 4
    CURSOR_POS_HIDE = 5
    CURSOR_UPDATE = 6
    SCANOUT = 7
    UPDATE = 8
    DMABUF_SCANOUT = 9
    DMABUF_UPDATE = 10
    GET_EDID = 11
    DMABUF_SCANOUT2 = 12


class GpuProtocolFeature(IntEnum):
    """Display-protocol feature bits (``VHOST_USER_GPU_PROTOCOL_F_*``)."""

    EDID = 0
    DMABUF2 = 1


#: The display-protocol features this back-end can use: EDID only (it shares no DMABUF).
OFFERED_FEATURES = 1 << GpuProtocolFeature.EDID
HEADER = struct.Struct("<III")
FLAG_REPLY = 0x4
CURSOR_POS = struct.Struct("<III")  # scanout_id, x, y
CURSOR_HOT = struct.Struct("<II")  # hot_x, hot_y (then 64x64 u32 a8r8g8b8)
SCANOUT = struct.Struct("<III")  # scanout_id, width, height
UPDATE = struct.Struct("<IIIII")  # scanout_id, x, y, width, height (then x8r8g8b8 rows)
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
#: Replies the back-end expects, and their payload sizes.
REPLY_SIZE: dict[GpuRequest, int] = {
    GpuRequest.GET_PROTOCOL_FEATURES: U64.size,
    GpuRequest.GET_DISPLAY_INFO: HDR.size + GPU_MAX_SCANOUTS * DISPLAY_ONE.size,
    GpuRequest.GET_EDID: HDR.size + RESP_EDID_BODY.size + 1024,
}
#: Largest reply accepted (a bigger ``size`` is a broken stream).
MAX_REPLY = 4096
CURSOR_BYTES = GPU_CURSOR_SIZE * GPU_CURSOR_SIZE * 4


def encode(request: GpuRequest, payload: bytes = b"") -> bytes:
    """One back-end request: header and payload."""
    return HEADER.pack(request, 0, len(payload)) + payload


def update_header(scanout: int, x: int, y: int, width: int, height: int) -> bytes:
    """The header and fixed part of an ``UPDATE`` whose ``width * height * 4`` pixel bytes follow."""
    return HEADER.pack(GpuRequest.UPDATE, 0, UPDATE.size + width * height * 4) + UPDATE.pack(
        scanout, x, y, width, height)


def scanout(scanout_id: int, width: int, height: int) -> bytes:
    """``SCANOUT``: the scanout's size; 0x0 disables it."""
    return encode(GpuRequest.SCANOUT, SCANOUT.pack(scanout_id, width, height))


def cursor_pos(scanout_id: int, x: int, y: int, visible: bool) -> bytes:
    """``CURSOR_POS`` (show at x, y) or ``CURSOR_POS_HIDE``."""
    req = GpuRequest.CURSOR_POS if visible else GpuRequest.CURSOR_POS_HIDE
    return encode(req, CURSOR_POS.pack(scanout_id, x & 0xFFFFFFFF, y & 0xFFFFFFFF))


def cursor_update(scanout_id: int, x: int, y: int, hot_x: int, hot_y: int, argb: bytes) -> bytes:
    """``CURSOR_UPDATE``: shape (64x64 a8r8g8b8, ``argb``), hot spot and position."""
    if len(argb) != CURSOR_BYTES:
        raise ValueError(f"cursor image is {len(argb)} bytes, not {CURSOR_BYTES}")
    return encode(GpuRequest.CURSOR_UPDATE, CURSOR_POS.pack(scanout_id, x & 0xFFFFFFFF, y & 0xFFFFFFFF)
                  + CURSOR_HOT.pack(hot_x, hot_y) + argb)


@dataclass(frozen=True)
class DisplayMode:
    """One entry of the front-end's display information."""

    scanout: int
    x: int
    y: int
    width: int
    height: int
    enabled: bool


def parse_display_info(payload: bytes) -> list[DisplayMode] | str:
    """``struct virtio_gpu_resp_display_info`` -> every scanout's mode, or the problem."""
    if len(payload) < REPLY_SIZE[GpuRequest.GET_DISPLAY_INFO]:
        return f"display info of {len(payload)} bytes (want {REPLY_SIZE[GpuRequest.GET_DISPLAY_INFO]})"
    out = []
    for i in range(GPU_MAX_SCANOUTS):
        x, y, w, h, enabled, _flags = DISPLAY_ONE.unpack_from(payload, HDR.size + i * DISPLAY_ONE.size)
        out.append(DisplayMode(i, x, y, w, h, bool(enabled)))
    return out


def parse_edid(payload: bytes) -> bytes | str:
    """``struct virtio_gpu_resp_edid`` -> the EDID bytes, or the problem."""
    if len(payload) < REPLY_SIZE[GpuRequest.GET_EDID]:
        return f"EDID reply of {len(payload)} bytes (want {REPLY_SIZE[GpuRequest.GET_EDID]})"
    size, _ = RESP_EDID_BODY.unpack_from(payload, HDR.size)
    if size > 1024:
        return f"EDID size {size} beyond 1024"
    start = HDR.size + RESP_EDID_BODY.size
    return bytes(payload[start:start + size])


@dataclass(frozen=True)
class Reply:
    """A message from the front-end."""

    request: int
    flags: int
    payload: bytes


class ReplyParser:
    """Cuts the front-end's byte stream into :class:`Reply` s; :attr:`broken` says why it cannot go on."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.broken: str | None = None

    def feed(self, data: bytes) -> list[Reply]:
        """Every whole message ``data`` completes (none once the stream is broken)."""
        if self.broken is not None:
            return []
        self._buf += data
        out: list[Reply] = []
        while len(self._buf) >= HEADER.size:
            request, flags, size = HEADER.unpack_from(self._buf)
            if size > MAX_REPLY:
                self.broken = f"message {request} with a {size}-byte payload (at most {MAX_REPLY})"
                self._buf.clear()
                return out
            if len(self._buf) < HEADER.size + size:
                break
            out.append(Reply(request, flags, bytes(self._buf[HEADER.size:HEADER.size + size])))
            del self._buf[:HEADER.size + size]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held."""
        return len(self._buf)


def request_name(code: int) -> str:
    """``GET_DISPLAY_INFO`` etc., or the number."""
    try:
        return GpuRequest(code).name
    except ValueError:
        return str(code)


__all__ = ["CURSOR_BYTES", "FLAG_REPLY", "HEADER", "MAX_REPLY", "OFFERED_FEATURES", "REPLY_SIZE", "DisplayMode",
           "GpuProtocolFeature", "GpuRequest", "Reply", "ReplyParser", "cursor_pos", "cursor_update", "encode",
           "parse_display_info", "parse_edid", "request_name", "scanout", "update_header"]
