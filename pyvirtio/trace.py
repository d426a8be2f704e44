"""The machine's trace: every register access, status change and interrupt, in virtual-time order."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


def dedup(values: Iterable[int]) -> list[int]:
    """Drop consecutive repeats (how status sequences are compared, model and real VM alike)."""
    out: list[int] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out


class Kind(Enum):
    """What a :class:`TraceEvent` records."""

    CONFIG_READ = "config_read"
    CONFIG_WRITE = "config_write"
    BAR_READ = "bar_read"
    BAR_WRITE = "bar_write"
    STATUS = "status"  # the device status a device now presents
    INTERRUPT = "interrupt"
    RESET = "reset"
    QUEUE = "queue"  # queue enabled / reset / error
    VIOLATION = "violation"  # a guest broke a normative rule; the device gave the spec's answer
    PM = "pm"  # power-management step (machine or guest)
    DEVICE = "device"  # device-specific event (gpu command, resource destroyed, ...)


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One trace entry: virtual time ``t`` (ns), its kind, the source device or component, and details."""

    t: int
    kind: Kind
    src: str
    detail: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        det = " ".join(f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v}" for k, v in self.detail.items())
        return f"{self.t:>14} {self.kind.value:<12} {self.src:<10} {det}"


class Trace:
    """Append-only list of :class:`TraceEvent`. ``register_accesses=False`` keeps only the coarse kinds.

    Recording is cheap: :meth:`record` keeps the event's fields, and they become :class:`TraceEvent` objects, in
    order, the first time :attr:`events` is read after it (the list is the same whenever it is read)."""

    def __init__(self, clock: Any, *, register_accesses: bool = True) -> None:
        self._clock = clock
        self._events: list[TraceEvent] = []
        self._recorded: list[tuple[int, Kind, str, dict[str, Any]]] = []  # not made TraceEvents yet
        self.register_accesses = register_accesses

    @property
    def events(self) -> list[TraceEvent]:
        """Every event recorded, in order."""
        if self._recorded:
            recorded, self._recorded = self._recorded, []
            self._events.extend([TraceEvent(t, kind, src, detail) for t, kind, src, detail in recorded])
        return self._events

    @events.setter
    def events(self, value: list[TraceEvent]) -> None:
        self._recorded = []
        self._events = value

    def record(self, kind: Kind, src: str, /, **detail: Any) -> None:
        """Append an event at the clock's current time (register accesses dropped if not kept)."""
        # (a tuple: membership by identity, without hashing the enum member in Python)
        if not self.register_accesses and kind in _REGISTER_TUPLE:
            return
        self._recorded.append((self._clock.now, kind, src, detail))

    def __iter__(self) -> Iterator[TraceEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def select(self, kind: Kind | None = None, src: str | None = None) -> list[TraceEvent]:
        """Events of ``kind`` from ``src`` in order; None matches any."""
        return [e for e in self.events if (kind is None or e.kind is kind) and (src is None or e.src == src)]

    def status_sequence(self, src: str, since: int = 0) -> list[int]:
        """The device-status values ``src`` presented (from event index ``since``), without consecutive repeats."""
        return dedup(int(e.detail["status"]) for e in self.events[since:]
                     if e.kind is Kind.STATUS and e.src == src)

    def violations(self, src: str | None = None) -> list[TraceEvent]:
        """The :attr:`Kind.VIOLATION` events (of ``src``, if given): normative rules a guest broke."""
        return self.select(Kind.VIOLATION, src)


_REGISTER_KINDS = frozenset({Kind.CONFIG_READ, Kind.CONFIG_WRITE, Kind.BAR_READ, Kind.BAR_WRITE})
_REGISTER_TUPLE = (Kind.CONFIG_READ, Kind.CONFIG_WRITE, Kind.BAR_READ, Kind.BAR_WRITE)
