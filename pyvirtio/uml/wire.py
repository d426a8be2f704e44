"""The PCI-over-virtio wire format of User-Mode Linux (``include/uapi/linux/virtio_pcidev.h``), parsed defensively.

One message is a 16-byte header ``{u8 op; u8 bar; u16 reserved; u32 size; u64 addr}`` (little endian) and
``data[]``. The kernel's ``virt-pci`` driver puts requests on queue 0 ("cmd": configuration and BAR reads and
writes) and takes events from queue 1 ("irq": INTx, MSI, PME); a read's reply is the ``size`` bytes written
into the request's device-writable buffer.

Contract. :func:`parse_command` turns the device-readable bytes of a cmd-queue request (and the size of its
writable part) into exactly one :data:`Command`: an access with its width, or :class:`Rejected` naming the
problem — it never raises, whatever the bytes. Accepted shapes:

=================  =============================================================================================
``CFG_READ``       ``size`` 1, 2, 4 or 8; ``addr + size`` inside the 4 KiB configuration space; a writable part
                   of at least ``size`` bytes
``CFG_WRITE``      header + at least ``size`` data bytes (Linux sends 8); same sizes and range. A CFG_WRITE
                   carrying exactly one data byte is Linux 6.12's BAR memset (``um_pci_bar_set`` sends opcode 2,
                   not 5): a :class:`BarMemset` of ``size`` bytes of BAR ``bar``
``MMIO_READ``      ``bar`` 0..5, ``size`` 1..:data:`MAX_ACCESS`, a writable part of at least ``size`` bytes
``MMIO_WRITE``     ``bar`` 0..5, ``size`` 1..:data:`MAX_ACCESS`, header + ``size`` data bytes
``MMIO_MEMSET``    ``bar`` 0..5, ``size`` 1..:data:`MAX_ACCESS`, header + 1 data byte
=================  =============================================================================================

INT, MSI and PME go the other way (:func:`irq_message`); on the cmd queue they are rejected. :func:`split_access`
cuts a BAR access wider than 4 bytes or misaligned into the naturally aligned 1/2/4-byte accesses a PCI function
takes (a 2-byte access stays one 2-byte access).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

#: ``struct virtio_pcidev_msg`` without ``data``.
HEADER = struct.Struct("<BBHIQ")
HEADER_SIZE = HEADER.size
#: Bytes of PCI configuration space per slot (``CFG_SPACE_SIZE``).
CONFIG_SPACE_SIZE = 4096
#: Standard BARs of a type 0 header.
NUM_BARS = 6
#: Largest BAR read/write/memset accepted (``memcpy_fromio`` may ask for any size; virtio-pci never needs more).
MAX_ACCESS = 64 * 1024
#: What the kernel's irq-queue buffers hold: header + a u32 (``MAX_IRQ_MSG_SIZE``).
IRQ_MESSAGE_SIZE = HEADER_SIZE + 4
#: The MSI address Linux's UML PCI host programs into every MSI/MSI-X entry (``um_pci_compose_msi_msg``); the
#: data is the Linux interrupt number, which the kernel hands to ``generic_handle_irq`` as it is.
UML_MSI_ADDRESS = 0xA0000
_CONFIG_SIZES = (1, 2, 4, 8)


class Op(IntEnum):
    """``enum virtio_pcidev_ops``."""

    RESERVED = 0
    CFG_READ = 1
    CFG_WRITE = 2
    MMIO_READ = 3
    MMIO_WRITE = 4
    MMIO_MEMSET = 5
    INT = 6
    MSI = 7
    PME = 8


@dataclass(frozen=True)
class ConfigRead:
    """Read ``size`` bytes of configuration space at ``offset``."""

    offset: int
    size: int


@dataclass(frozen=True)
class ConfigWrite:
    """Write ``value`` (``size`` bytes) to configuration space at ``offset``."""

    offset: int
    size: int
    value: int


@dataclass(frozen=True)
class BarRead:
    """Read ``size`` bytes of BAR ``bar`` at ``offset`` (the offset inside the BAR)."""

    bar: int
    offset: int
    size: int


@dataclass(frozen=True)
class BarWrite:
    """Write ``data`` to BAR ``bar`` at ``offset``."""

    bar: int
    offset: int
    data: bytes


@dataclass(frozen=True)
class BarMemset:
    """Fill ``size`` bytes of BAR ``bar`` at ``offset`` with ``byte``; ``quirk``: sent as CFG_WRITE (Linux 6.12)."""

    bar: int
    offset: int
    size: int
    byte: int
    quirk: bool = False


@dataclass(frozen=True)
class Rejected:
    """A request that is not a valid command: why (one line), and the header fields that could be read."""

    reason: str
    op: int | None = None


Command = ConfigRead | ConfigWrite | BarRead | BarWrite | BarMemset | Rejected


def reply_size(cmd: Command) -> int:
    """Bytes a command writes back (its read width; 0 for writes and rejected requests)."""
    if isinstance(cmd, ConfigRead | BarRead):
        return cmd.size
    return 0


def parse_command(out: bytes, writable: int) -> Command:
    """The command in a cmd-queue request: ``out`` its device-readable bytes, ``writable`` the size of its
    device-writable part (see the module contract). Never raises."""
    if len(out) < HEADER_SIZE:
        return Rejected(f"request of {len(out)} bytes is shorter than the {HEADER_SIZE}-byte header")
    op, bar, _reserved, size, addr = HEADER.unpack_from(out)
    data = out[HEADER_SIZE:]
    try:
        kind = Op(op)
    except ValueError:
        return Rejected(f"unknown opcode {op}", op)
    if kind in (Op.CFG_READ, Op.CFG_WRITE):
        if kind is Op.CFG_WRITE and len(data) == 1 and bar < NUM_BARS and 0 < size <= MAX_ACCESS:
            return BarMemset(bar, addr, size, data[0], quirk=True)
        if size not in _CONFIG_SIZES:
            return Rejected(f"{kind.name} of {size} bytes (want 1, 2, 4 or 8)", op)
        if addr > CONFIG_SPACE_SIZE - size:
            return Rejected(f"{kind.name} at {addr:#x} (+{size}) is outside the {CONFIG_SPACE_SIZE}-byte "
                            "configuration space", op)
        if kind is Op.CFG_READ:
            if writable < size:
                return Rejected(f"CFG_READ of {size} bytes with a {writable}-byte reply buffer", op)
            return ConfigRead(addr, size)
        if len(data) < size:
            return Rejected(f"CFG_WRITE of {size} bytes carries {len(data)} data bytes", op)
        return ConfigWrite(addr, size, int.from_bytes(data[:size], "little"))
    if kind in (Op.MMIO_READ, Op.MMIO_WRITE, Op.MMIO_MEMSET):
        if bar >= NUM_BARS:
            return Rejected(f"{kind.name} of BAR {bar} (want 0..{NUM_BARS - 1})", op)
        if not 0 < size <= MAX_ACCESS:
            return Rejected(f"{kind.name} of {size} bytes (want 1..{MAX_ACCESS})", op)
        if addr > (1 << 32) - size:
            return Rejected(f"{kind.name} at BAR offset {addr:#x} beyond 4 GiB", op)
        if kind is Op.MMIO_READ:
            if writable < size:
                return Rejected(f"MMIO_READ of {size} bytes with a {writable}-byte reply buffer", op)
            return BarRead(bar, addr, size)
        if kind is Op.MMIO_WRITE:
            if len(data) < size:
                return Rejected(f"MMIO_WRITE of {size} bytes carries {len(data)} data bytes", op)
            return BarWrite(bar, addr, bytes(data[:size]))
        if len(data) < 1:
            return Rejected("MMIO_MEMSET without its data byte", op)
        return BarMemset(bar, addr, size, data[0])
    return Rejected(f"{kind.name} is a device-to-driver message; it has no place on the cmd queue", op)


def split_access(offset: int, size: int) -> list[tuple[int, int]]:
    """``(offset, width)`` pieces of a BAR access: one piece when ``size`` is 1, 2 or 4 and ``offset`` is aligned
    to it; else naturally aligned 4/2/1-byte pieces covering ``[offset, offset+size)`` in order."""
    if size in (1, 2, 4) and offset % size == 0:
        return [(offset, size)]
    out: list[tuple[int, int]] = []
    pos, end = offset, offset + size
    while pos < end:
        for w in (4, 2, 1):
            if pos % w == 0 and pos + w <= end:
                out.append((pos, w))
                pos += w
                break
    return out


def irq_message(op: Op, value: int = 0, *, size: int = 4, addr: int = 0) -> bytes:
    """An irq-queue message: MSI (``value`` = the data the kernel programmed, ``size`` 2 or 4), INT (``addr`` =
    the pin 1..4) or PME (header only, zeroed as Linux expects)."""
    if op is Op.MSI:
        if size not in (2, 4):
            raise ValueError("an MSI carries 2 or 4 data bytes")
        return HEADER.pack(op, 0, 0, size, 0) + (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    if op is Op.INT:
        return HEADER.pack(op, 0, 0, 0, addr)
    if op is Op.PME:
        return HEADER.pack(op, 0, 0, 0, 0)
    raise ValueError(f"{op.name} is not an irq-queue message")


__all__ = ["CONFIG_SPACE_SIZE", "HEADER", "HEADER_SIZE", "IRQ_MESSAGE_SIZE", "MAX_ACCESS", "NUM_BARS",
           "UML_MSI_ADDRESS", "BarMemset", "BarRead", "BarWrite", "Command", "ConfigRead", "ConfigWrite", "Op",
           "Rejected", "irq_message", "parse_command", "reply_size", "split_access"]
