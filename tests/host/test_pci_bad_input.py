"""Hostile guest input: each gets the spec's answer, never an exception out of a device, and the machine runs on."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtio.devices import Rng, TestDevice
from pyvirtio.guest.rng import RngDriver
from pyvirtio.machine import Machine
from pyvirtio.spec.constants import Status
from pyvirtio.trace import Kind

from .pci_helpers import cread, cwrite, enable


def live_rng(machine: Machine, alloc, **kw):  # type: ignore[no-untyped-def]
    dev = Rng(**kw)
    fn = machine.plug(dev)
    drv = RngDriver(machine, fn, alloc, name="rng")
    drv.probe()
    return dev, fn, drv


def violations(machine: Machine) -> list[str]:
    return [str(e.detail.get("rule")) for e in machine.trace.violations()]


@pytest.mark.parametrize(("off", "size"), [(20, 2), (21, 2), (22, 1), (24, 4), (32, 8), (33, 4), (0, 2), (18, 4)])
def test_wrong_width_or_misaligned_common_access_is_ignored(machine: Machine, off: int, size: int) -> None:
    """§4.1.4.3.2 MUST: the driver accesses each common-config field at its natural width. Reads give 0."""
    fn = machine.plug(Rng())
    enable(fn)
    before = cread(fn, 22, 2), cread(fn, 20, 1)
    if size in (1, 2, 4):
        assert cread(fn, off, size) == 0
        cwrite(fn, off, size, 0xFFFF_FFFF if size == 4 else 0xFF)
    else:
        assert fn.bar_read(4, off, size) == (1 << 64) - 1  # an 8-byte access is refused at the BAR
        fn.bar_write(4, off, size, 1)
    assert (cread(fn, 22, 2), cread(fn, 20, 1)) == before
    assert violations(machine)


@pytest.mark.spec("dev:pci/common-cfg#14")
def test_non_power_of_two_queue_size_is_ignored(machine: Machine) -> None:
    """§2.7 (split ring) MUST: Queue Size is a power of 2; the device keeps the old value."""
    fn = machine.plug(Rng())
    enable(fn)
    cwrite(fn, 24, 2, 48)
    assert cread(fn, 24, 2) == 64
    cwrite(fn, 24, 2, 128)  # larger than the maximum
    assert cread(fn, 24, 2) == 64
    cwrite(fn, 24, 2, 16)
    assert cread(fn, 24, 2) == 16


def test_queue_enable_written_with_zero_sets_needs_reset(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§4.1.4.3.2 MUST NOT write 0 to queue_enable; QEMU answers with virtio_error -> DEVICE_NEEDS_RESET."""
    dev, fn, drv = live_rng(machine, alloc)
    n0 = len(machine.interrupts)
    cwrite(fn, 22, 2, 0)
    cwrite(fn, 28, 2, 0)
    assert cread(fn, 20, 1) & Status.DEVICE_NEEDS_RESET
    machine.run_for(1000)
    assert len(machine.interrupts) == n0 + 1  # §2.1.2 MUST: config change notification when DRIVER_OK was set
    assert drv.needs_reset_seen


@pytest.mark.spec("dev:pci/msix#9")
def test_msix_vector_beyond_table_reads_no_vector(machine: Machine) -> None:
    """§4.1.5.1.2: a vector the device cannot map reads back as NO_VECTOR (0xffff)."""
    fn = machine.plug(Rng())
    enable(fn)
    cwrite(fn, 16, 2, 1)
    assert cread(fn, 16, 2) == 1
    cwrite(fn, 16, 2, 2)  # table has 2 entries: 0, 1
    assert cread(fn, 16, 2) == 0xFFFF
    cwrite(fn, 26, 2, 0x7FF)
    assert cread(fn, 26, 2) == 0xFFFF


@pytest.mark.spec("dev:pci/msix#7", "dev:pci/common-cfg#6", "dev:pci/common-cfg#7")
def test_reset_unmaps_vectors(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§4.1.4.3.2 MUST on reset: present 0 in queue_enable and unmap all MSI-X events (NO_VECTOR)."""
    dev, fn, drv = live_rng(machine, alloc)
    assert cread(fn, 16, 2) == 0 and cread(fn, 28, 2) == 1
    cwrite(fn, 20, 1, 0)
    assert cread(fn, 20, 1) == 0
    assert cread(fn, 16, 2) == 0xFFFF
    cwrite(fn, 22, 2, 0)
    assert (cread(fn, 26, 2), cread(fn, 28, 2)) == (0xFFFF, 0)


def test_status_bits_cleared_without_reset_are_ignored(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§2.1.1 MUST NOT clear a device status bit: the device keeps what it presents."""
    dev, fn, drv = live_rng(machine, alloc)
    cwrite(fn, 20, 1, 0x03)
    assert cread(fn, 20, 1) == 0x0F
    assert any("MUST NOT clear" in v for v in violations(machine))
    assert drv.read(8)  # still works


def test_driver_cannot_set_needs_reset(machine: Machine) -> None:
    fn = machine.plug(Rng())
    enable(fn)
    cwrite(fn, 20, 1, 0x41)
    assert cread(fn, 20, 1) == 0x01


def test_features_ok_refused_for_unoffered_bit(machine: Machine) -> None:
    """§3.1.1 / §2.2: the device does not latch FEATURES_OK when the driver accepted a bit not offered."""
    fn = machine.plug(Rng())
    enable(fn)
    cwrite(fn, 20, 1, 1)
    cwrite(fn, 20, 1, 3)
    cwrite(fn, 8, 4, 0)
    cwrite(fn, 12, 4, 1 << 5)  # device-specific bit 5: rng offers none
    cwrite(fn, 8, 4, 1)
    cwrite(fn, 12, 4, 1)
    cwrite(fn, 20, 1, 0x0B)
    assert not cread(fn, 20, 1) & Status.FEATURES_OK


def test_features_ok_refused_without_version_1(machine: Machine) -> None:
    """§2.2 driver MUST accept VERSION_1 if offered; a modern device refuses FEATURES_OK without it."""
    fn = machine.plug(Rng())
    enable(fn)
    for s in (1, 3):
        cwrite(fn, 20, 1, s)
    cwrite(fn, 20, 1, 0x0B)
    assert cread(fn, 20, 1) == 0x03


def test_driver_ok_without_features_ok_is_ignored(machine: Machine) -> None:
    fn = machine.plug(Rng())
    enable(fn)
    cwrite(fn, 20, 1, 0x07)
    assert cread(fn, 20, 1) == 0x03


def test_queue_rings_outside_memory_set_needs_reset(machine: Machine) -> None:
    """Ring addresses outside guest RAM: never accessed; the device enters DEVICE_NEEDS_RESET."""
    fn = machine.plug(Rng())
    enable(fn)
    for s in (1, 3):
        cwrite(fn, 20, 1, s)
    cwrite(fn, 8, 4, 1)
    cwrite(fn, 12, 4, 1)
    cwrite(fn, 20, 1, 0x0B)
    cwrite(fn, 22, 2, 0)
    cwrite(fn, 32, 4, 0xFFFF0000)  # desc beyond 16 MiB of RAM
    cwrite(fn, 28, 2, 1)
    assert cread(fn, 28, 2) == 0
    assert cread(fn, 20, 1) & Status.DEVICE_NEEDS_RESET


def test_descriptor_loop_is_answered_on_that_chain(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§2.7.5.2: a looping chain is an error on that chain (used with len 0); the queue keeps working."""
    dev, fn, drv = live_rng(machine, alloc)
    vq = drv.vqs[0]
    buf = alloc.alloc(16)
    head = vq.add([], [(buf, 16)], "x")
    desc = vq.layout.desc + 16 * head
    flags = machine.memory.read_u16(desc + 12)
    machine.memory.write_u16(desc + 12, flags | 1)  # NEXT
    machine.memory.write_u16(desc + 14, head)  # -> itself
    drv.kick(0)
    machine.run_for(1_000_000)
    assert any("malformed" in v for v in violations(machine))
    assert not cread(fn, 20, 1) & Status.DEVICE_NEEDS_RESET
    assert len(drv.read(8)) == 8


def test_avail_idx_jump_sets_needs_reset(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§2.7.13 driver MUST NOT move avail idx by more than the queue size: DEVICE_NEEDS_RESET, no crash."""
    dev, fn, drv = live_rng(machine, alloc)
    vq = drv.vqs[0]
    machine.memory.write_u16(vq.layout.avail + 2, 1000)
    drv.t.notify(0)
    machine.run_for(1_000_000)
    assert cread(fn, 20, 1) & Status.DEVICE_NEEDS_RESET
    # the driver recovers with a reset and full re-probe
    drv.del_vqs()
    drv.probe()
    assert len(drv.read(4)) == 4


def test_notify_for_missing_queue_and_bad_width(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    dev, fn, drv = live_rng(machine, alloc)
    fn.bar_write(4, 0x3000 + 4 * 9, 2, 9)
    fn.bar_write(4, 0x3000, 4, 0)
    fn.bar_write(4, 0x3001, 1, 0)
    machine.run_for(1000)
    assert len(violations(machine)) == 3
    assert cread(fn, 20, 1) == 0x0F


def test_device_config_write_beyond_structure_is_ignored(machine: Machine) -> None:
    dev = TestDevice()
    fn = machine.plug(dev)
    enable(fn)
    fn.bar_write(4, 0x2000 + 14, 4, 0xDEAD)  # crosses the end
    fn.bar_write(4, 0x2000 + 5, 4, 0xDEAD)  # misaligned
    fn.bar_write(4, 0x2000 + 4, 4, 0xBEEF)
    assert bytes(dev.config) == struct.pack("<IIQ", 0, 0xBEEF, 0)


def test_out_of_range_bar_accesses(machine: Machine) -> None:
    fn = machine.plug(Rng())
    enable(fn)
    assert fn.bar_read(7, 0, 4) == 0xFFFFFFFF
    assert fn.bar_read(4, 0x4000, 4) == 0xFFFFFFFF
    assert fn.bar_read(0, 0, 4) == 0xFFFFFFFF  # BAR0 not implemented
    assert fn.bar_read(4, -4, 4) == 0xFFFFFFFF
    fn.bar_write(4, 0x3FFF, 2, 0)
    assert fn.config_read(3, 2) == 0xFFFF  # misaligned config read
    fn.config_write(0x1000, 4, 0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["cr", "cw", "br", "bw"]), st.integers(0, 5), st.integers(-8, 0x4010),
                          st.sampled_from([1, 2, 3, 4, 8]), st.integers(0, 2**32 - 1)), max_size=60))
def test_random_register_traffic_never_raises(ops: list[tuple[str, int, int, int, int]]) -> None:
    """Property: any sequence of register accesses leaves the machine running and never raises."""
    m = Machine(4 << 20, seed=3)
    dev = TestDevice()
    fn = m.plug(dev, msix_vectors=2)
    enable(fn)
    for op, bar, off, size, value in ops:
        if op == "cr":
            fn.config_read(off, size)
        elif op == "cw":
            fn.config_write(off, size, value)
        elif op == "br":
            fn.bar_read(bar, off, size)
        else:
            fn.bar_write(bar, off, size, value)
        m.run_for(50_000)
    assert m.trace.select(Kind.DEVICE, "testdev") == [] or all(
        e.detail.get("event") != "device_error" for e in m.trace.select(Kind.DEVICE, "testdev"))
