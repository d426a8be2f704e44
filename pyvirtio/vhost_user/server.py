"""The vhost-user server: a listening socket, one front-end at a time, the report, the Python API.

Contract:

* the socket appears atomically: bound and listening under a temporary name beside ``path``, then renamed onto
  it, so a front-end never sees a half-made socket. An existing ``path`` that is not a socket, or a socket
  someone still listens on, is a one-line :class:`~pyvirtio.errors.UserInputError` (nothing is clobbered); a
  stale socket file is replaced. On exit the socket file is removed if it is still the one we created;
* one connection at a time: while a front-end is connected nobody else is accepted. When it disconnects every
  descriptor it passed is closed, its memory unmapped, the device model reset; the server listens again, or
  ends with ``once``. The same model (same seed, same entropy stream) serves every connection;
* at the end of each connection the summary lines are printed (``out``) and, with ``report``, the JSON report
  of every connection so far is written atomically (:mod:`pyvirtio.atomicio`);
* :func:`serve` is the Python API; :class:`Server` lets a caller (a test, a benchmark) drive the loop itself
  or hand it an already-connected socket (:meth:`Server.attach`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyvirtio.atomicio import write_text_atomic
from pyvirtio.errors import UserInputError
from pyvirtio.vhost_user.backend import Session
from pyvirtio.vhost_user.catalog import SERVABLE, ExtensionHost, ServeSpec
from pyvirtio.vhost_user.faults import FaultEngine, FaultPlan, parse_fault
from pyvirtio.vhost_user.loop import EventLoop, RealTimeScheduler
from pyvirtio.vhost_user.memory import VhostMemory
from pyvirtio.vhost_user.monitor import ConnectionRecord, Monitor, summary_lines
from pyvirtio.vhost_user.transport import DrainScheduler, HookedScheduler, MonitorTrace, ServedDevice, VhostContext

Log = Callable[[str], None]
#: Longest AF_UNIX socket path (sun_path holds 108 bytes with the terminating NUL).
SOCKET_PATH_MAX = 107
REPORT_FORMAT = "pyvirtio-serve-report/1"


def _stderr(msg: str) -> None:
    print(f"pyvirtio serve: {msg}", file=sys.stderr, flush=True)


def _stdout(msg: str) -> None:
    print(msg, flush=True)


def _check_path(path: Path) -> None:
    if len(os.fsencode(path)) > SOCKET_PATH_MAX:
        raise UserInputError(f"--socket {path}: longer than {SOCKET_PATH_MAX} bytes (an AF_UNIX limit)")
    if not path.parent.is_dir():
        raise UserInputError(f"--socket {path}: directory {path.parent} does not exist")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UserInputError(f"--socket {path}: exists and is not a socket (not replaced)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except OSError:
        return  # stale: nobody listens
    finally:
        probe.close()
    raise UserInputError(f"--socket {path}: another process is listening on it")


def open_listener(path: Path) -> tuple[socket.socket, tuple[int, int]]:
    """Create the listening socket at ``path`` atomically; the socket and the file's (device, inode)."""
    path = Path(path)
    _check_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path.parent / f".pv{os.getpid()}.{time.monotonic_ns() % 100000}"
    try:
        if len(os.fsencode(tmp)) <= SOCKET_PATH_MAX:
            sock.bind(os.fspath(tmp))
            sock.listen(1)
            os.rename(tmp, path)
        else:  # no room for a temporary name: bind in place (the stale file is gone first)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            sock.bind(os.fspath(path))
            sock.listen(1)
    except OSError as e:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise UserInputError(f"--socket {path}: {e.strerror or e}") from None
    st = os.stat(path)
    sock.setblocking(False)
    return sock, (st.st_dev, st.st_ino)


class Server:
    """Serves one device model over vhost-user (see the module contract)."""

    def __init__(self, spec: ServeSpec | str, *, seed: int = 0, faults: FaultPlan | tuple[str, ...] = (),
                 once: bool = False, report: Path | None = None, log: Log = _stderr, out: Log = _stdout,
                 scheduler: DrainScheduler | None = None) -> None:
        if isinstance(spec, str):
            if spec not in SERVABLE:
                raise UserInputError(f"cannot serve {spec!r} (want one of {', '.join(SERVABLE)})")
            spec = SERVABLE[spec]
        self.spec = spec
        self.plan = faults if isinstance(faults, FaultPlan) else parse_fault(faults, spec.faults)
        self.seed = seed
        self.once = once
        self.report_path = report
        self.log = log
        self.out = out
        self.realtime = RealTimeScheduler(seed, log) if scheduler is None else None
        self.scheduler: DrainScheduler = scheduler if scheduler is not None else self.realtime  # type: ignore[assignment]
        self.loop = EventLoop(self.realtime, log)
        self.device = spec.make(seed)
        self.monitor = Monitor(spec.name, lambda: self.scheduler.now, int(self.device.device_id))
        self.engine = FaultEngine(self.plan, self.device, self.monitor.fault)
        self.memory = VhostMemory()
        device_clock: DrainScheduler = (HookedScheduler(self.scheduler, self.engine.after_step)
                                        if self.plan.counting else self.scheduler)
        self.trace = MonitorTrace(self.scheduler, self.monitor)
        self.ctx = VhostContext(self.memory, device_clock, self.trace)
        self.served = ServedDevice(self.device, self.ctx, self.monitor, policy=spec.policy, log=log)
        self.records: list[ConnectionRecord] = []
        self.session: Session | None = None
        self.listener: socket.socket | None = None
        self.path: Path | None = None
        self._ident: tuple[int, int] | None = None
        self.done = False

    # -- connections ------------------------------------------------------------------------------------------

    def listen(self, path: Path) -> None:
        """Create the socket at ``path`` and accept front-ends on it."""
        self.listener, self._ident = open_listener(Path(path))
        self.path = Path(path)
        self.loop.add_reader(self.listener.fileno(), self._accept)
        self.log(f"serving {self.spec.name} on {self.path}" + (f" (faults: {', '.join(self.plan.specs)})"
                                                              if self.plan.specs else ""))

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self.session is not None:  # one front-end at a time
            conn.close()
            return
        self.loop.remove_reader(self.listener.fileno())
        self.attach(conn)

    def attach(self, conn: socket.socket) -> Session:
        """Serve the front-end at the other end of ``conn`` (a connected AF_UNIX stream socket)."""
        rec = self.monitor.begin(len(self.records) + 1)
        self.records.append(rec)
        extension = None
        if self.spec.extension is not None:
            extension = self.spec.extension(ExtensionHost(self.device, self.loop, self.monitor, self.log,
                                                          self.plan, self.trace))
        self.engine.arm()
        self.session = Session(conn, self.served, self.monitor, readers=self.loop, log=self.log,
                               extension=extension, on_close=self._ended)
        self.log(f"front-end connected (connection {rec.index})")
        return self.session

    def _ended(self, session: Session) -> None:
        rec = self.monitor.record
        rec.ended = time.time()
        rec.device_stats = {**self.spec.stats(self.device), "notifications": session.calls}
        if self.plan.counting:
            rec.device_stats["requests_completed"] = self.engine.completed
        if session.dropped_calls:
            self.monitor.note("notifications", f"{session.dropped_calls} used-buffer notifications had no call "
                                               "descriptor")
        self.session = None
        for line in summary_lines(rec):
            self.out(line)
        self.write_report()
        if self.once:
            self.done = True
            self.loop.stop()
        elif self.listener is not None:
            self.loop.add_reader(self.listener.fileno(), self._accept)

    # -- running ----------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stopped (a signal, :meth:`EventLoop.stop`, or the end of the connection with ``once``)."""
        self.loop.run(until=lambda: self.done)

    def report(self) -> dict[str, Any]:
        """The JSON report of every connection so far."""
        conns = [r.to_dict() for r in self.records]
        return {
            "format": REPORT_FORMAT,
            "device": self.spec.name,
            "seed": self.seed,
            "socket": str(self.path) if self.path else None,
            "faults": list(self.plan.specs),
            "connections": conns,
            "totals": {"connections": len(conns), "violations": sum(r.violations for r in self.records),
                       "protocol_errors": sum(len(r.protocol_errors) for r in self.records)},
        }

    def write_report(self) -> None:
        """Write :meth:`report` to the report path atomically (if one was given)."""
        if self.report_path is not None:
            try:
                write_text_atomic(self.report_path, json.dumps(self.report(), indent=1) + "\n")
            except OSError as e:
                self.log(f"cannot write the report {self.report_path}: {e.strerror or e}")

    def close(self) -> None:
        """End the connection, remove the socket file (if still ours), release everything."""
        if self.session is not None:
            self.session.close("the server is stopping")
        if self.listener is not None:
            self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
            if self.path is not None and self._ident is not None:
                with contextlib.suppress(OSError):
                    st = os.stat(self.path)
                    if (st.st_dev, st.st_ino) == self._ident:
                        os.unlink(self.path)
        self.memory.clear()
        self.loop.close()


def serve(device: str | ServeSpec, socket_path: str | os.PathLike[str], *, seed: int = 0,
          faults: tuple[str, ...] | FaultPlan = (), once: bool = False, report: str | os.PathLike[str] | None = None,
          log: Log = _stderr, out: Log = _stdout, stop_on_signals: bool = True) -> list[ConnectionRecord]:
    """Serve ``device`` (a :data:`~pyvirtio.vhost_user.catalog.SERVABLE` name) on ``socket_path`` until SIGTERM or
    SIGINT (or the first connection's end with ``once``); the record of every connection. With ``--fault
    hang-on-sigusr2`` SIGUSR2 wedges the backend (:meth:`FaultEngine.hang_now`)."""
    server = Server(device, seed=seed, faults=faults, once=once, report=Path(report) if report else None, log=log,
                    out=out)
    if stop_on_signals:  # before the socket exists: a signal never finds it half-served
        server.loop.stop_on_signals()
    usr2 = stop_on_signals and server.plan.hang_on_sigusr2  # the trigger of --fault hang-on-sigusr2 (main thread)
    old_usr2 = signal.getsignal(signal.SIGUSR2)
    if usr2:
        signal.signal(signal.SIGUSR2, lambda _n, _f: server.engine.hang_now("SIGUSR2"))
    try:
        server.listen(Path(socket_path))
        server.run()
    finally:
        if usr2:
            signal.signal(signal.SIGUSR2, old_usr2 if old_usr2 is not None else signal.SIG_DFL)
        server.close()
        if server.path is not None:
            server.write_report()
    return server.records


__all__ = ["REPORT_FORMAT", "Server", "open_listener", "serve"]
