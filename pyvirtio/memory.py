"""Guest physical memory: bounds-checked regions backed by anonymous memory or a memfd.

Every access is checked against the region list; an access that misses guest RAM or crosses the end of a
region raises :class:`~pyvirtio.errors.GuestMemoryError` and touches nothing. ``view`` gives zero-copy
``memoryview`` slices for large transfers. A memfd backing lets another process (a vhost-user backend) map the
same bytes.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
from dataclasses import dataclass, field
from enum import Enum

from pyvirtio.errors import GuestMemoryError

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class Backing(Enum):
    """What holds a region's bytes: private anonymous memory, or a memfd another process can map."""

    ANONYMOUS = "anonymous"
    MEMFD = "memfd"


@dataclass
class Region:
    """One contiguous range of guest-physical memory."""

    base: int
    size: int
    backing: Backing = Backing.ANONYMOUS
    name: str = "ram"
    fd: int = -1
    mm: mmap.mmap = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.size <= 0:
            raise ValueError(f"bad region base={self.base:#x} size={self.size:#x}")
        if self.backing is Backing.MEMFD:
            self.fd = os.memfd_create(f"pyvirtio-{self.name}", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, self.size)
            self.mm = mmap.mmap(self.fd, self.size, flags=mmap.MAP_SHARED)
        else:
            self.mm = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    @property
    def end(self) -> int:
        """First guest-physical address after the region."""
        return self.base + self.size

    def close(self) -> None:
        """Unmap the region and close its memfd, if any; the region is unusable afterwards."""
        self.mm.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class GuestMemory:
    """Guest RAM made of non-overlapping regions.

    ``GuestMemory(64 << 20)`` is one region at guest-physical 0; ``GuestMemory.from_ranges([(base, size), ...])``
    builds several. Little-endian helpers read and write the integer widths virtio uses.
    """

    def __init__(self, size: int = 0, *, backing: Backing = Backing.ANONYMOUS) -> None:
        self._regions: list[Region] = []
        self._bases: list[int] = []
        self._last: Region | None = None  # one-entry cache: most accesses hit the region of the previous one
        if size:
            self.add_region(0, size, backing=backing)

    @classmethod
    def from_ranges(
        cls, ranges: list[tuple[int, int]], *, backing: Backing = Backing.ANONYMOUS
    ) -> GuestMemory:
        """Memory with one region per ``(base, size)``, named ``ram0``, ``ram1``, ...; ValueError on overlap."""
        mem = cls()
        for i, (base, size) in enumerate(ranges):
            mem.add_region(base, size, backing=backing, name=f"ram{i}")
        return mem

    def add_region(
        self, base: int, size: int, *, backing: Backing = Backing.ANONYMOUS, name: str = "ram"
    ) -> Region:
        """Add a zero-filled region at ``[base, base+size)``; ValueError if it overlaps an existing one."""
        for r in self._regions:
            if base < r.end and r.base < base + size:
                raise ValueError(f"region [{base:#x}, +{size:#x}) overlaps {r.name}")
        region = Region(base, size, backing, name)
        self._last = None
        i = bisect.bisect(self._bases, base)
        self._regions.insert(i, region)
        self._bases.insert(i, base)
        return region

    @property
    def regions(self) -> tuple[Region, ...]:
        """The regions in ascending address order."""
        return tuple(self._regions)

    @property
    def size(self) -> int:
        """Total bytes of guest RAM (holes between regions not counted)."""
        return sum(r.size for r in self._regions)

    def close(self) -> None:
        """Close every region; release views from :meth:`view` first."""
        for r in self._regions:
            r.close()

    # -- translation ------------------------------------------------------------------------------------------

    def _locate(self, addr: int, n: int) -> tuple[mmap.mmap, int]:
        r = self._last
        if r is not None and r.base <= addr and n >= 0 and addr + n <= r.base + r.size:
            return r.mm, addr - r.base
        if addr < 0 or n < 0:
            raise GuestMemoryError(addr, n, "is negative")
        i = bisect.bisect(self._bases, addr) - 1
        if i < 0:
            raise GuestMemoryError(addr, n)
        r = self._regions[i]
        self._last = r
        off = addr - r.base
        if off + n > r.size:
            why = "outside guest memory" if off >= r.size else "crosses the end of a region"
            raise GuestMemoryError(addr, n, why)
        return r.mm, off

    def contains(self, addr: int, n: int) -> bool:
        """True if ``[addr, addr+n)`` lies inside one region."""
        try:
            self._locate(addr, n)
        except GuestMemoryError:
            return False
        return True

    # -- bytes ------------------------------------------------------------------------------------------------

    def read(self, addr: int, n: int) -> bytes:
        """Copy of ``[addr, addr+n)``; :class:`~pyvirtio.errors.GuestMemoryError` unless inside one region."""
        mm, off = self._locate(addr, n)
        return mm[off : off + n]

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``addr``; GuestMemoryError (nothing written) unless it fits inside one region."""
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        mm, off = self._locate(addr, n)
        mm[off : off + n] = data

    def view(self, addr: int, n: int) -> memoryview:
        """A writable zero-copy view of ``[addr, addr+n)``. Release it before closing the memory."""
        mm, off = self._locate(addr, n)
        return memoryview(mm)[off : off + n]

    def fill(self, addr: int, n: int, byte: int = 0) -> None:
        """Set ``[addr, addr+n)`` to ``byte``; bounds-checked like :meth:`write`."""
        mm, off = self._locate(addr, n)
        mm[off : off + n] = bytes([byte]) * n

    # -- little-endian integers -------------------------------------------------------------------------------

    def read_u8(self, addr: int) -> int:
        """The byte at ``addr`` (bounds-checked)."""
        mm, off = self._locate(addr, 1)
        return mm[off]

    def read_u16(self, addr: int) -> int:
        """The le16 at ``addr`` (bounds-checked)."""
        mm, off = self._locate(addr, 2)
        return int(_U16.unpack_from(mm, off)[0])

    def read_u32(self, addr: int) -> int:
        """The le32 at ``addr`` (bounds-checked)."""
        mm, off = self._locate(addr, 4)
        return int(_U32.unpack_from(mm, off)[0])

    def read_u64(self, addr: int) -> int:
        """The le64 at ``addr`` (bounds-checked)."""
        mm, off = self._locate(addr, 8)
        return int(_U64.unpack_from(mm, off)[0])

    def write_u8(self, addr: int, value: int) -> None:
        """Store the low 8 bits of ``value`` at ``addr`` (bounds-checked)."""
        mm, off = self._locate(addr, 1)
        mm[off] = value & 0xFF

    def write_u16(self, addr: int, value: int) -> None:
        """Store the low 16 bits of ``value`` as le16 at ``addr`` (bounds-checked)."""
        mm, off = self._locate(addr, 2)
        _U16.pack_into(mm, off, value & 0xFFFF)

    def write_u32(self, addr: int, value: int) -> None:
        """Store the low 32 bits of ``value`` as le32 at ``addr`` (bounds-checked)."""
        mm, off = self._locate(addr, 4)
        _U32.pack_into(mm, off, value & 0xFFFFFFFF)

    def write_u64(self, addr: int, value: int) -> None:
        """Store the low 64 bits of ``value`` as le64 at ``addr`` (bounds-checked)."""
        mm, off = self._locate(addr, 8)
        _U64.pack_into(mm, off, value & 0xFFFFFFFFFFFFFFFF)

    def unpack_from(self, fmt: struct.Struct, addr: int) -> tuple[int, ...]:
        """``fmt.unpack_from`` at a guest address, bounds-checked for ``fmt.size`` bytes."""
        mm, off = self._locate(addr, fmt.size)
        return fmt.unpack_from(mm, off)

    def pack_into(self, fmt: struct.Struct, addr: int, *values: int) -> None:
        """``fmt.pack_into`` at a guest address, bounds-checked for ``fmt.size`` bytes."""
        mm, off = self._locate(addr, fmt.size)
        fmt.pack_into(mm, off, *values)
