"""A virtual clock and a seeded, deterministic event scheduler.

Time is an integer count of nanoseconds that only moves when the scheduler runs an event. Events at the same
time run in the order they were scheduled. Devices draw any randomness (latency jitter) from ``rng``, seeded by
the machine, so the same inputs always give the same trace.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

NS = 1
US = 1_000
MS = 1_000_000
S = 1_000_000_000


@dataclass(order=True, slots=True)
class Event:
    """A scheduled callback; events order by ``(when, seq)``, so equal times run in scheduling order."""

    when: int
    seq: int
    callback: Callable[[], None] = field(compare=False)
    label: str = field(default="", compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        """Keep the callback from running; the event is dropped when it reaches the head of the queue."""
        self.cancelled = True


class Scheduler:
    """Runs callbacks at virtual times. Not re-entrant: a callback must not call ``run_until``."""

    def __init__(self, seed: int = 0) -> None:
        self.now = 0
        self.seed = seed
        self.rng = random.Random(seed)
        # (when, seq, event): the heap compares plain tuples of ints (seq is unique, so never the events)
        self._queue: list[tuple[int, int, Event]] = []
        self._seq = 0
        self._running = False

    def schedule(self, delay: int, callback: Callable[[], None], label: str = "") -> Event:
        """Run ``callback`` ``delay`` ns from now (``delay`` >= 0)."""
        if delay < 0:
            raise ValueError("cannot schedule in the past")
        self._seq = seq = self._seq + 1
        when = self.now + delay
        ev = Event(when, seq, callback, label)
        heapq.heappush(self._queue, (when, seq, ev))
        return ev

    def pending(self) -> int:
        """Number of scheduled events not cancelled."""
        return sum(1 for _, _, e in self._queue if not e.cancelled)

    def next_time(self) -> int | None:
        """Virtual time of the next event that will run, or None if nothing is scheduled."""
        q = self._queue
        while q and q[0][2].cancelled:
            heapq.heappop(q)
        return q[0][0] if q else None

    def step(self) -> bool:
        """Run the next event; False if there is none."""
        q = self._queue
        while q:
            when, _, ev = heapq.heappop(q)
            if ev.cancelled:
                continue
            self.now = when
            ev.callback()
            return True
        return False

    def run_until(self, predicate: Callable[[], bool], timeout: int) -> bool:
        """Run events until ``predicate()`` holds or ``timeout`` ns of virtual time pass.

        Returns whether the predicate held. When it times out the clock stands exactly at the deadline, which is
        what a polling driver would observe. The predicate is checked before the first event.
        """
        if self._running:
            raise RuntimeError("Scheduler.run_until is not re-entrant")
        deadline = self.now + timeout
        self._running = True
        q = self._queue
        heappop = heapq.heappop
        try:
            while True:
                if predicate():
                    return True
                # next_time() and step(), inline: drop cancelled events, stop past the deadline, else run the next
                while q and q[0][2].cancelled:
                    heappop(q)
                if not q or q[0][0] > deadline:
                    self.now = max(self.now, deadline)
                    return bool(predicate())
                when, _, ev = heappop(q)
                self.now = when
                ev.callback()
        finally:
            self._running = False

    def run_for(self, duration: int) -> None:
        """Advance the clock by ``duration`` ns, running every event due in that window."""
        deadline = self.now + duration
        self.run_until(lambda: False, duration)
        self.now = deadline

    def run_idle(self, limit: int = 10 * S) -> None:
        """Run until nothing is scheduled (or ``limit`` ns pass)."""
        self.run_until(lambda: self.next_time() is None, limit)
