"""Guest memory as a vhost-user front-end shares it: regions mapped from the descriptors it passes.

Contract. :class:`VhostMemory` is a :class:`~pyvirtio.memory.GuestMemory` (what a device model and its
virtqueues use) whose regions are not allocated here but mapped, ``MAP_SHARED``, from the front-end's file
descriptors (SET_MEM_TABLE, ADD_MEM_REG), each region at its ``mmap_offset`` in the file. Every guest access is
bounds-checked against the mapped regions exactly as :class:`GuestMemory` checks its own (a
:class:`~pyvirtio.errors.GuestMemoryError` outside them): a device never touches a byte outside what it was
given. A region is only mapped after checking it: size non-zero, no overlap with another region (guest-physical
or user address), inside the file (``mmap_offset + size <= file size``), from a regular file (a memfd).

Ring addresses arrive as front-end user addresses: :meth:`VhostMemory.uva_to_gpa` translates a range that lies
inside one region. Changing the map never raises: each operation returns None or a one-line problem.

It overrides :class:`GuestMemory`'s single translation point (``_locate``) and never calls ``add_region``.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import stat
from dataclasses import dataclass, field

from pyvirtio.errors import GuestMemoryError
from pyvirtio.memory import GuestMemory
from pyvirtio.vhost_user.messages import MemRegion

#: Memory slots offered with CONFIGURE_MEM_SLOTS (GET_MAX_MEM_SLOTS).
MAX_MEM_SLOTS = 32
_ADDR_END = 1 << 64


@dataclass
class MappedRegion:
    """One region: guest-physical ``[gpa, gpa+size)`` = front-end ``[uva, uva+size)`` = ``mm[delta:delta+size]``."""

    gpa: int
    size: int
    uva: int
    mmap_offset: int
    mm: mmap.mmap = field(repr=False)
    delta: int = 0  # where the region starts in ``mm`` (the mapping starts at a page boundary of the file)
    file: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the file mapped

    @property
    def key(self) -> tuple[int, int, int, int, tuple[int, int]]:
        """What makes two mappings the same memory: addresses, size, file offset and the file itself."""
        return (self.gpa, self.size, self.uva, self.mmap_offset, self.file)

    @property
    def end(self) -> int:
        """First guest-physical address after the region."""
        return self.gpa + self.size

    def describe(self) -> dict[str, int]:
        """The region as numbers, for reports."""
        return {"gpa": self.gpa, "size": self.size, "uva": self.uva, "mmap_offset": self.mmap_offset}

    def matches(self, r: MemRegion) -> bool:
        """Same guest address, user address and size (REM_MEM_REG ignores the offset)."""
        return (self.gpa, self.uva, self.size) == (r.gpa, r.uva, r.size)


def _check_shape(r: MemRegion) -> str | None:
    if r.size == 0:
        return "region of size 0"
    if r.gpa + r.size > _ADDR_END or r.uva + r.size > _ADDR_END or r.mmap_offset + r.size > _ADDR_END:
        return f"region gpa {r.gpa:#x} size {r.size:#x} wraps the 64-bit address space"
    return None


def _overlap(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 < b1 and b0 < a1


def _map(fd: int, r: MemRegion) -> MappedRegion | str:
    """Map region ``r`` of file ``fd`` read/write shared, or say why not."""
    try:
        st = os.fstat(fd)
    except OSError as e:
        return f"descriptor {fd}: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "descriptor is not a mappable file (want a memfd or a regular file)"
    if r.mmap_offset + r.size > st.st_size:
        return (f"region [{r.mmap_offset:#x}, +{r.size:#x}) lies outside the file "
                f"({st.st_size:#x} bytes)")
    page = mmap.ALLOCATIONGRANULARITY
    start = r.mmap_offset - r.mmap_offset % page
    delta = r.mmap_offset - start
    try:
        mm = mmap.mmap(fd, delta + r.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                       offset=start)
    except (OSError, ValueError, OverflowError) as e:
        return f"cannot map region: {e}"
    return MappedRegion(r.gpa, r.size, r.uva, r.mmap_offset, mm, delta, (st.st_dev, st.st_ino))


class VhostMemory(GuestMemory):
    """Guest RAM made of regions mapped from a vhost-user front-end's descriptors (see the module contract)."""

    def __init__(self, max_slots: int = MAX_MEM_SLOTS) -> None:
        super().__init__()
        self.max_slots = max_slots
        self._mapped: list[MappedRegion] = []  # ascending gpa
        self._gpas: list[int] = []
        self._hit_range: tuple[int, int, mmap.mmap, int] | None = None
        self._zombies: list[mmap.mmap] = []  # unmapped later: a view was still exported

    # -- the map ----------------------------------------------------------------------------------------------

    @property
    def mapped(self) -> tuple[MappedRegion, ...]:
        """The regions, in ascending guest-physical order."""
        return tuple(self._mapped)

    @property
    def size(self) -> int:
        """Total bytes mapped."""
        return sum(r.size for r in self._mapped)

    def _problem(self, r: MemRegion, others: list[MappedRegion]) -> str | None:
        shape = _check_shape(r)
        if shape is not None:
            return shape
        for o in others:
            if _overlap(r.gpa, r.gpa + r.size, o.gpa, o.end):
                return f"region gpa [{r.gpa:#x}, +{r.size:#x}) overlaps [{o.gpa:#x}, +{o.size:#x})"
            if _overlap(r.uva, r.uva + r.size, o.uva, o.uva + o.size):
                return f"region uva [{r.uva:#x}, +{r.size:#x}) overlaps [{o.uva:#x}, +{o.size:#x})"
        return None

    def set_table(self, regions: tuple[MemRegion, ...], fds: tuple[int, ...]) -> str | None:
        """SET_MEM_TABLE: replace the whole map with ``regions`` (one descriptor each, not closed here). On any
        problem nothing changes and the problem is returned."""
        if len(regions) != len(fds):
            return f"{len(regions)} regions but {len(fds)} descriptors"
        checked: list[MappedRegion] = []
        new: list[MappedRegion] = []
        problem: str | None = None
        for r, fd in zip(regions, fds, strict=True):
            problem = self._problem(r, checked)
            if problem is None:
                got = _map(fd, r)
                if isinstance(got, str):
                    problem = got
                else:
                    checked.append(got)
                    new.append(got)
            if problem is not None:
                break
        if problem is not None:
            for m in new:
                self._unmap(m)
            return problem
        if [m.key for m in new] == [m.key for m in self._mapped]:
            # the same memory again (a reconnecting front-end, or another connection sharing this map, as UML's
            # PCI slots do): keep the mappings every queue already resolved its rings to
            for m in new:
                self._unmap(m)
            return None
        for m in self._mapped:
            self._unmap(m)
        self._install(new)
        return None

    def add(self, r: MemRegion, fd: int) -> str | None:
        """ADD_MEM_REG: map one more region (the descriptor is not closed here)."""
        if len(self._mapped) >= self.max_slots:
            return f"all {self.max_slots} memory slots are in use"
        problem = self._problem(r, self._mapped)
        if problem is not None:
            return problem
        got = _map(fd, r)
        if isinstance(got, str):
            return got
        self._install([*self._mapped, got])
        return None

    def remove(self, r: MemRegion) -> str | None:
        """REM_MEM_REG: unmap the region with the same guest address, user address and size."""
        for m in self._mapped:
            if m.matches(r):
                self._install([x for x in self._mapped if x is not m])
                self._unmap(m)
                return None
        return f"no region gpa {r.gpa:#x} uva {r.uva:#x} size {r.size:#x} to remove"

    def clear(self) -> None:
        """Unmap every region (the connection ended)."""
        old = self._mapped
        self._install([])
        for m in old:
            self._unmap(m)

    def close(self) -> None:
        """Unmap everything (GuestMemory's contract)."""
        self.clear()

    def _install(self, regions: list[MappedRegion]) -> None:
        self._mapped = sorted(regions, key=lambda m: m.gpa)
        self._gpas = [m.gpa for m in self._mapped]
        self._hit_range = None

    def _unmap(self, m: MappedRegion) -> None:
        try:
            m.mm.close()
        except BufferError:  # a memoryview from view() is still alive: unmap once it is gone
            self._zombies.append(m.mm)
        live = []
        for z in self._zombies:
            try:
                z.close()
            except BufferError:
                live.append(z)
        self._zombies = live

    # -- translation ------------------------------------------------------------------------------------------

    def _locate(self, addr: int, n: int) -> tuple[mmap.mmap, int]:
        hit = self._hit_range  # (gpa, end, mm, delta - gpa) of the region the previous access used
        if hit is not None and hit[0] <= addr and n >= 0 and addr + n <= hit[1]:
            return hit[2], addr + hit[3]
        if addr < 0 or n < 0:
            raise GuestMemoryError(addr, n, "is negative")
        i = bisect.bisect(self._gpas, addr) - 1
        if i < 0:
            raise GuestMemoryError(addr, n)
        r = self._mapped[i]
        off = addr - r.gpa
        if off + n > r.size:
            why = "outside guest memory" if off >= r.size else "crosses the end of a region"
            raise GuestMemoryError(addr, n, why)
        self._hit_range = (r.gpa, r.end, r.mm, r.delta - r.gpa)
        return r.mm, r.delta + off

    def uva_to_gpa(self, uva: int, n: int) -> int | None:
        """The guest-physical address of front-end user range ``[uva, uva+n)``, if one region holds all of it."""
        if uva < 0 or n < 0:
            return None
        for r in self._mapped:
            if r.uva <= uva and uva + n <= r.uva + r.size:
                return r.gpa + (uva - r.uva)
        return None

    def describe(self) -> list[dict[str, int]]:
        """The regions as numbers, for reports."""
        return [m.describe() for m in self._mapped]


def close_fds(fds: tuple[int, ...] | list[int]) -> None:
    """Close descriptors received from the front-end (ignoring ones already closed)."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


__all__ = ["MAX_MEM_SLOTS", "MappedRegion", "VhostMemory", "close_fds"]
