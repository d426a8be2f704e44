"""The deterministic machine: guest memory, a PCI bus of virtio functions, interrupt delivery, a virtual clock.

Everything runs on one seeded :class:`~pyvirtio.clock.Scheduler`: devices work in scheduled steps, interrupts are
delivered as events, and drivers that poll call :meth:`Machine.run_until`. Same inputs, same trace.

The CPU can be stopped (the guest is in S3, or powered off): interrupts raised meanwhile stay pending in the
interrupt controller and are delivered when the CPU runs again, as a LAPIC would hold them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from pyvirtio.clock import MS, Scheduler
from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.pci.function import PciOptions, ResetKind, VirtioPciFunction
from pyvirtio.memory import Backing, GuestMemory
from pyvirtio.spec.constants import FREEZE_MODE_FEATURE_DEFAULT, MSI_ADDRESS_BASE
from pyvirtio.trace import Kind, Trace


class MachineType(Enum):
    """The QEMU machine type modelled: where functions sit and whether they get a PM capability."""

    PC = "pc"  # i440FX: functions sit on the root bus (conventional PCI): no PCIe port, no PM capability
    Q35 = "q35"  # PCIe: functions may sit behind a pcie-root-port and then get the PM capability


@dataclass(frozen=True, slots=True)
class Interrupt:
    """One interrupt the machine delivered (or holds pending while the CPU is stopped)."""

    t: int
    src: str
    kind: str  # "msi" or "intx"
    vector: int | None = None  # MSI-X table entry
    data: int | None = None  # MSI data (the guest's vector number)


class Machine:
    """A machine with ``memory_size`` bytes of guest RAM at guest-physical 0.

    ``machine.plug(device)`` returns the function's four accessors (config_read/config_write/bar_read/bar_write).
    """

    def __init__(
        self,
        memory_size: int = 64 << 20,
        *,
        seed: int = 0,
        machine_type: MachineType | str = MachineType.Q35,
        trace_registers: bool = True,
        backing: Backing = Backing.ANONYMOUS,
    ) -> None:
        self.machine_type = MachineType(machine_type)
        self.scheduler = Scheduler(seed)
        self.trace = Trace(self.scheduler, register_accesses=trace_registers)
        self.memory = GuestMemory(memory_size, backing=backing)
        self.functions: list[VirtioPciFunction] = []
        self.interrupts: list[Interrupt] = []
        self.cpu_running = True
        self._pending: list[tuple[Interrupt, Callable[[], None]]] = []
        self._msi_handlers: dict[int, Callable[[], None]] = {}
        self._intx_handlers: dict[str, Callable[[], None]] = {}
        self._next_msi_data = 0x30
        self._irq_labels: dict[str, str] = {}  # src -> "irq:src" (the interrupt events' labels, formatted once)

    # -- time -------------------------------------------------------------------------------------------------

    @property
    def now(self) -> int:
        """The virtual clock, in ns."""
        return self.scheduler.now

    def run_until(self, predicate: Callable[[], bool], timeout: int = 100 * MS) -> bool:
        """Run the machine until ``predicate()`` holds or ``timeout`` ns of virtual time pass."""
        return self.scheduler.run_until(predicate, timeout)

    def run_for(self, duration: int) -> None:
        """Run the machine for ``duration`` ns of virtual time."""
        self.scheduler.run_for(duration)

    # -- bus --------------------------------------------------------------------------------------------------

    def plug(
        self,
        device: VirtioDevice,
        *,
        pcie_port: bool = False,
        no_soft_reset: bool = False,
        msix_vectors: int | None = None,
        freeze_mode: bool = False,
        freeze_mode_bit: int | None = None,
    ) -> VirtioPciFunction:
        """Plug ``device`` behind a virtio PCI function. ``pcie_port`` needs a q35 machine (PCIe).

        ``freeze_mode`` exposes the 2023 freeze_mode field behind feature bit ``freeze_mode_bit`` (44..49; default
        :data:`~pyvirtio.spec.constants.FREEZE_MODE_FEATURE_DEFAULT`); giving the bit implies the field. The
        function's handshake is then ``fn.freeze_mode``.
        """
        if pcie_port and self.machine_type is not MachineType.Q35:
            raise ValueError("a PCIe root port needs machine type q35")
        if any(f.name == device.name for f in self.functions):
            raise ValueError(f"a device named {device.name!r} is already plugged")
        if freeze_mode and freeze_mode_bit is None:
            freeze_mode_bit = FREEZE_MODE_FEATURE_DEFAULT
        opts = PciOptions(pcie_port=pcie_port, no_soft_reset=no_soft_reset and pcie_port,
                          msix_vectors=msix_vectors, freeze_mode_bit=freeze_mode_bit)
        fn = VirtioPciFunction(device, memory=self.memory, scheduler=self.scheduler, trace=self.trace, irq=self,
                               options=opts)
        self.functions.append(fn)
        return fn

    def function(self, name: str) -> VirtioPciFunction:
        """The function of the device plugged as ``name``; KeyError if none."""
        for f in self.functions:
            if f.name == name:
                return f
        raise KeyError(name)

    def system_reset(self, kind: ResetKind = ResetKind.COLD) -> dict[str, bool]:
        """Reset every function (QEMU ``qemu_devices_reset``); returns which ones were really reset."""
        self.trace.record(Kind.PM, "machine", event="system_reset", kind=kind.value)
        return {f.name: f.system_reset(kind) for f in self.functions}

    # -- interrupt controller -----------------------------------------------------------------------------------

    def alloc_msi(self, handler: Callable[[], None]) -> tuple[int, int]:
        """Give a guest driver an MSI (address, data) pair that calls ``handler`` when signalled."""
        data = self._next_msi_data
        self._next_msi_data += 1
        self._msi_handlers[data] = handler
        return MSI_ADDRESS_BASE, data

    def free_msi(self, data: int) -> None:
        """Forget the MSI handler of ``data`` (a message sent to it afterwards is dropped)."""
        self._msi_handlers.pop(data, None)

    def set_intx_handler(self, src: str, handler: Callable[[], None] | None) -> None:
        """The guest handler of ``src``'s INTx line (None: unhandled)."""
        if handler is None:
            self._intx_handlers.pop(src, None)
        else:
            self._intx_handlers[src] = handler

    def msi(self, src: str, address: int, data: int, vector: int) -> None:
        """An MSI message from ``src``: delivered to the guest handler of ``data``, else dropped (traced)."""
        irq = Interrupt(self.scheduler.now, src, "msi", vector, data)
        handler = self._msi_handlers.get(data) if address & ~0xFFFFF == MSI_ADDRESS_BASE else None
        if handler is None:
            self.trace.record(Kind.INTERRUPT, "machine", src=src, data=data, dropped="no handler")
            return
        if not self.cpu_running:  # _deliver(irq, handler), inline
            self._pending.append((irq, handler))
            return
        self.interrupts.append(irq)
        label = self._irq_labels.get(src)
        if label is None:
            label = self._irq_labels[src] = f"irq:{src}"
        self.scheduler.schedule(0, handler, label=label)

    def intx(self, src: str, level: bool) -> None:
        """``src`` drives its INTx line: a rising level is delivered to its handler (level-triggered)."""
        if not level:
            return
        handler = self._intx_handlers.get(src)
        if handler is None:
            return
        self._deliver(Interrupt(self.now, src, "intx"), handler)

    def _deliver(self, irq: Interrupt, handler: Callable[[], None]) -> None:
        if not self.cpu_running:
            self._pending.append((irq, handler))
            return
        self.interrupts.append(irq)
        label = self._irq_labels.get(irq.src)
        if label is None:
            label = self._irq_labels[irq.src] = f"irq:{irq.src}"
        self.scheduler.schedule(0, handler, label=label)

    def stop_cpu(self) -> None:
        """The guest CPU stops (S3 entered): interrupts are held pending."""
        self.cpu_running = False

    def start_cpu(self) -> None:
        """The guest CPU runs again: pending interrupts are delivered in the order they were raised."""
        self.cpu_running = True
        pending, self._pending = self._pending, []
        for irq, handler in pending:
            self._deliver(irq, handler)

    def drop_pending_interrupts(self) -> None:
        """A power-off or system reset loses whatever the interrupt controller held."""
        self._pending.clear()
