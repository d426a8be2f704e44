"""The PCI function as discovered (virtio 1.4 §4.1.1, §4.1.2, §4.1.4): PCI conformance of the header and the
capability list, IDs, and the virtio structure capabilities (cap_len, alignment, the notification structure).

Raw offsets (PCI 3.0 type 0 header; ``struct virtio_pci_cap``: cap_vndr @0, cap_next @1, cap_len @2, cfg_type @3,
bar @4, id @5, offset @8, length @12; ``notify_off_multiplier`` @16 of the NOTIFY capability).
"""

from __future__ import annotations

import struct

import pytest

from pyvirtio.devices import Gpu, Rng, TestDevice
from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.machine import Machine

from ..pci_helpers import cread, cwrite, enable, find_caps, virtio_caps

COMMON_CFG, NOTIFY_CFG, ISR_CFG, DEVICE_CFG, PCI_CFG = 1, 2, 3, 4, 5
DEVICES = [Rng, Gpu, TestDevice]


def cap_fields(fn: VirtioPciFunction, pos: int) -> tuple[int, int, int, int, int]:
    """(cap_len, cfg_type, bar, offset, length) of the virtio capability at ``pos``."""
    raw = bytes(fn.config_read(pos + i, 1) for i in range(16))
    _, _, cap_len, cfg_type, bar, _, offset, length = struct.unpack("<BBBBBBxxII", raw)
    return cap_len, cfg_type, bar, offset, length


@pytest.mark.spec("dev:pci#1")
@pytest.mark.parametrize("pcie_port", [False, True])
def test_the_header_and_capability_list_follow_pci(machine: Machine, pcie_port: bool) -> None:
    """§4.1.1: the function MUST meet the PCI specification: a type 0 header with Capabilities List set, the list
    starting after the header, every entry dword aligned inside the 256-byte space, no loop, a 0 terminator;
    only COMMAND's defined bits are writable; BARs are sized by their write masks (64-bit BAR4 pairs BAR5)."""
    fn = machine.plug(Rng(), pcie_port=pcie_port)
    assert fn.config_read(0x0E, 1) & 0x7F == 0 and fn.config_read(0x06, 2) & 0x10
    pos, seen = fn.config_read(0x34, 1), []
    while pos:
        assert 0x40 <= pos <= 0xFC and pos % 4 == 0 and pos not in seen
        seen.append(pos)
        pos = fn.config_read(pos + 1, 1)
    assert len(seen) == sum(len(v) for v in find_caps(fn).values())  # the walk above ends at the 0 pointer
    fn.config_write(0x04, 2, 0xFFFF)
    assert fn.config_read(0x04, 2) == 0x0407  # IO, MEMORY, MASTER, INTX_DISABLE
    fn.config_write(0x10 + 4 * 4, 4, 0xFFFFFFFF)
    fn.config_write(0x10 + 4 * 5, 4, 0xFFFFFFFF)
    lo, hi = fn.config_read(0x20, 4), fn.config_read(0x24, 4)
    assert lo & 0xF == 0xC and ((~(((hi << 32) | lo) & ~0xF) + 1) & (2**64 - 1)) == 0x4000
    if pcie_port:
        assert 0x10 in find_caps(fn) and 0x01 in find_caps(fn)


@pytest.mark.spec("dev:pci/discovery#1", "dev:pci/discovery#2", "dev:pci/discovery#3", "dev:pci/discovery#4",
                  "dev:pci/discovery#5")
@pytest.mark.parametrize("cls", DEVICES)
def test_ids_of_a_non_transitional_function(machine: Machine, cls: type[VirtioDevice]) -> None:
    """§4.1.2.1: vendor 0x1AF4 (MUST), device 0x1040 + virtio device id (MUST) within 0x1040..0x107F, revision
    >= 1 and subsystem device id >= 0x40 (SHOULD, non-transitional)."""
    dev = cls()
    fn = machine.plug(dev)
    assert fn.config_read(0x00, 2) == 0x1AF4
    did = fn.config_read(0x02, 2)
    assert did == 0x1040 + int(dev.device_id) and 0x1040 <= did <= 0x107F
    assert fn.config_read(0x08, 1) >= 1
    assert fn.config_read(0x2E, 2) >= 0x40


@pytest.mark.spec("dev:pci/caps#1", "dev:pci/common-cfg#1", "dev:pci/common-cfg#2", "dev:pci/device-cfg#1")
@pytest.mark.parametrize("cls", DEVICES)
def test_virtio_capabilities_lengths_and_alignment(machine: Machine, cls: type[VirtioDevice]) -> None:
    """§4.1.4.2: cap_len covers the capability and its extra fields (16; 20 for NOTIFY and PCI_CFG);
    §4.1.4.3.1: one COMMON_CFG whose offset is 4-byte aligned; §4.1.4.6.1: the device-specific structure (when
    the device has one) is 4-byte aligned."""
    fn = machine.plug(cls())
    caps = virtio_caps(fn)
    assert len(caps[COMMON_CFG]) == 1
    for cfg_type, positions in caps.items():
        for pos in positions:
            cap_len, t, bar, offset, _ = cap_fields(fn, pos)
            assert t == cfg_type
            assert cap_len == (20 if cfg_type in (NOTIFY_CFG, PCI_CFG) else 16)
            nxt = fn.config_read(pos + 1, 1)
            assert nxt == 0 or nxt >= pos + cap_len  # the next capability starts after this one's cap_len
            if cfg_type in (COMMON_CFG, DEVICE_CFG):
                assert offset % 4 == 0 and bar == 4
    assert (DEVICE_CFG in caps) == bool(fn.device.config_size())


@pytest.mark.spec("dev:pci/notify-cap#1", "dev:pci/notify-cap#2", "dev:pci/notify-cap#3", "dev:pci/notify-cap#4",
                  "dev:pci/notify-cap#5")
@pytest.mark.parametrize("cls", DEVICES)
def test_the_notification_structure_covers_every_queue(machine: Machine, cls: type[VirtioDevice]) -> None:
    """§4.1.4.4.1 (no VIRTIO_F_NOTIFICATION_DATA offered): one NOTIFY_CFG; offset 2-byte aligned; multiplier 0 or
    an even power of 2; length >= 2 and >= queue_notify_off * multiplier + 2 for every queue; and a 16-bit write
    at each such address notifies that queue."""
    dev = cls()
    fn = machine.plug(dev)
    enable(fn)
    [pos] = virtio_caps(fn)[NOTIFY_CFG]
    _, _, bar, offset, length = cap_fields(fn, pos)
    mult = fn.config_read(pos + 16, 4)
    assert offset % 2 == 0 and length >= 2
    assert mult == 0 or (mult & (mult - 1) == 0 and (mult.bit_length() - 1) % 2 == 0)
    nq = cread(fn, 18, 2)
    assert nq == len(dev.queues) >= 1
    kicked: list[int] = []
    dev.kick = lambda q: kicked.append(q)  # type: ignore[method-assign]
    for q in range(nq):
        cwrite(fn, 22, 2, q)
        off = cread(fn, 30, 2)
        assert length >= off * mult + 2
        fn.bar_write(bar, offset + off * mult, 2, q)
    assert kicked == list(range(nq))
