"""Byte-level layout of the virtio PCI function, checked against the reference offsets (virtio 1.4 §4.1).

These tests read raw offsets and unpack with ``struct``; they do not use the project's driver structures.
"""

from __future__ import annotations

import struct

import pytest

from pyvirtio.devices import Rng, TestDevice
from pyvirtio.machine import Machine

from .pci_helpers import cread, cwrite, enable, find_caps


@pytest.fixture
def fn(machine: Machine):  # type: ignore[no-untyped-def]
    f = machine.plug(Rng())
    enable(f)
    return f


@pytest.mark.spec("dev:pci/discovery#1", "dev:pci/discovery#2", "dev:pci/discovery#4", "dev:pci/discovery#5")
def test_header_ids_per_4_1_2(machine: Machine) -> None:
    """§4.1.2 MUST: vendor 0x1AF4, device 0x1040 + virtio id; SHOULD: revision >= 1, subsystem >= 0x40."""
    fn = machine.plug(Rng())
    assert fn.config_read(0x00, 2) == 0x1AF4
    assert fn.config_read(0x02, 2) == 0x1040 + 4
    assert fn.config_read(0x08, 1) == 1
    assert fn.config_read(0x08, 4) >> 8 == 0xFF0000  # class OTHERS (QEMU for rng)
    assert fn.config_read(0x2C, 2) == 0x1AF4
    assert fn.config_read(0x2E, 2) >= 0x40
    assert fn.config_read(0x0E, 1) == 0  # type 0 header
    assert fn.config_read(0x06, 2) & 0x10  # capability list present
    assert fn.config_read(0x3D, 1) == 1  # INTA#


def test_config_space_is_4k(machine: Machine) -> None:
    fn = machine.plug(Rng())
    assert fn.config_read(0xFFC, 4) == 0
    assert fn.config_read(0x1000, 4) == 0xFFFFFFFF  # beyond 4 KiB: all-ones, no exception


@pytest.mark.spec("dev:pci/common-cfg#2", "dev:pci/notify-cap#1", "dev:pci/isr#1", "dev:pci/pci-cfg#1",
                  "dev:pci/caps#1")
def test_required_virtio_capabilities_4_1_4(fn) -> None:  # type: ignore[no-untyped-def]
    """§4.1.4 MUST: at least one COMMON, NOTIFY, ISR and PCI_CFG capability (+ DEVICE if config exists)."""
    caps = find_caps(fn)
    vendor = caps[0x09]
    types = {}
    for pos in vendor:
        raw = bytes(fn.config_read(pos + i, 1) for i in range(16))
        vndr, nxt, cap_len, cfg_type, bar, cid, off, length = struct.unpack("<BBBBBBxxII", raw)
        assert vndr == 0x09
        types[cfg_type] = (cap_len, bar, off, length, pos)
    assert {1, 2, 3, 5} <= set(types)
    assert 4 not in types  # rng has no device config
    assert types[1][:4] == (16, 4, 0x0000, 64)  # COMMON: BAR4 @0, 64 bytes (1.4)
    assert types[3][:4] == (16, 4, 0x1000, 1)  # ISR
    assert types[2][0] == 20 and types[2][1:3] == (4, 0x3000)  # NOTIFY cap is 20 bytes
    assert fn.config_read(types[2][4] + 16, 4) == 4  # notify_off_multiplier
    assert types[5][0] == 20  # PCI_CFG
    assert 0x11 in caps  # MSI-X


@pytest.mark.spec("dev:pci/device-cfg#1")
def test_device_cfg_capability_when_device_has_config(machine: Machine) -> None:
    """§4.1.4.6: a device with a device-specific config presents DEVICE_CFG; §4.1.4.6.1: its offset (0x2000) is
    4-byte aligned."""
    fn = machine.plug(TestDevice())
    caps = find_caps(fn)
    types = {fn.config_read(p + 3, 1): p for p in caps[0x09]}
    p = types[4]
    assert (fn.config_read(p + 4, 1), fn.config_read(p + 8, 4), fn.config_read(p + 12, 4)) == (4, 0x2000, 16)


@pytest.mark.spec("dev:pci/common-cfg#3", "dev:pci/layout#1")
def test_common_cfg_offsets_1_4(fn) -> None:  # type: ignore[no-untyped-def]
    """§4.1.4.3: field offsets 0..63, including queue_notif_config_data, queue_reset and the admin fields."""
    cwrite(fn, 0, 4, 1)  # device_feature_select = 1
    assert cread(fn, 4, 4) & 1  # bit 32 VERSION_1
    assert cread(fn, 4, 4) & (1 << (43 - 32))  # VIRTIO_F_SUSPEND offered
    cwrite(fn, 0, 4, 5)
    assert cread(fn, 4, 4) == 0  # §4.1.4.3.1: 0 for selects beyond the highest feature word
    assert cread(fn, 18, 2) == 1  # num_queues
    assert cread(fn, 20, 1) == 0  # device_status
    cwrite(fn, 22, 2, 0)
    assert cread(fn, 24, 2) == 64  # queue_size resets to the maximum
    assert cread(fn, 26, 2) == 0xFFFF  # queue_msix_vector NO_VECTOR after reset
    assert cread(fn, 28, 2) == 0  # queue_enable
    assert cread(fn, 30, 2) == 0  # queue_notify_off = index (QEMU)
    cwrite(fn, 32, 4, 0x1000)
    cwrite(fn, 36, 4, 0x1)
    assert (cread(fn, 32, 4), cread(fn, 36, 4)) == (0x1000, 1)  # 64-bit fields as two halves
    cwrite(fn, 40, 4, 0x2000)
    cwrite(fn, 48, 4, 0x3000)
    assert (cread(fn, 40, 4), cread(fn, 48, 4)) == (0x2000, 0x3000)
    assert cread(fn, 56, 2) == 0  # queue_notif_config_data
    assert cread(fn, 58, 2) == 0  # queue_reset
    assert (cread(fn, 60, 2), cread(fn, 62, 2)) == (0, 0)  # no admin queues


@pytest.mark.spec("dev:pci/common-cfg#13")
def test_queue_select_beyond_num_queues_reads_zero(fn) -> None:  # type: ignore[no-untyped-def]
    """§4.1.4.3.1: queue_size reads 0 when queue_select names a queue that does not exist."""
    cwrite(fn, 22, 2, 7)
    assert cread(fn, 24, 2) == 0  # §4.1.4.3: queue_size 0 = not available


@pytest.mark.spec("dev:pci#1")
def test_bar_sizing(machine: Machine) -> None:
    """PCI BAR sizing: writing all-ones reads back the size mask and the type bits."""
    fn = machine.plug(Rng())
    fn.config_write(0x10 + 4 * 4, 4, 0xFFFFFFFF)
    v = fn.config_read(0x10 + 4 * 4, 4)
    assert v & 0xF == 0xC  # 64-bit prefetchable
    assert (~(v & ~0xF) + 1) & 0xFFFFFFFF == 0x4000
    fn.config_write(0x10 + 4 * 1, 4, 0xFFFFFFFF)
    assert (~(fn.config_read(0x14, 4) & ~0xF) + 1) & 0xFFFFFFFF == 0x1000


@pytest.mark.spec("dev:pci/pci-cfg#2", "dev:pci/pci-cfg#3")
def test_pci_cfg_window_reaches_the_bar(fn) -> None:  # type: ignore[no-untyped-def]
    """§4.1.4.9: driver sets bar/offset/length in the PCI_CFG cap; pci_cfg_data performs the BAR access."""
    p = next(p for p in find_caps(fn)[0x09] if fn.config_read(p + 3, 1) == 5)
    fn.config_write(p + 4, 1, 4)  # bar
    fn.config_write(p + 8, 4, 18)  # num_queues... needs 2-byte alignment
    fn.config_write(p + 12, 4, 2)
    assert fn.config_read(p + 16, 4) == 1
    fn.config_write(p + 8, 4, 22)  # queue_select via the window
    fn.config_write(p + 16, 4, 0)
    fn.config_write(p + 8, 4, 24)
    assert fn.config_read(p + 16, 4) == 64


@pytest.mark.spec("dev:pci/msix#2")
def test_msix_capability_and_table(fn) -> None:  # type: ignore[no-untyped-def]
    """§4.1.5.1.2.1: Table Size reports the vectors (queues + config); table and PBA in BAR1; entries masked."""
    p = find_caps(fn)[0x11][0]
    ctrl, table, pba = struct.unpack("<HII", bytes(fn.config_read(p + 2 + i, 1) for i in range(10)))
    assert (ctrl & 0x7FF) + 1 == 2  # queues + config
    assert table & 7 == 1 and pba & 7 == 1  # both in BAR1
    assert pba & ~7 == 0x800
    # entries start masked after reset
    assert fn.bar_read(1, 12, 4) & 1


@pytest.mark.spec("dev:pci/isr#2", "dev:pci/isr#4", "dev:pci/isr#5")
def test_isr_read_to_clear_and_intx_when_msix_off(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§4.1.4.5: ISR bit 1 on config change, reading ISR clears it and de-asserts INTx."""
    from pyvirtio.guest.rng import RngDriver

    dev = TestDevice()
    fn = machine.plug(dev)
    seen = []
    drv = RngDriver.__mro__[1](machine, fn, alloc, name="testdev", use_msix=False)
    drv.config_changed = lambda: seen.append(1)  # type: ignore[method-assign]
    drv.probe()
    dev.host_set_value(5)
    machine.run_for(1000)
    assert seen == [1]
    assert fn.config_read(0x06, 2) & 0x08 == 0  # PCI status Interrupt bit cleared by the ISR read
    dev.host_set_value(6)
    assert fn.config_read(0x06, 2) & 0x08  # asserted until ISR is read
    assert fn.bar_read(4, 0x1000, 1) & 0x2
    assert fn.bar_read(4, 0x1000, 1) == 0  # read-to-clear


@pytest.mark.spec("dev:pci/common-cfg#5")
def test_config_generation_changes_with_device_config(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§4.1.4.3.1 MUST: config_generation changes when device config changed."""
    dev = TestDevice()
    fn = machine.plug(dev)
    enable(fn)
    g0 = cread(fn, 21, 1)
    dev.host_set_value(1)
    assert cread(fn, 21, 1) != g0
    assert fn.bar_read(4, 0x2000, 4) == 1


def test_device_config_read_beyond_size_is_all_ones(machine: Machine) -> None:
    fn = machine.plug(TestDevice())
    enable(fn)
    assert fn.bar_read(4, 0x2000 + 16, 4) == 0xFFFFFFFF


def test_clearing_bus_master_drops_driver_ok_like_qemu(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """QEMU virtio_write_config: COMMAND.MASTER cleared -> DRIVER_OK dropped (status 0x0F -> 0x0B)."""
    from pyvirtio.guest.rng import RngDriver

    fn = machine.plug(Rng())
    RngDriver(machine, fn, alloc, name="rng").probe()
    assert cread(fn, 20, 1) == 0x0F
    fn.config_write(0x04, 2, fn.config_read(0x04, 2) & ~0x4)
    assert cread(fn, 20, 1) == 0x0B


def test_pm_capability_only_behind_pcie_port(machine: Machine) -> None:
    """QEMU adds the PM capability only to a PCIe endpoint on a port; PMC = 0x0003 (PM 1.2, no D1/D2)."""
    plain = machine.plug(Rng("rng0"))
    assert 0x01 not in find_caps(plain)
    fn = machine.plug(Rng("rng1"), pcie_port=True)
    pm = find_caps(fn)[0x01][0]
    assert fn.config_read(pm + 2, 2) == 0x0003
    assert fn.config_read(pm + 4, 2) == 0x0000


@pytest.mark.spec("dev:pci#1")
def test_pmcsr_no_soft_reset_is_read_only(machine: Machine) -> None:
    """PCI PM 1.2: No_Soft_Reset (PMCSR bit 3) is set by the function, read-only to software."""
    fn = machine.plug(Rng(), pcie_port=True, no_soft_reset=True)
    pm = find_caps(fn)[0x01][0]
    assert fn.config_read(pm + 4, 2) == 0x0008
    fn.config_write(pm + 4, 2, 0x0000)
    assert fn.config_read(pm + 4, 2) == 0x0008
    fn.config_write(pm + 4, 2, 0x0003)
    assert fn.config_read(pm + 4, 2) == 0x000B  # D3hot, as QEMU reads in §7A


@pytest.mark.spec("dev:pci#1")
def test_pmcsr_rejects_d1_d2(machine: Machine) -> None:
    """QEMU pci_pm_update: D1/D2 not advertised in PMC -> the write keeps the old PowerState."""
    fn = machine.plug(Rng(), pcie_port=True)
    pm = find_caps(fn)[0x01][0]
    fn.config_write(pm + 4, 2, 1)
    assert fn.config_read(pm + 4, 2) & 3 == 0
    fn.config_write(pm + 4, 2, 3)
    fn.config_write(pm + 4, 2, 2)
    assert fn.config_read(pm + 4, 2) & 3 == 3


@pytest.mark.spec("dev:pci#1")
def test_bars_unmapped_outside_d0(machine: Machine) -> None:
    """PCI PM (§4.1.1: the function meets PCI): outside D0 the function answers config accesses only; BAR reads
    give all-ones and writes are dropped, and D0 brings the registers back."""
    fn = machine.plug(Rng(), pcie_port=True)
    enable(fn)
    pm = find_caps(fn)[0x01][0]
    assert cread(fn, 18, 2) == 1
    fn.config_write(pm + 4, 2, 3)
    assert cread(fn, 18, 2) == 0xFFFF
    cwrite(fn, 22, 2, 9)  # dropped
    fn.config_write(pm + 4, 2, 0)
    assert cread(fn, 22, 2) == 0
