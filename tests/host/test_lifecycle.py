"""The device lifecycle as data (pyvirtio.host.lifecycle): the table itself, and the device core against it.

Normative statements exercised: virtio 1.4 §2.1 (driver MUST NOT clear a status bit; DEVICE_NEEDS_RESET is the
device's), §2.1.2 (config notification on DEVICE_NEEDS_RESET when DRIVER_OK), §2.4 (reset), §3.1.1 (DRIVER_OK
after FEATURES_OK), Device Suspend (SUSPEND ignored unless DRIVER_OK and VIRTIO_F_SUSPEND; SUSPEND=1/DRIVER_OK=0
once quiesced; a failed suspend or resume sets DEVICE_NEEDS_RESET).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pyvirtio.clock import MS, US
from pyvirtio.host import lifecycle
from pyvirtio.host.lifecycle import (
    QUIESCENT,
    TRANSITIONS,
    DeviceLifecycle,
    LifecycleError,
    LifecycleEvent,
    next_state,
    reachable,
)
from pyvirtio.host.rng import Rng
from pyvirtio.machine import Machine
from pyvirtio.spec.constants import (
    PCI_COMMAND,
    QEMU_COMMON_OFFSET,
    QEMU_MODERN_BAR,
    QEMU_NOTIFY_OFFSET,
    CommonCfg,
    Feature,
    PciCommand,
    Status,
    bit,
)
from pyvirtio.trace import Kind

from .loopback import LoopbackDriver

S, E = DeviceLifecycle, LifecycleEvent


class RecordingRng(Rng):
    """An Rng that records every lifecycle transition it makes."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.visited: list[tuple[DeviceLifecycle, LifecycleEvent, DeviceLifecycle]] = []

    def _fire(self, event: LifecycleEvent) -> None:
        before = self.lifecycle
        super()._fire(event)
        self.visited.append((before, event, self.lifecycle))


# -- the table ---------------------------------------------------------------------------------------------------


def test_every_state_is_reachable_from_reset_and_appears_in_the_table() -> None:
    """Every lifecycle state is reachable from RESET through the table; none is dead or missing."""
    assert reachable(S.RESET) == set(S)
    assert {s for s, _ in TRANSITIONS} == set(S)
    assert set(TRANSITIONS.values()) == set(S)


def test_reset_leaves_every_state_and_errors_enter_needs_reset() -> None:
    """§2.4: a reset is possible from every state; §2.1.2: any state but NEEDS_RESET itself can fail into it."""
    for s in S:
        assert next_state(s, E.RESET) is S.RESET
        if s is not S.NEEDS_RESET:
            assert next_state(s, E.ERROR) is S.NEEDS_RESET
    assert (S.NEEDS_RESET, E.ERROR) not in TRANSITIONS


def test_a_pair_not_in_the_table_is_an_internal_error() -> None:
    """A transition the table lacks raises LifecycleError (an AssertionError: a pyvirtio bug, never guest input)."""
    with pytest.raises(LifecycleError, match="SUSPENDED on QUIESCED"):
        next_state(S.SUSPENDED, E.QUIESCED)
    with pytest.raises(AssertionError):
        next_state(S.RESET, E.DRIVER_OK)  # DRIVER_OK needs the configuring steps first (§3.1.1)
    assert sum(1 for s in S for e in E if (s, e) not in TRANSITIONS) > 30


def test_the_suspend_cycle_in_the_table() -> None:
    """Device Suspend as data: LIVE -> SUSPENDING -> SUSPENDED -> RESUMING -> LIVE, and only from LIVE."""
    s = S.LIVE
    for e, want in ((E.SUSPEND, S.SUSPENDING), (E.QUIESCED, S.SUSPENDED), (E.RESUME, S.RESUMING),
                    (E.RESUMED, S.LIVE)):
        s = next_state(s, e)
        assert s is want
    assert [frm for (frm, e) in TRANSITIONS if e is E.SUSPEND] == [S.LIVE]
    assert frozenset({S.SUSPENDING, S.SUSPENDED, S.RESUMING}) == QUIESCENT


def test_the_diagram_names_every_state() -> None:
    """The module docstring draws every state (the diagram is the table's documentation)."""
    doc = lifecycle.__doc__ or ""
    for s in S:
        assert s.name in doc


# -- the device against the table --------------------------------------------------------------------------------


def test_the_device_walks_every_state_through_table_transitions_only() -> None:
    """A device driven through init, suspend, resume, bus-master off, a failed resume and reset visits every
    lifecycle state, and every step it takes is a pair of the table."""
    dev = RecordingRng(bytes_per_us=8)
    drv = LoopbackDriver(dev)
    drv.init()
    dev.write_status(dev.status | Status.SUSPEND)
    drv.run_until(lambda: dev.lifecycle is S.SUSPENDED)
    dev.write_status(dev.status | Status.DRIVER_OK)
    drv.run_until(lambda: dev.lifecycle is S.LIVE)
    dev.set_bus_master(False)
    assert dev.lifecycle is S.CONFIGURING and not dev.status & Status.DRIVER_OK
    dev.set_bus_master(True)
    dev.write_status(dev.status | Status.DRIVER_OK)
    assert dev.lifecycle is S.LIVE
    dev.write_status(dev.status | Status.SUSPEND)
    drv.run_until(lambda: dev.lifecycle is S.SUSPENDED)
    dev.faults.resume_fails = True
    dev.write_status(dev.status | Status.DRIVER_OK)
    drv.run_until(lambda: dev.lifecycle is S.NEEDS_RESET)
    assert dev.status & Status.DEVICE_NEEDS_RESET
    dev.write_status(0)
    assert dev.lifecycle is S.RESET and dev.status == 0
    assert {s for s, _, _ in dev.visited} | {t for _, _, t in dev.visited} == set(S)
    for frm, ev, to in dev.visited:
        assert TRANSITIONS[(frm, ev)] is to


@pytest.mark.spec("dev:suspend#6", "dev:status#2", "dev:status#3")
def test_failed_suspend_goes_through_suspending_to_needs_reset() -> None:
    """§3.4.2: a device that cannot suspend MUST set DEVICE_NEEDS_RESET (§2.1.2: and MUST notify a config
    change, DRIVER_OK being set)."""
    dev = RecordingRng()
    drv = LoopbackDriver(dev)
    drv.init()
    dev.faults.suspend_fails = True
    dev.write_status(dev.status | Status.SUSPEND)
    assert [(f, e) for f, e, _ in dev.visited[-2:]] == [(S.LIVE, E.SUSPEND), (S.SUSPENDING, E.ERROR)]
    assert dev.status & Status.DEVICE_NEEDS_RESET and drv.ctx.config_notifications == 1


@pytest.mark.spec("dev:status#2")
def test_needs_reset_only_a_reset_leaves_it() -> None:
    """§2.1.2 DEVICE_NEEDS_RESET: the device waits for a reset. Writes may add bits (FAILED) but neither SUSPEND
    nor DRIVER_OK starts anything, and the driver cannot clear DEVICE_NEEDS_RESET."""
    dev = Rng()
    drv = LoopbackDriver(dev)
    drv.init()
    dev.needs_reset("test")
    st0 = dev.status
    dev.write_status(st0 | Status.SUSPEND)
    drv.run_until(lambda: False, 1 * MS)
    assert dev.lifecycle is S.NEEDS_RESET and not dev.status & Status.SUSPEND
    dev.write_status(st0 | Status.FAILED)
    assert dev.status == st0 | Status.FAILED
    dev.write_status((st0 | Status.FAILED) & ~Status.DEVICE_NEEDS_RESET)
    assert dev.status & Status.DEVICE_NEEDS_RESET and dev.lifecycle is S.NEEDS_RESET
    dev.write_status(0)
    assert dev.lifecycle is S.RESET


def test_read_only_views_follow_the_lifecycle() -> None:
    """``suspending``, ``suspended`` and ``resuming`` are views of the one lifecycle value."""
    dev = Rng()
    drv = LoopbackDriver(dev)
    drv.init()
    views = {S.LIVE: (False, False, False)}
    assert (dev.suspending, dev.suspended, dev.resuming) == views[S.LIVE]
    dev.write_status(dev.status | Status.SUSPEND)
    assert (dev.suspending, dev.suspended, dev.resuming) == (True, False, False)
    drv.run_until(lambda: dev.lifecycle is S.SUSPENDED)
    assert (dev.suspending, dev.suspended, dev.resuming) == (False, True, False)
    dev.write_status(dev.status | Status.DRIVER_OK)
    assert (dev.suspending, dev.suspended, dev.resuming) == (False, True, True)
    with pytest.raises(AttributeError):
        dev.suspending = True  # type: ignore[misc]  # read-only: only the status machine moves the lifecycle


# -- a hostile driver against the table --------------------------------------------------------------------------


def _consistent(lc: DeviceLifecycle, status: int) -> bool:
    """What each lifecycle state presents in device status (pyvirtio.host.lifecycle docstring)."""
    ok, sus = bool(status & Status.DRIVER_OK), bool(status & Status.SUSPEND)
    nr = bool(status & Status.DEVICE_NEEDS_RESET)
    if nr != (lc is S.NEEDS_RESET):
        return False
    return {
        S.RESET: status == 0,
        S.CONFIGURING: status != 0 and not ok and not sus,
        S.LIVE: ok and not sus,
        S.SUSPENDING: sus,
        S.SUSPENDED: sus and not ok,
        S.RESUMING: sus,
        S.NEEDS_RESET: True,
    }[lc]


class HostileStatusWrites(RuleBasedStateMachine):
    """Any sequence of status writes, feature writes, queue enables, kicks, bus-master changes, faults and time,
    through the PCI function: no exception escapes, no lifecycle lookup fails (a failed lookup inside a device
    step would show as a ``device_error``), and the presented status always matches the lifecycle state."""

    def __init__(self) -> None:
        super().__init__()
        self.m = Machine(4 << 20, seed=3)
        self.dev = Rng(bytes_per_us=16, latency=5 * US)
        self.fn = self.m.plug(self.dev)
        self.fn.config_write(PCI_COMMAND, 2, PciCommand.MEMORY | PciCommand.MASTER)
        self.seen: set[DeviceLifecycle] = set()

    def _cw(self, off: int, size: int, value: int) -> None:
        self.fn.bar_write(QEMU_MODERN_BAR, QEMU_COMMON_OFFSET + off, size, value)

    @rule(value=st.integers(0, 255))
    def write_status(self, value: int) -> None:
        self._cw(CommonCfg.DEVICE_STATUS, 1, value)

    @rule(add=st.sampled_from([Status.SUSPEND, Status.DRIVER_OK, Status.FAILED, Status.FEATURES_OK]))
    def add_status_bit(self, add: int) -> None:
        """What a driver does most: set one more bit (SUSPEND to suspend, DRIVER_OK to resume)."""
        self._cw(CommonCfg.DEVICE_STATUS, 1, (self.dev.status | add) & 0xFF)

    @rule(wait=st.sampled_from([0, 100 * US]))
    def suspend(self, wait: int) -> None:
        """Device Suspend, driver side: set SUSPEND, maybe give the device time to quiesce."""
        self.add_status_bit(Status.SUSPEND)
        self.m.run_for(wait)

    @rule(wait=st.sampled_from([0, 100 * US]))
    def resume(self, wait: int) -> None:
        """Resume: set DRIVER_OK, maybe give the device time."""
        self.add_status_bit(Status.DRIVER_OK)
        self.m.run_for(wait)

    def _features(self, suspend: bool, extra: int) -> None:
        feats = bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX) | bit(Feature.RING_RESET) | extra
        feats |= bit(Feature.SUSPEND) if suspend else 0
        for sel in (0, 1):
            self._cw(CommonCfg.DRIVER_FEATURE_SELECT, 4, sel)
            self._cw(CommonCfg.DRIVER_FEATURE, 4, (feats >> (32 * sel)) & 0xFFFFFFFF)

    @rule(suspend=st.booleans(), extra=st.sampled_from([0, 1 << 5, 1 << 30]))
    def write_features(self, suspend: bool, extra: int) -> None:
        self._features(suspend, extra)

    @rule(suspend=st.sampled_from([True, True, False]))
    def init(self, suspend: bool) -> None:
        """The whole §3.1.1 sequence with a valid queue (what makes LIVE and the suspend states reachable)."""
        self._cw(CommonCfg.DEVICE_STATUS, 1, 0)
        self._cw(CommonCfg.DEVICE_STATUS, 1, 0x01)
        self._cw(CommonCfg.DEVICE_STATUS, 1, 0x03)
        self._features(suspend, 0)
        self._cw(CommonCfg.DEVICE_STATUS, 1, 0x0B)
        self._queue(1, 0x10000, 16)
        self._cw(CommonCfg.DEVICE_STATUS, 1, 0x0F)

    def _queue(self, value: int, addr: int, size: int) -> None:
        self._cw(CommonCfg.QUEUE_SELECT, 2, 0)
        self._cw(CommonCfg.QUEUE_SIZE, 2, size)
        for off, a in ((CommonCfg.QUEUE_DESC_LO, addr), (CommonCfg.QUEUE_DRIVER_LO, addr + 0x1000),
                       (CommonCfg.QUEUE_DEVICE_LO, addr + 0x2000)):
            self._cw(off, 4, a & 0xFFFFFFFF)
            self._cw(off + 4, 4, a >> 32)
        self._cw(CommonCfg.QUEUE_ENABLE, 2, value)

    @rule(value=st.sampled_from([0, 1]), addr=st.sampled_from([0x10000, 0x10001, 1 << 40]))
    def enable_queue(self, value: int, addr: int) -> None:
        self._queue(value, addr, 16)

    @rule()
    def kick(self) -> None:
        self.fn.bar_write(QEMU_MODERN_BAR, QEMU_NOTIFY_OFFSET, 2, 0)

    @rule()
    def reset_queue(self) -> None:
        """§4.1.4.3.2: write 1 to queue_reset (acted on only with VIRTIO_F_RING_RESET negotiated)."""
        self._cw(CommonCfg.QUEUE_SELECT, 2, 0)
        self._cw(CommonCfg.QUEUE_RESET, 2, 1)

    @rule(on=st.booleans())
    def bus_master(self, on: bool) -> None:
        cmd = PciCommand.MEMORY | (PciCommand.MASTER if on else 0)
        self.fn.config_write(PCI_COMMAND, 2, cmd)

    @rule(which=st.sampled_from(["suspend_fails", "resume_fails", "quiesce_never_completes"]), on=st.booleans())
    def fault(self, which: str, on: bool) -> None:
        setattr(self.dev.faults, which, on)

    @rule(ns=st.sampled_from([0, 1 * US, 20 * US, 1 * MS]))
    def run(self, ns: int) -> None:
        self.m.run_for(ns)

    @invariant()
    def status_matches_lifecycle(self) -> None:
        self.seen.add(self.dev.lifecycle)
        assert _consistent(self.dev.lifecycle, self.dev.status), (self.dev.lifecycle, hex(self.dev.status))

    @invariant()
    def queue_reset_reads_the_reset_in_progress(self) -> None:
        """§4.1.4.3.2: queue_reset reads 1 exactly while a reset of the selected queue is in progress."""
        self._cw(CommonCfg.QUEUE_SELECT, 2, 0)
        got = self.fn.bar_read(QEMU_MODERN_BAR, QEMU_COMMON_OFFSET + CommonCfg.QUEUE_RESET, 2)
        assert got == int(self.dev.queue_reset_pending(0))

    @invariant()
    def no_internal_error(self) -> None:
        assert not [e for e in self.m.trace.select(Kind.DEVICE) if e.detail.get("event") == "device_error"]


TestHostileStatusWrites = HostileStatusWrites.TestCase
TestHostileStatusWrites.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                            suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.spec("dev:suspend#8")
def test_a_wedged_backend_keeps_the_device_suspending() -> None:
    """§3.4.2: the device presents SUSPEND=1/DRIVER_OK=0 only once in-flight requests completed; with a
    backend that never completes them (``Faults.backend_hangs``) it stays SUSPENDING, still showing DRIVER_OK."""
    dev = Rng()
    drv = LoopbackDriver(dev)
    drv.init()
    dev.faults.backend_hangs = True
    drv.submit(0, b"", 16)
    drv.run_until(lambda: dev.inflight() == 1)
    drv.run_until(lambda: False, 5 * MS)
    assert dev.inflight() == 1 and drv.vqs[0].get_used() is None
    dev.write_status(dev.status | Status.SUSPEND)
    drv.run_until(lambda: False, 5 * MS)
    assert dev.lifecycle is S.SUSPENDING and dev.status & Status.DRIVER_OK
    dev.faults.backend_hangs = False
    dev.write_status(0)
    assert dev.lifecycle is S.RESET and dev.inflight() == 0
