"""The ISR status capability (virtio 1.4 §4.1.4.5): presence, the two bits, the PCI Interrupt Status mirror and
read-to-clear. ISR is at BAR4 + 0x1000 (QEMU layout), one byte; bit 0 = queue, bit 1 = configuration change.
"""

from __future__ import annotations

import pytest

from pyvirtio.devices import Rng, TestDevice
from pyvirtio.dma import GuestAllocator
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.guest.rng import RngDriver
from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.machine import Machine

from ..pci_helpers import CMD_INTX_DISABLE, COMMAND, find_caps, virtio_caps

ISR_CFG = 3
ISR = 0x1000
STATUS_INTERRUPT = 0x08  # PCI Status bit 3


def isr_read(fn: VirtioPciFunction) -> int:
    return fn.bar_read(4, ISR, 1)


def interrupt_status(fn: VirtioPciFunction) -> bool:
    return bool(fn.config_read(0x06, 2) & STATUS_INTERRUPT)


def probe_testdev(machine: Machine, alloc: GuestAllocator, *, use_msix: bool) -> tuple[TestDevice, VirtioPciFunction,
                                                                                  VirtioDriver]:
    dev = TestDevice()
    fn = machine.plug(dev)
    drv = VirtioDriver(machine, fn, alloc, name="testdev", use_msix=use_msix)
    drv.probe()
    return dev, fn, drv


@pytest.mark.spec("dev:pci/isr#1")
def test_the_function_presents_an_isr_capability(machine: Machine) -> None:
    """§4.1.4.5.1: the device MUST present at least one VIRTIO_PCI_CAP_ISR_CFG capability (BAR4 + 0x1000, 1 byte)."""
    fn = machine.plug(Rng())
    [pos] = virtio_caps(fn)[ISR_CFG]
    assert (fn.config_read(pos + 4, 1), fn.config_read(pos + 8, 4), fn.config_read(pos + 12, 4)) == (4, ISR, 1)


class IsrAtSend:
    """The function's interrupt sink: records the ISR value at the instant each message or INTx edge is sent."""

    def __init__(self, machine: Machine, fn: VirtioPciFunction) -> None:
        self.machine, self.fn = machine, fn
        self.isr_at_send: list[int] = []

    def msi(self, src: str, address: int, data: int, vector: int) -> None:
        self.isr_at_send.append(self.fn.isr)
        self.machine.msi(src, address, data, vector)

    def intx(self, src: str, level: bool) -> None:
        if level:
            self.isr_at_send.append(self.fn.isr)
        self.machine.intx(src, level)


@pytest.mark.spec("dev:pci/isr#2")
@pytest.mark.parametrize("use_msix", [True, False])
def test_config_bit_is_set_before_a_config_notification_whatever_the_mechanism(machine: Machine, alloc,  # type: ignore[no-untyped-def]
                                                                               use_msix: bool) -> None:
    """§4.1.4.5.1: the device MUST set the Device Configuration Interrupt bit BEFORE sending a configuration change
    notification — with MSI-X too (defect 3: the bit was only set with INTx). At the instant the message (or the
    INTx edge) leaves the function, ISR bit 1 is already set; the driver then gets the change."""
    dev, fn, drv = probe_testdev(machine, alloc, use_msix=use_msix)
    assert fn.msix_enabled == use_msix
    sink = IsrAtSend(machine, fn)
    fn.msix.sink = sink
    fn.irq = sink
    dev.host_set_value(7)
    machine.run_for(1000)
    assert len(sink.isr_at_send) == 1 and sink.isr_at_send[0] & 0x2
    assert drv.config_changes_delivered == 1


@pytest.mark.spec("dev:pci/isr#2")
def test_config_bit_is_set_even_when_config_is_unmapped(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """With MSI-X on and the config event unmapped (NO_VECTOR) no interrupt is sent (§4.1.5.4.1), but a driver that
    polls finds the change in ISR bit 1 (QEMU ``virtio_notify_config`` sets it whatever the mechanism)."""
    dev, fn, drv = probe_testdev(machine, alloc, use_msix=True)
    drv.t.set_config_vector(0xFFFF)
    n = len(machine.interrupts)
    dev.host_set_value(3)
    machine.run_for(1000)
    assert len(machine.interrupts) == n
    assert isr_read(fn) & 0x2


@pytest.mark.spec("dev:pci/isr#3", "dev:pci/isr#4")
def test_queue_bit_and_interrupt_status_without_msix(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§4.1.4.5.1, MSI-X disabled: bit 0 is set before a used-buffer notification, and PCI Status.Interrupt is the
    OR of the ISR bits (set with the bit, cleared with the read); INTx Disable masks the line, not the status."""
    fn = machine.plug(Rng())
    drv = RngDriver(machine, fn, alloc, name="rng", use_msix=False)
    drv.probe()
    machine.set_intx_handler("rng", None)  # the test reads ISR itself
    drv.request(16)
    machine.run_for(1_000_000)
    assert interrupt_status(fn)
    assert isr_read(fn) == 0x1
    assert not interrupt_status(fn)
    drv.vq_callback(0)  # what the handler would have done: take the used buffer (re-arms used_event)
    fn.config_write(COMMAND, 2, fn.config_read(COMMAND, 2) | CMD_INTX_DISABLE)
    n = len(machine.interrupts)
    machine.set_intx_handler("rng", lambda: None)
    drv.request(16)
    machine.run_for(1_000_000)
    assert interrupt_status(fn) and len(machine.interrupts) == n  # status set, line masked
    assert isr_read(fn) == 0x1 and not interrupt_status(fn)


@pytest.mark.spec("dev:pci/isr#4")
def test_interrupt_status_follows_the_isr_when_msix_is_turned_off(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§4.1.4.5.1: with MSI-X disabled the Interrupt Status bit is the OR of the ISR bits: a config bit set while
    MSI-X was on shows in PCI Status once MSI-X is turned off (and is not shown while MSI-X is on)."""
    dev, fn, drv = probe_testdev(machine, alloc, use_msix=True)
    dev.host_set_value(1)
    machine.run_for(1000)
    assert not interrupt_status(fn)
    msix = find_caps(fn)[0x11][0]
    fn.config_write(msix + 2, 2, fn.config_read(msix + 2, 2) & ~0x8000)
    assert interrupt_status(fn)
    assert isr_read(fn) & 0x2 and not interrupt_status(fn)


@pytest.mark.spec("dev:pci/isr#5")
def test_reading_isr_clears_it(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§4.1.4.5.1: the device MUST reset ISR status to 0 on driver read (and de-assert the interrupt)."""
    dev, fn, drv = probe_testdev(machine, alloc, use_msix=False)
    machine.set_intx_handler("testdev", None)
    dev.host_set_value(2)
    assert interrupt_status(fn)
    assert isr_read(fn) == 0x3  # QEMU sets both bits on a config change
    assert isr_read(fn) == 0
    assert not interrupt_status(fn)
