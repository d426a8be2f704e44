"""Split-virtqueue memory layout (virtio 1.4 §2.7 "Split Virtqueues").

Sizes and alignments of the three parts for Queue Size ``n``::

    Descriptor Table   align 16   16*n
    Available Ring     align  2   6 + 2*n   (flags, idx, ring[n], used_event)
    Used Ring          align  4   6 + 8*n   (flags, idx, ring[n] of {id, len}, avail_event)

The event fields are always counted: the spec's size table includes them whether or not EVENT_IDX is
negotiated.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import (
    VIRTQ_AVAIL_ALIGN,
    VIRTQ_AVAIL_ELEM_SIZE,
    VIRTQ_DESC_ALIGN,
    VIRTQ_DESC_SIZE,
    VIRTQ_IDX_MASK,
    VIRTQ_LEGACY_ALIGN,
    VIRTQ_MAX_SIZE,
    VIRTQ_RING_ENTRIES,
    VIRTQ_RING_HEADER_SIZE,
    VIRTQ_USED_ALIGN,
    VIRTQ_USED_ELEM_SIZE,
)

__all__ = [
    "RingLayout",
    "avail_ring_size",
    "desc_table_size",
    "is_valid_queue_size",
    "used_ring_size",
    "vring_need_event",
]


def is_valid_queue_size(n: int) -> bool:
    """Split-ring Queue Size rule (§2.7): a power of 2, at most 32768."""
    return 0 < n <= VIRTQ_MAX_SIZE and n & (n - 1) == 0


def desc_table_size(n: int) -> int:
    """Bytes of the Descriptor Table for Queue Size ``n`` (16*n)."""
    return VIRTQ_DESC_SIZE * n


def avail_ring_size(n: int) -> int:
    """Bytes of the Available Ring including ``used_event`` (6 + 2*n)."""
    return VIRTQ_RING_HEADER_SIZE + VIRTQ_AVAIL_ELEM_SIZE * n


def used_ring_size(n: int) -> int:
    """Bytes of the Used Ring including ``avail_event`` (6 + 8*n)."""
    return VIRTQ_RING_HEADER_SIZE + VIRTQ_USED_ELEM_SIZE * n


def used_event_offset(n: int) -> int:
    """Offset of ``used_event`` inside the Available Ring (4 + 2*n)."""
    return VIRTQ_RING_ENTRIES + VIRTQ_AVAIL_ELEM_SIZE * n


def avail_event_offset(n: int) -> int:
    """Offset of ``avail_event`` inside the Used Ring (4 + 8*n)."""
    return VIRTQ_RING_ENTRIES + VIRTQ_USED_ELEM_SIZE * n


def vring_need_event(event: int, new: int, old: int) -> bool:
    """EVENT_IDX test for a batch (§2.7.7, §2.7.10; Linux/QEMU ``vring_need_event``).

    True if moving an index from ``old`` to ``new`` (u16, at most 65535 steps) wrote the entry at ``event``,
    i.e. if ``event`` lies in ``[old, new)`` modulo 2^16.
    """
    return ((new - event - 1) & VIRTQ_IDX_MASK) < ((new - old) & VIRTQ_IDX_MASK)


def _align_up(x: int, a: int) -> int:
    return (x + a - 1) & ~(a - 1)


@dataclass(frozen=True)
class RingLayout:
    """Guest-physical addresses of one split virtqueue's three parts."""

    size: int
    desc: int
    avail: int
    used: int

    @classmethod
    def contiguous(cls, base: int, size: int) -> RingLayout:
        """The tightest aligned layout of the three parts, starting at ``base`` (which must be 16-aligned)."""
        if not is_valid_queue_size(size):
            raise ValueError(f"queue size {size} is not a power of 2 in 1..{VIRTQ_MAX_SIZE}")
        if base < 0 or base % VIRTQ_DESC_ALIGN:
            raise ValueError(f"base {base:#x} is not {VIRTQ_DESC_ALIGN}-byte aligned")
        avail = _align_up(base + desc_table_size(size), VIRTQ_AVAIL_ALIGN)
        used = _align_up(avail + avail_ring_size(size), VIRTQ_USED_ALIGN)
        return cls(size, base, avail, used)

    @classmethod
    def legacy(cls, base: int, size: int, align: int = VIRTQ_LEGACY_ALIGN) -> RingLayout:
        """Legacy-interface layout (§2.7.2): table and avail ring, padding to ``align``, then the used ring.

        ``base`` must be ``align``-aligned (legacy PCI passes a page frame number).
        """
        if not is_valid_queue_size(size):
            raise ValueError(f"queue size {size} is not a power of 2 in 1..{VIRTQ_MAX_SIZE}")
        if align <= 0 or align & (align - 1) or base < 0 or base % align:
            raise ValueError(f"base {base:#x} is not aligned to {align:#x}")
        avail = base + desc_table_size(size)
        used = base + _align_up(desc_table_size(size) + avail_ring_size(size), align)
        return cls(size, base, avail, used)

    @property
    def total_bytes(self) -> int:
        """Bytes from the lowest to the highest byte of the three parts (the span to allocate)."""
        parts = self._parts()
        return max(a + n for a, n in parts) - min(a for a, _ in parts)

    def _parts(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        n = self.size
        return (
            (self.desc, desc_table_size(n)),
            (self.avail, avail_ring_size(n)),
            (self.used, used_ring_size(n)),
        )

    def problem(self, mem: GuestMemory) -> tuple[str, str] | None:
        """Why this layout is unusable in ``mem`` (§2.7 alignment/size rules) as ``(attribute, reason)``.

        ``attribute`` is ``"size"``, ``"desc"``, ``"avail"`` or ``"used"``; None means the layout is fine.
        """
        if not is_valid_queue_size(self.size):
            return "size", f"queue size {self.size} is not a power of 2 in 1..{VIRTQ_MAX_SIZE}"
        names = ("desc", "avail", "used")
        titles = ("descriptor table", "available ring", "used ring")
        aligns = (VIRTQ_DESC_ALIGN, VIRTQ_AVAIL_ALIGN, VIRTQ_USED_ALIGN)
        for name, title, align, (addr, n) in zip(names, titles, aligns, self._parts(), strict=True):
            if addr % align:
                return name, f"{title} address {addr:#x} is not {align}-byte aligned"
            if not mem.contains(addr, n):
                return name, f"{title} [{addr:#x}, +{n:#x}) is not inside guest memory"
        return None
