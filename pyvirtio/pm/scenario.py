"""One cell of the matrix: a profile through one sleep state, measured.

Before sleeping, the guest has drawn a desktop on every scanout, created extra GPU resources and a cursor, and
has virtio-rng requests in flight. While asleep the host hot-plugs a display. After waking the cell records: is
the display pixel-identical, does a new frame reach the screen, were host resources kept, re-created or lost
(:class:`~pyvirtio.report.ResourceFate`), are the queues alive, did the in-flight requests complete, how many
times the driver saw the hot-plug event, which spec statements were broken, and the suspend and resume latency
in virtual milliseconds.

Contract: :func:`run_cell` is deterministic (same profile, state and config give the same cell) and never raises
for what the guest does; a refused or failed sleep is an :class:`~pyvirtio.report.Outcome`, decided by where it
failed (a PM notifier: refused; a device callback: aborted), never by reading a message. After S4 the cell is
measured on a machine that :func:`~pyvirtio.pm.system.boot_from_image` built from the image file alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pyvirtio.clock import MS
from pyvirtio.errors import PyvirtioError
from pyvirtio.guest.kernel import PmEvent, SleepAborted, SleepRefused
from pyvirtio.host.pci.function import ResetKind
from pyvirtio.pm import gpu_probe as gpu
from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.profiles import Profile
from pyvirtio.pm.system import System, boot_from_image, build_system, write_hibernation_image
from pyvirtio.report import CellResult, DeviceOutcome, Outcome, ResourceFate, SleepState, Source, placement
from pyvirtio.timeline import ALL, EventKind, TimelineEvent, from_trace, initial, render
from pyvirtio.trace import Kind, dedup

#: The sleep states of the matrix, in column order.
SLEEP_STATES = tuple(SleepState)
#: The note an S4 cell carries: the resumed system is built by boot_from_image(path) from the file alone
#: (tests/pm/test_s4_isolation.py walks both object graphs to prove it).
S4_ISOLATION_NOTE = "resumed machine built from the image file only (no shared objects)"


class _SleepFailed(Exception):
    """The sleep did not happen: ``outcome`` says how (refused or aborted); the message is the kernel's."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


def _ms(ns: int) -> float:
    return round(ns / MS, 3)


def _images(system: System) -> list[np.ndarray | None]:
    return [gpu.scanout_image(system.gpu_dev, i) for i in range(system.config.scanouts)]


def _same(a: list[np.ndarray | None], b: list[np.ndarray | None]) -> bool:
    return all(x is not None and y is not None and x.shape == y.shape and np.array_equal(x, y)
               for x, y in zip(a, b, strict=True))


def _violations(system: System, since: int) -> list[str]:
    out: list[str] = []
    for e in system.machine.trace.events[since:]:
        if e.kind is Kind.VIOLATION:
            rule = f"{e.src}: {e.detail.get('rule')}"
            if rule not in out:
                out.append(rule)
    return out


def run_cell(profile: Profile, sleep: SleepState | str, cfg: ScenarioConfig | None = None, *,
             out_dir: Path | None = None, workdir: Path | None = None,
             timeline_dir: Path | None = None) -> CellResult:
    """Run ``profile`` through ``sleep`` (S3, s2idle or S4) and measure what survived.

    ``out_dir``: where the before/after PNGs of scanout 0 and the timeline go (none when ``None``);
    ``timeline_dir``: where the timeline goes instead; ``workdir``: where the S4 image is written (a temporary
    directory, removed afterwards). A bad ``sleep`` is a ``ValueError``.
    """
    cfg = cfg or ScenarioConfig()
    sleep = SleepState(sleep)
    cell = CellResult(source=Source.MODEL, profile=profile.name, sleep=sleep, machine_type=cfg.machine_type)
    system = build_system(profile, cfg)
    for name in ("gpu", "rng"):
        opts = system.machine.function(name).options
        cell.placement[name] = placement(opts.pcie_port, opts.no_soft_reset)
    before = _images(system)
    res_before = gpu.resource_keys(system.gpu_dev)
    if out_dir is not None:
        cell.images["before"] = gpu.save_png(system.gpu_dev, 0, out_dir / f"{_slug(profile.name)}-{sleep}-before.png")
    rng = system.rng_drv
    reqs = [rng.request(4096) for _ in range(cfg.inflight)]
    system.machine.run_until(lambda: system.machine.function("rng").device.inflight() >= 1, 5 * MS)
    inflight = [r for r in reqs if not r.done]
    events_before = gpu.display_events(system.gpu_drv)
    trace_mark = len(system.machine.trace)
    destroyed_mark = trace_mark
    # sequences start from the status each device presents just before the sleep command, as the real VM's do
    start_status = {n: system.machine.function(n).device.status for n in ("gpu", "rng")}
    t0 = system.machine.now
    # S4 powers the machine off: the status sequence is the old machine's followed by the new one's
    earlier: dict[str, list[int]] = {}
    old = system
    try:
        if sleep is SleepState.S4:
            earlier.update({n: [start_status[n]] for n in start_status})
            system = _hibernate_and_resume(system, cell, workdir, earlier, trace_mark)
            destroyed_mark = 0
        else:
            _suspend_and_resume(system, cell, s2idle=sleep is SleepState.S2IDLE)
    except _SleepFailed as e:
        cell.outcome = e.outcome
        cell.notes.append(str(e))
    if cell.outcome is Outcome.OK and sleep is not SleepState.S4:
        cell.config_events_after_resume = gpu.display_events(system.gpu_drv) - events_before
    after = _images(system)
    cell.display_restored = _same(before, after)
    if out_dir is not None:
        cell.images["after"] = gpu.save_png(system.gpu_dev, 0, out_dir / f"{_slug(profile.name)}-{sleep}-after.png")
    cell.new_frame_after_resume = gpu.new_frame_reaches_screen(system.gpu_drv, system.gpu_dev)
    res_after = gpu.resource_keys(system.gpu_dev)
    destroyed = any(e.kind is Kind.DEVICE and e.src == "gpu" and e.detail.get("event") == "resources_destroyed"
                    and e.detail.get("count", 1) for e in system.machine.trace.events[destroyed_mark:])
    if sleep is SleepState.S4:
        destroyed = True  # the machine powered off: every host object is new
    cell.resources = _fate(res_before, res_after, destroyed=destroyed)
    gpu_alive = gpu.queues_alive(system.gpu_drv)
    rng_alive = _rng_alive(system)
    cell.queues_alive = gpu_alive and rng_alive
    if cell.outcome is Outcome.OK and sleep is not SleepState.S4:
        system.machine.run_for(50 * MS)
        cell.inflight_completed = all(r.done for r in inflight)
    elif sleep is SleepState.S4:
        cell.inflight_completed = not inflight  # requests of the old machine cannot complete on the new one
    since = 0 if sleep is SleepState.S4 else trace_mark
    cell.violations = _violations(system, since)
    for name, alive in (("gpu", gpu_alive), ("rng", rng_alive)):
        tail = system.machine.trace.status_sequence(name, since=since)
        head = earlier.get(name) if sleep is SleepState.S4 else [start_status[name]]
        seq = dedup((head or []) + tail)
        cell.devices[name] = DeviceOutcome(name, seq, alive, alive)
    if cell.outcome is not Outcome.OK:
        cell.suspend_ms = _ms(system.machine.now - t0)
    timeline_dir = timeline_dir or out_dir
    if timeline_dir is not None:
        events = _timeline(old, system, trace_mark, t0, start_status)
        cell.images["timeline"] = render(events, timeline_dir / f"{_slug(profile.name)}-{sleep}-timeline.png",
                                         title=f"{profile.name} / {sleep} (model)", devices=("gpu", "rng"))
    return cell


def _timeline(old: System, new: System, mark: int, t0: int, status: dict[str, int]) -> list[TimelineEvent]:
    """The cell's timeline events: from the sleep command on; after S4 the new machine's trace follows the
    old one's, shifted to start where the old machine powered off."""
    events = initial(t0, status) + from_trace(old.machine.trace.events[mark:])
    if new is not old:
        off = old.machine.now
        events.append(TimelineEvent(ALL, off, EventKind.PM, label="new machine"))
        events += from_trace(new.machine.trace.events, offset_ns=off)
    return events


def _fate(before: set[tuple[int, int, int, int]], after: set[tuple[int, int, int, int]], *,
          destroyed: bool) -> ResourceFate:
    """Every resource back: kept (never destroyed) or re-created; some back: partial; none: lost."""
    if before <= after:
        return ResourceFate.RECREATED if destroyed else ResourceFate.KEPT
    return ResourceFate.PARTIAL if before & after else ResourceFate.LOST


def _rng_alive(system: System) -> bool:
    try:
        return len(system.rng_drv.read(16, timeout=20 * MS)) == 16
    except (PyvirtioError, RuntimeError):
        return False


def _suspend_and_resume(system: System, cell: CellResult, *, s2idle: bool) -> None:
    m, guest = system.machine, system.guest
    t0 = m.now
    try:
        guest.suspend(s2idle=s2idle)
    except SleepAborted as e:  # a device callback failed (the others were rolled back)
        raise _SleepFailed(Outcome.ABORTED, str(e)) from e
    except SleepRefused as e:  # a notifier refused before any device was touched
        raise _SleepFailed(Outcome.REFUSED, str(e)) from e
    cell.suspend_ms = _ms(m.now - t0)
    m.stop_cpu()
    m.trace.record(Kind.PM, "machine", event="sleep",
                    state=(SleepState.S2IDLE if s2idle else SleepState.S3).value)
    gpu.hotplug_new_display(system.gpu_dev, system.config)
    if s2idle:  # the scheduler still runs: unfrozen kernel threads may touch devices in D3hot
        cell.notes.extend(guest.s2idle_window(t0, system.config.sleep_time))
    m.run_for(system.config.sleep_time)
    if not s2idle:
        m.system_reset(ResetKind.WAKEUP)  # QEMU x86 pc_machine_wakeup resets every device
    m.trace.record(Kind.PM, "machine", event="wake")
    m.start_cpu()
    t1 = m.now
    guest.resume()
    cell.resume_ms = _ms(m.now - t1)
    m.run_for(1 * MS)  # let deferred interrupts settle before measuring the outcome
    for drv in guest.drivers:
        pm = guest.pm.get(drv.name)
        if pm is not None:
            cell.notes.extend(f"{drv.name}: {n}" for n in pm.notes)
            cell.notes.append(f"{drv.name}: suspended by {pm.path}")


def _hibernate_and_resume(system: System, cell: CellResult, workdir: Path | None,
                          earlier: dict[str, list[int]], mark: int) -> System:
    m, guest = system.machine, system.guest
    t0 = m.now
    try:
        guest.notify(PmEvent.HIBERNATION_PREPARE)
    except SleepRefused as e:
        raise _SleepFailed(Outcome.REFUSED, str(e)) from e
    try:
        guest.freeze_all()
    except SleepRefused as e:
        guest.notify(PmEvent.POST_HIBERNATION)
        raise _SleepFailed(Outcome.ABORTED, str(e)) from e
    # snapshot taken while frozen; thaw so the image can be written; then .poweroff and power off
    header_system = system
    guest.restore_all()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "hibernate.img"
        write_hibernation_image(header_system, path)
        guest.shutdown_all()  # /sys/power/disk = shutdown: power off through device_shutdown
        cell.suspend_ms = _ms(m.now - t0)
        m.trace.record(Kind.PM, "machine", event="power_off")
        earlier.update({n: earlier[n] + m.trace.status_sequence(n, since=mark) for n in ("gpu", "rng")})
        new = boot_from_image(path)  # takes the path only: nothing of ``system`` reaches the new machine
    new.guest.notify(PmEvent.POST_HIBERNATION)
    cell.resume_ms = _ms(new.restore_ns)  # the image kernel's .restore of every device
    new.machine.run_for(1 * MS)
    cell.notes.append(S4_ISOLATION_NOTE)
    return new


def _slug(name: str) -> str:
    return name.replace("+", "_")
