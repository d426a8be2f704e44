"""The bridge against a fake UML kernel (virtio_uml's front-end and virt-pci's queues in Python): configuration and
BAR accesses reach the plugged function with their widths, interrupts go back with the data the kernel programmed,
and hostile requests get a 0-length answer and a recorded violation, never an exception."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtio.host.rng import Rng
from pyvirtio.spec.constants import (
    PCI_COMMAND,
    PCI_DEVICE_ID,
    PCI_VENDOR_ID,
    QEMU_MODERN_BAR,
    CommonCfg,
    PciCommand,
)
from pyvirtio.trace import Kind
from pyvirtio.uml.bridge import Bridge, Mode
from pyvirtio.uml.platform import UmlMachine
from pyvirtio.uml.runner import kernel_command
from pyvirtio.uml.wire import HEADER, HEADER_SIZE, UML_MSI_ADDRESS, Op
from pyvirtio.vhost_user.messages import BackendRequest
from pyvirtio.vm.uml_kernel import UmlAssets

from .fake_kernel import FakeKernel


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[UmlMachine, Bridge, FakeKernel]]:
    machine = UmlMachine(seed=3)
    bridge = Bridge(machine, tmp_path, mode=Mode.REALTIME)
    bridge.add(machine.plug(Rng("rng", seed=3), pcie_port=True))
    k = FakeKernel(bridge)
    k.start()
    yield machine, bridge, k
    k.close()
    bridge.close()


def test_config_and_bar_accesses_reach_the_function(rig: tuple[UmlMachine, Bridge, FakeKernel]) -> None:
    machine, bridge, k = rig
    assert k.cfg_read(PCI_VENDOR_ID, 2) == 0x1AF4
    assert k.cfg_read(PCI_DEVICE_ID, 2) == 0x1044
    assert k.cfg_read(0, 8) == 0x10441AF4 | (k.cfg_read(4, 4) << 32)
    k.cfg_write(PCI_COMMAND, 2, PciCommand.MEMORY | PciCommand.MASTER)
    assert machine.slots[0].command & PciCommand.MEMORY
    assert k.bar_read(QEMU_MODERN_BAR, CommonCfg.NUM_QUEUES, 2) == 1  # one 2-byte access, not two 1-byte ones
    k.bar_write(QEMU_MODERN_BAR, CommonCfg.DEVICE_STATUS, 1, 1)
    assert machine.slots[0].device.status == 1
    reads = [e for e in machine.trace.events if e.kind is Kind.BAR_READ and e.detail.get("offset") == 18]
    assert [e.detail["size"] for e in reads] == [2]
    ops = [w.op for w in bridge.wire]
    assert ops.count("CFG_READ") >= 3 and "MMIO_READ" in ops and "MMIO_WRITE" in ops


def test_odd_widths_are_split_into_aligned_accesses(rig: tuple[UmlMachine, Bridge, FakeKernel]) -> None:
    machine, bridge, k = rig
    k.cfg_write(PCI_COMMAND, 2, PciCommand.MEMORY)
    k.bar_read(QEMU_MODERN_BAR, 0, 8)  # device_feature_select + device_feature as one 8-byte read
    assert bridge.wire[-1].note == "split" or bridge.wire[-1].size == 8


def test_memset_quirk_and_hostile_requests(rig: tuple[UmlMachine, Bridge, FakeKernel]) -> None:
    machine, bridge, k = rig
    k.cfg_write(PCI_COMMAND, 2, PciCommand.MEMORY)
    n, _ = k.command(HEADER.pack(Op.CFG_WRITE, 1, 0, 16, 0) + b"\x00")  # Linux 6.12 um_pci_bar_set
    assert n == 0 and bridge.wire[-1].op == "MEMSET" and "CFG_WRITE" in bridge.wire[-1].note
    n, reply = k.command(HEADER.pack(Op.CFG_READ, 0, 0, 3, 0), 8)
    assert n == 0 and reply == b"\xff" * 8  # rejected: nothing written, the kernel sees all-ones
    assert bridge.slots[0].carrier.rejected == 1
    n, _ = k.command(b"\x01\x02\x03", 8)
    assert n == 0 and bridge.slots[0].carrier.rejected == 2
    assert any("virt-pci: malformed" in f.rule for f in bridge.slots[0].monitor.record.findings)
    assert k.cfg_read(PCI_VENDOR_ID, 2) == 0x1AF4  # still serving


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=40), st.integers(0, 16))
def test_random_requests_never_break_the_bridge(rig: tuple[UmlMachine, Bridge, FakeKernel], raw: bytes,
                                                reply: int) -> None:
    _, bridge, k = rig
    n, _ = k.command(raw, reply)
    assert 0 <= n <= reply
    assert k.cfg_read(PCI_VENDOR_ID, 2) == 0x1AF4


def test_msi_reaches_the_kernel_with_its_data_and_other_addresses_are_dropped(
        rig: tuple[UmlMachine, Bridge, FakeKernel]) -> None:
    machine, bridge, k = rig
    machine.msi("rng", UML_MSI_ADDRESS, 0x41, 0)
    machine.msi("rng", 0xFEE00000, 0x42, 1)  # not UML's MSI address: not an interrupt here
    k.pump()
    got = k.irqs()
    assert len(got) == 1
    op, _, _, size, _ = HEADER.unpack_from(got[0])
    assert (op, size, int.from_bytes(got[0][HEADER_SIZE:HEADER_SIZE + 4], "little")) == (Op.MSI, 4, 0x41)
    assert any(e.detail.get("dropped") for e in machine.trace.events if e.kind is Kind.INTERRUPT)
    machine.pme("rng")
    k.pump()
    assert HEADER.unpack_from(k.irqs()[0])[0] == Op.PME


def test_events_wait_for_irq_buffers(rig: tuple[UmlMachine, Bridge, FakeKernel]) -> None:
    machine, bridge, k = rig
    for d in range(12):  # only 10 buffers are posted
        machine.msi("rng", UML_MSI_ADDRESS, 0x40 + d, 0)
    k.pump()
    first = k.irqs()
    assert len(first) == 10
    assert bridge.slots[0].carrier.held_irqs == 2
    k.kick(1)  # the kernel recycles its buffers and kicks
    assert [int.from_bytes(m[HEADER_SIZE:], "little") for m in k.irqs()] == [0x4A, 0x4B]


def test_inband_notifications(tmp_path: Path) -> None:
    machine = UmlMachine(seed=1)
    bridge = Bridge(machine, tmp_path, mode=Mode.TIME_TRAVEL)
    bridge.add(machine.plug(Rng("rng", seed=1)))
    k = FakeKernel(bridge, inband=True)
    try:
        k.protocol = 0
        k.start()
        assert bridge.slots[0].session is not None
        assert k.cfg_read(PCI_VENDOR_ID, 2) == 0x1AF4  # kicks as VRING_KICK messages, served before the ACK
        machine.msi("rng", UML_MSI_ADDRESS, 0x33, 0)
        msgs = k.backend_messages()
        calls = [h for h, _ in msgs if h.request == BackendRequest.VRING_CALL]
        assert calls, msgs
        assert int.from_bytes(k.irqs()[0][HEADER_SIZE:], "little") == 0x33
    finally:
        k.close()
        bridge.close()


def test_the_kernel_command_line_does_not_depend_on_the_run_directory(tmp_path: Path) -> None:
    """The command line is copied into the kernel's memory: a run directory of another length would move the
    kernel's early allocations and so the DMA addresses of the register trace (found with --basetemp lengths)."""
    lines = []
    for name in ("d", "a-much-longer-run-directory-name"):
        (tmp_path / name).mkdir()
        machine = UmlMachine(seed=1)
        bridge = Bridge(machine, tmp_path / name, mode=Mode.TIME_TRAVEL)
        bridge.add(machine.plug(Rng("rng", seed=1)))
        assets = UmlAssets(stack="s", variant="stock", kernel=Path("/k/linux"), initrd=Path("/k/initrd"),
                           source_version="v", kernel_release="r", config_digest="c", patch_digest="",
                           busybox_version="b", build_seconds=0.0, kernel_dir=Path("/k"), guest_dir=Path("/g"))
        lines.append(kernel_command(assets, bridge.kernel_args()))
        bridge.close()
    assert lines[0] == lines[1]
    assert not any(str(tmp_path) in a for a in lines[0])
