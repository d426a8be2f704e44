"""The s2idle window: the scheduler still runs while the suspending task waits, so a kernel thread that is not
freezable (Linux's hwrng fill thread) can use a device whose function is already in D3hot. With No_Soft_Reset the
virtio driver was never frozen, so the thread makes a request and notifies; the notify BAR is not decoded in
D3hot (PCI PM 1.2 §5.3.1.4: a function in D3hot answers configuration accesses only), the notification is lost
and every later read waits behind it. Found on the real stack (QEMU 10.0 + Linux 6.12, README)."""

from __future__ import annotations

import pytest

from pyvirtio.clock import MS, S
from pyvirtio.guest.kernel import reseed_interval
from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.profiles import parse_profile
from pyvirtio.pm.scenario import run_cell
from pyvirtio.pm.system import build_system
from pyvirtio.trace import Kind


@pytest.mark.parametrize(("uptime", "want"), [(0, 1 * S), (3 * S, 1 * S), (20 * S, 10 * S), (119 * S, 59 * S),
                                               (120 * S, 60 * S), (3600 * S, 60 * S)])
def test_reseed_interval(uptime: int, want: int) -> None:
    """random.c: half the uptime (whole seconds, at least 1 s) for 120 s after boot, then 60 s."""
    assert reseed_interval(uptime) == want


def test_nsr_s2idle_loses_the_rng() -> None:
    """The fill thread's request is made in D3hot; its notification reaches no BAR; the device never sees the
    buffer; the read after resume waits behind the thread and times out. The gpu is unaffected."""
    c = run_cell(parse_profile("no-soft-reset"), "s2idle", ScenarioConfig(sleep_time=1 * S))
    assert c.devices["rng"].queues_alive is False and c.devices["rng"].status_sequence == [0x0F]
    assert c.devices["gpu"].queues_alive is True and c.display_restored is True
    assert any("hwrng fill thread ran in the s2idle window" in n for n in c.notes)
    assert c.violations == []  # nothing the driver did breaks a virtio statement: the PCI PM rule is the issue


def test_the_lost_notification_is_a_bar_write_in_d3hot() -> None:
    from pyvirtio.pm.scenario import _suspend_and_resume
    from pyvirtio.report import CellResult, SleepState, Source

    system = build_system(parse_profile("no-soft-reset"), ScenarioConfig(sleep_time=1 * S))
    mark = len(system.machine.trace)
    _suspend_and_resume(system, CellResult(Source.MODEL, "no-soft-reset", SleepState.S2IDLE), s2idle=True)
    unmapped = [e for e in system.machine.trace.events[mark:]
                if e.kind is Kind.BAR_WRITE and e.src == "rng" and e.detail.get("unmapped")]
    assert len(unmapped) == 1
    dev = system.machine.function("rng").device
    assert dev.inflight() == 0  # the device never saw the buffer


@pytest.mark.parametrize(("profile", "sleep", "cfg"), [
    ("no-soft-reset", "s2idle", ScenarioConfig(sleep_time=999 * MS)),  # shorter than the thread's sleep
    ("no-soft-reset", "S3", ScenarioConfig(sleep_time=5 * S)),  # S3: no CPU runs while asleep
    ("no-soft-reset", "s2idle", ScenarioConfig(sleep_time=5 * S, rng_behind_port=False)),  # rng frozen: unregistered
    ("suspend-bit", "s2idle", ScenarioConfig(sleep_time=5 * S)),  # submissions stopped before SUSPEND
])
def test_the_rng_survives_without_the_window(profile: str, sleep: str, cfg: ScenarioConfig) -> None:
    c = run_cell(parse_profile(profile), sleep, cfg)
    assert c.devices["rng"].queues_alive is True
    assert not any("hwrng fill thread" in n for n in c.notes)
