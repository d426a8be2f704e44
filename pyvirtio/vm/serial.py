"""A command/marker protocol over the guest's serial console.

Each command is sent as ``echo "@@PV""B<n>@@"; <cmd>; echo "@@PV""E<n>:$?@@"``. The shell echoes the typed
line with the quotes, so the echo can never match the markers the command prints (``@@PVB<n>@@`` and
``@@PVE<n>:<rc>@@``); the output is what lies between them. Transport-agnostic: bytes arrive through
:meth:`SerialConsole.feed` (a reader thread, or a test) and leave through the ``write`` callable.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pyvirtio.vm.errors import GuestTimeout, VmError

_ids = itertools.count(1)


@dataclass(frozen=True)
class Pending:
    """A command sent but not yet finished; wait for it on any console (the shell may survive a reboot, S4)."""

    ident: int
    command: str
    sent_at: float  # time.monotonic()
    begin_at: int  # buffer position when it was sent

    @property
    def begin(self) -> bytes:
        """The marker the shell prints when the command starts."""
        return b"@@PVB%d@@" % self.ident

    @property
    def end_re(self) -> re.Pattern[bytes]:
        """The marker the shell prints when the command ends, with its exit status as group 1."""
        return re.compile(rb"@@PVE%d:(\d+)@@" % self.ident)


@dataclass(frozen=True)
class CommandResult:
    """A finished command: exit status, output (CR stripped), and when the end marker arrived."""

    rc: int
    output: str
    finished_at: float

    def check(self, what: str) -> str:
        """The output, or a :class:`VmError` naming ``what`` if the command failed."""
        if self.rc != 0:
            tail = self.output.strip().splitlines()[-3:]
            raise VmError(f"guest command for {what} failed (exit {self.rc}): {' | '.join(tail)}")
        return self.output


class SerialConsole:
    """The guest's serial line: a growing byte buffer, pattern waits with time-outs, marked commands."""

    def __init__(self, write: Callable[[bytes], None], log: BinaryIO | None = None,
                 describe: Callable[[], str] | None = None) -> None:
        self._write = write
        self._log = log
        self._describe = describe or (lambda: "")
        self._buf = bytearray()
        self._eof = False
        self._cond = threading.Condition()

    def set_log(self, log: BinaryIO | None) -> None:
        """Copy received bytes to ``log`` from now on (``None``: stop)."""
        with self._cond:
            self._log = log

    # -- input side -------------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Append bytes received from the guest."""
        with self._cond:
            self._buf += data
            if self._log is not None:
                self._log.write(data)
                self._log.flush()
            self._cond.notify_all()

    def feed_eof(self) -> None:
        """The stream ended (QEMU exited)."""
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def eof(self) -> bool:
        """The stream has ended (QEMU exited)."""
        return self._eof

    def position(self) -> int:
        """Current end of the buffer; pass as ``start`` to wait only for what comes after now."""
        with self._cond:
            return len(self._buf)

    def text(self, start: int = 0) -> str:
        """Everything received from ``start`` on, decoded (invalid UTF-8 replaced)."""
        with self._cond:
            return bytes(self._buf[start:]).decode("utf-8", "replace")

    def tail(self, lines: int = 5) -> str:
        """The last few non-empty lines, for error messages."""
        got = [ln.strip() for ln in self.text().replace("\r", "").splitlines() if ln.strip()]
        return " | ".join(got[-lines:])

    def expect(self, pattern: bytes | re.Pattern[bytes], timeout: float, start: int = 0,
               what: str | None = None) -> re.Match[bytes]:
        """Wait until ``pattern`` appears at or after ``start``; :class:`GuestTimeout` if not in time."""
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self._buf, start)
                if m:
                    return m
                left = deadline - time.monotonic()
                if self._eof:
                    raise VmError(f"serial console closed (QEMU exited) while waiting for "
                                  f"{what or rx.pattern!r}; last output: {self.tail()}{self._describe()}")
                if left <= 0:
                    raise GuestTimeout(f"no {what or rx.pattern!r} from the guest within {timeout:.0f} s; "
                                       f"last output: {self.tail()}{self._describe()}")
                self._cond.wait(min(left, 0.5))

    # -- output side ------------------------------------------------------------------------------------------

    def send(self, text: str) -> None:
        """Type raw text (no newline added)."""
        self._write(text.encode())

    def start(self, command: str) -> Pending:
        """Send ``command`` wrapped in markers; returns at once."""
        if "\n" in command:
            raise ValueError("one line only")
        ident = next(_ids)
        pos = self.position()
        self.send(f'echo "@@PV""B{ident}@@"; {command}; echo "@@PV""E{ident}:$?@@"\n')
        return Pending(ident, command, time.monotonic(), pos)

    def wait(self, pending: Pending, timeout: float, start: int | None = None) -> CommandResult:
        """Wait for ``pending``'s end marker; ``start`` overrides where to look (another console: 0)."""
        begin_at = pending.begin_at if start is None else start
        end = self.expect(pending.end_re, timeout, begin_at, what=f"end of `{pending.command}`")
        finished = time.monotonic()
        with self._cond:
            chunk = bytes(self._buf[begin_at:end.start()])
        b = chunk.find(pending.begin)
        body = chunk[b + len(pending.begin):] if b >= 0 else b""
        text = body.decode("utf-8", "replace").replace("\r", "")
        return CommandResult(int(end.group(1)), text.strip("\n"), finished)

    def run(self, command: str, timeout: float = 30.0) -> CommandResult:
        """Send ``command`` and wait for it."""
        return self.wait(self.start(command), timeout)


def pump(stream: BinaryIO, console: SerialConsole) -> threading.Thread:
    """Start a daemon thread copying ``stream`` into ``console`` until EOF."""

    def loop() -> None:
        try:
            while True:
                data = stream.read1(65536) if hasattr(stream, "read1") else stream.read(4096)
                if not data:
                    break
                console.feed(data)
        except (OSError, ValueError):
            pass
        finally:
            console.feed_eof()

    t = threading.Thread(target=loop, name="pyvirtio-serial", daemon=True)
    t.start()
    return t


def open_log(path: Path) -> BinaryIO:
    """Append-mode log file for raw serial bytes."""
    return open(path, "ab")
