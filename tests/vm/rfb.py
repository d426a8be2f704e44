"""A minimal RFB (VNC, RFC 6143) client for tests: enough to ask QEMU's VNC server for the cursor shape it holds
(the Cursor pseudo-encoding, -239) — what QEMU's console received, which ``screendump`` does not show."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RAW = 0
CURSOR = -239
#: 32 bits per pixel, depth 24, little-endian, true colour, 8 bits per channel at shifts 16 (R), 8 (G), 0 (B).
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)


@dataclass
class VncCursor:
    """The cursor as the VNC server sent it: hot spot, RGB pixels and the 1-bit mask."""

    hot_x: int
    hot_y: int
    rgb: np.ndarray  # (h, w, 3)
    mask: np.ndarray  # (h, w) bool


class RfbClient:
    """Connects to a VNC server on a UNIX socket, no authentication."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        version = self._read(12)
        if not version.startswith(b"RFB 003."):
            raise OSError(f"not an RFB server: {version!r}")
        self.sock.sendall(b"RFB 003.008\n")
        n = self._read(1)[0]
        types = self._read(n)
        if 1 not in types:
            raise OSError(f"the server wants authentication ({list(types)})")
        self.sock.sendall(b"\x01")
        if struct.unpack(">I", self._read(4))[0] != 0:
            raise OSError("security handshake failed")
        self.sock.sendall(b"\x01")  # shared
        self.width, self.height = struct.unpack(">HH", self._read(4))
        self._read(16)
        self._read(struct.unpack(">I", self._read(4))[0])
        self.sock.sendall(b"\x00\x00\x00\x00" + PIXEL_FORMAT)
        self.sock.sendall(struct.pack(">BxHii", 2, 2, RAW, CURSOR))

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise OSError("the VNC server closed the connection")
            buf += chunk
        return bytes(buf)

    def cursor(self, timeout: float = 10.0) -> VncCursor:
        """Request the screen and read updates until a cursor rectangle arrives."""
        self.sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, self.width, self.height))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kind = self._read(1)[0]
            if kind == 0:
                _, nrects = struct.unpack(">BH", self._read(3))
                found = None
                for _ in range(nrects):
                    x, y, w, h, enc = struct.unpack(">HHHHi", self._read(12))
                    if enc == RAW:
                        self._read(w * h * 4)
                    elif enc == CURSOR:
                        px = np.frombuffer(self._read(w * h * 4), dtype=np.uint8).reshape(h, w, 4)
                        rowbytes = (w + 7) // 8
                        bits = np.unpackbits(np.frombuffer(self._read(rowbytes * h), dtype=np.uint8).reshape(
                            h, rowbytes), axis=1)[:, :w]
                        found = VncCursor(x, y, px[..., [2, 1, 0]].copy(), bits.astype(bool))
                    else:
                        raise OSError(f"unexpected encoding {enc}")
                if found is not None:
                    return found
                self.sock.sendall(struct.pack(">BBHHHH", 3, 1, 0, 0, self.width, self.height))
            elif kind == 2:  # bell
                continue
            elif kind == 3:  # server cut text
                self._read(3)
                self._read(struct.unpack(">I", self._read(4))[0])
            else:
                raise OSError(f"unexpected server message {kind}")
        raise OSError("no cursor from the VNC server")

    def close(self) -> None:
        self.sock.close()
