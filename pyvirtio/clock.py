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


@dataclass(order=True)
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
        self._queue: list[Event] = []
        self._seq = 0
        self._running = False

    def schedule(self, delay: int, callback: Callable[[], None], label: str = "") -> Event:
        """Run ``callback`` ``delay`` ns from now (``delay`` >= 0)."""
        if delay < 0:
            raise ValueError("cannot schedule in the past")
        self._seq += 1
        ev = Event(self.now + delay, self._seq, callback, label)
        heapq.heappush(self._queue, ev)
        return ev

    def pending(self) -> int:
        """Number of scheduled events not cancelled."""
        return sum(1 for e in self._queue if not e.cancelled)

    def next_time(self) -> int | None:
        """Virtual time of the next event that will run, or None if nothing is scheduled."""
        while self._queue and self._queue[0].cancelled:
            heapq.heappop(self._queue)
        return self._queue[0].when if self._queue else None

    def step(self) -> bool:
        """Run the next event; False if there is none."""
        while self._queue:
            ev = heapq.heappop(self._queue)
            if ev.cancelled:
                continue
            self.now = ev.when
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
        try:
            while True:
                if predicate():
                    return True
                nxt = self.next_time()
                if nxt is None or nxt > deadline:
                    self.now = max(self.now, deadline)
                    return bool(predicate())
                self.step()
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
