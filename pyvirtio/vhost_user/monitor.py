"""The conformance monitor of a real driver behind a vhost-user front-end: every violation, with its statement.

Contract. A served device sees the guest driver only through guest memory (rings, descriptors, buffers) and the
features the front-end passes on. The monitor records, with the normative statement it concerns (ids of
``pyvirtio/spec/normative.toml``), the clause, the time since the connection started and the wall-clock time:

* every violation the device model itself detects and traces (chain validation, ring indices, ring layout,
  device-type rules such as "no device-readable buffer on the entropy queue", Device Suspend rules): the model's
  rule text is mapped to its statements by the table :data:`RULE_STATEMENTS`;
* what it checks on the ring itself at each kick: the driver's ``avail.flags`` (``drv:split/used-event#1/#2``);
* the driver's accepted features as SET_FEATURES carries them, judged with the tables and rules of
  :mod:`pyvirtio.conformance.driver_monitor` (reserved or undefined bits, feature dependencies).

It also keeps the protocol errors of the front-end, the faults injected and fired, the device status sequence
the served model presented, and notes. :meth:`ConnectionRecord.to_dict` is the JSON record of one connection;
:func:`summary_lines` the lines printed when it ends. The monitor never raises into the server.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyvirtio.conformance.driver_monitor import DEVICE_TYPE_FEATURES, FEATURE_DEPENDENCIES, RESERVED_FEATURES, Rule
from pyvirtio.spec.constants import VIRTQ_AVAIL_F_NO_INTERRUPT
from pyvirtio.trace import Kind, TraceEvent

#: Device-type feature ranges (bits 0..23 and 50..127, virtio 1.4 §2.2).
DEVICE_TYPE_RANGE = ((1 << 24) - 1) | (((1 << 128) - 1) & ~((1 << 50) - 1))
#: Findings kept in full per connection (all are counted).
MAX_FINDINGS = 1000
#: Trace events kept per connection (the most recent).
TRACE_TAIL = 2000


@dataclass(frozen=True)
class RuleMapping:
    """A device-model violation (its rule text starts with ``rule``; its ``error`` detail contains ``error``,
    when given) and the statements and clause it concerns."""

    rule: str
    error: str | None
    statements: tuple[str, ...]
    clause: str


_M = RuleMapping
#: The device models' violation rules and the driver statements they concern, most specific first. A rule
#: with no entry is reported with no statement id and its own text (never dropped).
RULE_STATEMENTS: tuple[RuleMapping, ...] = (
    _M("§2.7 malformed descriptor chain", "after a device-writable", ("drv:split/framing#1",), "2.7.4"),
    _M("§2.7 malformed descriptor chain", "loops", ("drv:split/desc#1",), "2.7.5"),
    _M("§2.7 malformed descriptor chain", "longer than 2^32", ("drv:split/desc#1",), "2.7.5"),
    _M("§2.7 malformed descriptor chain", "without VIRTIO_F_INDIRECT_DESC", ("drv:split/indirect#1",), "2.7.5.3.1"),
    _M("§2.7 malformed descriptor chain", "INDIRECT flag inside", ("drv:split/indirect#2",), "2.7.5.3.1"),
    _M("§2.7 malformed descriptor chain", "longer than queue size", ("drv:split/indirect#3",), "2.7.5.3.1"),
    _M("§2.7 malformed descriptor chain", "both INDIRECT and NEXT", ("drv:split/indirect#4",), "2.7.5.3.1"),
    _M("§2.7 malformed descriptor chain", "outside guest memory", ("drv:reserved-features#3",), "2.7.5"),
    _M("§2.7 malformed descriptor chain", None, (), "2.7.5"),
    _M("guest structure invalid", "ahead of next_avail", ("drv:split/avail#1",), "2.7.6"),
    _M("guest structure invalid", None, (), "2.7"),
    _M("§2.7 queue rings must be aligned", None, ("drv:split/alignment#1",), "2.7"),
    _M("§5.4.6.1 driver MUST NOT place device-readable buffers", None, ("drv:rng/operation#1",), "5.4.6.1"),
    _M("§2.2 driver MUST NOT accept a feature the device did not offer", None, ("drv:features#1",), "2.2.1"),
    _M("§2.2 driver MUST accept VERSION_1", None, ("drv:reserved-features#1",), "6.1"),
    _M("§2.2 driver MUST NOT accept new feature bits after FEATURES_OK", None, ("drv:init#3",), "3.1.1"),
    _M("§3.1.1 driver sets DRIVER_OK only after FEATURES_OK", None, ("drv:init#1",), "3.1.1"),
    _M("§2.1 driver MUST NOT clear a device status bit", None, ("drv:status#2",), "2.1.1"),
    _M("Device Suspend: device MUST ignore SUSPEND", None, ("drv:suspend#1",), "3.4.1"),
    _M("Device Suspend: driver MUST NOT write device config", None, ("drv:suspend#5",), "3.4.1"),
    _M("Device Suspend: driver MUST NOT send notifications", None, ("drv:suspend#4",), "3.4.1"),
)


def statements_for(rule: str, detail: dict[str, Any]) -> tuple[tuple[str, ...], str]:
    """The statements and clause a device-model violation concerns (empty ids when the table has no entry)."""
    error = str(detail.get("error", ""))
    for m in RULE_STATEMENTS:
        if rule.startswith(m.rule) and (m.error is None or m.error in error):
            return m.statements, m.clause
    return (), ""


@dataclass(frozen=True)
class Finding:
    """One violation: when (ns since the connection started; wall clock), what, where it was seen."""

    t_ns: int
    wall: float
    source: str  # "device-model", "ring", "features"
    rule: str
    statements: tuple[str, ...]
    clause: str
    device: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"t_s": round(self.t_ns / 1e9, 6), "time": _iso(self.wall), "source": self.source,
                "statements": list(self.statements), "clause": self.clause, "rule": self.rule,
                "device": self.device, "detail": {k: _jsonable(v) for k, v in self.detail.items()}}


@dataclass(frozen=True)
class Stamped:
    """A protocol error, a fault that fired or a note, with its times."""

    t_ns: int
    wall: float
    what: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"t_s": round(self.t_ns / 1e9, 6), "time": _iso(self.wall), "what": self.what, "text": self.text}


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall * 1000) % 1000:03d}Z"


def _jsonable(v: object) -> object:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return str(v)


@dataclass
class ConnectionRecord:
    """Everything the monitor learnt about one front-end connection."""

    index: int
    device: str
    started: float = field(default_factory=time.time)
    ended: float | None = None
    findings: list[Finding] = field(default_factory=list)
    counts: Counter[tuple[str, tuple[str, ...]]] = field(default_factory=Counter)
    protocol_errors: list[Stamped] = field(default_factory=list)
    faults: list[Stamped] = field(default_factory=list)
    notes: list[Stamped] = field(default_factory=list)
    status_sequence: list[int] = field(default_factory=list)
    messages: Counter[str] = field(default_factory=Counter)
    frontend: dict[str, Any] = field(default_factory=dict)
    device_stats: dict[str, Any] = field(default_factory=dict)
    trace_tail: deque[TraceEvent] = field(default_factory=lambda: deque(maxlen=TRACE_TAIL))

    @property
    def violations(self) -> int:
        """How many violations were found (all of them, beyond the ones kept in full)."""
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        """The connection's JSON record."""
        end = self.ended if self.ended is not None else time.time()
        return {
            "index": self.index, "device": self.device, "started": _iso(self.started), "ended": _iso(end),
            "duration_s": round(end - self.started, 3),
            "violations": [f.to_dict() for f in self.findings],
            "violation_counts": [{"rule": r, "statements": list(s), "count": n}
                                 for (r, s), n in sorted(self.counts.items())],
            "violations_total": self.violations,
            "protocol_errors": [p.to_dict() for p in self.protocol_errors],
            "faults": [f.to_dict() for f in self.faults],
            "notes": [n.to_dict() for n in self.notes],
            "device_status_sequence": [f"{s:#04x}" for s in self.status_sequence],
            "messages": dict(sorted(self.messages.items())),
            "frontend": self.frontend,
            "device_stats": self.device_stats,
        }


class Monitor:
    """Records findings for the current connection (see the module contract). ``now`` is the device clock."""

    def __init__(self, device: str, now: Callable[[], int], device_type: int | None = None) -> None:
        self.device = device
        self.device_type = device_type
        self._now = now
        self._t0 = now()
        self.record = ConnectionRecord(1, device)

    def begin(self, index: int) -> ConnectionRecord:
        """Start a new connection's record (times count from now)."""
        self._t0 = self._now()
        self.record = ConnectionRecord(index, self.device)
        return self.record

    def _t(self) -> int:
        return self._now() - self._t0

    # -- findings ---------------------------------------------------------------------------------------------

    def _find(self, source: str, rule: str, statements: tuple[str, ...], clause: str, detail: dict[str, Any]) -> None:
        rec = self.record
        rec.counts[(rule, statements)] += 1
        if len(rec.findings) < MAX_FINDINGS:
            rec.findings.append(Finding(self._t(), time.time(), source, rule, statements, clause, self.device,
                                        dict(detail)))

    def trace_event(self, ev: TraceEvent) -> None:
        """A trace event of the served device: violations become findings, status changes the sequence."""
        self.record.trace_tail.append(ev)
        if ev.kind is Kind.VIOLATION:
            rule = str(ev.detail.get("rule", "?"))
            detail = {k: v for k, v in ev.detail.items() if k != "rule"}
            ids, clause = statements_for(rule, detail)
            self._find("device-model", rule, ids, clause, detail)
        elif ev.kind is Kind.STATUS:
            self.record.status_sequence.append(int(ev.detail.get("status", 0)))

    def avail_flags(self, queue: int, flags: int, event_idx: bool) -> None:
        """Judge the driver's ``avail.flags`` as read at a kick (virtio 1.4 §2.7.7.2)."""
        if event_idx and flags != 0:
            self._find("ring", "driver MUST set avail.flags to 0 with VIRTIO_F_EVENT_IDX",
                       ("drv:split/used-event#2",), "2.7.7.2", {"queue": queue, "flags": flags})
        elif not event_idx and flags & ~VIRTQ_AVAIL_F_NO_INTERRUPT:
            self._find("ring", "driver MUST set avail.flags to 0 or 1 without VIRTIO_F_EVENT_IDX",
                       ("drv:split/used-event#1",), "2.7.7.2", {"queue": queue, "flags": flags})

    def features(self, accepted: int) -> None:
        """Judge the features the driver accepted, as SET_FEATURES carries them (vhost bits already removed)."""
        bad = accepted & RESERVED_FEATURES
        if self.device_type is not None and self.device_type in DEVICE_TYPE_FEATURES:
            bad |= accepted & DEVICE_TYPE_RANGE & ~DEVICE_TYPE_FEATURES[self.device_type]
        if bad:
            r = Rule.FEATURE_RESERVED
            self._find("features", r.text, r.ids, r.clause, {"bits": f"{bad:#x}", "accepted": f"{accepted:#x}"})
        for feat, needs in FEATURE_DEPENDENCIES.get(self.device_type if self.device_type is not None else -1, ()):
            if accepted & (1 << feat) and not accepted & (1 << needs):
                r = Rule.FEATURE_DEPENDENCY
                self._find("features", r.text, r.ids, r.clause, {"bit": int(feat), "needs": int(needs)})

    # -- the rest of the record -------------------------------------------------------------------------------

    def protocol_error(self, request: str, problem: str) -> None:
        """The front-end sent something the back-end could not serve."""
        self.record.protocol_errors.append(Stamped(self._t(), time.time(), request, problem))

    def fault(self, name: str, text: str) -> None:
        """A fault was armed or fired."""
        self.record.faults.append(Stamped(self._t(), time.time(), name, text))

    def note(self, what: str, text: str) -> None:
        """Something worth knowing that is neither a violation nor an error (a front-end quirk, a lost buffer)."""
        self.record.notes.append(Stamped(self._t(), time.time(), what, text))

    def message(self, name: str) -> None:
        """Count one front-end message."""
        self.record.messages[name] += 1


def summary_lines(rec: ConnectionRecord) -> list[str]:
    """What the CLI prints when a connection ends: one line, then one per distinct violation and error."""
    end = rec.ended if rec.ended is not None else time.time()
    stats = ", ".join(f"{k} {v}" for k, v in rec.device_stats.items())
    lines = [f"connection {rec.index} ({rec.device}) ended after {end - rec.started:.1f} s: "
             f"{sum(rec.messages.values())} messages, {rec.violations} violations, "
             f"{len(rec.protocol_errors)} protocol errors, {len(rec.faults)} fault events"
             + (f"; {stats}" if stats else "")]
    for (rule, ids), n in sorted(rec.counts.items()):
        lines.append(f"  violation x{n}: {rule} [{', '.join(ids) or 'no statement id'}]")
    for p in rec.protocol_errors[:20]:
        lines.append(f"  protocol error: {p.what}: {p.text}")
    if len(rec.protocol_errors) > 20:
        lines.append(f"  ... {len(rec.protocol_errors) - 20} more protocol errors")
    return lines


__all__ = ["RULE_STATEMENTS", "ConnectionRecord", "Finding", "Monitor", "RuleMapping", "Stamped",
           "statements_for", "summary_lines"]
