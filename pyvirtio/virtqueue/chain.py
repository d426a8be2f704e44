"""Descriptors and validated descriptor chains (virtio 1.4 §2.7.5 "The Virtqueue Descriptor Table").

A :class:`DescriptorChain` is what the device gets from a queue: the head index (the id it must return in the
used ring) and the buffer as two ordered lists of ``(guest address, length)`` segments, device-readable first.
It is independent of the ring format; the split-ring walk that produces it lives in
:mod:`pyvirtio.virtqueue.device`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import VIRTQ_DESC_SIZE

__all__ = ["DESC_STRUCT", "Descriptor", "DescriptorChain", "Segment"]

#: ``struct virtq_desc``: le64 addr, le32 len, le16 flags, le16 next (16 bytes).
DESC_STRUCT = struct.Struct("<QIHH")
assert DESC_STRUCT.size == VIRTQ_DESC_SIZE

Segment = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One ``struct virtq_desc`` (§2.7.5)."""

    addr: int
    len: int
    flags: int
    next: int

    @classmethod
    def from_bytes(cls, raw: bytes, offset: int = 0) -> Descriptor:
        """Decode the 16-byte descriptor at ``offset`` of ``raw``."""
        return cls(*DESC_STRUCT.unpack_from(raw, offset))

    def to_bytes(self) -> bytes:
        """The 16-byte little-endian wire form."""
        return DESC_STRUCT.pack(self.addr, self.len, self.flags, self.next)

    @classmethod
    def load(cls, mem: GuestMemory, addr: int) -> Descriptor:
        """Read the descriptor at guest address ``addr`` (bounds-checked)."""
        return cls(*mem.unpack_from(DESC_STRUCT, addr))

    def store(self, mem: GuestMemory, addr: int) -> None:
        """Write the descriptor at guest address ``addr`` (bounds-checked)."""
        mem.pack_into(DESC_STRUCT, addr, self.addr, self.len, self.flags, self.next)


@dataclass(slots=True)
class DescriptorChain:
    """A buffer popped from a virtqueue.

    ``readable``/``writable`` hold the device-readable and device-writable segments in chain order (§2.7.4
    "Message Framing": readable before writable). When the chain broke a MUST of §2.7.5, ``error`` says which
    and both lists are empty: the chain is consumed all the same, and the device returns ``head`` with len 0.
    """

    head: int
    readable: list[Segment] = field(default_factory=list)
    writable: list[Segment] = field(default_factory=list)
    error: str | None = None

    @property
    def readable_len(self) -> int:
        """Total bytes of the device-readable segments."""
        segs = self.readable
        if len(segs) == 1:
            return segs[0][1]
        return sum(n for _, n in segs)

    @property
    def writable_len(self) -> int:
        """Total bytes of the device-writable segments: the most the device may report as written."""
        segs = self.writable
        if len(segs) == 1:
            return segs[0][1]
        return sum(n for _, n in segs)

    def read(self, mem: GuestMemory, n: int | None = None, offset: int = 0) -> bytes:
        """Gather up to ``n`` bytes (all if None) of the device-readable part, from ``offset``.

        Returns fewer bytes when the readable part ends first.
        """
        if offset < 0 or (n is not None and n < 0):
            raise ValueError("offset and n must be >= 0")
        want = -1 if n is None else n
        if want == 0:
            return b""
        # spec: dev:split/framing#1, dev:split/desc#1
        # Only the readable segments are read, gathered in chain order whatever their number and sizes.
        segs = self.readable
        if len(segs) == 1 and offset == 0:  # fast path: one segment, read from the start
            addr, ln = segs[0]
            return mem.read(addr, ln if want < 0 or want > ln else want)
        parts: list[bytes] = []
        for addr, ln in segs:
            if offset >= ln:
                offset -= ln
                continue
            take = ln - offset
            if want >= 0 and take > want:
                take = want
            parts.append(mem.read(addr + offset, take))
            offset = 0
            if want >= 0:
                want -= take
                if want == 0:
                    break
        return b"".join(parts)

    def write(self, mem: GuestMemory, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """Scatter ``data`` into the device-writable part from ``offset``; returns the bytes written.

        Never writes beyond the writable part: excess data is dropped (truncated).
        """
        if offset < 0:
            raise ValueError("offset must be >= 0")
        # spec: dev:split/framing#1, dev:split/desc#1
        # Only the writable segments are written, scattered in chain order whatever their number and sizes.
        segs = self.writable
        if len(segs) == 1 and offset == 0 and type(data) is bytes:  # fast path: bytes into one segment
            addr, ln = segs[0]
            n = len(data)
            if n <= ln:
                mem.write(addr, data)
                return n
            mem.write(addr, data[:ln])
            return ln
        src = memoryview(data).cast("B")
        total = len(src)
        pos = 0
        for addr, ln in self.writable:
            if pos >= total:
                break
            if offset >= ln:
                offset -= ln
                continue
            take = min(ln - offset, total - pos)
            mem.write(addr + offset, src[pos : pos + take])
            pos += take
            offset = 0
        return pos
