"""The real-time adapter: a device scheduler on the wall clock and an event loop over sockets and eventfds.

Contract:

* :class:`RealTimeScheduler` is a :class:`~pyvirtio.host.context.DeviceScheduler` whose ``now`` is monotonic
  nanoseconds since it was created. A device model's step due ``delay`` ns from now runs when that much real
  time has passed (callbacks due at the same time run in scheduling order). It never sleeps by itself: the loop
  waits in ``select`` until the next step is due or a descriptor is readable (no busy waiting);
  :meth:`RealTimeScheduler.run_until` is the one place that waits for steps alone (draining a ring before
  GET_VRING_BASE answers), with a bound;
* :class:`EventLoop` calls a callback when a registered descriptor is readable and runs due steps after each
  wake-up. An exception raised by a callback or a step is logged as one line and the loop goes on: nothing a
  front-end or a guest sends stops the server;
* :meth:`EventLoop.stop_on_signals` makes SIGTERM/SIGINT end :meth:`EventLoop.run` promptly (main thread only).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import random
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterable
from types import FrameType

from pyvirtio.clock import Event

Log = Callable[[str], None]


def _drop(msg: str) -> None:  # the default log drops messages; the server passes its own
    del msg


class RealTimeScheduler:
    """Device time on the wall clock (ns since creation), with a seeded random source."""

    def __init__(self, seed: int = 0, log: Log = _drop) -> None:
        self._t0 = time.monotonic_ns()
        self.rng = random.Random(seed)
        self._queue: list[Event] = []
        self._seq = 0
        self._running = False
        self._log = log
        self.steps = 0  # callbacks run so far

    @property
    def now(self) -> int:
        """Nanoseconds since the scheduler was created."""
        return time.monotonic_ns() - self._t0

    def schedule(self, delay: int, callback: Callable[[], None], label: str = "") -> Event:
        """Run ``callback`` ``delay`` ns from now (``delay`` >= 0)."""
        if delay < 0:
            raise ValueError("cannot schedule in the past")
        self._seq += 1
        ev = Event(self.now + delay, self._seq, callback, label)
        heapq.heappush(self._queue, ev)
        return ev

    def pending(self) -> int:
        """Steps scheduled and not cancelled."""
        return sum(1 for e in self._queue if not e.cancelled)

    def _head(self) -> Event | None:
        while self._queue and self._queue[0].cancelled:
            heapq.heappop(self._queue)
        return self._queue[0] if self._queue else None

    def timeout(self) -> float | None:
        """Seconds until the next step is due (0.0 if one is due now), None when nothing is scheduled."""
        head = self._head()
        if head is None:
            return None
        return max(0.0, (head.when - self.now) / 1e9)

    def run_due(self) -> int:
        """Run every step due by now (steps they schedule for later wait for the next call). Returns how many."""
        limit = self.now
        ran = 0
        while True:
            head = self._head()
            if head is None or head.when > limit:
                return ran
            heapq.heappop(self._queue)
            ran += 1
            self.steps += 1
            try:
                head.callback()
            except Exception as e:  # a device step never takes the server down
                self._log(f"device step {head.label or '?'} failed: {e!r}")

    def run_until(self, predicate: Callable[[], bool], timeout: int) -> bool:
        """Run steps as they fall due until ``predicate()`` holds or ``timeout`` ns of real time pass; sleeps
        only until the next step. Not re-entrant (a step must not call it)."""
        if self._running:
            raise RuntimeError("RealTimeScheduler.run_until is not re-entrant")
        deadline = self.now + timeout
        self._running = True
        try:
            while True:
                self.run_due()
                if predicate():
                    return True
                head = self._head()
                now = self.now
                if now >= deadline:
                    return bool(predicate())
                wake = deadline if head is None else min(deadline, head.when)
                time.sleep(max(0, wake - now) / 1e9)
        finally:
            self._running = False


class EventLoop:
    """Readable descriptors and due scheduler steps, dispatched from one thread (see the module contract)."""

    def __init__(self, scheduler: RealTimeScheduler | None = None, log: Log = _drop) -> None:
        self.scheduler = scheduler
        self._sel = selectors.DefaultSelector()
        self._log = log
        self._stopping = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (replacing an earlier callback for ``fd``)."""
        with contextlib.suppress(KeyError):
            self._sel.unregister(fd)
        self._sel.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd`` (no effect if it was not watched)."""
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(fd)

    def watching(self, fd: int) -> bool:
        """Whether ``fd`` is registered."""
        try:
            self._sel.get_key(fd)
        except (KeyError, ValueError):
            return False
        return True

    def stop(self) -> None:
        """Make :meth:`run` return after the current iteration."""
        self._stopping = True
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"\0")

    @property
    def stopping(self) -> bool:
        """:meth:`stop` was called (or a stop signal arrived)."""
        return self._stopping

    def poll(self, timeout: float | None = 0.0) -> int:
        """Wait up to ``timeout`` seconds (None: forever) for readable descriptors and dispatch them once.
        Returns how many callbacks ran."""
        try:
            ready = self._sel.select(timeout)
        except (OSError, ValueError) as e:  # a descriptor was closed under us: drop the dead ones
            self._prune()
            self._log(f"select failed ({e}); dropped closed descriptors")
            return 0
        for key, _ in ready:
            if not self.watching(key.fd):  # an earlier callback removed it
                continue
            try:
                key.data()
            except Exception as e:  # never let one connection's error stop the server
                self._log(f"handler for descriptor {key.fd} failed: {e!r}")
        return len(ready)

    def _prune(self) -> None:
        for key in list(self._sel.get_map().values()):
            try:
                os.fstat(key.fd)
            except OSError:
                self.remove_reader(key.fd)

    def run(self, until: Callable[[], bool] = lambda: False) -> None:
        """Dispatch descriptors and scheduler steps until :meth:`stop` or ``until()`` is true."""
        self._stopping = False
        while not self._stopping and not until():
            timeout = self.scheduler.timeout() if self.scheduler is not None else None
            self.poll(timeout)
            if self.scheduler is not None:
                self.scheduler.run_due()

    def stop_on_signals(self, signums: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """End :meth:`run` promptly on these signals (installs handlers and a wake-up descriptor)."""
        if self._wake_r is None:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self.add_reader(self._wake_r.fileno(), self._drain_wake)

        def handler(signum: int, frame: FrameType | None) -> None:
            del signum, frame
            self.stop()

        for s in signums:
            signal.signal(s, handler)

    def _drain_wake(self) -> None:
        if self._wake_r is not None:
            with contextlib.suppress(OSError):
                self._wake_r.recv(64)

    def close(self) -> None:
        """Release the selector and the wake-up descriptors."""
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._wake_r = self._wake_w = None
        self._sel.close()


__all__ = ["EventLoop", "RealTimeScheduler"]
