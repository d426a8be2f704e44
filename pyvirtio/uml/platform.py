"""The machine behind UML's PCI bus: pyvirtio's deterministic machine whose guest is a real User-Mode Linux kernel.

Contract. :class:`UmlMachine` is a :class:`~pyvirtio.machine.Machine` (same scheduler, trace, ``plug``) with two
differences:

* its guest memory is the kernel's: a :class:`~pyvirtio.vhost_user.memory.VhostMemory` mapped from the physmem
  file UML passes with SET_MEM_TABLE (every slot's connection passes the same one), so a plugged device's
  virtqueues and buffers are the kernel's own;
* its interrupt controller is the kernel's: an MSI a function sends goes to the slot's
  :class:`~pyvirtio.uml.carrier.PciCarrier` as an MSI message carrying the data the kernel programmed into the
  MSI-X entry, provided the address is UML's MSI address (:data:`~pyvirtio.uml.wire.UML_MSI_ADDRESS`; any other
  address is not an interrupt on this platform: dropped and traced). A rising INTx line becomes an INT message;
  :meth:`UmlMachine.pme` sends PME. Every interrupt is also kept in ``interrupts`` as on the model machine.

Functions plug into slots 0..7 in order (UML's slot is its probe order; one function per slot, function 0).
"""

from __future__ import annotations

from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.machine import Interrupt, Machine, MachineType
from pyvirtio.trace import Kind
from pyvirtio.uml.carrier import PciCarrier, event_record
from pyvirtio.uml.wire import UML_MSI_ADDRESS, Op, irq_message
from pyvirtio.vhost_user.memory import VhostMemory

#: PCI slots UML's virt-pci host offers (``MAX_DEVICES``).
MAX_SLOTS = 8


class UmlMachine(Machine):
    """pyvirtio's machine with the kernel's memory and interrupt delivery (see the module contract)."""

    def __init__(self, *, seed: int = 0, memory: VhostMemory | None = None) -> None:
        super().__init__(0, seed=seed, machine_type=MachineType.Q35)
        self.memory = memory if memory is not None else VhostMemory()
        self.carriers: dict[str, PciCarrier] = {}  # function name -> its slot's carrier
        self.slots: list[VirtioPciFunction] = []

    @property
    def vhost_memory(self) -> VhostMemory:
        """The kernel's memory, as mapped."""
        assert isinstance(self.memory, VhostMemory)
        return self.memory

    def plug(self, device: VirtioDevice, *, pcie_port: bool = False, no_soft_reset: bool = False,
             msix_vectors: int | None = None, freeze_mode: bool = False,
             freeze_mode_bit: int | None = None) -> VirtioPciFunction:
        """Plug ``device`` into the next slot (at most :data:`MAX_SLOTS`); see :meth:`Machine.plug`."""
        if len(self.slots) >= MAX_SLOTS:
            raise ValueError(f"UML's PCI host has {MAX_SLOTS} slots")
        fn = super().plug(device, pcie_port=pcie_port, no_soft_reset=no_soft_reset, msix_vectors=msix_vectors,
                          freeze_mode=freeze_mode, freeze_mode_bit=freeze_mode_bit)
        self.slots.append(fn)
        return fn

    def attach_carrier(self, fn: VirtioPciFunction, carrier: PciCarrier) -> None:
        """Route ``fn``'s interrupts to ``carrier``."""
        self.carriers[fn.name] = carrier

    def msi(self, src: str, address: int, data: int, vector: int) -> None:
        """An MSI from ``src``: an MSI message with ``data`` to the kernel, if ``address`` is UML's MSI address."""
        carrier = self.carriers.get(src)
        if carrier is None or address != UML_MSI_ADDRESS:
            why = "no slot" if carrier is None else f"address {address:#x} is not UML's MSI address"
            self.trace.record(Kind.INTERRUPT, "machine", src=src, data=data, dropped=why)
            return
        self.interrupts.append(Interrupt(self.now, src, "msi", vector, data))
        carrier.send_irq(irq_message(Op.MSI, data), event_record(carrier.slot, Op.MSI, data, f"vector {vector}"))

    def intx(self, src: str, level: bool) -> None:
        """A rising INTx line of ``src``: an INT message (pin A)."""
        carrier = self.carriers.get(src)
        if not level or carrier is None:
            return
        self.interrupts.append(Interrupt(self.now, src, "intx"))
        carrier.send_irq(irq_message(Op.INT, addr=1), event_record(carrier.slot, Op.INT, None, "INTA"))

    def pme(self, src: str) -> None:
        """``src`` signals PME (a wake event for the kernel's virt-pci device)."""
        carrier = self.carriers.get(src)
        if carrier is None:
            return
        self.trace.record(Kind.PM, src, event="pme")
        carrier.send_irq(irq_message(Op.PME), event_record(carrier.slot, Op.PME))


__all__ = ["MAX_SLOTS", "UmlMachine"]
