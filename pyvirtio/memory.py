"""Guest physical memory: bounds-checked regions backed by anonymous memory or a memfd.

Every access is checked against the region list; an access that misses guest RAM or crosses the end of a
region raises :class:`~pyvirtio.errors.GuestMemoryError` and touches nothing. ``view`` gives zero-copy
``memoryview`` slices for large transfers. A memfd backing lets another process (a vhost-user backend) map the
same bytes.

Memory costs what the guest touched: the kernel maps pages lazily, :meth:`GuestMemory.fill` with zeros gives
whole pages back to the kernel instead of writing them, :meth:`Region.written_chunks` tells which parts were
never materialised (so an S4 image skips them without reading them) and :meth:`Region.load_file` makes a
region a copy-on-write mapping of a file (an S4 restore costs nothing until the guest touches a page). The
buffer of a region never moves: a load replaces its content in place, so views and :meth:`GuestMemory.locate`
results stay valid for the memory's lifetime.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from pyvirtio.errors import GuestMemoryError

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
#: Linux's MAP_FIXED (the same value on every architecture Linux runs Python on); the mmap module lacks it.
_MAP_FIXED = 0x10
#: /proc/self/pagemap: an 8-byte entry per page; bit 63 "present", bit 62 "swapped" (Documentation/admin-guide/mm/
#: pagemap.rst). A page of private anonymous memory with neither bit was never written (or was given back): zero.
_PAGEMAP = "/proc/self/pagemap"
_PAGEMAP_IN_USE = np.uint64(3 << 62)
_PAGE = mmap.PAGESIZE
_FILL_CHUNK = 1 << 20
#: What the one-entry region cache holds before the first access (never read: its range is empty).
_NO_MAP = mmap.mmap(-1, _PAGE)


def _libc_mmap() -> Callable[..., int | None] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).mmap
    except (OSError, AttributeError):  # pragma: no cover - not a libc platform
        return None
    fn.restype = ctypes.c_void_p
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64)
    return fn


_mmap_fixed = _libc_mmap()


def _address(mm: mmap.mmap) -> int:
    """Where ``mm``'s bytes start in this process (the buffer export is released at once)."""
    probe = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(probe)
    finally:
        del probe


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
    #: private anonymous pages only: a page the process never wrote reads as zero (false once a file is loaded)
    _anonymous: bool = field(init=False, repr=False, default=False)
    #: a private mapping (anonymous, or a file loaded copy-on-write): nobody else sees it, it may be replaced
    _private: bool = field(init=False, repr=False, default=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.size <= 0:
            raise ValueError(f"bad region base={self.base:#x} size={self.size:#x}")
        if self.backing is Backing.MEMFD:
            self.fd = os.memfd_create(f"pyvirtio-{self.name}", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, self.size)
            self.mm = mmap.mmap(self.fd, self.size, flags=mmap.MAP_SHARED)
        else:
            self.mm = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self._anonymous = self._private = True

    @property
    def end(self) -> int:
        """First guest-physical address after the region."""
        return self.base + self.size

    def zero(self, off: int, n: int) -> None:
        """Set bytes ``[off, off+n)`` of the region (already bounds-checked) to zero. Whole pages go back to the
        kernel (anonymous: MADV_DONTNEED, memfd: MADV_REMOVE; both read as zeros after), so zeroing costs no
        memory; the partial pages at either end, and every page of a region loaded from a file, are written."""
        lo = -(-off // _PAGE) * _PAGE
        hi = (off + n) // _PAGE * _PAGE
        if hi - lo >= _PAGE and (self._anonymous or self.backing is Backing.MEMFD):
            self._write_zeros(off, lo - off)
            self.mm.madvise(mmap.MADV_DONTNEED if self._anonymous else mmap.MADV_REMOVE, lo, hi - lo)
            self._write_zeros(hi, off + n - hi)
        else:
            self._write_zeros(off, n)

    def _write_zeros(self, off: int, n: int) -> None:
        zeros = bytes(min(n, _FILL_CHUNK))
        end = off + n
        while off < end:
            k = min(len(zeros), end - off)
            self.mm[off : off + k] = zeros[:k] if k < len(zeros) else zeros
            off += k

    def written_chunks(self, chunk: int) -> list[bool] | None:
        """For each ``chunk``-byte piece of the region (the last may be shorter), False when it certainly holds
        only zeros because the kernel never materialised a page of it (anonymous: no page present or swapped in
        /proc/self/pagemap; memfd: a hole); True when it may hold data. None when this cannot be known (a
        region loaded from a file, no pagemap): the caller must read the bytes. Nothing is read or faulted in.
        """
        if chunk <= 0 or chunk % _PAGE:
            raise ValueError(f"chunk {chunk} is not a positive multiple of the page size {_PAGE}")
        nchunks = -(-self.size // chunk)
        if self.backing is Backing.MEMFD:
            return self._memfd_chunks(chunk, nchunks)
        if not self._anonymous:
            return None
        pages = -(-self.size // _PAGE)
        try:
            with open(_PAGEMAP, "rb", buffering=0) as f:
                raw = os.pread(f.fileno(), 8 * pages, _address(self.mm) // _PAGE * 8)
        except OSError:
            return None
        if len(raw) != 8 * pages:
            return None
        used = (np.frombuffer(raw, dtype="<u8") & _PAGEMAP_IN_USE) != 0
        per = chunk // _PAGE
        padded = np.zeros(nchunks * per, dtype=bool)
        padded[:pages] = used
        out: list[bool] = np.asarray(padded.reshape(nchunks, per).any(axis=1)).tolist()
        return out

    def _memfd_chunks(self, chunk: int, nchunks: int) -> list[bool] | None:
        out = [False] * nchunks
        pos = 0
        try:
            while pos < self.size:
                start = os.lseek(self.fd, pos, os.SEEK_DATA)
                if start >= self.size:
                    break
                end = min(os.lseek(self.fd, start, os.SEEK_HOLE), self.size)
                for k in range(start // chunk, -(-end // chunk)):
                    out[k] = True
                pos = end
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos
                return out
            return None
        return out

    def load_file(self, fd: int, offset: int) -> None:
        """Make the region's bytes the ``size`` bytes of file ``fd`` from ``offset``, in place (the buffer does not
        move: views stay valid).

        Private memory (anonymous, or loaded before) becomes a private copy-on-write mapping of the file (MAP_FIXED
        over the region): nothing is read until the guest touches a page, and a page is copied only when it is
        written. The file must then stay unchanged while the region lives (as for any memory-mapped snapshot; an
        unlinked file is fine). Shared memory (a memfd: other processes map it) keeps its backing and gets a kernel
        copy of the bytes. ``offset`` must be a multiple of ``mmap.ALLOCATIONGRANULARITY`` for the mapping;
        otherwise, and where the mapping is refused, the bytes are copied. OSError if the file cannot be read.
        """
        if (not self._private or _mmap_fixed is None or offset % mmap.ALLOCATIONGRANULARITY
                or not self._map_fixed(fd, offset)):
            self._copy_from(fd, offset)

    def _map_fixed(self, fd: int, offset: int) -> bool:
        assert _mmap_fixed is not None
        addr = _address(self.mm)
        got = _mmap_fixed(addr, self.size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | _MAP_FIXED, fd,
                          offset)
        if got != addr:
            # MAP_FIXED failed before replacing anything (EACCES, ENODEV, ...): the old pages are still there
            return False
        self._anonymous = False
        return True

    def _copy_from(self, fd: int, offset: int) -> None:
        view = memoryview(self.mm)
        try:
            pos = 0
            while pos < self.size:
                n = os.preadv(fd, [view[pos : pos + (8 << 20)]], offset + pos)
                if n <= 0:
                    raise OSError(5, f"file ends {self.size - pos} bytes before the region does")
                pos += n
        finally:
            view.release()

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
        self._last_mm = _NO_MAP
        self._last_base = 0
        self._last_end = -1
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
        self._last, self._last_mm, self._last_base, self._last_end = None, _NO_MAP, 0, -1
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
        if self._last_base <= addr and n >= 0 and addr + n <= self._last_end:
            return self._last_mm, addr - self._last_base
        if addr < 0 or n < 0:
            raise GuestMemoryError(addr, n, "is negative")
        i = bisect.bisect(self._bases, addr) - 1
        if i < 0:
            raise GuestMemoryError(addr, n)
        r = self._regions[i]
        self._last, self._last_mm, self._last_base, self._last_end = r, r.mm, r.base, r.base + r.size
        off = addr - r.base
        if off + n > r.size:
            why = "outside guest memory" if off >= r.size else "crosses the end of a region"
            raise GuestMemoryError(addr, n, why)
        return r.mm, off

    def locate(self, addr: int, n: int) -> tuple[mmap.mmap, int]:
        """The buffer holding ``[addr, addr+n)`` and the offset of ``addr`` in it (GuestMemoryError unless inside
        one region), for hot paths that check a range once and then ``struct``-pack or unpack inside it many
        times. The buffer is the region's for the memory's lifetime."""
        return self._locate(addr, n)

    def contains(self, addr: int, n: int) -> bool:
        """True if ``[addr, addr+n)`` lies inside one region."""
        if self._last_base <= addr and n >= 0 and addr + n <= self._last_end:
            return True
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
        """Set ``[addr, addr+n)`` to ``byte``; bounds-checked like :meth:`write`. Zeroing whole pages gives them
        back to the kernel (:meth:`Region.zero`): it costs no memory."""
        mm, off = self._locate(addr, n)
        r = self._last
        if byte == 0 and r is not None and r.mm is mm:
            r.zero(off, n)
            return
        # any other byte, or memory mapped by a subclass (vhost-user): write the bytes
        pattern = bytes([byte]) * min(n, _FILL_CHUNK)
        end = off + n
        while off < end:
            k = min(len(pattern), end - off)
            mm[off : off + k] = pattern if k == len(pattern) else pattern[:k]
            off += k

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
