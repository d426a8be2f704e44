"""Driver-side allocator of guest-physical memory (the guest's DMA buffers, rings and indirect tables).

A first-fit free list over one window ``[base, base+size)`` of guest RAM, with alignment and coalescing on
free. It only hands out addresses: nothing outside the window is ever returned, and the window itself must lie
inside one region of :class:`~pyvirtio.memory.GuestMemory`.

Its S4-image state is :class:`AllocatorState` (the window and the allocated blocks; the free list follows from
them), validated like :class:`~pyvirtio.virtqueue.state.QueueState`: plain data, untrusted, re-checked field by
field on the way in.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from pyvirtio.errors import InvalidStateError
from pyvirtio.memory import GuestMemory

__all__ = ["AllocatorState", "AllocatorStateError", "GuestAllocator"]

_ADDR_LIMIT = 1 << 64
_WHAT = "allocator state"


class AllocatorStateError(InvalidStateError):
    """Allocator state failed re-validation (one line naming the field)."""


def _bad(name: str, value: object, why: str) -> AllocatorStateError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return AllocatorStateError(f"{_WHAT} field {name!r} = {shown}: {why}")


@dataclass(frozen=True)
class AllocatorState:
    """The allocator as the S4 image keeps it: the window ``[base, base+size)`` and the allocated blocks
    ``(addr, length)`` in address order. Untrusted: :meth:`from_dict` checks types and ranges (positive lengths,
    blocks inside the window, sorted, not overlapping) and :meth:`validate` that the window is guest RAM."""

    base: int
    size: int
    allocated: tuple[tuple[int, int], ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-able form: ``{"base", "size", "allocated": [[addr, length], ...]}``."""
        return {"base": self.base, "size": self.size, "allocated": [list(b) for b in self.allocated]}

    @classmethod
    def from_dict(cls, data: object) -> AllocatorState:
        """Parse :meth:`to_dict` output; :class:`AllocatorStateError` names the first bad field."""
        if not isinstance(data, dict):
            raise AllocatorStateError(f"{_WHAT}: expected an object, got {type(data).__name__}")
        keys = ("base", "size", "allocated")
        missing = [k for k in keys if k not in data]
        extra = sorted(str(k) for k in data if k not in keys)
        if missing or extra:
            raise AllocatorStateError(f"{_WHAT}: missing fields {missing}, unknown fields {extra}")
        base, size, allocated = data["base"], data["size"], data["allocated"]
        if type(base) is not int or not 0 <= base < _ADDR_LIMIT:
            raise _bad("base", base, "not a 64-bit guest address")
        if type(size) is not int or not 0 < size <= _ADDR_LIMIT - base:
            raise _bad("size", size, "not a positive length inside the 64-bit address space")
        if not isinstance(allocated, list):
            raise _bad("allocated", allocated, "not a list of [addr, length] blocks")
        blocks: list[tuple[int, int]] = []
        cursor = base
        for i, item in enumerate(allocated):
            name = f"allocated[{i}]"
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(type(v) is int for v in item)):
                raise _bad(name, item, "not an [addr, length] pair of integers")
            addr, n = item
            if n <= 0:
                raise _bad(name, item, "length is not positive")
            if addr < cursor:
                raise _bad(name, item, "overlaps or precedes the previous block" if i else "starts before the window")
            if addr + n > base + size:
                raise _bad(name, item, "leaves the window")
            blocks.append((addr, n))
            cursor = addr + n
        return cls(base, size, tuple(blocks))

    def validate(self, mem: GuestMemory) -> None:
        """The window must lie inside guest RAM (one region), as the constructor requires."""
        if not mem.contains(self.base, self.size):
            raise _bad("base", self.base, f"window [{self.base:#x}, +{self.size:#x}) is not inside guest memory")


class GuestAllocator:
    """First-fit allocator over ``[base, base+size)``; ``alloc`` raises MemoryError when nothing fits."""

    def __init__(self, mem: GuestMemory, base: int, size: int) -> None:
        if size <= 0 or not mem.contains(base, size):
            raise ValueError(f"allocator window [{base:#x}, +{size:#x}) is not inside guest memory")
        self.mem = mem
        self.base = base
        self.size = size
        #: the buffer holding the window and the window's offset in it (:meth:`GuestMemory.locate`): a block at
        #: ``addr`` starts at ``window_off + addr - base`` of ``window_buf``
        self.window_buf, self.window_off = mem.locate(base, size)
        self._free_starts: list[int] = [base]  # sorted, disjoint, never adjacent (coalesced)
        self._free_sizes: list[int] = [size]
        self._allocated: dict[int, int] = {}  # address -> length

    @property
    def free_bytes(self) -> int:
        """Bytes not allocated (alignment may keep some of them from being handed out)."""
        return sum(self._free_sizes)

    @property
    def allocated_bytes(self) -> int:
        """Bytes in allocated blocks."""
        return sum(self._allocated.values())

    @property
    def allocations(self) -> int:
        """Number of allocated blocks."""
        return len(self._allocated)

    def allocation(self, addr: int) -> int | None:
        """Length of the block ``alloc`` returned at ``addr``, or None when ``addr`` starts no block."""
        return self._allocated.get(addr)

    def alloc(self, n: int, align: int = 8) -> int:
        """Reserve ``n`` bytes aligned to ``align`` (a power of 2) and return the guest address."""
        if n <= 0:
            raise ValueError(f"allocation size {n} must be positive")
        if align <= 0 or align & (align - 1):
            raise ValueError(f"alignment {align} is not a power of 2")
        starts, sizes = self._free_starts, self._free_sizes
        m = align - 1
        k = 0
        for start in starts:  # first fit: the lowest free block the aligned range fits in
            addr = (start + m) & ~m
            end = start + sizes[k]
            if addr + n <= end:
                break
            k += 1
        else:
            raise MemoryError(f"guest allocator: no {n} bytes aligned to {align} left ({self.free_bytes} free)")
        # carve [addr, addr+n) out of [start, end): the leading pad and the tail stay free blocks
        top = addr + n
        if addr == start:
            if top < end:
                starts[k] = top
                sizes[k] = end - top
            else:
                del starts[k], sizes[k]
        else:
            sizes[k] = addr - start
            if top < end:
                starts.insert(k + 1, top)
                sizes.insert(k + 1, end - top)
        self._allocated[addr] = n
        return addr

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
        end = addr + n
        # coalesce with the free block before and/or after (the free list never holds two adjacent blocks)
        if k and starts[k - 1] + sizes[k - 1] == addr:
            if k < len(starts) and starts[k] == end:
                sizes[k - 1] += n + sizes[k]
                del starts[k], sizes[k]
            else:
                sizes[k - 1] += n
        elif k < len(starts) and starts[k] == end:
            starts[k] = addr
            sizes[k] += n
        else:
            starts.insert(k, addr)
            sizes.insert(k, n)

    def reset(self) -> None:
        """Forget every allocation (e.g. after the guest re-initialises the device)."""
        self._free_starts = [self.base]
        self._free_sizes = [self.size]
        self._allocated.clear()

    # -- guest-kernel state for the S4 image ---------------------------------------------------------------------

    def state(self) -> AllocatorState:
        """The window and the allocated blocks, in address order."""
        return AllocatorState(self.base, self.size, tuple(sorted(self._allocated.items())))

    def save_state(self) -> dict[str, object]:
        """:meth:`state` as a JSON-able dict (what the image header stores)."""
        return self.state().to_dict()

    @classmethod
    def from_state(cls, mem: GuestMemory, state: dict[str, object] | AllocatorState) -> GuestAllocator:
        """Rebuild an allocator from :meth:`save_state` output (or an :class:`AllocatorState`), re-validating
        every field (untrusted input): :class:`AllocatorStateError` names the first bad one."""
        st = state if isinstance(state, AllocatorState) else AllocatorState.from_dict(state)
        st.validate(mem)
        a = cls(mem, st.base, st.size)
        cursor = st.base
        starts: list[int] = []
        sizes: list[int] = []
        for addr, n in st.allocated:
            if addr > cursor:
                starts.append(cursor)
                sizes.append(addr - cursor)
            a._allocated[addr] = n
            cursor = addr + n
        end = st.base + st.size
        if cursor < end:
            starts.append(cursor)
            sizes.append(end - cursor)
        a._free_starts, a._free_sizes = starts, sizes
        return a
