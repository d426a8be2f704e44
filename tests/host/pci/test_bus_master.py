"""Bus Master Enable (PCI COMMAND bit 2) and the virtio device (issue 9 defect 6).

PCI (virtio 1.4 §4.1.1: the function MUST meet the PCI specification): a function may not initiate memory
transactions — ring and buffer accesses, MSI/MSI-X messages — while COMMAND.BME is 0. It is 0 at power-on. QEMU
drops DRIVER_OK when the guest clears it (``virtio_write_config``); pyvirtio keeps that, and holds the device's
memory work until BME is set again (QEMU drops a completion that arrives meanwhile; see ``VirtioDevice.after``).

Device Suspend: the device MUST either suspend or set DEVICE_NEEDS_RESET, and MUST either resume or set it; it
presents SUSPEND=1/DRIVER_OK=0 only once suspended.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pyvirtio.clock import MS, US
from pyvirtio.devices import Rng
from pyvirtio.dma import GuestAllocator
from pyvirtio.guest.rng import RngDriver
from pyvirtio.host.lifecycle import DeviceLifecycle
from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.machine import Machine
from pyvirtio.memory import GuestMemory

from ..gpu.helpers import make_rig
from ..pci_helpers import CMD_MEMORY, COMMAND, bus_master, cwrite, status

S = DeviceLifecycle
PBA = 0x800


def live_rng(machine: Machine, alloc: GuestAllocator) -> tuple[Rng, VirtioPciFunction, RngDriver]:
    dev = Rng(bytes_per_us=4)  # 4096 bytes take about 1 ms of virtual time
    fn = machine.plug(dev)
    drv = RngDriver(machine, fn, alloc, name="rng")
    drv.probe()
    return dev, fn, drv


def used_idx(machine: Machine, drv: RngDriver) -> int:
    return machine.memory.read_u16(drv.vqs[0].layout.used + 2)


@pytest.mark.spec("dev:pci#1")
def test_at_power_on_bus_mastering_is_off_and_the_rings_are_not_touched(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§4.1.1 (PCI): COMMAND is 0 at power-on. A driver that enables memory decoding but never sets BME gets no
    ring or buffer access and no interrupt (defect 6c: the function acted as if BME were set); once it sets BME
    the request is served."""
    dev = Rng()
    fn = machine.plug(dev)
    assert fn.config_read(COMMAND, 2) == 0
    drv = RngDriver(machine, fn, alloc, name="rng")
    drv.t.enable_device = lambda: fn.config_write(COMMAND, 2, CMD_MEMORY)  # type: ignore[method-assign]
    drv.probe()
    assert status(fn) == 0x0F
    req = drv.request(32)
    n = len(machine.interrupts)
    machine.run_for(10 * MS)
    assert used_idx(machine, drv) == 0 and machine.memory.read(req.addr, 32) == bytes(32)
    assert len(machine.interrupts) == n and not req.done and dev.served == 0
    bus_master(fn, True)
    assert machine.run_until(lambda: req.done, 5 * MS)
    assert req.data != bytes(32)


@pytest.mark.spec("dev:pci#1")
def test_a_request_in_flight_waits_while_bus_mastering_is_off(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """§4.1.1 (PCI): after the guest clears BME a request already taken does not complete — no buffer write, no
    used-ring write, no notification (defect 6b) — and completes once BME is set again. DRIVER_OK is dropped as
    QEMU does (0x0F -> 0x0B)."""
    dev, fn, drv = live_rng(machine, alloc)
    req = drv.request(4096)
    assert machine.run_until(lambda: dev.inflight() == 1, 1 * MS)
    bus_master(fn, False)
    assert status(fn) == 0x0B
    n = len(machine.interrupts)
    machine.run_for(20 * MS)
    assert used_idx(machine, drv) == 0 and machine.memory.read(req.addr, 4096) == bytes(4096)
    assert len(machine.interrupts) == n and dev.inflight() == 1
    bus_master(fn, True)
    assert machine.run_until(lambda: req.done, 5 * MS)
    assert used_idx(machine, drv) == 1 and len(req.data) == 4096


@pytest.mark.spec("dev:pci#1")
def test_a_config_message_waits_for_bus_mastering(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """An MSI-X message is a memory write: a configuration change notification raised while BME is 0 (the driver
    set DRIVER_OK again after QEMU dropped it) stays pending in the PBA and is sent when BME is set again."""
    from pyvirtio.devices import TestDevice
    from pyvirtio.guest.driver import VirtioDriver

    dev = TestDevice()
    fn = machine.plug(dev)
    drv = VirtioDriver(machine, fn, alloc, name="testdev")
    drv.probe()
    bus_master(fn, False)
    cwrite(fn, 20, 1, status(fn) | 0x04)  # DRIVER_OK again (QEMU dropped it): config changes are notified
    n = len(machine.interrupts)
    dev.host_set_value(4)
    machine.run_for(1 * MS)
    assert len(machine.interrupts) == n and fn.bar_read(1, PBA, 4) == 0b01
    bus_master(fn, True)
    machine.run_for(1 * MS)
    assert len(machine.interrupts) == n + 1 and drv.config_changes_delivered == 1


def suspend_then_resume(machine: Machine, fn: VirtioPciFunction, *, toggle_bme: bool) -> list[int]:
    """A driver's SUSPEND then resume, with bus mastering cleared right after the SUSPEND write and set again
    5 ms later; the driver resumes as soon as it reads SUSPEND=1/DRIVER_OK=0. Returns the statuses it read."""
    seen: list[int] = []
    cwrite(fn, 20, 1, status(fn) | 0x10)
    if toggle_bme:
        bus_master(fn, False)
    resumed = False
    for step in range(40):
        if toggle_bme and step == 5:
            bus_master(fn, True)
        machine.run_for(1 * MS)
        s = status(fn)
        seen.append(s)
        if not resumed and s & 0x10 and not s & 0x04:
            cwrite(fn, 20, 1, s | 0x04)  # resume
            resumed = True
    return seen


@pytest.mark.spec("dev:suspend#6", "dev:suspend#7", "dev:suspend#8")
def test_clearing_bus_master_while_suspending_does_not_fake_suspended(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """Device Suspend: SUSPEND=1/DRIVER_OK=0 means the device IS suspended. Clearing BME while the quiesce waits
    for a request made the status read 0x1B at once; the driver's resume was then ignored and the device stayed
    suspended for ever (defect 6a). Now it reads 0x1F until the request completed (after BME is back), then 0x1B,
    and the resume ends in 0x0F."""
    dev, fn, drv = live_rng(machine, alloc)
    req = drv.request(4096)
    assert machine.run_until(lambda: dev.inflight() == 1, 1 * MS)
    cwrite(fn, 20, 1, 0x1F)
    bus_master(fn, False)
    assert status(fn) == 0x1F  # not suspended yet: the request is still in flight
    seen = suspend_then_resume(machine, fn, toggle_bme=False)[:3]
    assert seen == [0x1F, 0x1F, 0x1F] and not req.done
    bus_master(fn, True)
    assert machine.run_until(lambda: status(fn) == 0x1B, 5 * MS) and req.done
    cwrite(fn, 20, 1, 0x1F)
    assert machine.run_until(lambda: status(fn) == 0x0F, 5 * MS)
    assert dev.lifecycle is S.LIVE


@pytest.mark.spec("dev:suspend#6", "dev:suspend#7")
def test_a_driver_that_resumes_on_0x1b_always_gets_0x0f(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """The same as a driver sees it: SUSPEND, BME off for 5 ms, resume on the first SUSPEND=1/DRIVER_OK=0 read —
    the device ends resumed (0x0F), never stuck suspended."""
    dev, fn, drv = live_rng(machine, alloc)
    drv.request(4096)
    assert machine.run_until(lambda: dev.inflight() == 1, 1 * MS)
    seen = suspend_then_resume(machine, fn, toggle_bme=True)
    assert 0x1B in seen and seen[-1] == 0x0F, [hex(s) for s in seen]
    assert seen.index(0x1B) >= 5  # suspended only after BME came back and the request completed


@pytest.mark.spec("dev:suspend#6", "dev:suspend#7", "dev:pci#1")
def test_a_gpu_with_commands_queued_answers_suspend_once_bus_mastering_is_back() -> None:
    """GPU, control commands queued and one running, SUSPEND, BME cleared: no command completes while BME is 0
    and SUSPEND is not acknowledged; once BME is set every command is answered, the device presents 0x1B, and a
    resume brings 0x0F (defect 6a: the SUSPEND was never answered)."""
    rig = make_rig(dev_kw={"command_latency": 300 * US}, create_framebuffers=False)
    m, fn = rig.machine, rig.machine.function("gpu")
    reqs = [rig.drv.cmd_get_display_info() for _ in range(3)]
    assert m.run_until(lambda: rig.dev.inflight() == 3, 1 * MS)
    cwrite(fn, 20, 1, 0x1F)
    bus_master(fn, False)
    m.run_for(20 * MS)
    assert status(fn) == 0x1F and not any(r.done for r in reqs)
    bus_master(fn, True)
    assert m.run_until(lambda: status(fn) == 0x1B, 10 * MS)
    assert all(r.done and r.ok for r in reqs)
    cwrite(fn, 20, 1, 0x1F)
    assert m.run_until(lambda: status(fn) == 0x0F, 5 * MS)


@pytest.mark.spec("dev:suspend#7")
def test_bus_master_off_while_resuming_still_resumes(machine: Machine, alloc) -> None:  # type: ignore[no-untyped-def]
    """Device Suspend: a resume MUST end resumed or in DEVICE_NEEDS_RESET; clearing BME during it does not present
    the suspended pattern, and the resume completes (the device is then LIVE but may not master the bus)."""
    dev = Rng(latency=300 * US)
    fn = machine.plug(dev)
    drv = RngDriver(machine, fn, alloc, name="rng")
    drv.probe()
    drv.suspend_bit()
    cwrite(fn, 20, 1, 0x1F)
    bus_master(fn, False)
    assert status(fn) == 0x1F
    assert machine.run_until(lambda: status(fn) == 0x0F, 5 * MS)
    bus_master(fn, True)
    drv.start_submissions()  # the raw resume above bypassed the driver's resume_bit
    assert len(drv.read(16)) == 16


# -- a state machine: BME toggles, SUSPEND/resume, resets and requests, interleaved ---------------------------------


class _DmaWatch:
    """The device's view of guest memory: every access goes through, and one made while BME is 0 is recorded."""

    _ACCESS = ("read", "write", "fill", "view", "unpack_from", "pack_into", "read_u8", "read_u16", "read_u32",
               "read_u64", "write_u8", "write_u16", "write_u32", "write_u64")

    def __init__(self, mem: GuestMemory, fn: VirtioPciFunction, log: list[str]) -> None:
        self._mem, self._fn, self._log = mem, fn, log

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._mem, name)
        if name not in self._ACCESS:
            return attr

        def access(*a: Any, **kw: Any) -> Any:
            if not self._fn.command & 0x4:
                self._log.append(f"{name}{a[:2]}")
            return attr(*a, **kw)

        return access


class _MsiWatch:
    """The function's MSI sink: records a message sent while suspended or with BME 0, then delivers it."""

    def __init__(self, machine: Machine, fn: VirtioPciFunction, log: list[str]) -> None:
        self.machine, self.fn, self.log, self.sent = machine, fn, log, 0

    def msi(self, src: str, address: int, data: int, vector: int) -> None:
        if self.fn.device.suspended or not self.fn.command & 0x4:
            self.log.append(f"msi vector {vector} while {self.fn.device.lifecycle.name} cmd {self.fn.command:#x}")
        self.sent += 1
        self.machine.msi(src, address, data, vector)


class BusMasterSuspendReset(RuleBasedStateMachine):
    """Any interleaving of BME toggles, SUSPEND and resume writes, resets (and re-initialisation), requests and
    time. Invariants: the device never touches guest memory and never sends an MSI while BME is 0 (§4.1.1, PCI);
    never sends a notification while suspended (Device Suspend) nor after a reset until re-initialised (§2.4.1);
    SUSPEND=1/DRIVER_OK=0 is presented only by a suspended device; and with BME on, a SUSPEND or resume is always
    answered — suspended/resumed or DEVICE_NEEDS_RESET (Device Suspend)."""

    def __init__(self) -> None:
        super().__init__()
        self.m = Machine(1 << 20, seed=11)
        self.dev = Rng(bytes_per_us=2, latency=5 * US)
        self.fn = self.m.plug(self.dev)
        self.log: list[str] = []
        watch = _DmaWatch(self.m.memory, self.fn, self.log)
        self.fn.memory = watch  # type: ignore[assignment]
        for q in self.dev.queues:
            q.mem = watch  # type: ignore[assignment]
        self.msi = _MsiWatch(self.m, self.fn, self.log)
        self.fn.msix.sink = self.msi
        self.alloc = GuestAllocator(self.m.memory, 0x10000, 0x40000)
        self.drv = RngDriver(self.m, self.fn, self.alloc, name="rng")
        self.drv.probe()
        self.after_reset: int | None = None  # MSIs sent when the last reset happened, until re-initialised

    @rule(on=st.booleans())
    def bme(self, on: bool) -> None:
        bus_master(self.fn, on)

    @precondition(lambda self: self.after_reset is None)
    @rule(n=st.sampled_from([16, 512, 4096]), taken=st.booleans())
    def request(self, n: int, taken: bool) -> None:
        """A request; with ``taken`` time runs until the device has it in flight (if it can take it now)."""
        if self.drv.submitting and self.drv.vqs and self.drv.vqs[0].num_free:
            k = self.dev.inflight()
            self.drv.request(n)
            if taken:
                self.m.run_until(lambda: self.dev.inflight() > k, 50 * US)

    @rule()
    def suspend(self) -> None:
        cwrite(self.fn, 20, 1, status(self.fn) | 0x10)

    @rule(with_request=st.booleans())
    def suspend_then_bme_off(self, with_request: bool) -> None:
        """The defect's order: (a request in flight,) SUSPEND written, then bus mastering cleared before the device
        has quiesced."""
        if with_request and self.after_reset is None:
            self.request(4096, True)
        self.suspend()
        bus_master(self.fn, False)

    @rule()
    def driver_ok(self) -> None:
        """Resume (from SUSPENDED), or DRIVER_OK again after BME dropped it."""
        cwrite(self.fn, 20, 1, status(self.fn) | 0x04)

    @rule()
    def reset(self) -> None:
        cwrite(self.fn, 20, 1, 0)
        assert status(self.fn) == 0
        self.after_reset = self.msi.sent

    @precondition(lambda self: self.after_reset is not None)
    @rule()
    def reinit(self) -> None:
        self.drv.del_vqs()
        self.drv.outstanding.clear()
        self.drv.probe()  # pci_set_master first, then the §3.1.1 sequence
        self.after_reset = None

    @rule(ns=st.sampled_from([0, 10 * US, 300 * US, 2 * MS]))
    def run(self, ns: int) -> None:
        self.m.run_for(ns)

    @rule()
    def settle(self) -> None:
        """BME on and time: any SUSPEND or resume in progress is answered."""
        bus_master(self.fn, True)
        self.m.run_for(20 * MS)
        assert self.dev.lifecycle not in (S.SUSPENDING, S.RESUMING), self.dev.lifecycle

    @invariant()
    def no_dma_and_no_msi_when_forbidden(self) -> None:
        assert self.log == []

    @invariant()
    def nothing_after_reset(self) -> None:
        if self.after_reset is not None:
            assert self.msi.sent == self.after_reset

    @invariant()
    def suspended_pattern_only_when_suspended(self) -> None:
        s = self.dev.status
        if s & 0x10 and not s & 0x04:
            assert self.dev.lifecycle in (S.SUSPENDED, S.NEEDS_RESET), (hex(s), self.dev.lifecycle)
        if self.dev.lifecycle is S.SUSPENDED:
            assert s & 0x10 and not s & 0x04

    @invariant()
    def no_internal_error(self) -> None:
        assert not [e for e in self.m.trace.events if e.detail.get("event") == "device_error"]


TestBusMasterSuspendReset = pytest.mark.spec("dev:pci#1", "dev:suspend#3", "dev:suspend#6", "dev:suspend#7",
                                             "dev:reset#2")(BusMasterSuspendReset.TestCase)
TestBusMasterSuspendReset.settings = settings(max_examples=120, stateful_step_count=35, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
