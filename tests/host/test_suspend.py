"""virtio 1.4 "Device Suspend": every normative statement, named.

Section: virtio 1.4 §2.1 (device status field, SUSPEND) and the "Device Suspend" section added by commit f219fef.
"""

from __future__ import annotations

import pytest

from pyvirtio.clock import MS, US
from pyvirtio.devices import Rng, TestDevice
from pyvirtio.errors import DriverError, DriverTimeout
from pyvirtio.guest.driver import VirtioDriver
from pyvirtio.guest.rng import RngDriver
from pyvirtio.machine import Machine
from pyvirtio.spec.constants import Status
from pyvirtio.trace import Kind

from .pci_helpers import cread, cwrite


def live(machine: Machine, alloc, *, accept_suspend: bool = True, **kw):  # type: ignore[no-untyped-def]
    dev = Rng(bytes_per_us=4, **kw)  # slow: 4096 bytes take ~1 ms of virtual time
    fn = machine.plug(dev)
    drv = RngDriver(machine, fn, alloc, name="rng", accept_suspend=accept_suspend)
    drv.probe()
    return dev, fn, drv


def in_flight(machine: Machine, drv: RngDriver, dev: Rng, n: int = 3, size: int = 4096) -> list:  # type: ignore[type-arg]
    reqs = [drv.request(size) for _ in range(n)]
    assert machine.run_until(lambda: dev.inflight() == n, 1 * MS)
    return reqs


@pytest.mark.spec("dev:suspend#6", "dev:suspend#7")
def test_status_sequence_0f_1f_1b_1f_0f(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§3.4.2: the device MUST suspend when SUSPEND is set, and MUST resume when DRIVER_OK is set again.
    Suspend: write 0x1F, read 0x1B (SUSPEND=1, DRIVER_OK=0); resume: write 0x1F, read 0x0F."""
    dev, fn, drv = live(machine, alloc)
    assert cread(fn, 20, 1) == 0x0F
    cwrite(fn, 20, 1, 0x1F)
    assert machine.run_until(lambda: cread(fn, 20, 1) == 0x1B, 1 * MS)
    cwrite(fn, 20, 1, 0x1F)
    assert machine.run_until(lambda: cread(fn, 20, 1) == 0x0F, 1 * MS)
    assert machine.trace.status_sequence("rng")[-5:] == [0x0F, 0x1F, 0x1B, 0x1F, 0x0F]


@pytest.mark.spec("dev:suspend#1")
def test_device_must_ignore_suspend_before_driver_ok(machine: Machine) -> None:
    """§3.4.2: the device MUST ignore SUSPEND unless initialization completed (DRIVER_OK)."""
    fn = machine.plug(Rng())
    from .pci_helpers import enable

    enable(fn)
    for s in (0x01, 0x03):
        cwrite(fn, 20, 1, s)
    cwrite(fn, 8, 4, 1)
    cwrite(fn, 12, 4, (1 << 0) | (1 << (43 - 32)))
    cwrite(fn, 20, 1, 0x0B)
    cwrite(fn, 20, 1, 0x1B)
    machine.run_for(1 * MS)
    assert cread(fn, 20, 1) == 0x0B
    assert any("MUST ignore SUSPEND" in str(e.detail["rule"]) for e in machine.trace.violations())


def test_device_must_ignore_suspend_without_the_feature(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """Device Suspend, device MUST ignore SUSPEND unless VIRTIO_F_SUSPEND was negotiated."""
    dev, fn, drv = live(machine, alloc, accept_suspend=False)
    cwrite(fn, 20, 1, 0x1F)
    machine.run_for(1 * MS)
    assert cread(fn, 20, 1) == 0x0F
    with pytest.raises(DriverError):
        drv.suspend_bit()


@pytest.mark.spec("dev:suspend#8")
def test_inflight_complete_before_suspend_shows(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§3.4.2: the device SHOULD stop consuming, wait for in-flight buffers to be used and send used
    notifications, before presenting SUSPEND=1/DRIVER_OK=0."""
    dev, fn, drv = live(machine, alloc)
    reqs = in_flight(machine, drv, dev)
    cwrite(fn, 20, 1, 0x1F)
    assert cread(fn, 20, 1) == 0x1F  # quiescing takes time: not yet 0x1B
    assert machine.run_until(lambda: cread(fn, 20, 1) == 0x1B, 10 * MS)
    assert all(r.done for r in reqs)  # the used notifications were delivered before SUSPEND showed
    assert dev.inflight() == 0


@pytest.mark.spec("dev:suspend#8")
def test_driver_polls_until_suspended_and_nothing_is_lost(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """Driver MUST re-read status until SUSPEND=1 and DRIVER_OK=0; §3.4.2 the device SHOULD stop consuming
    buffers: those made available but not yet popped stay available and are served after resume."""
    dev, fn, drv = live(machine, alloc)
    reqs = in_flight(machine, drv, dev, n=2)
    waiting = drv.request(64)  # available, not consumed before the suspend request
    drv.suspend_bit()
    assert drv.t.get_status() == 0x1B
    assert all(r.done for r in reqs) and not waiting.done
    drv.resume_bit()
    assert machine.run_until(lambda: waiting.done, 10 * MS)


@pytest.mark.spec("dev:suspend#3")
def test_no_notifications_and_no_queue_access_while_suspended(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§3.4.2: the device MUST NOT send notifications or access virtqueues while suspended."""
    dev, fn, drv = live(machine, alloc)
    drv.suspend_bit()
    n_irq = len(machine.interrupts)
    used_idx = machine.memory.read_u16(drv.vqs[0].layout.used + 2)
    # A misbehaving driver makes a buffer available and notifies anyway.
    drv.submitting = True
    req = drv.request(16)
    machine.run_for(10 * MS)
    assert machine.memory.read_u16(drv.vqs[0].layout.used + 2) == used_idx
    assert len(machine.interrupts) == n_irq
    assert not req.done
    assert any("MUST NOT send notifications while suspended" in str(e.detail["rule"])
               for e in machine.trace.violations())
    drv.resume_bit()
    assert machine.run_until(lambda: req.done, 10 * MS)  # looked at again on resume


@pytest.mark.spec("dev:suspend#2")
def test_config_writes_ignored_while_suspended(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§3.4.2: the device SHOULD ignore config-space writes while suspended (device status excepted)."""
    dev = TestDevice()
    fn = machine.plug(dev)
    drv = VirtioDriver(machine, fn, alloc, name="testdev")
    drv.probe()
    drv.suspend_bit()
    drv.t.config_write(4, 4, 0x1234)
    assert drv.t.config_read(4, 4) == 0
    drv.resume_bit()
    drv.t.config_write(4, 4, 0x1234)
    assert drv.t.config_read(4, 4) == 0x1234


@pytest.mark.spec("dev:suspend#3", "dev:suspend#4", "dev:suspend#5")
def test_config_change_deferred_and_notified_once_on_resume(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§3.4.2: the device MUST NOT modify config space or send a config notification while suspended; MUST
    send it on resume. The driver sees the change exactly once."""
    dev = TestDevice()
    fn = machine.plug(dev)
    drv = VirtioDriver(machine, fn, alloc, name="testdev")
    drv.probe()
    drv.suspend_bit()
    gen = drv.t.generation()
    n_irq = len(machine.interrupts)
    dev.host_set_value(42)
    dev.host_set_value(43)
    machine.run_for(5 * MS)
    assert drv.t.config_read(0, 4) == 0  # unchanged while suspended
    assert drv.t.generation() == gen
    assert len(machine.interrupts) == n_irq
    drv.resume_bit()
    machine.run_for(1 * MS)
    assert drv.t.config_read(0, 4) == 43
    assert drv.t.generation() != gen
    assert drv.config_changes_delivered == 1
    assert len(machine.interrupts) == n_irq + 1


@pytest.mark.spec("dev:suspend#6", "dev:status#2")
def test_device_that_cannot_suspend_sets_needs_reset(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§3.4.2: the device MUST either suspend or set DEVICE_NEEDS_RESET (§2.1.2: SHOULD set it on an error
    that needs a reset)."""
    dev, fn, drv = live(machine, alloc)
    dev.faults.suspend_fails = True
    with pytest.raises(DriverError, match="NEEDS_RESET"):
        drv.suspend_bit()
    assert drv.t.get_status() & Status.DEVICE_NEEDS_RESET


@pytest.mark.spec("dev:suspend#7", "dev:status#2")
def test_device_that_cannot_resume_sets_needs_reset_and_driver_recovers(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§3.4.2: the device MUST either resume or set DEVICE_NEEDS_RESET (§2.1.2); the driver recovers through a
    full restore."""
    dev, fn, drv = live(machine, alloc)
    drv.suspend_bit()
    dev.faults.resume_fails = True
    with pytest.raises(DriverError, match="NEEDS_RESET"):
        drv.resume_bit()
    dev.faults.resume_fails = False
    drv.freeze()
    drv.restore()
    assert drv.t.get_status() == 0x0F
    assert len(drv.read(16)) == 16


def test_quiesce_that_never_finishes_times_out(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """A device that never finishes quiescing never shows SUSPEND=1/DRIVER_OK=0; the driver's poll times out."""
    dev, fn, drv = live(machine, alloc)
    in_flight(machine, drv, dev, n=1)
    dev.faults.quiesce_never_completes = True
    t0 = machine.now
    with pytest.raises(DriverTimeout):
        drv.suspend_bit(timeout=5 * MS)
    assert machine.now - t0 == 5 * MS
    assert drv.t.get_status() == 0x1F


@pytest.mark.spec("dev:reset#1")
def test_reset_while_suspended(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§2.4.1: a reset (write 0) works in any state, including SUSPEND: the device MUST reinitialise status to
    0; it can be re-initialized."""
    dev, fn, drv = live(machine, alloc)
    drv.suspend_bit()
    drv.t.reset()
    assert drv.t.get_status() == 0
    drv.del_vqs()
    drv.probe()
    assert len(drv.read(8)) == 8


def test_driver_waits_for_resume_to_complete(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """Driver MUST wait until SUSPEND=0 and DRIVER_OK=1 after writing DRIVER_OK to resume."""
    dev, fn, drv = live(machine, alloc, latency=300 * US)
    drv.suspend_bit()
    cwrite(fn, 20, 1, 0x1F)
    assert cread(fn, 20, 1) == 0x1F  # resuming: not yet 0x0F
    assert machine.run_until(lambda: cread(fn, 20, 1) == 0x0F, 1 * MS)


def test_suspend_is_idempotent_for_the_driver(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    dev, fn, drv = live(machine, alloc)
    drv.suspend_bit()
    drv.suspend_bit()
    drv.resume_bit()
    drv.resume_bit()
    assert drv.t.get_status() == 0x0F
    assert [e.detail["event"] for e in machine.trace.select(Kind.PM, "rng")] == [
        "suspend_requested", "suspended", "resume_requested", "resumed"]
