"""The time-travel calendar UML's ``time-travel=ext`` talks to (``include/uapi/linux/um_timetravel.h``), as data.

With ``time-travel=ext:<socket>`` the kernel's clock is virtual and advances only when a calendar grants it: the
kernel asks to run at a time (REQUEST), says it waits (WAIT), and runs again when the calendar sends RUN with
the time. pyvirtio's scheduler is that calendar: its virtual clock is the kernel's clock, its device steps run
while the kernel waits, in time order with the kernel's own request.

Contract. A message is ``{u32 op; u32 seq; u64 time}``. :class:`Calendar` consumes the kernel's messages one at a
time (:meth:`Calendar.handle`) and returns the reply to send: an ACK echoing ``seq`` (GET and GET_TOD carry the
time, the START reply carries the client id). It keeps the kernel's state as data: started or not, the time it
asked to run at (:attr:`Calendar.request`), whether it is waiting for RUN (:attr:`Calendar.waiting`). It never
raises on what the kernel sends: an unknown or malformed message is kept in :attr:`Calendar.problems` and
answered with an ACK (the kernel's side panics on a missing ACK). :meth:`Calendar.grant` makes the RUN message
once the caller has run its own steps up to the requested time; :meth:`Calendar.free_until` makes a FREE_UNTIL
message (the kernel may then advance its own clock without asking, up to that time: the calendar's next own
step), and :attr:`Calendar.acked` is the last of our messages the kernel acknowledged. The caller sends
FREE_UNTIL only where the kernel is known to read it before going on (with RUN, or while it waits for an answer
and the caller waits for the ACK), so the co-simulation stays one total order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

MESSAGE = struct.Struct("<IIQ")
MESSAGE_SIZE = MESSAGE.size
#: The kernel asks for S64_MAX when it has nothing to wake up for; anything this far away means "never".
NEVER = (1 << 62)
#: Time of day (ns since the epoch) at virtual time 0: fixed, so runs are repeatable (2026-01-01T00:00:00Z).
DEFAULT_TOD = 1_767_225_600 * 1_000_000_000


class TtOp(IntEnum):
    """``enum um_timetravel_ops``."""

    ACK = 0
    START = 1
    REQUEST = 2
    WAIT = 3
    GET = 4
    UPDATE = 5
    RUN = 6
    FREE_UNTIL = 7
    GET_TOD = 8
    BROADCAST = 9


def pack(op: TtOp, seq: int, time: int) -> bytes:
    """One message."""
    return MESSAGE.pack(int(op), seq & 0xFFFFFFFF, time & 0xFFFFFFFFFFFFFFFF)


@dataclass
class Calendar:
    """One client (the UML kernel) of the calendar (see the module contract)."""

    tod: int = DEFAULT_TOD
    started: bool = False
    client_id: int = 0
    request: int | None = None
    waiting: bool = False
    #: the time the kernel last reported (UPDATE)
    reported: int = 0
    broadcasts: list[int] = field(default_factory=list)
    #: sequence number of the last of our messages (RUN, FREE_UNTIL) the kernel acknowledged
    acked: int = 0
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    _seq: int = 0

    def handle(self, raw: bytes, now: int) -> bytes | None:
        """Consume one message of the kernel (``raw``, :data:`MESSAGE_SIZE` bytes) at calendar time ``now``; the
        reply to send, or None (the kernel's ACK of our RUN needs none)."""
        if len(raw) != MESSAGE_SIZE:
            self.problems.append(f"message of {len(raw)} bytes (want {MESSAGE_SIZE})")
            return None
        op, seq, t = MESSAGE.unpack(raw)
        try:
            kind = TtOp(op)
        except ValueError:
            self.problems.append(f"unknown operation {op}")
            return pack(TtOp.ACK, seq, 0)
        self.counts[kind.name] = self.counts.get(kind.name, 0) + 1
        if kind is TtOp.ACK:
            self.acked = seq
            return None
        if kind is TtOp.START:
            self.started = True
            self.client_id = t
            return pack(TtOp.ACK, seq, 0)
        if not self.started:
            self.problems.append(f"{kind.name} before START")
        if kind is TtOp.REQUEST:
            self.request = t
        elif kind is TtOp.WAIT:
            self.waiting = True
        elif kind is TtOp.GET:
            return pack(TtOp.ACK, seq, now)
        elif kind is TtOp.GET_TOD:
            return pack(TtOp.ACK, seq, self.tod + now)
        elif kind is TtOp.UPDATE:
            if t < now:
                self.problems.append(f"UPDATE to {t} ns while the calendar is at {now} ns")
            self.reported = t
        elif kind is TtOp.BROADCAST:
            self.broadcasts.append(t)
        else:  # RUN and FREE_UNTIL go from the calendar to the kernel
            self.problems.append(f"{kind.name} sent by the kernel")
        return pack(TtOp.ACK, seq, 0)

    @property
    def runnable_at(self) -> int | None:
        """When the waiting kernel wants to run (None: it is running, or it waits for nothing but interrupts)."""
        if not self.waiting or self.request is None or self.request >= NEVER:
            return None
        return self.request

    def grant(self, at: int) -> bytes:
        """The RUN message letting the waiting kernel run at ``at``; it is running from now on."""
        self.waiting = False
        self.request = None
        self._seq += 1
        return pack(TtOp.RUN, self._seq, at)

    def free_until(self, until: int) -> tuple[int, bytes]:
        """A FREE_UNTIL message (the kernel may run without asking up to ``until``) and its sequence number."""
        self._seq += 1
        return self._seq, pack(TtOp.FREE_UNTIL, self._seq, until)


__all__ = ["DEFAULT_TOD", "MESSAGE", "MESSAGE_SIZE", "NEVER", "Calendar", "TtOp", "pack"]
