"""The PCI configuration access capability (virtio 1.4 §4.1.4.9): ``pci_cfg_data`` is a window of ``cap.length``
bytes onto BAR ``cap.bar`` at ``cap.offset``, reached by ANY driver access of the data field (firmware uses 1- and
2-byte accesses there; issue 9 defect 2).

Offsets are the reference layout of ``struct virtio_pci_cfg_cap``: bar @4, offset @8, length @12, data @16.
"""

from __future__ import annotations

import pytest

from pyvirtio.devices import Rng, TestDevice
from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.machine import Machine
from pyvirtio.trace import Kind

from ..pci_helpers import cread, cwrite, enable, status, virtio_caps

PCI_CFG = 5
BAR4 = 4
COMMON, ISR, DEVICE = 0x0000, 0x1000, 0x2000


def window(fn: VirtioPciFunction, bar: int, offset: int, length: int) -> int:
    """Program the window (with full-width writes of its fields); the offset of ``pci_cfg_data``."""
    cap = virtio_caps(fn)[PCI_CFG][0]
    fn.config_write(cap + 4, 1, bar)
    fn.config_write(cap + 8, 4, offset)
    fn.config_write(cap + 12, 4, length)
    return cap + 16


@pytest.fixture
def fn(machine: Machine) -> VirtioPciFunction:
    f = machine.plug(TestDevice())
    enable(f)
    return f


@pytest.mark.spec("dev:pci/pci-cfg#1")
def test_the_function_presents_a_pci_cfg_capability(fn: VirtioPciFunction) -> None:
    """§4.1.4.9.1: the device MUST present at least one VIRTIO_PCI_CAP_PCI_CFG capability (cap_len 20: the
    ``virtio_pci_cap`` and the 4-byte data field)."""
    caps = virtio_caps(fn)[PCI_CFG]
    assert len(caps) == 1
    assert fn.config_read(caps[0] + 2, 1) == 20


@pytest.mark.spec("dev:pci/pci-cfg#3")
@pytest.mark.parametrize(("length", "size"), [(1, 1), (2, 2), (4, 4), (1, 4), (2, 4), (4, 1), (4, 2)])
def test_a_read_of_pci_cfg_data_of_any_width_loads_the_window(fn: VirtioPciFunction, length: int,
                                                              size: int) -> None:
    """§4.1.4.9.1: upon ANY driver read of ``pci_cfg_data`` the device MUST read ``cap.length`` bytes at
    ``cap.offset`` of ``cap.bar`` and store them in the first ``cap.length`` bytes of ``pci_cfg_data`` — whatever
    the width of the config read (defect 2: only a dword read went through, 1- and 2-byte reads gave stale
    bytes)."""
    dev = fn.device
    assert isinstance(dev, TestDevice)
    data = window(fn, BAR4, DEVICE + 8, length)
    fn.config_write(data, 4, 0)  # make stale bytes visible: 0 now, the BAR has other values
    dev.host_set_value(0, wide=0x8877665544332211)
    want = 0x8877665544332211 & ((1 << (8 * length)) - 1)
    got = 0
    for off in range(0, 4, size):
        got |= fn.config_read(data + off, size) << (8 * off)
    assert got & ((1 << (8 * length)) - 1) == want
    dev.host_set_value(0, wide=0x1122334455667788)  # a second read sees the new value, not the first one
    assert fn.config_read(data, size) & ((1 << (8 * min(size, length))) - 1) == \
        0x1122334455667788 & ((1 << (8 * min(size, length))) - 1)


@pytest.mark.spec("dev:pci/pci-cfg#2")
@pytest.mark.parametrize("size", [1, 2])
def test_a_narrow_write_of_pci_cfg_data_performs_the_bar_write(fn: VirtioPciFunction, size: int) -> None:
    """§4.1.4.9.1: upon ANY driver write of ``pci_cfg_data`` the device MUST write the first ``cap.length``
    bytes of it at ``cap.offset`` of ``cap.bar`` (defect 2: 1- and 2-byte writes were dropped)."""
    data = window(fn, BAR4, COMMON + 22, 2)  # queue_select (le16)
    if size == 1:
        fn.config_write(data + 1, 1, 0)
        fn.config_write(data, 1, 7)
    else:
        fn.config_write(data, 2, 7)
    assert cread(fn, 22, 2) == 7
    data = window(fn, BAR4, COMMON + 20, 1)  # device_status (u8): ACKNOWLEDGE through a byte write
    fn.config_write(data, 1, 1)
    assert status(fn) == 1


@pytest.mark.spec("dev:pci/pci-cfg#2")
def test_a_write_uses_the_first_length_bytes_of_the_data_field(fn: VirtioPciFunction) -> None:
    """§4.1.4.9.1: a write of any byte of ``pci_cfg_data`` writes its FIRST ``cap.length`` bytes: a byte write of
    the high half of a 2-byte window writes the whole le16 (low byte from the earlier write)."""
    data = window(fn, BAR4, COMMON + 22, 2)
    fn.config_write(data, 1, 0x01)  # -> queue_select = 0x0001 already
    assert cread(fn, 22, 2) == 0x0001
    fn.config_write(data + 1, 1, 0x02)  # -> queue_select = 0x0201
    assert cread(fn, 22, 2) == 0x0201


@pytest.mark.spec("dev:pci/pci-cfg#3")
def test_a_read_through_the_window_has_the_reads_side_effect(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§4.1.4.9.1 the device executes the read: a read of ISR through the window clears it (§4.1.4.5)."""
    from pyvirtio.guest.driver import VirtioDriver

    dev = TestDevice()
    fn = machine.plug(dev)
    drv = VirtioDriver(machine, fn, alloc, name="testdev", use_msix=False)
    drv.probe()
    machine.set_intx_handler("testdev", None)  # nobody reads the ISR but the test
    dev.host_set_value(9)
    data = window(fn, BAR4, ISR, 1)
    assert fn.config_read(data, 1) & 0x2
    assert fn.config_read(data, 1) == 0  # read-to-clear happened through the window
    assert not fn.config_read(0x06, 2) & 0x08  # and de-asserted the interrupt


@pytest.mark.spec("dev:pci/pci-cfg#2", "dev:pci/pci-cfg#3")
def test_the_window_works_before_the_bars_are_enabled(machine: Machine) -> None:
    """The window is a config-space path: it reaches the registers with memory decoding still off (what firmware
    relies on); the BARs themselves read all-ones then."""
    fn = machine.plug(Rng())
    assert cread(fn, 18, 2) == 0xFFFF  # memory decoding off: the BAR does not answer
    data = window(fn, BAR4, COMMON + 18, 2)
    assert fn.config_read(data, 2) == 1  # num_queues
    data = window(fn, BAR4, COMMON + 20, 1)
    fn.config_write(data, 1, 1)
    assert fn.config_read(data, 1) == 1 and fn.device.status == 1


@pytest.mark.parametrize(("bar", "offset", "length"), [
    (BAR4, COMMON + 20, 3),  # length not 1, 2 or 4
    (BAR4, COMMON + 21, 2),  # offset not a multiple of length
    (BAR4, 0x4000, 4),  # beyond BAR4
    (2, 0, 4),  # a BAR the function does not implement
    (9, 0, 4),  # not a BAR at all
])
def test_a_bad_window_performs_no_access(fn: VirtioPciFunction, bar: int, offset: int, length: int) -> None:
    """§4.1.4.9.2 (driver MUST align): a window the device cannot execute performs no access at all: reads give 0,
    writes change nothing; both are traced as violations, nothing raises."""
    cwrite(fn, 22, 2, 0)
    data = window(fn, bar, offset, length)
    fn.config_write(data, 4, 0x0F0F0F0F)
    assert fn.config_read(data, 4) == 0
    assert fn.config_read(data, 1) == 0
    assert status(fn) == 0 and cread(fn, 22, 2) == 0
    rules = [str(e.detail.get("rule")) for e in fn.trace.select(Kind.VIOLATION, fn.name)]
    assert any("PCI_CFG" in r or "cap.offset" in r for r in rules)


def test_an_unprogrammed_window_is_not_an_access(fn: VirtioPciFunction) -> None:
    """A driver (or a tool) reading the whole capability before programming it reads pci_cfg_data with
    cap.length 0: nothing is accessed, nothing is a violation, the bytes read back as they are."""
    cap = virtio_caps(fn)[PCI_CFG][0]
    assert [fn.config_read(cap + off, 4) for off in range(0, 20, 4)][4] == 0
    fn.config_write(cap + 16, 4, 0x12345678)
    assert fn.config_read(cap + 16, 4) == 0x12345678
    assert fn.trace.select(Kind.VIOLATION, fn.name) == []
