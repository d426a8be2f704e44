"""Driver-side allocator of guest-physical memory (the guest's DMA buffers, rings and indirect tables).

A first-fit free list over one window ``[base, base+size)`` of guest RAM, with alignment and coalescing on
free. It only hands out addresses: nothing outside the window is ever returned, and the window itself must lie
inside one region of :class:`~pyvirtio.memory.GuestMemory`.
"""

from __future__ import annotations

import bisect

from pyvirtio.memory import GuestMemory

__all__ = ["GuestAllocator"]


class GuestAllocator:
    """First-fit allocator over ``[base, base+size)``; ``alloc`` raises MemoryError when nothing fits."""

    def __init__(self, mem: GuestMemory, base: int, size: int) -> None:
        if size <= 0 or not mem.contains(base, size):
            raise ValueError(f"allocator window [{base:#x}, +{size:#x}) is not inside guest memory")
        self.mem = mem
        self.base = base
        self.size = size
        self._free_starts: list[int] = [base]  # sorted, disjoint, never adjacent (coalesced)
        self._free_sizes: list[int] = [size]
        self._allocated: dict[int, int] = {}  # address -> length

    @property
    def free_bytes(self) -> int:
        return sum(self._free_sizes)

    @property
    def allocated_bytes(self) -> int:
        return sum(self._allocated.values())

    @property
    def allocations(self) -> int:
        return len(self._allocated)

    def alloc(self, n: int, align: int = 8) -> int:
        """Reserve ``n`` bytes aligned to ``align`` (a power of 2) and return the guest address."""
        if n <= 0:
            raise ValueError(f"allocation size {n} must be positive")
        if align <= 0 or align & (align - 1):
            raise ValueError(f"alignment {align} is not a power of 2")
        starts, sizes = self._free_starts, self._free_sizes
        for k, (start, length) in enumerate(zip(starts, sizes, strict=True)):
            addr = (start + align - 1) & ~(align - 1)
            end = start + length
            if addr + n > end:
                continue
            # carve [addr, addr+n) out of [start, end): keep the leading pad and the tail as free blocks
            del starts[k], sizes[k]
            if addr + n < end:
                starts.insert(k, addr + n)
                sizes.insert(k, end - addr - n)
            if addr > start:
                starts.insert(k, start)
                sizes.insert(k, addr - start)
            self._allocated[addr] = n
            return addr
        raise MemoryError(f"guest allocator: no {n} bytes aligned to {align} left ({self.free_bytes} free)")

    def alloc_bytes(self, data: bytes | bytearray | memoryview, align: int = 8) -> int:
        """Allocate ``len(data)`` bytes and copy ``data`` there."""
        raw = bytes(data)
        addr = self.alloc(len(raw), align)
        self.mem.write(addr, raw)
        return addr

    def free(self, addr: int) -> None:
        """Release an allocation; ValueError for an address ``alloc`` did not return (or a double free)."""
        n = self._allocated.pop(addr, None)
        if n is None:
            raise ValueError(f"guest allocator: {addr:#x} is not an allocated block")
        starts, sizes = self._free_starts, self._free_sizes
        k = bisect.bisect(starts, addr)
        start, end = addr, addr + n
        if k < len(starts) and starts[k] == end:  # merge with the following block
            end += sizes[k]
            del starts[k], sizes[k]
        if k > 0 and starts[k - 1] + sizes[k - 1] == start:  # merge with the preceding block
            k -= 1
            start = starts[k]
            del starts[k], sizes[k]
        starts.insert(k, start)
        sizes.insert(k, end - start)

    def reset(self) -> None:
        """Forget every allocation (e.g. after the guest re-initialises the device)."""
        self._free_starts = [self.base]
        self._free_sizes = [self.size]
        self._allocated.clear()

    # -- guest-kernel state for the S4 image ---------------------------------------------------------------------

    def save_state(self) -> dict[str, object]:
        return {"base": self.base, "size": self.size, "allocated": sorted(self._allocated.items())}

    @classmethod
    def from_state(cls, mem: GuestMemory, state: dict[str, object]) -> GuestAllocator:
        """Rebuild an allocator from :meth:`save_state` output, re-validating every block (untrusted input)."""
        base, size, allocated = state.get("base"), state.get("size"), state.get("allocated")
        if not isinstance(base, int) or not isinstance(size, int) or not isinstance(allocated, list):
            raise ValueError("malformed allocator state")
        a = cls(mem, base, size)
        cursor = base
        starts: list[int] = []
        sizes: list[int] = []
        for item in allocated:
            if not (isinstance(item, (list, tuple)) and len(item) == 2
                    and all(isinstance(v, int) for v in item)):
                raise ValueError("malformed allocator block")
            addr, n = item
            if n <= 0 or addr < cursor or addr + n > base + size:
                raise ValueError(f"allocator block [{addr:#x}, +{n:#x}) overlaps or leaves the window")
            if addr > cursor:
                starts.append(cursor)
                sizes.append(addr - cursor)
            a._allocated[addr] = n
            cursor = addr + n
        if cursor < base + size:
            starts.append(cursor)
            sizes.append(base + size - cursor)
        a._free_starts, a._free_sizes = starts, sizes
        return a
