"""MSI-X for one PCI function (PCI 3.0 §6.8.2; virtio 1.4 §4.1.5.1.2): capability, table, PBA, masking, delivery.

Contract. :class:`Msix` owns the vector table (``BAR1 + 0``) and the pending-bit array (``BAR1 + 0x800``, QEMU's
layout) and the capability's Message Control word in the function's configuration space. A message sent to a
masked vector (its Mask bit, or the function's Mask All) sets the vector's pending bit instead and is delivered
when the vector is unmasked. The function may also hold every message (``may_send`` false: bus mastering off, an
MSI is a memory write; the device suspended, virtio 1.4 Device Suspend): it stays pending until the function
calls :meth:`Msix.deliver_pending` again. :meth:`Msix.clear_pending` forgets every pending message (a virtio
reset: QEMU ``msix_unuse_all_vectors``). Guest accesses of the wrong width, misaligned or outside the table are
ignored (reads give 0); the PBA is read-only. Nothing here raises on guest input.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

from pyvirtio.host.pci.configspace import ConfigSpace
from pyvirtio.spec.constants import (
    PCI_MSIX_CAP_SIZE,
    PCI_MSIX_ENTRY_CTRL_MASKBIT,
    PCI_MSIX_ENTRY_SIZE,
    PCI_MSIX_ENTRY_VECTOR_CTRL,
    PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_FLAGS_MASKALL,
    QEMU_MSIX_BAR,
    PciCapId,
)
from pyvirtio.trace import Kind, Trace

#: Size of the MSI-X BAR (table then PBA) and where the PBA starts in it (QEMU ``virtio-pci``).
MSIX_BAR_SIZE = 0x1000
MSIX_PBA_OFFSET = 0x800
#: Largest table the capability's 11-bit Table Size field can describe.
MSIX_MAX_VECTORS = 0x800

_ENTRY = struct.Struct("<IIII")  # address lo, address hi, data, vector control


class MsiSink(Protocol):
    """Where an MSI message goes (the machine's interrupt controller)."""

    def msi(self, src: str, address: int, data: int, vector: int) -> None:
        """Deliver the message ``data`` written to ``address``, sent through table entry ``vector``."""


class Msix:
    """The MSI-X capability of one function with ``nvectors`` table entries."""

    def __init__(self, cfg: ConfigSpace, nvectors: int, *, sink: MsiSink, trace: Trace, name: str,
                 may_send: Callable[[], bool] | None = None) -> None:
        """A table of ``nvectors`` entries (1..2048); ``may_send`` says whether the function may send a message
        now (None: always)."""
        if not 1 <= nvectors <= MSIX_MAX_VECTORS:
            raise ValueError(f"MSI-X table size must be 1..{MSIX_MAX_VECTORS}")
        self.cfg = cfg
        self.nvectors = nvectors
        self.sink = sink
        self.may_send: Callable[[], bool] = may_send if may_send is not None else (lambda: True)
        self.trace = trace
        self.name = name
        self.table = bytearray(nvectors * PCI_MSIX_ENTRY_SIZE)
        self.pending = [False] * nvectors
        self.cap = 0
        self.mask_all_entries()

    def add_capability(self) -> int:
        """Append the capability to the configuration space (table in BAR1 at 0, PBA at 0x800); its offset."""
        # spec: dev:pci/msix#2 (Table Size = entries - 1, PCI encoding)
        self.cap = self.cfg.add_capability(
            PciCapId.MSIX,
            struct.pack("<HII", self.nvectors - 1, 0 | QEMU_MSIX_BAR, MSIX_PBA_OFFSET | QEMU_MSIX_BAR),
            size=PCI_MSIX_CAP_SIZE,
        )
        flags = (PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL) >> 8
        self.cfg.set_wmask(self.cap + PCI_MSIX_FLAGS + 1, 1, flags)
        return self.cap

    # -- state ------------------------------------------------------------------------------------------------

    @property
    def flags(self) -> int:
        """The capability's Message Control word."""
        return self.cfg.get(self.cap + PCI_MSIX_FLAGS, 2)

    @property
    def enabled(self) -> bool:
        """MSI-X Enable: messages instead of INTx."""
        return bool(self.flags & PCI_MSIX_FLAGS_ENABLE)

    def mask_all_entries(self) -> None:
        """PCI 3.0: after reset every MSI-X table entry is zero with its Mask bit set."""
        for v in range(self.nvectors):
            _ENTRY.pack_into(self.table, v * PCI_MSIX_ENTRY_SIZE, 0, 0, 0, PCI_MSIX_ENTRY_CTRL_MASKBIT)

    def reset(self) -> None:
        """Conventional reset: Enable and Mask All cleared, every entry masked, nothing pending."""
        self.cfg.set(self.cap + PCI_MSIX_FLAGS, 2, self.flags & ~(PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL))
        self.mask_all_entries()
        self.clear_pending()

    def clear_pending(self) -> None:
        """Forget every pending message (a reset: what was pending must never be sent afterwards)."""
        self.pending = [False] * self.nvectors

    def entry(self, vector: int) -> tuple[int, int, int, int]:
        """Table entry ``vector``: (address lo, address hi, data, vector control)."""
        lo, hi, data, ctrl = _ENTRY.unpack_from(self.table, vector * PCI_MSIX_ENTRY_SIZE)
        return lo, hi, data, ctrl

    def masked(self, vector: int) -> bool:
        """Mask All, or the entry's own Mask bit."""
        return bool(self.flags & PCI_MSIX_FLAGS_MASKALL) or bool(self.entry(vector)[3] & PCI_MSIX_ENTRY_CTRL_MASKBIT)

    # -- delivery ---------------------------------------------------------------------------------------------

    def send(self, vector: int, why: str) -> None:
        """Signal ``vector`` (a valid table index): delivered now, or left pending while masked or held."""
        # masked(vector) and entry(vector), read once
        lo, hi, data, ctrl = _ENTRY.unpack_from(self.table, vector * PCI_MSIX_ENTRY_SIZE)
        o = self.cap + PCI_MSIX_FLAGS
        if (int.from_bytes(self.cfg.data[o : o + 2], "little") & PCI_MSIX_FLAGS_MASKALL  # (Mask All: flags)
                or ctrl & PCI_MSIX_ENTRY_CTRL_MASKBIT or not self.may_send()):
            self.pending[vector] = True
            self.trace.record(Kind.INTERRUPT, self.name, vector=vector, why=why, pending=True)
            return
        self.trace.record(Kind.INTERRUPT, self.name, vector=vector, why=why)
        self.sink.msi(self.name, (hi << 32) | lo, data, vector)

    def deliver_pending(self) -> None:
        """Send every pending message whose vector is no longer masked (after an unmask, or when the function may
        send again); nothing while the function holds its messages."""
        if not self.may_send():
            return
        for v in range(self.nvectors):
            if self.pending[v] and not self.masked(v):
                self.pending[v] = False
                self.send(v, "pending")

    # -- guest accessors: the MSI-X BAR -----------------------------------------------------------------------

    def bar_read(self, offset: int, size: int) -> int:
        """A read of the table or the PBA (offset within the MSI-X BAR)."""
        if offset < len(self.table):
            if offset % size:
                return 0
            return int.from_bytes(self.table[offset : offset + size], "little")
        if offset >= MSIX_PBA_OFFSET:
            bits = sum(1 << v for v, p in enumerate(self.pending) if p)
            shift = (offset - MSIX_PBA_OFFSET) * 8
            return (bits >> shift) & ((1 << (8 * size)) - 1)
        return 0

    def bar_write(self, offset: int, size: int, value: int) -> None:
        """A write of the table; a write of a Vector Control word may unmask and deliver a pending message."""
        if offset + size > len(self.table) or offset % size:
            return  # the PBA is read-only; outside the table nothing is there
        self.table[offset : offset + size] = value.to_bytes(size, "little")
        if offset % PCI_MSIX_ENTRY_SIZE >= PCI_MSIX_ENTRY_VECTOR_CTRL:
            self.deliver_pending()


__all__ = ["MSIX_BAR_SIZE", "MSIX_MAX_VECTORS", "MSIX_PBA_OFFSET", "MsiSink", "Msix"]
