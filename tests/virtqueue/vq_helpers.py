"""Helpers for the split-virtqueue tests: guest memory with a hole, a driver/device pair, raw ring writers.

A uniquely named module (not ``conftest``) so test files can import it whatever other test folders hold.
"""

from __future__ import annotations

import struct

from pyvirtio.dma import GuestAllocator
from pyvirtio.errors import GuestMemoryError
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import VIRTQ_IDX_MASK
from pyvirtio.virtqueue import DeviceQueue, DriverQueue, RingLayout
from pyvirtio.virtqueue.chain import DESC_STRUCT

#: Guest RAM: two regions with a hole between them, so "outside guest memory" has several shapes.
RAM0 = (0x0, 0x100000)  # 1 MiB: rings + allocator
RAM1 = (0x200000, 0x10000)  # 64 KiB after a 1 MiB hole
RING_BASE = 0x1000
ALLOC_BASE = 0x80000
ALLOC_SIZE = 0x80000

_U16 = struct.Struct("<H")


class SpyMemory(GuestMemory):
    """GuestMemory that records every access that missed guest RAM (there must never be one)."""

    def __init__(self) -> None:
        super().__init__()
        self.misses: list[tuple[int, int]] = []

    def _locate(self, addr: int, n: int):  # type: ignore[no-untyped-def]
        try:
            return super()._locate(addr, n)
        except GuestMemoryError:
            self.misses.append((addr, n))
            raise

    def contains(self, addr: int, n: int) -> bool:  # a bounds *query* is not an access
        try:
            GuestMemory._locate(self, addr, n)
        except GuestMemoryError:
            return False
        return True

    def snapshot(self) -> list[bytes]:
        return [bytes(r.mm) for r in self.regions]


def make_memory() -> SpyMemory:
    mem = SpyMemory()
    for i, (base, size) in enumerate((RAM0, RAM1)):
        mem.add_region(base, size, name=f"ram{i}")
    return mem


class Rig:
    """A driver queue and a device queue over the same rings, plus raw writers for hostile tests."""

    def __init__(self, size: int = 8, *, event_idx: bool = False, indirect: bool = False) -> None:
        self.mem = make_memory()
        self.alloc = GuestAllocator(self.mem, ALLOC_BASE, ALLOC_SIZE)
        self.layout = RingLayout.contiguous(RING_BASE, size)
        self.size = size
        self.drv = DriverQueue(self.mem, self.layout, event_idx=event_idx, indirect=indirect, alloc=self.alloc)
        self.dev = DeviceQueue(self.mem, size)
        self.dev.desc_table = self.layout.desc
        self.dev.avail_ring = self.layout.avail
        self.dev.used_ring = self.layout.used
        self.dev.event_idx = event_idx
        self.dev.indirect = indirect
        self.dev.activate()
        self._raw_avail = 0

    # raw driver-side writes (bypass DriverQueue, as a hostile guest would)
    def desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        self.mem.pack_into(DESC_STRUCT, self.layout.desc + 16 * i, addr, length, flags, nxt)

    def table(self, entries: list[tuple[int, int, int, int]]) -> int:
        """Write an indirect table into allocator memory; returns its address."""
        raw = b"".join(DESC_STRUCT.pack(*e) for e in entries)
        return self.alloc.alloc_bytes(raw, 16)

    def publish(self, head: int) -> None:
        idx = self._raw_avail
        self.mem.pack_into(_U16, self.layout.avail + 4 + 2 * (idx % self.size), head)
        self._raw_avail = (idx + 1) & VIRTQ_IDX_MASK
        self.mem.pack_into(_U16, self.layout.avail + 2, self._raw_avail)

    def set_avail_idx(self, idx: int) -> None:
        self._raw_avail = idx & VIRTQ_IDX_MASK
        self.mem.pack_into(_U16, self.layout.avail + 2, self._raw_avail)

    def buf(self, n: int, fill: bytes = b"") -> int:
        addr = self.alloc.alloc(max(n, 1), 8)
        if fill:
            self.mem.write(addr, fill)
        return addr

    def u16(self, addr: int) -> int:
        return int(self.mem.read_u16(addr))

    @property
    def used_idx(self) -> int:
        return self.u16(self.layout.used + 2)

    @property
    def avail_event(self) -> int:
        return self.u16(self.layout.used + 4 + 8 * self.size)

    @property
    def used_event(self) -> int:
        return self.u16(self.layout.avail + 4 + 2 * self.size)

    def used_elem(self, slot: int) -> tuple[int, int]:
        base = self.layout.used + 4 + 8 * (slot % self.size)
        return int(self.mem.read_u32(base)), int(self.mem.read_u32(base + 4))

    def used_ring_span(self) -> tuple[int, int]:
        return self.layout.used, 6 + 8 * self.size


def changed_outside(mem: SpyMemory, before: list[bytes], allowed: list[tuple[int, int]]) -> list[int]:
    """Guest addresses that differ from ``before`` and are not inside one of the ``allowed`` spans."""
    out: list[int] = []
    for r, old in zip(mem.regions, before, strict=True):
        new = bytearray(r.mm)
        for start, n in allowed:  # take the allowed spans out of the comparison
            lo, hi = max(start, r.base), min(start + n, r.end)
            if lo < hi:
                new[lo - r.base : hi - r.base] = old[lo - r.base : hi - r.base]
        if new == old:
            continue
        chunk = 4096
        for c in range(0, len(old), chunk):
            if new[c : c + chunk] != old[c : c + chunk]:
                pairs = zip(old[c : c + chunk], new[c : c + chunk], strict=True)
                out += [r.base + c + k for k, (a, b) in enumerate(pairs) if a != b]
    return out
