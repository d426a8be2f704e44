"""The guest transport's capability walk (virtio 1.4 §4.1.4) over a fake PCI function: typed records, the
first usable structure of each type, hostile lists."""

from __future__ import annotations

import pytest

from pyvirtio.errors import DriverError
from pyvirtio.guest.fake import FakeFunction, FakePlatform
from pyvirtio.guest.transport import (
    MsixCapability,
    PciCapability,
    PciTransport,
    PmCapability,
    VirtioPciCapability,
    Window,
    walk_capabilities,
)
from pyvirtio.spec.constants import (
    PCI_CAPABILITY_LIST,
    PCI_STATUS,
    QEMU_COMMON_OFFSET,
    QEMU_MODERN_BAR,
    QEMU_NOTIFY_OFF_MULTIPLIER,
    PciCapId,
    Pmcsr,
    VirtioPciCap,
)


def test_capability_list_is_typed_and_in_order() -> None:
    """virtio 1.4 §4.1.4 ``struct virtio_pci_cap`` (cfg_type, bar, offset, length; NOTIFY adds
    notify_off_multiplier, §4.1.4.4); MSI-X table/PBA (PCI 3.0 §6.8.2); PM PMC/PMCSR (PCI PM 1.2 §3.2)."""
    fn = FakeFunction(pm=True, no_soft_reset=True, device_config=bytes(8), queue_sizes=(64, 64))
    caps = walk_capabilities(fn)
    assert [type(c) for c in caps] == [PmCapability, VirtioPciCapability, VirtioPciCapability, VirtioPciCapability,
                                       VirtioPciCapability, MsixCapability]
    pm, common, notify, isr, device, msix = caps
    assert isinstance(pm, PmCapability) and pm.pmcsr & Pmcsr.NO_SOFT_RESET and pm.pos == 0x40
    assert isinstance(common, VirtioPciCapability) and common.cfg_type == VirtioPciCap.COMMON_CFG
    assert common.window == Window(QEMU_MODERN_BAR, QEMU_COMMON_OFFSET, 64) and common.notify_off_multiplier is None
    assert isinstance(notify, VirtioPciCapability) and notify.notify_off_multiplier == QEMU_NOTIFY_OFF_MULTIPLIER
    assert isinstance(device, VirtioPciCapability) and device.length == 8
    assert isinstance(msix, MsixCapability) and msix.table_size == 3 and (msix.table_bar, msix.table_offset) == (1, 0)
    assert (msix.pba_bar, msix.pba_offset) == (1, 0x800)
    t = PciTransport(fn, FakePlatform())
    assert t.capabilities == caps and t.pm_cap == pm.pos and t.msix_cap == msix.pos
    assert t.device_cfg == device.window and t.notify_mult == QEMU_NOTIFY_OFF_MULTIPLIER


@pytest.mark.spec("drv:pci/caps#7")
def test_walk_reads_only_aligned_dwords_of_the_list() -> None:
    """PCI config reads of a capability header are done as aligned dwords (as real PCI code must tolerate)."""
    fn = FakeFunction()
    walk_capabilities(fn)
    header_reads = [a for a in fn.log if a.space == "config" and a.offset >= 0x40]
    assert header_reads and all(a.offset % a.size == 0 for a in header_reads)


@pytest.mark.spec("drv:pci/caps#2", "drv:pci/caps#4")
def test_first_structure_of_each_type_wins_and_reserved_bars_are_ignored() -> None:
    """virtio 1.4 §4.1.4: the driver uses the first capability of each type it can use; a capability with a
    reserved BAR value (> 5) is ignored."""
    fn = FakeFunction()
    first = next(c for c in walk_capabilities(fn)
                 if isinstance(c, VirtioPciCapability) and c.cfg_type == VirtioPciCap.COMMON_CFG)
    fn.cfg[first.pos + 4] = 7  # the first COMMON_CFG now names a reserved BAR
    fn.add_virtio_capability(VirtioPciCap.COMMON_CFG, QEMU_MODERN_BAR, 0x100, 64)
    fn.add_virtio_capability(VirtioPciCap.COMMON_CFG, QEMU_MODERN_BAR, 0x200, 64)
    t = PciTransport(fn, FakePlatform())
    assert t.common == Window(QEMU_MODERN_BAR, 0x100, 64)
    assert sum(isinstance(c, VirtioPciCapability) and c.cfg_type == VirtioPciCap.COMMON_CFG
               for c in t.capabilities) == 3  # the list keeps all of them; the selection skips


def test_a_looping_or_escaping_list_ends_the_walk() -> None:
    """A hostile list (pointer back to itself, or out of 0x40..0xFF) cannot hang the walk."""
    fn = FakeFunction()
    caps = walk_capabilities(fn)
    fn.cfg[caps[-1].pos + 1] = caps[0].pos  # last -> first: a loop
    assert [c.pos for c in walk_capabilities(fn)] == [c.pos for c in caps]
    fn.cfg[caps[1].pos + 1] = 0x20  # into the standard header
    assert len(walk_capabilities(fn)) == 2


@pytest.mark.spec("drv:pci/layout-detection/legacy#3", "drv:pci/layout-detection/legacy#4")
def test_no_capability_list() -> None:
    """Status.Capabilities List clear: nothing is walked, and a modern transport cannot be found."""
    fn = FakeFunction()
    fn.cfg[PCI_STATUS] = 0
    assert walk_capabilities(fn) == []
    with pytest.raises(DriverError, match="lacks a COMMON"):
        PciTransport(fn, FakePlatform())


@pytest.mark.spec("drv:pci/caps#1", "drv:pci/layout-detection/legacy#4")
def test_missing_notify_structure_is_refused() -> None:
    """virtio 1.4 §4.1.4: COMMON, NOTIFY and ISR are required for a modern device."""
    fn = FakeFunction()
    notify = next(c for c in walk_capabilities(fn)
                  if isinstance(c, VirtioPciCapability) and c.cfg_type == VirtioPciCap.NOTIFY_CFG)
    fn.cfg[notify.pos + 3] = 99  # an unknown cfg_type
    with pytest.raises(DriverError, match="NOTIFY"):
        PciTransport(fn, FakePlatform())


def test_unknown_capability_is_kept_as_a_plain_record() -> None:
    """A capability the transport does not know is listed with its position and id only."""
    fn = FakeFunction()
    pos = fn.add_capability(PciCapId.EXP, b"\x02\x00", 0x3C)
    assert walk_capabilities(fn)[-1] == PciCapability(pos, PciCapId.EXP)
    assert fn.cfg[PCI_CAPABILITY_LIST] == 0x40
