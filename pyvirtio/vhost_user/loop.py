"""The real-time adapter: a device scheduler on the wall clock and an event loop over sockets and eventfds.

Contract:

* :class:`RealTimeScheduler` is a :class:`~pyvirtio.host.context.DeviceScheduler` whose ``now`` is monotonic
  nanoseconds since it was created. A device model's step due ``delay`` ns from now runs when that much real
  time has passed (callbacks due at the same time run in scheduling order). It never sleeps by itself: the loop
  waits in ``epoll`` until the next step is due or a descriptor is readable (no busy waiting; a step due in
  less than epoll's millisecond resolution is waited for with a sleep, so a short step is not stretched);
  :meth:`RealTimeScheduler.run_until` is the one place that waits for steps alone (draining a ring before
  GET_VRING_BASE answers), with a bound;
* :class:`EventLoop` calls a callback when a registered descriptor is readable and runs the due steps after
  each wake-up (also the steps those steps schedule for now, up to :data:`MAX_STEPS_PER_PASS`). An exception
  raised by a callback or a step is logged as one line and the loop goes on: nothing a front-end or a guest
  sends stops the server;
* :meth:`EventLoop.stop_on_signals` makes SIGTERM/SIGINT end :meth:`EventLoop.run` promptly (main thread only).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import random
import select
import signal
import socket
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from pyvirtio.clock import Event

Log = Callable[[str], None]
#: epoll's time-out granularity (milliseconds); steps due sooner are waited for with a sleep.
SELECT_RESOLUTION = 1e-3
#: Most device steps run between two looks at the descriptors.
MAX_STEPS_PER_PASS = 256


def _drop(msg: str) -> None:  # the default log drops messages; the server passes its own
    del msg


class RealTimeScheduler:
    """Device time on the wall clock (ns since creation), with a seeded random source."""

    def __init__(self, seed: int = 0, log: Log = _drop) -> None:
        self._t0 = time.monotonic_ns()
        self.rng = random.Random(seed)
        self._queue: list[tuple[int, int, Event]] = []  # (when, seq, event): plain tuples order fastest
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
        when = time.monotonic_ns() - self._t0 + delay
        ev = Event(when, self._seq, callback, label)
        heapq.heappush(self._queue, (when, self._seq, ev))
        return ev

    def pending(self) -> int:
        """Steps scheduled and not cancelled."""
        return sum(1 for _, _, e in self._queue if not e.cancelled)

    def _head(self) -> Event | None:
        q = self._queue
        while q and q[0][2].cancelled:
            heapq.heappop(q)
        return q[0][2] if q else None

    def timeout(self) -> float | None:
        """Seconds until the next step is due (0.0 if one is due now), None when nothing is scheduled."""
        head = self._head()
        if head is None:
            return None
        return max(0.0, (head.when - self.now) / 1e9)

    def run_due(self, limit: int = MAX_STEPS_PER_PASS) -> int:
        """Run every step due by now, including steps they schedule for now (at most ``limit`` steps, so
        descriptors are looked at again). Returns how many ran."""
        q = self._queue
        ran = 0
        while q and ran < limit:
            when, _, ev = q[0]
            if ev.cancelled:
                heapq.heappop(q)
                continue
            if when > time.monotonic_ns() - self._t0:
                break
            heapq.heappop(q)
            ran += 1
            try:
                ev.callback()
            except Exception as e:  # a device step never takes the server down
                self._log(f"device step {ev.label or '?'} failed: {e!r}")
        self.steps += ran
        return ran

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
        self._ep = select.epoll()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._log = log
        self._stopping = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._old_handlers: dict[int, Any] = {}

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (replacing an earlier callback for ``fd``)."""
        if fd in self._callbacks:
            with contextlib.suppress(OSError):
                self._ep.unregister(fd)
        self._ep.register(fd, select.EPOLLIN)
        self._callbacks[fd] = callback

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd`` (no effect if it was not watched)."""
        if self._callbacks.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(fd)

    def watching(self, fd: int) -> bool:
        """Whether ``fd`` is registered."""
        return fd in self._callbacks

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
            ready = self._ep.poll(-1 if timeout is None else timeout)
        except (OSError, ValueError) as e:
            self._prune()
            self._log(f"epoll failed ({e}); dropped closed descriptors")
            return 0
        ran = 0
        for fd, _ in ready:
            cb = self._callbacks.get(fd)  # an earlier callback may have removed it
            if cb is None:
                continue
            ran += 1
            try:
                cb()
            except Exception as e:  # never let one connection's error stop the server
                self._log(f"handler for descriptor {fd} failed: {e!r}")
        return ran

    def _prune(self) -> None:
        for fd in list(self._callbacks):
            try:
                os.fstat(fd)
            except OSError:
                self.remove_reader(fd)

    def run(self, until: Callable[[], bool] = lambda: False) -> None:
        """Dispatch descriptors and scheduler steps until :meth:`stop` or ``until()`` is true."""
        self._stopping = False
        sched = self.scheduler
        while not self._stopping and not until():
            timeout = sched.timeout() if sched is not None else None
            if timeout is not None and 0 < timeout < SELECT_RESOLUTION:
                time.sleep(timeout)  # epoll waits whole milliseconds: a closer step is slept for instead
                timeout = 0.0
            self.poll(timeout)
            if sched is not None:
                sched.run_due()

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
            self._old_handlers.setdefault(s, signal.signal(s, handler))

    def _drain_wake(self) -> None:
        if self._wake_r is not None:
            with contextlib.suppress(OSError):
                self._wake_r.recv(64)

    def close(self) -> None:
        """Release epoll and the wake-up descriptors; put back the signal handlers :meth:`stop_on_signals`
        replaced."""
        for signum, old in self._old_handlers.items():
            signal.signal(signum, old)
        self._old_handlers.clear()
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._wake_r = self._wake_w = None
        self._callbacks.clear()
        self._ep.close()


__all__ = ["EventLoop", "RealTimeScheduler"]
