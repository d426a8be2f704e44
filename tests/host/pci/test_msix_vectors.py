"""MSI-X vector configuration and delivery of a virtio PCI function (virtio 1.4 §4.1.5.1.2, §4.1.5.3, §4.1.5.4),
and what happens to a message left pending in the PBA across a virtio reset and Device Suspend (issue 9 defect 4).

Raw offsets: common config config_msix_vector @16, queue_select @22, queue_msix_vector @26, device_status @20;
MSI-X table in BAR1 at 0 (16-byte entries: address lo/hi, data, vector control), PBA at BAR1 + 0x800.
"""

from __future__ import annotations

import pytest

from pyvirtio.clock import MS
from pyvirtio.devices import Gpu, Rng, TestDevice
from pyvirtio.dma import GuestAllocator
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.guest.rng import RngDriver
from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.machine import Machine
from pyvirtio.spec.constants import MSI_ADDRESS_BASE

from ..pci_helpers import cread, cwrite, enable, find_caps, status

NO_VECTOR = 0xFFFF
PBA = 0x800


def table_size(fn: VirtioPciFunction) -> int:
    cap = find_caps(fn)[0x11][0]
    return (fn.config_read(cap + 2, 2) & 0x7FF) + 1


def program_all(machine: Machine, fn: VirtioPciFunction, hits: list[int]) -> None:
    """Give every table entry an MSI that records its entry number in ``hits``; unmask all; enable MSI-X."""
    for v in range(table_size(fn)):
        addr, data = machine.alloc_msi(lambda v=v: hits.append(v))  # type: ignore[misc]
        fn.bar_write(1, 16 * v, 4, addr)
        fn.bar_write(1, 16 * v + 4, 4, 0)
        fn.bar_write(1, 16 * v + 8, 4, data)
        fn.bar_write(1, 16 * v + 12, 4, 0)
    cap = find_caps(fn)[0x11][0]
    fn.config_write(cap + 2, 2, fn.config_read(cap + 2, 2) | 0x8000)


def mask(fn: VirtioPciFunction, v: int, masked: bool) -> None:
    fn.bar_write(1, 16 * v + 12, 4, int(masked))


def live_rng(machine: Machine, alloc: GuestAllocator, **kw: object) -> tuple[Rng, VirtioPciFunction, RngDriver]:
    dev = Rng(bytes_per_us=4, **kw)  # type: ignore[arg-type]
    fn = machine.plug(dev)
    drv = RngDriver(machine, fn, alloc, name="rng")
    drv.probe()
    assert fn.msix_enabled and cread(fn, 16, 2) == 0
    cwrite(fn, 22, 2, 0)
    assert cread(fn, 26, 2) == 1  # the driver's layout: config -> 0, queue 0 -> 1
    return dev, fn, drv


# -- vector configuration (§4.1.5.1.2.1) --------------------------------------------------------------------------


@pytest.mark.spec("dev:pci/msix#1", "dev:pci/msix#2", "dev:pci/msix#3")
def test_table_size_is_queues_plus_one_and_reported(machine: Machine) -> None:
    """§4.1.5.1.2.1: the device SHOULD offer 2..0x800 vectors and no more than useful (one per queue plus one
    for config changes, as QEMU), and MUST report the number in Table Size (PCI encoding: N - 1)."""
    assert table_size(machine.plug(Rng())) == 2
    assert table_size(machine.plug(Gpu())) == 3
    assert table_size(machine.plug(TestDevice())) == 2
    assert table_size(machine.plug(Rng("rng-big"), msix_vectors=0x800)) == 0x800


@pytest.mark.spec("dev:pci/msix#4", "dev:pci/msix#6", "dev:pci/msix#8")
def test_any_event_maps_to_any_vector_and_reads_back(machine: Machine) -> None:
    """§4.1.5.1.2.1: the device MUST support mapping any event type to any valid vector, MUST return the mapped
    vector on read, and SHOULD NOT refuse a mapping it can satisfy; the notification then goes out through that
    table entry."""
    dev = TestDevice()
    fn = machine.plug(dev, msix_vectors=4)
    enable(fn)
    hits: list[int] = []
    program_all(machine, fn, hits)
    for s in (1, 3, 0x0B):  # ACKNOWLEDGE, DRIVER, FEATURES_OK with VERSION_1
        if s == 0x0B:
            cwrite(fn, 8, 4, 1)
            cwrite(fn, 12, 4, 1)
        cwrite(fn, 20, 1, s)
    cwrite(fn, 20, 1, 0x0F)  # DRIVER_OK (no queue needed for config changes)
    for v in range(4):
        cwrite(fn, 16, 2, v)
        assert cread(fn, 16, 2) == v
        cwrite(fn, 22, 2, 0)
        cwrite(fn, 26, 2, 3 - v)
        assert cread(fn, 26, 2) == 3 - v
        dev.host_set_value(v + 1)
        machine.run_for(1000)
        assert hits[-1] == v


@pytest.mark.spec("dev:pci/msix#5", "dev:pci/used-notify#1", "dev:pci/config-notify#1")
def test_an_unmapped_event_sends_no_interrupt(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§4.1.5.1.2.1 the device MUST support unmapping any event (NO_VECTOR); §4.1.5.3.1 / §4.1.5.4.1: with MSI-X on
    and NO_VECTOR, no interrupt for that queue or for config changes."""
    dev = TestDevice()
    fn = machine.plug(dev)
    drv = VirtioDriver(machine, fn, alloc, name="testdev")
    drv.probe()  # creates the queue (VirtioDriver.setup)
    cwrite(fn, 16, 2, NO_VECTOR)
    cwrite(fn, 22, 2, 0)
    assert cread(fn, 28, 2) == 1
    n = len(machine.interrupts)
    dev.host_set_value(5)
    machine.run_for(1 * MS)
    assert cread(fn, 16, 2) == NO_VECTOR and len(machine.interrupts) == n
    # the queue: unmapping an enabled queue's vector is a common-config write like any other
    cwrite(fn, 26, 2, NO_VECTOR)
    assert cread(fn, 26, 2) == NO_VECTOR
    buf = alloc.alloc(8)
    drv.vqs[0].add([(buf, 8)], [(buf, 8)], "echo")
    drv.kick(0)
    machine.run_for(1 * MS)
    assert machine.memory.read_u16(drv.vqs[0].layout.used + 2) == 1  # used, silently
    assert len(machine.interrupts) == n and fn.bar_read(1, PBA, 4) == 0


@pytest.mark.spec("dev:pci/msix#7")
def test_reset_unmaps_every_event(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§4.1.5.1.2.1: the device MUST have every queue and configuration event unmapped upon reset."""
    fn = machine.plug(Gpu())
    from pyvirtio.guest.gpu.driver import GpuDriver

    GpuDriver(machine, fn, alloc, create_framebuffers=False).probe()
    assert cread(fn, 16, 2) == 0
    cwrite(fn, 20, 1, 0)
    assert status(fn) == 0 and cread(fn, 16, 2) == NO_VECTOR
    for q in (0, 1):
        cwrite(fn, 22, 2, q)
        assert cread(fn, 26, 2) == NO_VECTOR


@pytest.mark.spec("dev:pci/msix#8", "dev:pci/msix#9")
def test_only_a_vector_beyond_the_table_is_refused_and_reads_no_vector(machine: Machine) -> None:
    """§4.1.5.1.2.1: mapping fails only when impossible (beyond the table), and a refused mapping reads back as
    NO_VECTOR."""
    fn = machine.plug(Rng(), msix_vectors=5)
    enable(fn)
    cwrite(fn, 22, 2, 0)
    for v in range(5):
        cwrite(fn, 16, 2, v)
        cwrite(fn, 26, 2, v)
        assert (cread(fn, 16, 2), cread(fn, 26, 2)) == (v, v)
    for v in (5, 0x7FF, 0xFFFE):
        cwrite(fn, 16, 2, v)
        cwrite(fn, 26, 2, v)
        assert (cread(fn, 16, 2), cread(fn, 26, 2)) == (NO_VECTOR, NO_VECTOR)


# -- pending messages across a reset and Device Suspend (defect 4) ------------------------------------------------


@pytest.mark.spec("dev:reset#2")
def test_a_message_pending_before_reset_is_never_sent_after_it(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§2.4.1: once the device presents status 0 after a reset it MUST NOT send notifications until
    re-initialised. A used-buffer message left pending on a masked vector before the reset is forgotten
    (QEMU ``msix_unuse_all_vectors`` clears the PBA): unmasking afterwards sends nothing (defect 4)."""
    dev, fn, drv = live_rng(machine, alloc)
    mask(fn, 1, True)
    req = drv.request(16)
    machine.run_for(5 * MS)
    assert machine.memory.read_u16(drv.vqs[0].layout.used + 2) == 1 and not req.done
    assert fn.bar_read(1, PBA, 4) == 0b10  # pending on the masked queue vector
    cwrite(fn, 20, 1, 0)
    assert status(fn) == 0
    n = len(machine.interrupts)
    mask(fn, 1, False)
    machine.run_for(5 * MS)
    assert len(machine.interrupts) == n and fn.bar_read(1, PBA, 4) == 0


@pytest.mark.spec("dev:suspend#3", "dev:suspend#8")
def test_a_message_pended_during_the_quiesce_waits_for_the_resume(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """Device Suspend: the device MUST NOT send notifications while suspended. A used-buffer message of a request
    completed during the quiesce, pending on a masked vector, is not sent when the driver unmasks the vector while
    the device is suspended; it goes out once the device has resumed (nothing is lost; defect 4)."""
    dev, fn, drv = live_rng(machine, alloc)
    req = drv.request(4096)
    assert machine.run_until(lambda: dev.inflight() == 1, 1 * MS)
    mask(fn, 1, True)
    cwrite(fn, 20, 1, 0x1F)
    assert machine.run_until(lambda: status(fn) == 0x1B, 10 * MS)
    assert fn.bar_read(1, PBA, 4) == 0b10 and not req.done
    n = len(machine.interrupts)
    mask(fn, 1, False)
    machine.run_for(5 * MS)
    assert len(machine.interrupts) == n and not req.done  # still suspended: held
    assert fn.bar_read(1, PBA, 4) == 0b10
    cwrite(fn, 20, 1, 0x1F)  # resume
    assert machine.run_until(lambda: status(fn) == 0x0F, 1 * MS)
    assert machine.run_until(lambda: req.done, 1 * MS)
    assert len(machine.interrupts) == n + 1 and machine.interrupts[-1].vector == 1
    assert fn.bar_read(1, PBA, 4) == 0


@pytest.mark.spec("dev:reset#2", "dev:suspend#3")
def test_a_message_held_while_suspended_is_forgotten_by_a_reset(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """A reset while suspended (§2.4: allowed in any state) forgets the held message: nothing after status 0."""
    dev, fn, drv = live_rng(machine, alloc)
    drv.request(4096)
    assert machine.run_until(lambda: dev.inflight() == 1, 1 * MS)
    mask(fn, 1, True)
    cwrite(fn, 20, 1, 0x1F)
    assert machine.run_until(lambda: status(fn) == 0x1B, 10 * MS)
    mask(fn, 1, False)
    n = len(machine.interrupts)
    cwrite(fn, 20, 1, 0)
    machine.run_for(5 * MS)
    assert len(machine.interrupts) == n and fn.bar_read(1, PBA, 4) == 0


def test_an_unmask_while_live_delivers_the_pending_message(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """The ordinary PCI rule still holds: a message pending on a masked vector goes out on unmask (live device)."""
    dev, fn, drv = live_rng(machine, alloc)
    mask(fn, 1, True)
    req = drv.request(16)
    machine.run_for(5 * MS)
    assert fn.bar_read(1, PBA, 4) == 0b10 and not req.done
    mask(fn, 1, False)
    assert machine.run_until(lambda: req.done, 1 * MS)
    assert machine.interrupts[-1].data is not None and fn.bar_read(1, PBA, 4) == 0
    assert MSI_ADDRESS_BASE  # the machine's MSI window (entries point into it)
