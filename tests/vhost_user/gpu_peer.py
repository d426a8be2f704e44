"""Test helpers for the served gpu: the front-end's end of the display socket (what QEMU's console does) and
virtio-gpu control commands built by hand for the Python front-end's rings."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import numpy as np

from pyvirtio.spec.constants import GpuCmd, GpuFormat
from pyvirtio.spec.gpu_wire import (
    ATTACH_BODY,
    CREATE_2D_BODY,
    CURSOR_BODY,
    DISPLAY_ONE,
    FLUSH_BODY,
    GET_EDID_BODY,
    HDR,
    MEM_ENTRY,
    RESOURCE_ID_BODY,
    RESP_EDID_BODY,
    SET_SCANOUT_BODY,
    TRANSFER_2D_BODY,
)
from pyvirtio.vhost_user.gpu_protocol import FLAG_REPLY, HEADER, GpuRequest
from pyvirtio.vhost_user.messages import Request

from .frontend import Frontend


@dataclass
class DisplayMsg:
    """One message the back-end sent on the display socket."""

    request: int
    flags: int
    payload: bytes

    @property
    def name(self) -> str:
        return GpuRequest(self.request).name

    def u32(self, i: int) -> int:
        return int.from_bytes(self.payload[4 * i:4 * i + 4], "little")


class DisplayPeer:
    """The front-end's end of a display socket: reads the back-end's messages, answers its requests."""

    def __init__(self, fe: Frontend, *, features: int = 0x3, mode: tuple[int, int] = (1280, 800),
                 answer: bool = True) -> None:
        self.fe = fe
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.features = features
        self.mode = mode
        self.answer = answer
        self.buf = bytearray()
        self.msgs: list[DisplayMsg] = []
        self.edid = bytes(range(128))
        fe.send(Request.GPU_SET_SOCKET, b"", [theirs.fileno()])
        theirs.close()
        fe.pump()

    def read(self) -> list[DisplayMsg]:
        """Everything the back-end sent since the last call (answering requests as QEMU does)."""
        new: list[DisplayMsg] = []
        for _ in range(10000):
            self.fe.pump()
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                data = b""
            if not data and not self._whole():
                break
            self.buf += data
            while self._whole():
                req, flags, size = HEADER.unpack_from(self.buf)
                m = DisplayMsg(req, flags, bytes(self.buf[HEADER.size:HEADER.size + size]))
                del self.buf[:HEADER.size + size]
                new.append(m)
                if self.answer:
                    self._answer(m)
        self.msgs += new
        return new

    def _whole(self) -> bool:
        if len(self.buf) < HEADER.size:
            return False
        return len(self.buf) >= HEADER.size + HEADER.unpack_from(self.buf)[2]

    def reply(self, request: int, payload: bytes, flags: int = FLAG_REPLY) -> None:
        self.sock.sendall(HEADER.pack(request, flags, len(payload)) + payload)

    def _answer(self, m: DisplayMsg) -> None:
        if m.request == GpuRequest.GET_PROTOCOL_FEATURES:
            self.reply(m.request, self.features.to_bytes(8, "little"))
        elif m.request == GpuRequest.GET_DISPLAY_INFO:
            w, h = self.mode
            body = HDR.pack(0x1101, 0, 0, 0, 0) + DISPLAY_ONE.pack(0, 0, w, h, 1, 0) + bytes(15 * DISPLAY_ONE.size)
            self.reply(m.request, body)
        elif m.request == GpuRequest.GET_EDID:
            body = HDR.pack(0x1104, 0, 0, 0, 0) + RESP_EDID_BODY.pack(len(self.edid), 0)
            self.reply(m.request, body + self.edid + bytes(1024 - len(self.edid)))

    def updates(self) -> list[DisplayMsg]:
        return [m for m in self.msgs if m.request == GpuRequest.UPDATE]

    def close(self) -> None:
        self.sock.close()


def command(cmd: int, body: bytes = b"", fence: int | None = None) -> bytes:
    """A control request: header (fenced when ``fence`` is given) and body."""
    return HDR.pack(cmd, 1 if fence is not None else 0, fence or 0, 0, 0) + body


class GpuDriver:
    """Enough of a virtio-gpu driver, over the Python front-end's rings, to show an image and a cursor."""

    def __init__(self, fe: Frontend) -> None:
        self.fe = fe
        self.responses: list[int] = []  # addresses of the writable parts, in order

    def send(self, req: bytes, resp_len: int = 24, queue: int = 0) -> int:
        addr = self.fe.submit(queue, resp_len, req)
        self.fe.run()
        return addr

    def resp_type(self, addr: int) -> int:
        return int.from_bytes(self.fe.mem.read(addr, 4), "little")

    def image(self, rid: int, pixels: np.ndarray, fmt: int = GpuFormat.B8G8R8X8_UNORM) -> int:
        """RESOURCE_CREATE_2D + backing holding ``pixels`` ((h, w, 4) uint8, format bytes) + TRANSFER; the
        backing's guest address."""
        h, w = pixels.shape[:2]
        raw = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
        addr = self.fe.alloc.alloc(len(raw), 4096)
        self.fe.mem.write(addr, raw)
        self.send(command(GpuCmd.RESOURCE_CREATE_2D, CREATE_2D_BODY.pack(rid, fmt, w, h)))
        self.send(command(GpuCmd.RESOURCE_ATTACH_BACKING, ATTACH_BODY.pack(rid, 1) + MEM_ENTRY.pack(addr, len(raw), 0)))
        self.transfer(rid, 0, 0, w, h)
        return addr

    def transfer(self, rid: int, x: int, y: int, w: int, h: int, offset: int | None = None) -> int:
        res = self.fe.server.device.resources[rid]  # type: ignore[attr-defined]
        off = y * res.stride + x * 4 if offset is None else offset
        return self.send(command(GpuCmd.TRANSFER_TO_HOST_2D, TRANSFER_2D_BODY.pack(x, y, w, h, off, rid, 0)))

    def set_scanout(self, sid: int, rid: int, x: int, y: int, w: int, h: int) -> int:
        return self.send(command(GpuCmd.SET_SCANOUT, SET_SCANOUT_BODY.pack(x, y, w, h, sid, rid)))

    def flush(self, rid: int, x: int, y: int, w: int, h: int) -> int:
        return self.send(command(GpuCmd.RESOURCE_FLUSH, FLUSH_BODY.pack(x, y, w, h, rid, 0)))

    def unref(self, rid: int) -> int:
        return self.send(command(GpuCmd.RESOURCE_UNREF, RESOURCE_ID_BODY.pack(rid, 0)))

    def display_info(self) -> bytes:
        addr = self.send(command(GpuCmd.GET_DISPLAY_INFO), 24 + 16 * 24)
        return self.fe.mem.read(addr, 24 + 16 * 24)

    def get_edid(self, sid: int = 0) -> bytes:
        addr = self.send(command(GpuCmd.GET_EDID, GET_EDID_BODY.pack(sid, 0)), 24 + 8 + 1024)
        raw = self.fe.mem.read(addr, 24 + 8 + 1024)
        size = int.from_bytes(raw[24:28], "little")
        return raw[32:32 + size]

    def cursor(self, cmd: int, sid: int, x: int, y: int, rid: int = 0, hot: tuple[int, int] = (0, 0)) -> None:
        self.send(command(cmd, CURSOR_BODY.pack(sid, x, y, 0, rid, hot[0], hot[1], 0)), 0, queue=1)


def pattern(w: int, h: int, seed: int = 1) -> np.ndarray:
    """A deterministic (h, w, 4) byte image."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 4), dtype=np.uint8)
