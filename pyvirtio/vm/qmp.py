"""A synchronous facade over ``qemu.qmp.QMPClient``, running its asyncio loop on a private thread.

Contract: every call has a time-out; every failure (an error reply, a closed socket, a time-out) is a one-line
:class:`~pyvirtio.vm.errors.VmError` (:class:`~pyvirtio.vm.errors.GuestTimeout` for time-outs) naming the
command. Events are kept in arrival order so a caller can wait for one that came after a given point.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError

from pyvirtio.vm.errors import GuestTimeout, VmError

T = TypeVar("T")


@dataclass(frozen=True)
class QmpEvent:
    """One QMP event and when it arrived (``time.monotonic()``)."""

    name: str
    data: dict[str, Any]
    at: float


@dataclass
class _State:
    events: list[QmpEvent] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)


def _accepts(path: Path) -> bool:
    """Whether a Unix socket accepts connections yet (keeps qemu.qmp from logging refused attempts)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


class Qmp:
    """QMP connection to one QEMU process. Every call has a time-out; events are recorded in order."""

    def __init__(self, name: str = "pyvirtio-vm") -> None:
        self._client = QMPClient(name)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{name}-qmp", daemon=True)
        self._thread.start()
        self._state = _State()
        self._listener = EventListener()
        self._pump_task: Any = None

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            fut.cancel()
            raise GuestTimeout(f"QMP {what} did not answer within {timeout:.0f} s") from None

    async def _pump(self) -> None:
        async for ev in self._listener:
            data = ev.get("data")
            rec = QmpEvent(str(ev["event"]), dict(data) if isinstance(data, dict) else {}, time.monotonic())
            with self._state.cond:
                self._state.events.append(rec)
                self._state.cond.notify_all()

    async def _connect(self, path: str) -> None:
        self._client.register_listener(self._listener)
        await self._client.connect(path)
        self._pump_task = asyncio.ensure_future(self._pump())

    def connect(self, path: Path, timeout: float, alive: Callable[[], bool]) -> None:
        """Connect to QEMU's QMP socket, retrying until it exists, ``alive()`` turns false, or time runs out."""
        deadline = time.monotonic() + timeout
        last = "socket not created"
        while time.monotonic() < deadline:
            if not alive():
                raise VmError(f"QEMU exited before its QMP socket {path} accepted a connection")
            if path.exists() and _accepts(path):
                try:
                    self._call(self._connect(str(path)), max(1.0, deadline - time.monotonic()), "connect")
                    return
                except (QMPError, OSError) as e:
                    last = str(e) or type(e).__name__
                    self._client = QMPClient(self._client.name)
                    self._listener = EventListener()
            time.sleep(0.05)
        raise GuestTimeout(f"cannot connect to QMP at {path} within {timeout:.0f} s: {last}")

    def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """Run a QMP command; :class:`VmError` on an error reply."""
        try:
            return self._call(self._client.execute(cmd, args), timeout, cmd)
        except ExecuteError as e:
            raise VmError(f"QMP {cmd} failed: {e}") from None
        except (QMPError, OSError, EOFError) as e:
            raise VmError(f"QMP {cmd} failed: {e or type(e).__name__}") from None

    def events_since(self, index: int) -> list[QmpEvent]:
        """The events received after the first ``index`` (see :meth:`event_count`)."""
        with self._state.cond:
            return list(self._state.events[index:])

    def event_count(self) -> int:
        """Number of events so far; pass to :meth:`wait_event` to wait only for later ones."""
        with self._state.cond:
            return len(self._state.events)

    def wait_event(self, name: str, timeout: float, since: int = 0,
                   alive: Callable[[], bool] | None = None) -> QmpEvent:
        """Wait for event ``name`` recorded at index ``since`` or later."""
        deadline = time.monotonic() + timeout
        with self._state.cond:
            while True:
                for ev in self._state.events[since:]:
                    if ev.name == name:
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GuestTimeout(f"no QMP {name} event within {timeout:.0f} s")
                if alive is not None and not alive():
                    raise VmError(f"QEMU exited while waiting for QMP {name}")
                self._state.cond.wait(min(left, 0.2))

    def quit(self, timeout: float = 10.0) -> None:
        """Ask QEMU to quit; the connection then drops (``EOFError`` from ``disconnect`` is expected)."""
        with contextlib.suppress(VmError, GuestTimeout):
            self.execute("quit", timeout=timeout)

    def close(self) -> None:
        """Disconnect and stop the loop thread. Safe to call more than once."""
        if not self._loop.is_running():
            return

        async def _down() -> None:
            with contextlib.suppress(EOFError, QMPError, OSError):
                await self._client.disconnect()
            if self._pump_task is not None:
                self._pump_task.cancel()

        with contextlib.suppress(GuestTimeout, EOFError, QMPError, OSError):
            self._call(_down(), 5.0, "disconnect")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._loop.is_running():
            self._loop.close()
