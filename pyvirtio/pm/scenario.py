"""One cell of the matrix: a profile through one sleep state, measured.

Before sleeping, the guest has drawn a desktop on every scanout, created extra GPU resources and a cursor, and
has virtio-rng requests in flight. While asleep the host hot-plugs a display. After waking the cell records: is
the display pixel-identical, does a new frame reach the screen, were host resources kept, re-created or lost,
are the queues alive, did the in-flight requests complete, how many times the driver saw the hot-plug event,
which spec statements were broken, and the suspend and resume latency in virtual milliseconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pyvirtio.clock import MS
from pyvirtio.errors import PyvirtioError
from pyvirtio.guest.kernel import PmEvent, SleepRefused
from pyvirtio.host.pci.function import ResetKind
from pyvirtio.pm import gpu_probe as gpu
from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.profiles import Profile
from pyvirtio.pm.system import System, boot_from_image, build_system, write_hibernation_image
from pyvirtio.report import CellResult, DeviceOutcome
from pyvirtio.trace import Kind, dedup

SLEEP_STATES = ("S3", "s2idle", "S4")


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


def run_cell(profile: Profile, sleep: str, cfg: ScenarioConfig | None = None, *,
             out_dir: Path | None = None, workdir: Path | None = None) -> CellResult:
    """Run ``profile`` through ``sleep`` ("S3", "s2idle" or "S4") and measure what survived."""
    cfg = cfg or ScenarioConfig()
    if sleep not in SLEEP_STATES:
        raise ValueError(f"sleep state must be one of {SLEEP_STATES}")
    cell = CellResult(source="model", profile=profile.name, sleep=sleep, machine_type=cfg.machine_type)
    system = build_system(profile, cfg)
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
    try:
        if sleep == "S4":
            earlier.update({n: [start_status[n]] for n in start_status})
            system = _hibernate_and_resume(system, cell, workdir, earlier, trace_mark)
            destroyed_mark = 0
        else:
            _suspend_and_resume(system, cell, s2idle=(sleep == "s2idle"))
    except SleepRefused as e:
        cell.outcome = "refused" if "refus" in str(e) else "aborted"
        cell.notes.append(str(e))
    if cell.outcome == "ok" and sleep != "S4":
        cell.config_events_after_resume = gpu.display_events(system.gpu_drv) - events_before
    after = _images(system)
    cell.display_restored = _same(before, after)
    if out_dir is not None:
        cell.images["after"] = gpu.save_png(system.gpu_dev, 0, out_dir / f"{_slug(profile.name)}-{sleep}-after.png")
    cell.new_frame_after_resume = gpu.new_frame_reaches_screen(system.gpu_drv, system.gpu_dev)
    res_after = gpu.resource_keys(system.gpu_dev)
    destroyed = any(e.kind is Kind.DEVICE and e.src == "gpu" and e.detail.get("event") == "resources_destroyed"
                    and e.detail.get("count", 1) for e in system.machine.trace.events[destroyed_mark:])
    if sleep == "S4":
        destroyed = True  # the machine powered off: every host object is new
    if res_before <= res_after:
        cell.resources = "re-created" if destroyed else "kept"
    elif res_before & res_after:
        cell.resources = "partial"
    else:
        cell.resources = "lost"
    gpu_alive = gpu.queues_alive(system.gpu_drv)
    rng_alive = _rng_alive(system)
    cell.queues_alive = gpu_alive and rng_alive
    if cell.outcome == "ok" and sleep != "S4":
        system.machine.run_for(50 * MS)
        cell.inflight_completed = all(r.done for r in inflight)
    elif sleep == "S4":
        cell.inflight_completed = not inflight  # requests of the old machine cannot complete on the new one
    cell.violations = _violations(system, 0 if sleep == "S4" else trace_mark)
    for name, alive in (("gpu", gpu_alive), ("rng", rng_alive)):
        tail = system.machine.trace.status_sequence(name, since=0 if sleep == "S4" else trace_mark)
        head = earlier.get(name) if sleep == "S4" else [start_status[name]]
        seq = dedup((head or []) + tail)
        cell.devices[name] = DeviceOutcome(name, seq, alive, alive)
    if cell.outcome != "ok":
        cell.suspend_ms = _ms(system.machine.now - t0)
    return cell


def _rng_alive(system: System) -> bool:
    try:
        return len(system.rng_drv.read(16, timeout=20 * MS)) == 16
    except (PyvirtioError, RuntimeError):
        return False


def _suspend_and_resume(system: System, cell: CellResult, *, s2idle: bool) -> None:
    m, guest = system.machine, system.guest
    t0 = m.now
    guest.suspend(s2idle=s2idle)
    cell.suspend_ms = _ms(m.now - t0)
    m.stop_cpu()
    m.trace.record(Kind.PM, "machine", event="sleep", state="s2idle" if s2idle else "S3")
    gpu.hotplug_new_display(system.gpu_dev, system.config)
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
    guest.notify(PmEvent.HIBERNATION_PREPARE)
    try:
        guest.freeze_all()
    except SleepRefused:
        guest.notify(PmEvent.POST_HIBERNATION)
        raise
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
        old_ids = _object_ids(system)
        new = boot_from_image(path)
    new.guest.notify(PmEvent.POST_HIBERNATION)
    cell.resume_ms = _ms(new.restore_ns)  # the image kernel's .restore of every device
    new.machine.run_for(1 * MS)
    shared = old_ids & _object_ids(new)
    if shared:
        cell.notes.append(f"resumed machine shares {len(shared)} objects with the old one")
        cell.outcome = "error"
    else:
        cell.notes.append("resumed machine built from the image file only (no shared objects)")
    return new


def _object_ids(system: System) -> set[int]:
    """ids of the mutable objects reachable from a system (bounded walk), to prove two systems share nothing."""
    import enum
    import gc
    import sys

    # module-level constants (default values shared by design) are not machine state
    module_level: set[int] = set()
    for modname, module in list(sys.modules.items()):
        if modname.startswith("pyvirtio"):
            for v in vars(module).values():
                module_level.add(id(v))
                if isinstance(v, type):  # class-level defaults are shared by design too
                    module_level.update(id(x) for x in vars(v).values())
    seen: set[int] = set()
    stack: list[object] = [system.machine, system.guest, system.gpu_dev, system.gpu_drv, system.rng_drv]
    immutable = (int, float, str, bytes, bool, type(None), tuple, frozenset, type, enum.Enum)
    while stack and len(seen) < 200_000:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, immutable) or (callable(obj) and not hasattr(obj, "__dict__")):
            continue
        owner = type(obj).__module__
        stateful = owner.startswith("pyvirtio") and hasattr(obj, "__dict__")
        if not (stateful or isinstance(obj, (list, dict, set, bytearray))):
            continue
        seen.add(id(obj))
        stack.extend(gc.get_referents(obj))
    return seen


def _slug(name: str) -> str:
    return name.replace("+", "_")
