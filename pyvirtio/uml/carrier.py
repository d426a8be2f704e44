"""The PCI-over-virtio device of one slot: a virtio device whose queues carry a PCI function's register accesses.

Contract. :class:`PciCarrier` is the device UML's ``virt-pci`` driver binds (virtio id
:data:`~pyvirtio.vm.uml_kernel.PCI_OVER_VIRTIO_DEVICE_ID`), served over vhost-user by pyvirtio's back-end core
like any device model. Queue 0 ("cmd") holds the kernel's requests: each is parsed by
:func:`~pyvirtio.uml.wire.parse_command` and performed on the slot's PCI function with its exact width — a
config access as one access (an 8-byte one as two 4-byte ones), a BAR access as one access when it is 1, 2 or 4
aligned bytes, else as the naturally aligned pieces :func:`~pyvirtio.uml.wire.split_access` gives; a memset as
byte writes. The reply (a read's bytes) goes into the request's writable part and the request is returned on
the used ring, with ``len`` = bytes written. A request that is not a valid command is returned with ``len`` 0
(a read the kernel then sees as all-ones) and recorded as a violation naming the problem; nothing raises.

Queue 1 ("irq") holds buffers the kernel posts for events: :meth:`PciCarrier.send_irq` puts a message (MSI with
the data the kernel programmed, INTx, PME) into the next buffer, or keeps it until the kernel posts one. Every
command and every event is handed to ``on_wire`` as a :class:`WireRecord`: the register-level trace.

It offers VERSION_1 only: the kernel's rings are plain split rings.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from pyvirtio.host.device import VirtioDevice
from pyvirtio.spec.constants import DeviceId, Feature, bit
from pyvirtio.uml.wire import (
    HEADER_SIZE,
    MAX_ACCESS,
    BarMemset,
    BarRead,
    BarWrite,
    Command,
    ConfigRead,
    ConfigWrite,
    Op,
    Rejected,
    parse_command,
    split_access,
)
from pyvirtio.vm.uml_kernel import PCI_OVER_VIRTIO_DEVICE_ID

CMD_QUEUE = 0
IRQ_QUEUE = 1
#: Ring size UML's virtio_uml uses (``MAX_SUPPORTED_QUEUE_SIZE``).
QUEUE_SIZE = 256
#: Largest device-readable part read from a request (a header and the largest write).
MAX_REQUEST = HEADER_SIZE + MAX_ACCESS


class PciTarget(Protocol):
    """The four accessors of a PCI function (a :class:`~pyvirtio.host.pci.function.VirtioPciFunction`, or a
    :class:`~pyvirtio.conformance.driver_monitor.DriverMonitor` around one)."""

    def config_read(self, offset: int, size: int) -> int:
        """Read configuration space."""

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Write configuration space."""

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        """Read a BAR."""

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        """Write a BAR."""


@dataclass(frozen=True)
class WireRecord:
    """One entry of the register-level trace: a command the kernel sent or an event sent to it.

    ``op`` is the wire opcode's name (``CFG_READ`` ... ``PME``; ``MEMSET`` for either memset form;
    ``REJECTED``), ``value`` the value read or written (None for a memset, an event without data, a rejection),
    ``note`` what else there is to say (the memset quirk, the reason of a rejection, the MSI-X vector)."""

    t: int
    slot: int
    op: str
    bar: int | None = None
    offset: int = 0
    size: int = 0
    value: int | None = None
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        """The record as JSON-ready data."""
        d: dict[str, object] = {"t": self.t, "slot": self.slot, "op": self.op, "offset": self.offset,
                                "size": self.size}
        if self.bar is not None:
            d["bar"] = self.bar
        if self.value is not None:
            d["value"] = self.value
        if self.note:
            d["note"] = self.note
        return d

    def line(self) -> str:
        """One line for a trace listing (virtual time in µs)."""
        where = f"cfg {self.offset:#05x}" if self.bar is None else f"bar{self.bar} {self.offset:#06x}"
        val = "" if self.value is None else f" = {self.value:#0{2 + 2 * max(1, min(self.size, 8))}x}"
        note = f"  ({self.note})" if self.note else ""
        if self.op in ("MSI", "INT", "PME"):
            where = ""
        return f"{self.t / 1000:12.3f} us  slot{self.slot} {self.op:<10} {where}/{self.size}{val}{note}".replace(
            " /0", "")


class PciCarrier(VirtioDevice):
    """The virt-pci device of slot ``slot`` (see the module contract)."""

    device_id = cast(DeviceId, PCI_OVER_VIRTIO_DEVICE_ID)  # not a standard virtio id: there is none for this
    queue_sizes = (QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, slot: int, target: PciTarget, on_wire: Callable[[WireRecord], None]) -> None:
        super().__init__(f"virt-pci{slot}", offer_suspend=False, latency=0)
        self.slot = slot
        self.target = target
        self.on_wire = on_wire
        self._irqs: deque[tuple[bytes, WireRecord]] = deque()
        self.commands = 0
        self.rejected = 0

    def offered_features(self) -> int:
        """VERSION_1 only."""
        return bit(Feature.VERSION_1)

    def on_reset(self) -> None:
        """The kernel's virtio reset of the carrier forgets the events not delivered yet."""
        self._irqs.clear()

    # -- queue 0: commands --------------------------------------------------------------------------------------

    def process_queue(self, index: int) -> None:
        """Serve every request of the cmd queue, or deliver held events into the irq queue's buffers."""
        if index == CMD_QUEUE:
            self._serve()
        elif index == IRQ_QUEUE:
            self._flush_irqs()

    def _serve(self) -> None:
        mem = self.ctx.memory
        while self.can_process():
            chain = self.pop(CMD_QUEUE)
            if chain is None:
                return
            self.commands += 1
            if chain.readable_len > MAX_REQUEST:
                cmd: Command = Rejected(f"request of {chain.readable_len} bytes (at most {MAX_REQUEST})")
            else:
                cmd = parse_command(chain.read(mem), chain.writable_len)
            reply = self.perform(cmd)
            written = chain.write(mem, reply) if reply else 0
            self.complete(CMD_QUEUE, chain, written)

    def perform(self, cmd: Command) -> bytes:
        """Perform ``cmd`` on the function; the reply bytes (empty for a write or a rejection)."""
        t, s, fn = self.now, self.slot, self.target
        if isinstance(cmd, ConfigRead):
            if cmd.size == 8:
                lo = fn.config_read(cmd.offset, 4)
                value = lo | fn.config_read(cmd.offset + 4, 4) << 32
            else:
                value = fn.config_read(cmd.offset, cmd.size)
            self.on_wire(WireRecord(t, s, "CFG_READ", None, cmd.offset, cmd.size, value))
            return value.to_bytes(cmd.size, "little")
        if isinstance(cmd, ConfigWrite):
            self.on_wire(WireRecord(t, s, "CFG_WRITE", None, cmd.offset, cmd.size, cmd.value))
            if cmd.size == 8:
                fn.config_write(cmd.offset, 4, cmd.value & 0xFFFFFFFF)
                fn.config_write(cmd.offset + 4, 4, cmd.value >> 32)
            else:
                fn.config_write(cmd.offset, cmd.size, cmd.value)
            return b""
        if isinstance(cmd, BarRead):
            out = bytearray()
            for off, width in split_access(cmd.offset, cmd.size):
                out += fn.bar_read(cmd.bar, off, width).to_bytes(width, "little")
            value = int.from_bytes(out, "little")
            self.on_wire(WireRecord(t, s, "MMIO_READ", cmd.bar, cmd.offset, cmd.size, value,
                                    "" if len(split_access(cmd.offset, cmd.size)) == 1 else "split"))
            return bytes(out)
        if isinstance(cmd, BarWrite):
            pieces = split_access(cmd.offset, len(cmd.data))
            self.on_wire(WireRecord(t, s, "MMIO_WRITE", cmd.bar, cmd.offset, len(cmd.data),
                                    int.from_bytes(cmd.data, "little"), "" if len(pieces) == 1 else "split"))
            for off, width in pieces:
                rel = off - cmd.offset
                fn.bar_write(cmd.bar, off, width, int.from_bytes(cmd.data[rel:rel + width], "little"))
            return b""
        if isinstance(cmd, BarMemset):
            note = f"byte {cmd.byte:#04x}" + (", sent as CFG_WRITE (Linux 6.12 um_pci_bar_set)" if cmd.quirk else "")
            self.on_wire(WireRecord(t, s, "MEMSET", cmd.bar, cmd.offset, cmd.size, None, note))
            for off, width in split_access(cmd.offset, cmd.size):
                fn.bar_write(cmd.bar, off, width, int.from_bytes(bytes([cmd.byte]) * width, "little"))
            return b""
        self.rejected += 1
        self.violation("virt-pci: malformed request on the cmd queue", reason=cmd.reason)
        self.on_wire(WireRecord(t, s, "REJECTED", None, 0, 0, None, cmd.reason))
        return b""

    # -- queue 1: events ----------------------------------------------------------------------------------------

    def send_irq(self, message: bytes, record: WireRecord) -> None:
        """Deliver an event message (see :func:`~pyvirtio.uml.wire.irq_message`) now, or when a buffer comes."""
        self._irqs.append((message, record))
        self._flush_irqs()

    @property
    def held_irqs(self) -> int:
        """Events waiting for an irq-queue buffer."""
        return len(self._irqs)

    def _flush_irqs(self) -> None:
        mem = self.ctx.memory
        while self._irqs and self.can_process():
            chain = self.pop(IRQ_QUEUE)
            if chain is None:
                return
            message, record = self._irqs.popleft()
            if chain.writable_len < len(message):
                self.violation("virt-pci: irq buffer smaller than an event message", size=chain.writable_len)
            written = chain.write(mem, message)
            self.complete(IRQ_QUEUE, chain, written)
            self.on_wire(WireRecord(self.now, record.slot, record.op, None, record.offset, record.size,
                                    record.value, record.note))


def event_record(slot: int, op: Op, value: int | None = None, note: str = "") -> WireRecord:
    """The record of an event (time filled in when it is delivered)."""
    return WireRecord(0, slot, op.name, None, 0, 4 if op is Op.MSI else 0, value, note)


__all__ = ["CMD_QUEUE", "IRQ_QUEUE", "MAX_REQUEST", "QUEUE_SIZE", "PciCarrier", "PciTarget", "WireRecord",
           "event_record"]
