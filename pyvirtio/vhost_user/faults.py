"""Fault injection for a served device, from the command line: what a real device never does on demand.

Contract. A :class:`FaultPlan` is parsed from ``--fault`` strings (:func:`parse_fault`, one line naming the
problem on bad input) and applied to the device model through its own switches
(:class:`pyvirtio.host.device.Faults`) wherever they exist:

=========================  ===================================================================================
``delay=MS``               every device step takes ``MS`` ms longer (the model's ``latency``): slow requests
``hang-after=K``           after ``K`` completed requests the backend wedges: no request completes any more
                           (``Faults.backend_hangs``; NON-CONFORMING on purpose)
``hang-on-sigusr2``        from the moment the back-end process receives SIGUSR2 (a trigger the caller aims:
                           e.g. just before a guest's freeze) no request completes any more, as ``hang-after``
                           (NON-CONFORMING); each connection starts un-hung (without this fault SIGUSR2
                           keeps its default action)
``needs-reset-after=K``    after ``K`` completed requests the device sets DEVICE_NEEDS_RESET (§2.1.2) and
                           stops; over vhost-user the front-end owns the status byte, so the guest sees the
                           requests stop, and the error eventfd of every ring is signalled
``quiesce-never-ends``     a SUSPEND never completes (``Faults.quiesce_never_completes``; NON-CONFORMING)
``suspend-fails``          a SUSPEND sets DEVICE_NEEDS_RESET (``Faults.suspend_fails``)
``resume-fails``           a resume sets DEVICE_NEEDS_RESET (``Faults.resume_fails``)
``error=CMD``              answer command ``CMD`` with an error (device-specific: only devices whose catalog
                           entry lists ``error`` accept it)
=========================  ===================================================================================

:class:`FaultEngine` counts completed requests (used-ring entries the device wrote, over every queue) after each
device step and fires the counted faults once, recording them in the monitor; :meth:`FaultEngine.hang_now`
(what SIGUSR2 calls, :func:`~pyvirtio.vhost_user.server.serve` installs it) wedges the backend at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pyvirtio.clock import MS
from pyvirtio.errors import UserInputError
from pyvirtio.host.device import VirtioDevice
from pyvirtio.host.lifecycle import DeviceLifecycle
from pyvirtio.virtqueue.device import DeviceQueue

#: Largest count and delay a fault takes.
COUNT_MAX = 1 << 32
DELAY_MAX_MS = 3_600_000
#: Every fault name and whether it takes a value.
FAULT_NAMES: dict[str, bool] = {
    "delay": True, "hang-after": True, "hang-on-sigusr2": False, "needs-reset-after": True, "quiesce-never-ends": False,
    "suspend-fails": False, "resume-fails": False, "error": True,
}
_CMD = re.compile(r"[A-Za-z0-9_]{1,64}")


@dataclass(frozen=True)
class FaultPlan:
    """The faults asked for (all off by default)."""

    delay_ms: int | None = None
    hang_after: int | None = None
    hang_on_sigusr2: bool = False
    needs_reset_after: int | None = None
    quiesce_never_ends: bool = False
    suspend_fails: bool = False
    resume_fails: bool = False
    error_command: str | None = None
    specs: tuple[str, ...] = field(default=())

    @property
    def counting(self) -> bool:
        """Some fault fires after a number of completed requests (the engine must count them)."""
        return self.hang_after is not None or self.needs_reset_after is not None

    def names(self) -> set[str]:
        """The fault names in the plan."""
        return {s.split("=", 1)[0] for s in self.specs}


def _count(name: str, value: str, lo: int, hi: int) -> int:
    if not value.isdigit() or len(value) > 12 or not lo <= int(value) <= hi:
        raise UserInputError(f"--fault {name}={value[:40]!r}: want a whole number {lo}..{hi}")
    return int(value)


def parse_fault(specs: tuple[str, ...] | list[str], allowed: frozenset[str] | None = None) -> FaultPlan:
    """``("delay=5", "hang-after=100")`` -> :class:`FaultPlan`; a one-line :class:`UserInputError` for an unknown
    fault, a bad value, a repeated fault, or one the device does not support (``allowed``)."""
    kw: dict[str, object] = {}
    seen: set[str] = set()
    for spec in specs:
        name, eq, value = spec.strip().partition("=")
        if name not in FAULT_NAMES:
            raise UserInputError(f"--fault {spec[:60]!r}: unknown fault (want one of {', '.join(FAULT_NAMES)})")
        if FAULT_NAMES[name] != bool(eq):
            raise UserInputError(f"--fault {name}: " + ("needs a value (name=value)" if FAULT_NAMES[name]
                                                        else "takes no value"))
        if name in seen:
            raise UserInputError(f"--fault {name} given twice")
        if allowed is not None and name not in allowed:
            raise UserInputError(f"--fault {name}: not supported by this device")
        seen.add(name)
        if name == "delay":
            kw["delay_ms"] = _count(name, value, 0, DELAY_MAX_MS)
        elif name == "hang-after":
            kw["hang_after"] = _count(name, value, 0, COUNT_MAX)
        elif name == "needs-reset-after":
            kw["needs_reset_after"] = _count(name, value, 0, COUNT_MAX)
        elif name == "error":
            if not _CMD.fullmatch(value):
                raise UserInputError(f"--fault error={value[:40]!r}: want a command name (letters, digits, _)")
            kw["error_command"] = value
        else:
            kw[name.replace("-", "_")] = True
    return FaultPlan(specs=tuple(s.strip() for s in specs), **kw)  # type: ignore[arg-type]


Report = Callable[[str, str], None]


class FaultEngine:
    """Applies a :class:`FaultPlan` to ``device`` and fires the counted faults (see the module contract)."""

    def __init__(self, plan: FaultPlan, device: VirtioDevice, report: Report) -> None:
        self.plan = plan
        self.device = device
        self._report = report
        self.completed = 0
        self._last: dict[int, tuple[DeviceQueue, int]] = {}
        self._hung = False
        self._reset_fired = False

    def arm(self) -> None:
        """Set the model's switches (at the start of each connection)."""
        p, d = self.plan, self.device
        if p.delay_ms is not None:
            d.latency = p.delay_ms * MS
        d.faults.quiesce_never_completes = p.quiesce_never_ends
        d.faults.suspend_fails = p.suspend_fails
        d.faults.resume_fails = p.resume_fails
        self._hung = self._reset_fired = False
        d.faults.backend_hangs = False
        self.completed = 0
        self._last.clear()
        if p.specs:
            self._report("armed", ", ".join(p.specs))
        self._fire()

    def after_step(self) -> None:
        """Count the requests completed since the last call and fire what is due."""
        for i, q in enumerate(self.device.queues):
            last = self._last.get(i)
            if not q.ready:
                self._last.pop(i, None)
                continue
            if last is None or last[0] is not q:
                self._last[i] = (q, q.next_used)
                continue
            delta = (q.next_used - last[1]) & 0xFFFF
            if delta:
                self.completed += delta
                self._last[i] = (q, q.next_used)
        self._fire()

    def hang_now(self, why: str) -> None:
        """Wedge the backend from now on (``hang-on-sigusr2``; no effect without it or when already hung):
        no request completes any more on this connection; recorded as a fault event."""
        if not self.plan.hang_on_sigusr2 or self._hung:
            return
        self._hung = True
        self.device.faults.backend_hangs = True
        self._report("hang-on-sigusr2", f"backend wedged on {why}: no request completes any more")

    def _fire(self) -> None:
        p = self.plan
        if p.hang_after is not None and not self._hung and self.completed >= p.hang_after:
            self._hung = True
            self.device.faults.backend_hangs = True
            self._report("hang-after", f"backend wedged after {self.completed} completed requests")
        if (p.needs_reset_after is not None and not self._reset_fired and self.completed >= p.needs_reset_after
                and self.device.lifecycle is DeviceLifecycle.LIVE):
            self._reset_fired = True
            self.device.needs_reset(f"fault injection: needs-reset-after={p.needs_reset_after}")
            self._report("needs-reset-after", f"DEVICE_NEEDS_RESET after {self.completed} completed requests")


__all__ = ["FAULT_NAMES", "FaultEngine", "FaultPlan", "parse_fault"]
