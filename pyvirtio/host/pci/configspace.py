"""A 4 KiB PCI configuration space with write masks and a capability list builder.

Contract. Guest writes go through :meth:`ConfigSpace.guest_write`: a bit changes only where the write mask
allows it, and a 1 written where the write-1-to-clear mask is set clears that bit. The device side (``set``)
ignores the masks. Capabilities are dword aligned and must fit the 256-byte legacy space (ValueError otherwise,
a construction error, never a guest one).
"""

from __future__ import annotations

import struct

from pyvirtio.spec.constants import PCI_CAPABILITY_LIST, PCI_CONFIG_SPACE_SIZE, PCI_STATUS, PciStatusReg


class ConfigSpace:
    """Bytes plus a per-byte writable mask and a write-1-to-clear mask, like QEMU's ``config``/``wmask``."""

    def __init__(self) -> None:
        self.data = bytearray(PCI_CONFIG_SPACE_SIZE)
        self.wmask = bytearray(PCI_CONFIG_SPACE_SIZE)
        self.w1cmask = bytearray(PCI_CONFIG_SPACE_SIZE)
        self._cap_tail = 0  # offset of the last capability's "next" byte, 0 = header pointer
        self._next_free = 0x40

    def get(self, offset: int, size: int) -> int:
        """Little-endian value of ``size`` bytes at ``offset`` (no masks: the device's view)."""
        return int.from_bytes(self.data[offset : offset + size], "little")

    def set(self, offset: int, size: int, value: int) -> None:
        """Store ``value`` in ``size`` bytes at ``offset`` regardless of the masks (device side)."""
        self.data[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def set_wmask(self, offset: int, size: int, mask: int) -> None:
        """Which bits of ``size`` bytes at ``offset`` a guest may write."""
        self.wmask[offset : offset + size] = mask.to_bytes(size, "little")

    def guest_write(self, offset: int, size: int, value: int) -> None:
        """Apply a guest write through the masks."""
        for i in range(size):
            b = (value >> (8 * i)) & 0xFF
            o = offset + i
            wm, w1c = self.wmask[o], self.w1cmask[o]
            self.data[o] = (self.data[o] & ~wm & 0xFF) | (b & wm)
            self.data[o] &= ~(b & w1c) & 0xFF

    def add_capability(self, cap_id: int, body: bytes, size: int | None = None) -> int:
        """Append a capability (``body`` excludes id/next) to the list; returns its offset (dword aligned)."""
        length = size if size is not None else 2 + len(body)
        offset = self._next_free
        if offset + length > 0x100:
            raise ValueError("capability list exceeds the 256-byte legacy config space")
        self.data[offset] = cap_id
        self.data[offset + 1] = 0
        self.data[offset + 2 : offset + 2 + len(body)] = body
        if self._cap_tail == 0:
            self.data[PCI_CAPABILITY_LIST] = offset
            self.set(PCI_STATUS, 2, self.get(PCI_STATUS, 2) | PciStatusReg.CAP_LIST)
        else:
            self.data[self._cap_tail] = offset
        self._cap_tail = offset + 1
        self._next_free = (offset + length + 3) & ~3
        return offset


def pack_virtio_cap(cfg_type: int, bar: int, offset: int, length: int, cap_len: int, extra: bytes = b"") -> bytes:
    """Body of ``struct virtio_pci_cap`` after cap_vndr/cap_next (§2.2): cap_len, cfg_type, bar, id, pad, off, len."""
    return struct.pack("<BBBBxxII", cap_len, cfg_type, bar, 0, offset, length) + extra
