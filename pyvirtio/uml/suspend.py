"""The virtio 1.4 SUSPEND bit on a real kernel: our Linux 6.12 patch (``guest/linux/virtio-suspend.patch``, the
``suspend`` kernel build) drives pyvirtio's rng and gpu through S3.

Contract. :data:`SCENARIOS` are the ``suspend-bit`` profile's scenarios, every device built and plugged from the
profile's plan (behind a PCIe port with No_Soft_Reset; pyvirtio's devices offer VIRTIO_F_SUSPEND);
:mod:`~pyvirtio.uml.catalog` collects them:

* ``s3-suspend`` — S3 with a reader and a drawing loop running, the rng slowed to 30 ms a request so that one is
  in flight when SUSPEND is written, and a display event while the guest sleeps (deferred by the device,
  delivered once after the resume);
* ``s3-suspend-held`` — a real kernel context submits to the suspended gpu: ``pvfb dirty`` leaves a frame to the
  fbdev deferred-I/O work (non-freezable system workqueue, 50 ms) right before ``echo mem``, the slowed rng's
  request in flight keeps the suspend going meanwhile, and the work's TRANSFER_TO_HOST_2D + RESOURCE_FLUSH are
  held by the patch (written past the unchanged available index, no notification) and published after the
  resume (:func:`hold_checks`);
* ``s3-suspend-timeout`` — the rng never finishes quiescing: the patch's time-out, its freeze fallback, the
  restore on resume;
* ``s3-suspend-needs-reset`` — the rng answers SUSPEND with DEVICE_NEEDS_RESET: the same fallback at once;
* ``s3-resume-needs-reset`` — the rng answers the resume with DEVICE_NEEDS_RESET: freeze and restore on resume;
* ``s3-suspend-unoffered`` — neither device offers VIRTIO_F_SUSPEND: the patched kernel never writes SUSPEND.

Each check names what the real kernel did, read from the run: the status bytes the device presented and the
driver wrote, the kernel's ``virtio-suspend:`` lines, the requests completed while the device quiesced, the
available indexes of every queue when SUSPEND was written and when DRIVER_OK was written again
(:func:`watch_suspend` records them in the machine trace), the scanout when the device was suspended and when it
ran again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.gpu.device import Gpu
from pyvirtio.host.lifecycle import DeviceLifecycle
from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import (
    QEMU_COMMON_OFFSET,
    QEMU_DEVICE_OFFSET,
    QEMU_ISR_OFFSET,
    QEMU_MODERN_BAR,
    QEMU_NOTIFY_OFFSET,
    QEMU_REGION_SIZE,
    VIRTQ_AVAIL_ELEM_SIZE,
    VIRTQ_DESC_SIZE,
    VIRTQ_RING_ENTRIES,
    VIRTQ_RING_IDX,
    CommonCfg,
    DescFlag,
    Feature,
    GpuCmd,
    Status,
)
from pyvirtio.trace import Kind, TraceEvent
from pyvirtio.uml.platform import UmlMachine
from pyvirtio.uml.report import violations
from pyvirtio.uml.runner import RunResult
from pyvirtio.uml.scenarios import (
    PRELUDE,
    STEP,
    Check,
    DeviceSpec,
    Frames,
    Scenario,
    common_checks,
    entropy_served,
    frame_check,
    mark_pos,
    profile_plan,
    sleep_checks,
    sleep_script,
    status_writes,
    step_rc,
)

PROFILE = "suspend-bit"
PLAN = profile_plan(PROFILE)
#: The tag of every line the patch logs.
TAG = "virtio-suspend:"
#: Where the machine trace holds what :func:`watch_suspend` saw (``Kind.PM`` events of this source).
WATCH = "uml-suspend-watch"
#: The time-out the patch polls for (``VIRTIO_SUSPEND_TIMEOUT_US``), in ns.
PATCH_TIMEOUT = 100_000_000
#: The guest's mark after the resume where the frame the deferred-I/O work sent while suspended must show.
HELD_MARK = "held-shown"
#: The gpu's ``events_clear`` in the device configuration (virtio 1.4 §5.7.4).
EVENTS_CLEAR = 4
_STATUS_OFFSET = QEMU_COMMON_OFFSET + CommonCfg.DEVICE_STATUS


def display_event(devices: Mapping[str, VirtioDevice]) -> None:
    """The host's display of scanout 0 reports a change (same mode): EVENT_DISPLAY, deferred while suspended."""
    gpu = devices.get("gpu")
    if isinstance(gpu, Gpu):
        gpu.hotplug(0, True)


# -- watching the devices while the guest suspends -------------------------------------------------------------


def _indexes(fn: VirtioPciFunction) -> tuple[list[int], list[int]]:
    """Every queue's available index (read from the kernel's memory) and the device's used index (-1: the queue
    is not enabled)."""
    mem = fn.device.ctx.memory
    avail, used = [], []
    for q in fn.device.queues:
        avail.append(mem.read_u16(q.avail_ring + VIRTQ_RING_IDX) if q.ready else -1)
        used.append(q.next_used if q.ready else -1)
    return avail, used


#: How many available-ring slots past the available index :func:`watch_suspend` reads.
AHEAD = 4


def _first_word(mem: GuestMemory, desc_table: int, size: int, head: int) -> int:
    """The first 32-bit word of the first buffer of the chain at ``head`` (an indirect table followed once), -1
    when it lies outside guest memory: for a gpu request its command type (virtio 1.4 §5.7.6.7)."""
    if not 0 <= head < size or not mem.contains(desc_table + head * VIRTQ_DESC_SIZE, VIRTQ_DESC_SIZE):
        return -1
    d = desc_table + head * VIRTQ_DESC_SIZE
    addr, length, flags = mem.read_u64(d), mem.read_u32(d + 8), mem.read_u16(d + 12)
    if flags & DescFlag.INDIRECT:
        if length < VIRTQ_DESC_SIZE or not mem.contains(addr, VIRTQ_DESC_SIZE):
            return -1
        addr, length = mem.read_u64(addr), mem.read_u32(addr + 8)
    return mem.read_u32(addr) if length >= 4 and mem.contains(addr, 4) else -1


def _ahead(fn: VirtioPciFunction) -> list[list[list[int]]]:
    """Per queue, the :data:`AHEAD` available-ring slots from the available index on, each ``[head, first word]``:
    entries the driver wrote without making them available yet (empty: the queue is not enabled)."""
    mem = fn.device.ctx.memory
    out: list[list[list[int]]] = []
    for q in fn.device.queues:
        if not q.ready:
            out.append([])
            continue
        idx = mem.read_u16(q.avail_ring + VIRTQ_RING_IDX)
        slots = []
        for k in range(AHEAD):
            head = mem.read_u16(q.avail_ring + VIRTQ_RING_ENTRIES + ((idx + k) % q.size) * VIRTQ_AVAIL_ELEM_SIZE)
            slots.append([head, _first_word(mem, q.desc_table, q.size, head)])
        out.append(slots)
    return out


def _record(machine: UmlMachine, fn: VirtioPciFunction, at: str) -> None:
    avail, used = _indexes(fn)
    dev = fn.device
    flushes = dev.scanouts[0].flushes if isinstance(dev, Gpu) else -1
    machine.trace.record(Kind.PM, WATCH, dev=fn.name, at=at, avail=avail, used=used, taken=dev.inflight(),
                         ahead=_ahead(fn), flushes=flushes)


def watch_suspend(line: str, machine: UmlMachine, state: dict[str, object]) -> None:
    """A console-line hook. From the guest's ``suspend`` mark on it watches every function's lifecycle: when
    SUSPEND is written (SUSPENDING), when the device shows it suspended (SUSPENDED) and when DRIVER_OK is written
    again (RESUMING) it records every queue's available index (read from the kernel's memory), the device's
    used index and the requests it has taken and not yet used in the machine trace (``Kind.PM`` events of source
    :data:`WATCH`, ``at`` the lifecycle state) with the :data:`AHEAD` ring slots past each available index
    (:func:`_ahead`: what the driver wrote but did not make available); at the guest's ``held-shown`` mark
    (``at="held-shown"``, scanout 0 captured as the frame ``held-shown``) and ``entropy-after`` mark
    (``at="end"``) once more.
    When the gpu is suspended and when it runs again its scanout 0 is captured as the frames ``asleep`` and
    ``awake``."""
    if STEP not in line:
        return
    mark = line.split(STEP, 1)[1].split()[:1]
    if mark == ["entropy-after"] and state.get("watching"):
        for fn in machine.functions:
            _record(machine, fn, "end")
        return
    if mark == [HELD_MARK] and state.get("watching"):
        for fn in machine.functions:
            _record(machine, fn, HELD_MARK)
        frames = state.get("frames")
        gpu = next((f.device for f in machine.functions if isinstance(f.device, Gpu)), None)
        if isinstance(frames, dict) and gpu is not None:
            img = gpu.scanout_image(0)
            frames[HELD_MARK] = None if img is None else img.copy()
        return
    if mark != ["suspend"] or state.get("watching"):
        return
    state["watching"] = True
    frames = state.get("frames")
    for fn in machine.functions:
        def seen(lc: DeviceLifecycle, fn: VirtioPciFunction = fn) -> None:
            if lc in (DeviceLifecycle.SUSPENDING, DeviceLifecycle.SUSPENDED, DeviceLifecycle.RESUMING):
                _record(machine, fn, lc.value)
            dev = fn.device
            if isinstance(dev, Gpu) and isinstance(frames, dict) and lc in (DeviceLifecycle.SUSPENDED,
                                                                              DeviceLifecycle.LIVE):
                img = dev.scanout_image(0)
                name = "asleep" if lc is DeviceLifecycle.SUSPENDED else "awake"
                if name not in frames:
                    frames[name] = None if img is None else img.copy()
        fn.device.lifecycle_listeners.append(seen)


# -- reading a run ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuspendTrace:
    """One device's SUSPEND round trip in a run: trace indexes of the SUSPEND write, the device's acknowledgement,
    the resume's DRIVER_OK write and the device running again (None: did not happen), what the watcher saw
    (``watched``: lifecycle state or ``end`` -> its record), the status bytes the driver wrote and the device
    presented from the guest's suspend mark to its ``resumed`` mark, and how often the driver read the status
    between its SUSPEND write and its next other access, over how long."""

    device: str
    suspend_write: int | None
    suspended: int | None
    resume_write: int | None
    resumed: int | None
    watched: dict[str, dict[str, object]]
    written: list[int]
    presented: list[int]
    polls: int
    poll_ns: int

    def seen(self, at: str, what: str) -> list[int] | None:
        """The watcher's ``what`` (``avail``, ``used``) per queue ``at`` a lifecycle state (or ``end``)."""
        rec = self.watched.get(at)
        val = rec.get(what) if rec else None
        return [int(x) for x in val] if isinstance(val, list) else None

    def ahead(self, at: str) -> list[list[tuple[int, int]]] | None:
        """The watcher's ring slots past each queue's available index ``at`` a lifecycle state: ``(head, first
        word)`` per slot (:func:`_ahead`)."""
        rec = self.watched.get(at)
        val = rec.get("ahead") if rec else None
        if not isinstance(val, list):
            return None
        return [[(int(h), int(w)) for h, w in q] for q in val]

    def held(self) -> list[list[int]]:
        """Per queue, the first words of the entries the driver wrote into the available ring while the device
        was suspended without making them available: the leading slots past the (unchanged) available index
        whose content changed between the SUSPEND write and the resume's DRIVER_OK write. Empty lists when
        nothing was held (or the device was not resumed)."""
        a_s, a_r = self.seen(_SUSPENDING, "avail"), self.seen(_RESUMING, "avail")
        s, r = self.ahead(_SUSPENDING), self.ahead(_RESUMING)
        later = next((self.seen(at, "avail") for at in (HELD_MARK, "end") if self.seen(at, "avail")), None)
        if a_s is None or a_r is None or s is None or r is None or later is None:
            return []
        out: list[list[int]] = []
        for q, (i, j) in enumerate(zip(a_s, a_r, strict=True)):
            words: list[int] = []
            if i == j and i >= 0:
                for before, after in zip(s[q], r[q], strict=True):
                    if before == after:
                        break
                    words.append(after[1])
            # slots past the held entries can look changed too (a stale slot whose descriptor a held request
            # re-used): only as many as the driver made available after the resume count
            out.append(words[:(later[q] - j) & 0xFFFF] if j >= 0 else [])
        return out

    def flushes(self, at: str) -> int | None:
        """The RESOURCE_FLUSHes the gpu's scanout 0 had presented ``at`` a lifecycle state (None: not a gpu)."""
        rec = self.watched.get(at)
        val = rec.get("flushes") if rec else None
        return val if isinstance(val, int) and val >= 0 else None

    def taken(self, at: str) -> int | None:
        """Requests the device had taken and not yet used ``at`` a lifecycle state."""
        rec = self.watched.get(at)
        val = rec.get("taken") if rec else None
        return val if isinstance(val, int) else None


def _pm(e: TraceEvent, dev: str, event: str) -> bool:
    return e.kind is Kind.PM and e.src == dev and e.detail.get("event") == event


def _is_status(e: TraceEvent, dev: str, kind: Kind) -> bool:
    return (e.kind is kind and e.src == dev and e.detail.get("bar") == QEMU_MODERN_BAR
            and e.detail.get("offset") == _STATUS_OFFSET)


def suspend_trace(r: RunResult, dev: str) -> SuspendTrace:
    """``dev``'s :class:`SuspendTrace` in ``r``."""
    lo, hi = mark_pos(r, "suspend") or 0, mark_pos(r, "resumed") or len(r.trace)
    ev = r.trace

    def first(pred: Callable[[TraceEvent], bool], start: int = lo) -> int | None:
        return next((i for i in range(start, len(ev)) if pred(ev[i])), None)

    sw = first(lambda e: _pm(e, dev, "suspend_requested"))
    sd = first(lambda e: _pm(e, dev, "suspended"))
    rw = first(lambda e: _pm(e, dev, "resume_requested"))
    rd = first(lambda e: _pm(e, dev, "resumed"))
    watched: dict[str, dict[str, object]] = {}
    for e in ev[lo:]:
        if e.kind is Kind.PM and e.src == WATCH and e.detail.get("dev") == dev:
            watched.setdefault(str(e.detail.get("at")), dict(e.detail))
    written = [int(e.detail["value"]) for e in ev[lo:hi] if _is_status(e, dev, Kind.BAR_WRITE)]
    polls, poll_ns = 0, 0
    if sw is not None:
        reads = []
        for e in ev[sw + 1:hi]:
            if e.src != dev or e.kind not in (Kind.BAR_READ, Kind.BAR_WRITE, Kind.CONFIG_READ, Kind.CONFIG_WRITE):
                continue
            if not _is_status(e, dev, Kind.BAR_READ):
                break
            reads.append(e.t)
        polls = len(reads)
        poll_ns = reads[-1] - ev[sw].t if reads else 0
    return SuspendTrace(dev, sw, sd, rw, rd, watched, written, status_writes(r, dev, lo, hi), polls, poll_ns)


def _hex(seq: list[int]) -> str:
    return " ".join(f"{s:#04x}" for s in seq) or "none"


def _interrupts(r: RunResult, dev: str, lo: int | None, hi: int | None, why: str) -> list[TraceEvent]:
    if lo is None:
        return []
    return [e for e in r.trace[lo:hi] if e.kind is Kind.INTERRUPT and e.src == dev and e.detail.get("why") == why]


def kernel_lines(r: RunResult, driver: str) -> list[str]:
    """The patch's lines about ``driver``'s device (``virtio_rng``/``virtio_gpu`` for the core's, ``virtio-pci``
    for the transport's)."""
    return [ln.split("] ", 1)[-1] for ln in r.console if TAG in ln and driver in ln]


def suspend_round_trip(r: RunResult, dev: str, driver: str, *, slow: bool = False) -> list[Check]:
    """The checks of one device that SUSPEND took to sleep and back."""
    st = suspend_trace(r, dev)
    want = [0x1F, 0x1B, 0x1F, 0x0F]
    out = [Check(f"{dev}: the device presented 0x1f (SUSPEND written) 0x1b (suspended) 0x1f (DRIVER_OK written) "
                 "0x0f (resumed), nothing else", st.presented == want, _hex(st.presented)),
           Check(f"{dev}: the driver wrote the status exactly twice, 0x1f and 0x1f (SUSPEND, then DRIVER_OK)",
                 st.written == [0x1F, 0x1F], _hex(st.written))]
    lines = kernel_lines(r, driver)
    out.append(Check(f"{dev}: the kernel logged the suspend and the resume ({TAG} suspended 0x1b, resumed 0x0f)",
                     any("suspended (status 0x1b)" in ln for ln in lines)
                     and any("resumed (status 0x0f)" in ln for ln in lines)
                     and not any("failed" in ln or "falling back" in ln for ln in lines),
                     "; ".join(lines) or "no line"))
    out.append(Check(f"{dev}: the driver polled the status until SUSPEND=1, DRIVER_OK=0"
                     + (" (a request in flight made it wait)" if slow else ""),
                     st.polls >= (2 if slow else 1) and st.suspended is not None,
                     f"{st.polls} status read(s) over {st.poll_ns / 1e6:.3f} ms"))
    if slow:
        out.append(_in_flight(st))
    quiet = [e for e in r.trace[st.suspended or 0:st.resumed] if e.src == dev and e.kind is Kind.INTERRUPT] \
        if st.suspended is not None else []
    out.append(Check(f"{dev}: no interrupt from the device while it was suspended", st.suspended is not None
                     and not quiet, f"{len(quiet)} interrupt(s)"))
    a_s, a_r = st.seen(_SUSPENDING, "avail"), st.seen(_RESUMING, "avail")
    out.append(Check(f"{dev}: no buffer made available between the SUSPEND write and the resume (every queue's "
                     "available index unchanged)", a_s is not None and a_s == a_r,
                     f"at SUSPEND {a_s}, at DRIVER_OK {a_r}"))
    return out


_SUSPENDING, _SUSPENDED, _RESUMING = (DeviceLifecycle.SUSPENDING.value, DeviceLifecycle.SUSPENDED.value,
                                      DeviceLifecycle.RESUMING.value)


def _in_flight(st: SuspendTrace) -> Check:
    """Requests in flight when SUSPEND was written were completed: those the device had taken before it showed
    SUSPEND=1, those only made available (a suspending device takes no new buffer) after the resume."""
    avail, used0 = st.seen(_SUSPENDING, "avail"), st.seen(_SUSPENDING, "used")
    used1, end = st.seen(_SUSPENDED, "used"), st.seen("end", "used")
    taken = st.taken(_SUSPENDING)
    name = (f"{st.device}: requests in flight when SUSPEND was written were completed (taken ones before the "
            "device showed SUSPEND=1, the others after the resume)")
    if avail is None or used0 is None or used1 is None or end is None or taken is None:
        return Check(name, False, f"not watched: {sorted(st.watched)}")
    pending = [(a - u) & 0xFFFF for a, u in zip(avail, used0, strict=True) if a >= 0]
    before = sum((b - a) & 0xFFFF for a, b in zip(used0, used1, strict=True) if a >= 0)
    after_ok = all(e < 0 or (e - a) & 0xFFFF <= 0x8000 for a, e in zip(avail, end, strict=True))
    return Check(name, sum(pending) >= 1 and before == taken and st.taken(_SUSPENDED) == 0 and after_ok,
                 f"{sum(pending)} in flight ({taken} taken by the device), {before} used before SUSPEND=1; "
                 f"used index {used0} -> {used1} at SUSPEND=1 -> {end} after resume, available {avail}")


# -- the driver-side SUSPEND statements, read from the real kernel's accesses ---------------------------------

_BAR_ACCESS = (Kind.BAR_READ, Kind.BAR_WRITE)
_S, _OK, _NR = int(Status.SUSPEND), int(Status.DRIVER_OK), int(Status.DEVICE_NEEDS_RESET)
#: The driver-side statements of virtio 1.4 §3.4.1 (Device Suspend), in order.
DRIVER_STATEMENTS = ("drv:suspend#1", "drv:suspend#2", "drv:suspend#3", "drv:suspend#4", "drv:suspend#5",
                     "drv:suspend#6")


@dataclass(frozen=True)
class RoundTrip:
    """One SUSPEND by the driver, from the machine trace: the index of its SUSPEND write, the status presented
    before it, the driver's feature word 1 when it was written, the index where the suspended window ends (the
    device running again after a DRIVER_OK write, or reset), the index of the resume's DRIVER_OK write (None:
    the suspend fell back to a reset)."""

    device: str
    write: int
    before: int
    features_hi: int | None
    end: int
    resume_write: int | None


def round_trips(r: RunResult, dev: str) -> list[RoundTrip]:
    """Every SUSPEND ``dev``'s driver wrote in ``r``."""
    ev = r.trace
    out: list[RoundTrip] = []
    presented, select, hi = 0, 0, None
    i = 0
    while i < len(ev):
        e = ev[i]
        if e.src == dev and e.kind is Kind.STATUS:
            presented = int(e.detail["status"])
        elif e.src == dev and e.kind is Kind.BAR_WRITE and e.detail.get("bar") == QEMU_MODERN_BAR:
            off, val = e.detail.get("offset"), int(e.detail.get("value", 0))
            if off == QEMU_COMMON_OFFSET + CommonCfg.DRIVER_FEATURE_SELECT:
                select = val
            elif off == QEMU_COMMON_OFFSET + CommonCfg.DRIVER_FEATURE and select == 1:
                hi = val
            elif off == _STATUS_OFFSET and val & _S and not presented & _S:
                end, resume = len(ev), None
                for j in range(i + 1, len(ev)):
                    f = ev[j]
                    if f.src != dev:
                        continue
                    if _is_status(f, dev, Kind.BAR_WRITE) and resume is None and int(f.detail["value"]) & _OK:
                        resume = j
                    if f.kind is Kind.STATUS and (int(f.detail["status"]) == 0 or (
                            resume is not None and int(f.detail["status"]) & (_S | _OK) == _OK)):
                        end = j
                        break
                out.append(RoundTrip(dev, i, presented, hi, end, resume))
        i += 1
    return out


def _status_reads_after(r: RunResult, dev: str, start: int, end: int) -> tuple[list[int], TraceEvent | None, int]:
    """The status bytes ``dev``'s driver read after the access at ``start`` before its first other virtio
    register access (that access, or None), and how long the reads went on (ns)."""
    vals: list[int] = []
    last_t = r.trace[start].t
    for e in r.trace[start + 1:end + 1]:
        if e.src != dev or e.kind not in _BAR_ACCESS:
            continue
        if _is_status(e, dev, Kind.BAR_READ):
            vals.append(int(e.detail.get("value", 0)))
            last_t = e.t
            continue
        return vals, e, last_t - r.trace[start].t
    return vals, None, last_t - r.trace[start].t


def statement_checks(r: RunResult, dev: str) -> dict[str, Check]:
    """For every driver-side SUSPEND statement, whether ``dev``'s real driver kept it in ``r``, read from the
    accesses (and the watcher's available indexes): one :class:`Check` per statement id of
    :data:`DRIVER_STATEMENTS`, over every SUSPEND the driver wrote (a run without one checks nothing and says so).
    The driver monitor's verdicts on the same rules are part of each check."""
    trips = round_trips(r, dev)
    mon = [v.rule for v in r.driver_violations.get(dev, [])]
    st = suspend_trace(r, dev)
    out: dict[str, Check] = {}

    def check(sid: str, what: str, bad: list[str], seen: str) -> None:
        rules = [m.name for m in mon if sid in m.value.ids]
        out[sid] = Check(f"{sid} ({dev}, {len(trips)} SUSPEND(s)): {what}", bool(trips) and not bad and not rules,
                         "; ".join(bad + [f"monitor: {x}" for x in rules]) or seen)

    bad1 = [f"SUSPEND written over {t.before:#04x}" for t in trips if t.before & (_OK | _S | _NR) != _OK]
    bad1 += [f"SUSPEND written with driver_feature[1] {t.features_hi}" for t in trips
             if t.features_hi is None or not t.features_hi & (1 << (Feature.SUSPEND - 32))]
    check("drv:suspend#1", "SUSPEND only after DRIVER_OK and with VIRTIO_F_SUSPEND accepted", bad1,
          ", ".join(f"over {t.before:#04x} with driver_feature[1] {t.features_hi:#x}" for t in trips
                    if t.features_hi is not None))
    bad2, seen2 = [], []
    for t in trips:
        vals, nxt, ns = _status_reads_after(r, dev, t.write, t.end)
        ok = any(v & (_S | _OK) == _S for v in vals)
        gave_up = bool(vals) and (vals[-1] & _NR or ns >= PATCH_TIMEOUT)
        if not (ok or gave_up) or (ok and vals[-1] & (_S | _OK) != _S):
            bad2.append(f"reads {_hex(vals)} then {nxt}")
        seen2.append(f"{len(vals)} read(s) ending {vals[-1]:#04x}" if vals else "no read")
    check("drv:suspend#2", "after SUSPEND the driver read the status until SUSPEND=1, DRIVER_OK=0 (or gave up after "
          "its time-out / DEVICE_NEEDS_RESET) before any other access", bad2, "; ".join(seen2))
    a_s, a_r = st.seen(_SUSPENDING, "avail"), st.seen(_RESUMING, "avail")
    bad3 = [] if a_s is None or a_r is None or a_s == a_r else [f"available index {a_s} -> {a_r}"]
    check("drv:suspend#3", "no buffer made available while suspended (every queue's available index at the "
          "SUSPEND write equals that at the resume's DRIVER_OK write)", bad3,
          f"{a_s} -> {a_r}" if a_r is not None else f"{a_s}, no resume (fell back to a reset)")
    notif = QEMU_NOTIFY_OFFSET
    bad4, bad5 = [], []
    for t in trips:
        for e in r.trace[t.write + 1:t.end]:
            if e.src != dev or e.kind is not Kind.BAR_WRITE or e.detail.get("bar") != QEMU_MODERN_BAR:
                continue
            off = int(e.detail.get("offset", 0))
            if notif <= off < notif + QEMU_REGION_SIZE:
                bad4.append(f"notify at t={e.t}")
            elif off != _STATUS_OFFSET and (off < QEMU_ISR_OFFSET or QEMU_DEVICE_OFFSET <= off < notif):
                bad5.append(f"write of {off:#x} at t={e.t}")
    windows = ", ".join(f"{(r.trace[t.end - 1].t - r.trace[t.write].t) / 1e6:.1f} ms" for t in trips)
    check("drv:suspend#4", "no queue notification from the SUSPEND write until the device ran again (or was "
          "reset)", bad4, f"suspended windows {windows}")
    check("drv:suspend#5", "no configuration write other than the status in the same windows", bad5,
          f"suspended windows {windows}")
    bad6, seen6 = [], []
    for t in trips:
        if t.resume_write is None:
            continue
        vals, nxt, ns = _status_reads_after(r, dev, t.resume_write, len(r.trace) - 1)
        ok = any(v & (_S | _OK) == _OK for v in vals)
        gave_up = bool(vals) and (vals[-1] & _NR or ns >= PATCH_TIMEOUT)
        if not (ok or gave_up) or (ok and vals[-1] & (_S | _OK) != _OK):
            bad6.append(f"reads {_hex(vals)} then {nxt}")
        seen6.append(f"{len(vals)} read(s) ending {vals[-1]:#04x}" if vals else "no read")
    if trips and not seen6 and all(t.resume_write is None for t in trips):
        seen6.append("no resume (fell back to a reset)")
    check("drv:suspend#6", "after the resume's DRIVER_OK write the driver read the status until SUSPEND=0, "
          "DRIVER_OK=1 before any other access", bad6, "; ".join(seen6))
    return out


def _display_checks(r: RunResult, frames: Frames) -> list[Check]:
    st = suspend_trace(r, "gpu")
    out: list[Check] = []
    deferred = [i for i in range(st.suspended or 0, st.resume_write or 0)
                if r.trace[i].src == "gpu" and r.trace[i].detail.get("event") == "config_change_deferred"]
    out.append(Check("gpu: the display event while asleep was deferred by the suspended device",
                     st.suspended is not None and len(deferred) == 1, f"{len(deferred)} deferred change(s)"))
    end = mark_pos(r, "drawn-after")
    cfg = _interrupts(r, "gpu", st.resumed, end, "config")
    early = _interrupts(r, "gpu", st.suspended, st.resumed, "config")
    clears = [e for e in r.trace[st.resumed or 0:end] if e.src == "gpu" and e.kind is Kind.BAR_WRITE
              and e.detail.get("bar") == QEMU_MODERN_BAR
              and e.detail.get("offset") == QEMU_DEVICE_OFFSET + EVENTS_CLEAR]
    infos = [e for e in r.trace[st.resumed or 0:end] if e.src == "gpu" and e.kind is Kind.DEVICE
             and e.detail.get("cmd") == "GET_DISPLAY_INFO"]
    out.append(Check("gpu: the deferred display event reached the guest once, after the resume (one config "
                     "interrupt, one GET_DISPLAY_INFO, one events_clear write)",
                     st.resumed is not None and not early and len(cfg) == 1 and len(infos) == 1
                     and len(clears) == 1 and clears[0].detail.get("value") == 1,
                     f"{len(early)} config interrupt(s) before, {len(cfg)} after the resume; {len(infos)} "
                     f"GET_DISPLAY_INFO, events_clear writes {[e.detail.get('value') for e in clears]}"))
    a, b = frames.get("asleep"), frames.get("awake")
    if a is None or b is None:
        out.append(Check("gpu: the display was kept across the suspend (scanout when suspended == scanout when "
                         "running again)", False, f"asleep {'captured' if a is not None else 'missing'}, awake "
                         f"{'captured' if b is not None else 'missing'}"))
    else:
        diff = int(np.count_nonzero(np.any(a != b, axis=-1)))
        lit = int(np.count_nonzero(np.any(a[..., :3] != 0, axis=-1)))
        out.append(Check("gpu: the display was kept across the suspend (scanout when suspended == scanout when "
                         "running again, pixel-exact)", diff == 0 and lit > 0,
                         f"{a.shape[1]}x{a.shape[0]}, {diff} pixels differ, {lit} lit"))
    return out


def _no_violations(r: RunResult, allowed: frozenset[tuple[str, str]] = frozenset()) -> Check:
    found = [v for v in violations(r) if (v["device"], v["rule"]) not in allowed]
    return Check("no violation recorded against the real kernel (devices, driver monitors, virt-pci)"
                 + (" but the explained ones" if allowed else ""), not found,
                 "; ".join(f"{v['device']}: {v['rule']}" for v in found[:4]) or "none")


def _s3_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    out = sleep_checks(r, sc, frames)
    out += suspend_round_trip(r, "rng", "virtio_rng", slow=True)
    out += suspend_round_trip(r, "gpu", "virtio_gpu")
    out += _display_checks(r, frames)
    out += _statements(r)
    out.append(_no_violations(r))
    return out


def _statements(r: RunResult) -> list[Check]:
    return [c for dev in ("rng", "gpu") for c in statement_checks(r, dev).values()]


#: The finding the stock runs explain too: Linux's vp_del_vqs writes NO_VECTOR after the reset of a freeze.
_FREEZE_FINDING = frozenset({("rng", "STATUS_ORDER")})


def _fallback_checks(r: RunResult, sc: Scenario, frames: Frames, *, why: str, at_resume: bool) -> list[Check]:
    """The rng fell back to freeze (at suspend, or at resume: ``at_resume``); the gpu was suspended normally."""
    out = common_checks(r)
    out.append(Check("the guest suspended and resumed (echo mem > /sys/power/state returned 0)",
                     step_rc(r, "resumed") == 0, f"rc={step_rc(r, 'resumed')}"))
    lines = kernel_lines(r, "virtio_rng") + kernel_lines(r, "virtio-pci 0000:00:00.0")
    st = suspend_trace(r, "rng")
    if at_resume:
        said = [f"resume failed: {why}", "resetting the device"]
        want = [0x1F, 0x1B, 0x1F, 0x5F, 0x00, 0x01, 0x03, 0x0B, 0x0F]
        what = "freeze and restore on resume"
    else:
        said = [f"suspend failed: {why}", "falling back to freeze", "restoring after the fallback"]
        want = ([0x1F, 0x00, 0x01, 0x03, 0x0B, 0x0F] if why == "timed out"
                else [0x1F, 0x5F, 0x00, 0x01, 0x03, 0x0B, 0x0F])
        what = "fell back to freeze, restored on resume"
    out.append(Check(f"rng: the kernel said why and {what} ({TAG} {'; '.join(said)})",
                     all(any(s in ln for ln in lines) for s in said), "; ".join(lines) or "no line"))
    out.append(Check("rng: the device presented " + _hex(want) + " (the reset and the re-initialisation of "
                     "virtio_pci_freeze/restore)", st.presented == want, _hex(st.presented)))
    if why == "timed out":
        out.append(Check("rng: the driver polled the status for the patch's 100 ms time-out before giving up",
                         st.polls >= 20 and st.poll_ns >= PATCH_TIMEOUT,
                         f"{st.polls} status reads over {st.poll_ns / 1e6:.1f} ms"))
    out += suspend_round_trip(r, "gpu", "virtio_gpu")
    out.append(entropy_served(r, "after resume (the restored rng)", r.seed, _read(r, "entropy-after.bin")))
    out.append(frame_check(frames, "drawn-after", "gpu: a frame drawn after resume reaches the scanout", 11,
                           r.directory))
    out += _statements(r)
    out.append(_no_violations(r, _FREEZE_FINDING))
    return out


def _read(r: RunResult, name: str) -> bytes | None:
    try:
        return (r.directory / name).read_bytes()
    except OSError:
        return None


def _timeout_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    return _fallback_checks(r, sc, frames, why="timed out", at_resume=False)


def _needs_reset_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    return _fallback_checks(r, sc, frames, why="device needs reset", at_resume=False)


def _resume_fails_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    return _fallback_checks(r, sc, frames, why="device needs reset", at_resume=True)


def _unoffered_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    """Devices that do not offer VIRTIO_F_SUSPEND: the patched kernel behaves as Linux 6.12 (No_Soft_Reset: no
    virtio access at all across S3), and never writes SUSPEND."""
    out = sleep_checks(r, sc, frames)
    for dev, driver in (("rng", "virtio_rng"), ("gpu", "virtio_gpu")):
        st = suspend_trace(r, dev)
        out.append(Check(f"{dev}: SUSPEND not offered: the driver did not accept it and never wrote a status "
                         "across S3", st.written == [] and st.suspend_write is None and not kernel_lines(r, driver),
                         f"status writes {_hex(st.written)}; {'; '.join(kernel_lines(r, driver)) or 'no line'}"))
    out.append(_no_violations(r))
    return out


#: The frame ``pvfb dirty`` draws right before ``echo mem`` (no msync: the fbdev deferred-I/O work sends it).
HELD_SEED = 21


def held_script(*, delay_ms: int = 20) -> str:
    """S3 with a frame left to the kernel's fbdev deferred-I/O work: ``pvfb dirty`` draws it without ``msync`` and
    keeps ``/dev/fb0`` open; ``delay_ms`` later the guest suspends. The work (on the non-freezable system
    workqueue, 50 ms after the first write) runs while the gpu is suspended and sends TRANSFER_TO_HOST_2D +
    RESOURCE_FLUSH to it: the patch holds them. A read of ``/dev/hwrng`` just before leaves a request in flight
    that keeps the slowed rng quiescing meanwhile. After the resume the guest only waits (``held-shown``: the
    held frame must be on the scanout), then reads entropy and draws a new frame."""
    s = PRELUDE + "dd if=/dev/hwrng of=/host/entropy.bin bs=64 count=1 2>/dev/null\n"
    s += "pvfb draw 3 300 > /dev/null 2>&1\n"
    s += "echo 0 > /sys/class/rtc/rtc0/wakealarm\necho +2 > /sys/class/rtc/rtc0/wakealarm\n"
    s += f"pvfb dirty {HELD_SEED} 2000 > /host/pvfb-dirty.txt 2>&1\nmark dirty rc=$?\n"
    s += "dd if=/dev/hwrng of=/dev/null bs=64 count=1 2>/dev/null\n"
    if delay_ms:
        s += f"usleep {delay_ms * 1000}\n"
    s += "mark suspend\necho mem > /sys/power/state\nmark resumed rc=$?\n"
    s += "sleep 0.1\nmark held-shown\n"
    s += ("timeout 5 dd if=/dev/hwrng of=/host/entropy-after.bin bs=64 count=1 2>/dev/null\n"
          "mark entropy-after rc=$?\n")
    s += "timeout 5 pvfb draw 11 300 > /host/pvfb-after.txt 2>&1\nmark drawn-after rc=$?\n"
    s += "virtio_list > /host/virtio-after.txt\ncat /proc/interrupts > /host/interrupts-after.txt\nmark done\n"
    return s


def _cmd(word: int) -> str:
    try:
        return GpuCmd(word).name
    except ValueError:
        return f"{word:#x}"


def _is_notify(e: TraceEvent, dev: str) -> bool:
    return (e.src == dev and e.kind is Kind.BAR_WRITE and e.detail.get("bar") == QEMU_MODERN_BAR
            and QEMU_NOTIFY_OFFSET <= int(e.detail.get("offset", 0)) < QEMU_NOTIFY_OFFSET + QEMU_REGION_SIZE)


def held_entries(r: RunResult, dev: str) -> list[list[int]]:
    """Per queue, the first words of the buffers ``dev``'s driver wrote into its rings while the device was
    suspended and held back (not made available) until the resume: the candidates of :meth:`SuspendTrace.held`,
    kept only when the driver's first access after its resume poll is the held notification (the patch's
    ``virtqueue_unhold``): a slot whose stale descriptor changed under it is not a held buffer."""
    st = suspend_trace(r, dev)
    held = st.held()
    if not any(held) or st.resumed is None:
        return [[] for _ in held]
    first = next((e for e in r.trace[st.resumed:] if e.src == dev and e.kind in _BAR_ACCESS
                  and not _is_status(e, dev, Kind.BAR_READ)), None)
    return held if first is not None and _is_notify(first, dev) else [[] for _ in held]


def held_count(r: RunResult, dev: str) -> int:
    """How many buffers ``dev``'s driver held while its device was suspended (:func:`held_entries`)."""
    return sum(len(q) for q in held_entries(r, dev))


def hold_checks(r: RunResult, frames: Frames, *, seed: int = HELD_SEED) -> list[Check]:
    """The gpu's hold, seen from the device: requests a kernel context submitted while the gpu was suspended
    were written into the ring but not made available (available index unchanged, no notification), were
    published right after the resume was confirmed and completed, and the frame they carry is presented then
    (pixel-exact), nothing while suspended (the gpu's scanout reads the guest's blob pages: the flush is what
    presents them)."""
    st = suspend_trace(r, "gpu")
    held = held_entries(r, "gpu")
    ctrl = held[0] if held else []
    names = [_cmd(w) for w in ctrl]
    out = [Check("gpu: a kernel context submitted while the gpu was suspended: at the resume's DRIVER_OK write the "
                 "control queue held entries past its unchanged available index that were not there at the "
                 "SUSPEND write (the fbdev deferred-I/O work's TRANSFER_TO_HOST_2D and RESOURCE_FLUSH)",
                 names == ["TRANSFER_TO_HOST_2D", "RESOURCE_FLUSH"],
                 f"held {names or 'nothing'}; available index {st.seen(_SUSPENDING, 'avail')} at SUSPEND, "
                 f"{st.seen(_RESUMING, 'avail')} at DRIVER_OK")]
    # the first gpu accesses after the device runs again: the poll's last read, then the held kick
    after = [e for e in r.trace[st.resumed or len(r.trace):mark_pos(r, HELD_MARK)] if e.src == "gpu"]
    notes = [i for i, e in enumerate(after) if _is_notify(e, "gpu")]
    first_access = next((i for i, e in enumerate(after) if e.kind in _BAR_ACCESS
                         and not _is_status(e, "gpu", Kind.BAR_READ)), None)
    cmds = [str(e.detail.get("cmd")) for e in after if e.kind is Kind.DEVICE and e.detail.get("event") == "gpu_cmd"]
    a_r, a_h = st.seen(_RESUMING, "avail"), st.seen(HELD_MARK, "avail")
    u_h = st.seen(HELD_MARK, "used")
    jump = (a_h[0] - a_r[0]) & 0xFFFF if a_r and a_h else None
    out.append(Check("gpu: the held requests were published right after the resume was confirmed (the driver's "
                     "first access after its status poll is the held notification: the only one; the available "
                     "index jumps by "
                     "what was held) and the device completed them",
                     bool(ctrl) and len(notes) == 1 and first_access == notes[0] and jump == len(ctrl)
                     and cmds[:len(ctrl)] == names and u_h is not None and a_h is not None and u_h[0] == a_h[0],
                     f"{len(notes)} notification(s), the first is access {first_access} after the resume; "
                     f"available {a_r} -> {a_h} (jump {jump}), used {u_h}; commands {cmds}"))
    f_s, f_r, f_h = st.flushes(_SUSPENDING), st.flushes(_RESUMING), st.flushes(HELD_MARK)
    out.append(Check("gpu: nothing was presented while the gpu was suspended, the held RESOURCE_FLUSH once after "
                     "the resume (scanout 0's flush count)", f_s is not None and f_s == f_r and f_h == (f_r or 0) + 1,
                     f"{f_s} at SUSPEND, {f_r} at DRIVER_OK, {f_h} at {HELD_MARK}"))
    out.append(frame_check(frames, HELD_MARK, f"gpu: the frame the deferred-I/O work sent while the gpu was "
                           f"suspended (pvfb dirty {seed}, no msync) reaches the scanout after the resume",
                           seed, r.directory))
    return out


def _held_checks(r: RunResult, sc: Scenario, frames: Frames) -> list[Check]:
    out = sleep_checks(r, sc, frames)
    out += suspend_round_trip(r, "rng", "virtio_rng", slow=True)
    out += suspend_round_trip(r, "gpu", "virtio_gpu")
    out += hold_checks(r, frames)
    out += _statements(r)
    out.append(_no_violations(r))
    return out


def _rng(*faults: str) -> DeviceSpec:
    return DeviceSpec.from_plan("rng", PLAN, faults=faults)


_GPU = DeviceSpec.from_plan("gpu", PLAN)
_WATCH = (watch_suspend,)

#: The suspend-bit profile's scenarios, by name.
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("s3-suspend", "SUSPEND bit (our patch): S3 with rng and gpu behind ports with No_Soft_Reset, a request "
             "in flight (rng 30 ms a request), a display event while asleep", (_rng("delay=30"), _GPU),
             sleep_script(), _s3_checks, profile=PROFILE, on_line=_WATCH, while_asleep=display_event,
             resume_until="entropy-after", cell="S3"),
    Scenario("s3-suspend-held", "SUSPEND bit (our patch): the kernel's fbdev deferred-I/O work sends a frame to "
             "the suspended gpu; the patch holds it until the resume", (_rng("delay=80"), _GPU), held_script(),
             _held_checks, profile=PROFILE, on_line=_WATCH),
    Scenario("s3-suspend-timeout", "SUSPEND bit (our patch): the rng never finishes quiescing; after 100 ms the "
             "patch falls back to freeze", (_rng("quiesce-never-ends"), _GPU), sleep_script(), _timeout_checks,
             profile=PROFILE, on_line=_WATCH),
    Scenario("s3-suspend-needs-reset", "SUSPEND bit (our patch): the rng answers SUSPEND with DEVICE_NEEDS_RESET; "
             "the patch falls back to freeze at once", (_rng("suspend-fails"), _GPU), sleep_script(),
             _needs_reset_checks, profile=PROFILE, on_line=_WATCH),
    Scenario("s3-resume-needs-reset", "SUSPEND bit (our patch): the rng answers the resume with "
             "DEVICE_NEEDS_RESET; the patch freezes and restores it", (_rng("resume-fails"), _GPU), sleep_script(),
             _resume_fails_checks, profile=PROFILE, on_line=_WATCH),
    Scenario("s3-suspend-unoffered", "SUSPEND bit (our patch), devices that do not offer VIRTIO_F_SUSPEND: the "
             "patched kernel skips as Linux 6.12 does with No_Soft_Reset",
             (replace(_rng(), offer_suspend=False), replace(_GPU, offer_suspend=False)), sleep_script(),
             _unoffered_checks, profile=PROFILE, on_line=_WATCH),
)}

__all__ = ["AHEAD", "DRIVER_STATEMENTS", "HELD_MARK", "HELD_SEED", "PATCH_TIMEOUT", "PLAN", "PROFILE", "SCENARIOS",
           "TAG", "WATCH", "RoundTrip", "SuspendTrace", "display_event", "held_count", "held_entries", "held_script",
           "hold_checks", "kernel_lines", "round_trips", "statement_checks", "suspend_round_trip", "suspend_trace",
           "watch_suspend"]
