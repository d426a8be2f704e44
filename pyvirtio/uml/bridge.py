"""The bridge: UML's PCI bus served by pyvirtio — one vhost-user socket per slot, and optionally the calendar.

Contract:

* each plugged function gets a slot: a listening socket ``<dir>/pci<N>.sock`` (UML connects to it at boot, so it
  exists before the kernel starts) served by pyvirtio's vhost-user back-end core (:class:`~pyvirtio.vhost_user.
  backend.Session`) with the slot's :class:`~pyvirtio.uml.carrier.PciCarrier` as the device model; the
  kernel's accesses reach the function through a :class:`~pyvirtio.conformance.driver_monitor.DriverMonitor`,
  which checks the real driver against the driver statements;
* :attr:`Mode.REALTIME`: the kernel runs freely; pyvirtio's virtual clock follows the wall clock (device steps
  run when their time has come in real time); kicks and calls are eventfds and pipes;
* :attr:`Mode.TIME_TRAVEL`: the kernel runs under ``time-travel=ext`` with the bridge as its calendar
  (:mod:`pyvirtio.uml.calendar`) and with in-band notifications (VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS:
  kicks are VRING_KICK messages, calls are VRING_CALL messages on the back-end channel, each answered before
  anything else happens). pyvirtio's scheduler is the calendar: while the kernel waits, the device steps due
  before the time it asked for run in order, then it runs at exactly that time. The kernel may move its own
  clock up to pyvirtio's next step without asking (FREE_UNTIL, sent with RUN, and again inside a kick's answer
  when the kick scheduled an earlier step, acknowledged before the kick is); before serving a kick pyvirtio's
  clock catches up with the kernel's (its UPDATE). Everything happens in one total order, so the same kernel,
  initramfs, scenario and seed give the same register-level trace;
* a request on the cmd queue is served before the kick is acknowledged (time-travel) or in the same pass of the
  loop (real time), so the kernel's busy-poll (``max_delay_us``, 40 ms) finds its answer; every device step
  that took longer than :data:`READ_BUDGET_NS` of real time (a read arriving meanwhile waits for it) is counted
  in ``stats.slow_steps``;
* nothing the kernel sends raises out of the bridge: the back-end core, the carrier and the calendar answer bad
  input with the protocol's answer and record it.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from pyvirtio.clock import MS
from pyvirtio.conformance.driver_monitor import DriverMonitor
from pyvirtio.host.pci.function import VirtioPciFunction
from pyvirtio.uml.calendar import MESSAGE_SIZE, NEVER, Calendar, TtOp
from pyvirtio.uml.carrier import PciCarrier, WireRecord
from pyvirtio.uml.platform import UmlMachine
from pyvirtio.vhost_user.backend import Session
from pyvirtio.vhost_user.loop import EventLoop
from pyvirtio.vhost_user.messages import (
    FLAG_NEED_REPLY,
    HEADER,
    HEADER_SIZE,
    VERSION,
    BackendRequest,
    Message,
    ProtocolFeature,
    Request,
    VringState,
    encode,
    pack_state,
)
from pyvirtio.vhost_user.monitor import Monitor
from pyvirtio.vhost_user.rings import RingPhase
from pyvirtio.vhost_user.transport import MonitorTrace, ServedDevice, StopPolicy, VhostContext
from pyvirtio.vm.uml_kernel import PCI_OVER_VIRTIO_DEVICE_ID

Log = Callable[[str], None]
#: The kernel's busy-poll bound for a read (``um_pci_max_delay_us``): 40000 polls of 1 µs.
READ_BUDGET_NS = 40 * MS
#: Longest the bridge waits for the kernel's answer to a VRING_CALL (real time, seconds).
CALL_REPLY_TIMEOUT = 30.0
_INBAND = 1 << ProtocolFeature.INBAND_NOTIFICATIONS
_REPLY_ACK = 1 << ProtocolFeature.REPLY_ACK


class Mode(Enum):
    """How the kernel's time relates to pyvirtio's (see the module contract)."""

    REALTIME = "real-time"
    TIME_TRAVEL = "time-travel"


@dataclass
class Slot:
    """One PCI slot: the function, what the kernel's accesses go through, the carrier and its connection."""

    index: int
    fn: VirtioPciFunction
    watched: DriverMonitor
    carrier: PciCarrier
    served: ServedDevice
    monitor: Monitor
    path: Path
    listener: socket.socket
    session: Session | None = None


class _InbandKick:
    """The VRING_KICK request (in-band notification) of one connection, served as a back-end extension."""

    requests = frozenset({Request.VRING_KICK})

    def __init__(self, bridge: Bridge, slot: Slot) -> None:
        self.bridge = bridge
        self.slot = slot
        self.kicks = 0

    def handle(self, msg: Message) -> str | None:
        """Kick the ring named in the message, then run what is due now (the request is served before the ACK)."""
        state = msg.payload
        if not isinstance(state, VringState):
            return "VRING_KICK without a vring state"
        session = self.slot.session
        if session is None or not 0 <= state.index < len(session.rings):
            return f"VRING_KICK of vring {state.index}, which does not exist"
        ring = session.rings[state.index]
        self.kicks += 1
        for hook in self.bridge.before_kick:
            hook()
        self.bridge.catch_up()
        if ring.phase is not RingPhase.STARTED or not ring.enabled:
            ring.kicked = True
            return None
        self.slot.served.kick(state.index)
        self.bridge.settle()
        self.bridge.tighten()
        return None

    def close(self) -> None:
        """Nothing to release."""


class _Notifier:
    """A slot's notifications: in-band VRING_CALL messages when negotiated, else the core's eventfds."""

    def __init__(self, bridge: Bridge, session: Session) -> None:
        self.bridge = bridge
        self.session = session

    def _inband(self) -> bool:
        p = self.session.protocol
        return p is not None and bool(p & _INBAND)

    def call(self, queue: int) -> None:
        """A used-buffer notification for ``queue``."""
        if not self._inband():
            self.session.call(queue)
            return
        self.bridge.inband_call(self.session, queue)

    def config_changed(self) -> None:
        """Configuration change: the core's back-end message (the carrier has no configuration)."""
        self.session.config_changed()

    def device_error(self) -> None:
        """DEVICE_NEEDS_RESET of the carrier: the core's error eventfds."""
        self.session.device_error()


@dataclass
class BridgeStats:
    """What the bridge counted."""

    passes: int = 0
    steps: int = 0
    runs_granted: int = 0
    inband_calls: int = 0
    max_step_ns: int = 0  # real time the longest device step took (the kernel's reads wait behind it)
    slow_steps: int = 0  # steps longer than the kernel's read budget (40 ms)
    idle_forever_at: int | None = None
    calendar_problems: list[str] = field(default_factory=list)
    calendar_end: str = ""  # the kernel's calendar state when the bridge closed


class Bridge:
    """UML's PCI bus, served (see the module contract)."""

    def __init__(self, machine: UmlMachine, directory: Path, *, mode: Mode = Mode.TIME_TRAVEL,
                 log: Log = lambda _m: None, step_hooks: list[Callable[[], None]] | None = None) -> None:
        self.machine = machine
        self.dir = Path(directory)
        self.mode = mode
        self.log = log
        self.loop = EventLoop(None, log)
        self.slots: list[Slot] = []
        self.wire: list[WireRecord] = []
        self.stats = BridgeStats()
        self.step_hooks = step_hooks if step_hooks is not None else []
        #: run before a kick is served (the runner reads the console there, so lines keep their order)
        self.before_kick: list[Callable[[], None]] = []
        self.calendar = Calendar() if mode is Mode.TIME_TRAVEL else None
        self._cal_listener: socket.socket | None = None
        self._cal: socket.socket | None = None
        self._cal_buf = b""
        self._t0 = time.monotonic_ns()
        #: the kernel's time as last known (a RUN we granted, an UPDATE it sent): pyvirtio's clock never
        #: answers below it
        self._floor = 0
        self._free_until: int | None = None  # the FREE_UNTIL the kernel has (None: it asks for every advance)
        self.free_running = True
        self._settling = False
        if mode is Mode.TIME_TRAVEL:
            self._cal_listener = self._listen(self.calendar_path)
            self.loop.add_reader(self._cal_listener.fileno(), self._accept_calendar)

    # -- set-up -------------------------------------------------------------------------------------------------

    @property
    def calendar_path(self) -> Path:
        """The time-travel socket (time-travel mode)."""
        return self.dir / "tt.sock"

    def _listen(self, path: Path) -> socket.socket:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(os.fspath(path))
        s.listen(1)
        s.setblocking(False)
        return s

    def add(self, fn: VirtioPciFunction) -> Slot:
        """Give ``fn`` the next slot: its socket listens from now on."""
        i = len(self.slots)
        watched = DriverMonitor(fn, name=fn.name)  # reads the capability list once, before the kernel does
        carrier = PciCarrier(i, watched, self.wire.append)
        monitor = Monitor(carrier.name, lambda: self.machine.now, PCI_OVER_VIRTIO_DEVICE_ID)
        monitor.begin(1)
        ctx = VhostContext(self.machine.vhost_memory, self.machine.scheduler, MonitorTrace(self.machine.scheduler,
                                                                                           monitor))
        served = ServedDevice(carrier, ctx, monitor, policy=StopPolicy.KEEP, log=self.log)
        path = self.dir / f"pci{i}.sock"
        slot = Slot(i, fn, watched, carrier, served, monitor, path, self._listen(path))
        self.machine.attach_carrier(fn, carrier)
        self.loop.add_reader(slot.listener.fileno(), lambda: self._accept(slot))
        self.slots.append(slot)
        return slot

    def kernel_args(self) -> list[str]:
        """The kernel command-line arguments that connect UML to the slots (and to the calendar)."""
        args = [f"virtio_uml.device={self._relative(s.path)}:{PCI_OVER_VIRTIO_DEVICE_ID}" for s in self.slots]
        if self.mode is Mode.TIME_TRAVEL:
            args.append(f"time-travel=ext:{self._relative(self.calendar_path)}")
        return args

    def _relative(self, path: Path) -> str:
        """``path`` relative to the run directory, which is the kernel's working directory: the command line, and
        so the kernel's early allocations, must not depend on where the run directory is."""
        return os.fspath(path.relative_to(self.dir))

    def _accept(self, slot: Slot) -> None:
        try:
            conn, _ = slot.listener.accept()
        except BlockingIOError:
            return
        if slot.session is not None:
            conn.close()
            return
        ext = _InbandKick(self, slot)
        session = Session(conn, slot.served, slot.monitor, readers=self.loop, log=self.log, extension=ext,
                          on_close=lambda _s: None)
        if self.mode is Mode.TIME_TRAVEL:
            session.protocol_offer |= _INBAND
        slot.served.ctx.notifier = _Notifier(self, session)
        slot.session = session
        self.log(f"slot {slot.index}: the kernel connected")

    # -- the calendar ---------------------------------------------------------------------------------------------

    def _accept_calendar(self) -> None:
        assert self._cal_listener is not None
        try:
            conn, _ = self._cal_listener.accept()
        except BlockingIOError:
            return
        if self._cal is not None:
            conn.close()
            return
        conn.setblocking(True)
        self._cal = conn
        self.loop.add_reader(conn.fileno(), self._read_calendar)

    def _read_calendar(self) -> None:
        """Read and answer what the kernel sent the calendar (never blocks for more than one message)."""
        cal, conn = self.calendar, self._cal
        if cal is None or conn is None:
            return
        try:
            data = conn.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(conn.fileno())
            self._cal = None
            return
        self._cal_buf += data
        while len(self._cal_buf) >= MESSAGE_SIZE:
            raw, self._cal_buf = self._cal_buf[:MESSAGE_SIZE], self._cal_buf[MESSAGE_SIZE:]
            first = int.from_bytes(raw[:4], "little")
            reply = cal.handle(raw, self.kernel_now())
            if first == TtOp.UPDATE:
                self._floor = max(self._floor, cal.reported)
            if reply is None:
                continue
            if first == TtOp.START:
                self._send_start_ack(conn, reply)
            else:
                conn.sendall(reply)

    def _send_start_ack(self, conn: socket.socket, reply: bytes) -> None:
        """The START ACK passes two descriptors (UML reads them unconditionally and maps the first as the
        optional shared-memory scheduler): ``/dev/null`` twice, which it cannot map, so it runs without."""
        fds = [os.open(os.devnull, os.O_RDONLY), os.open(os.devnull, os.O_RDONLY)]
        try:
            conn.sendmsg([reply], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        finally:
            for fd in fds:
                os.close(fd)

    # -- time -----------------------------------------------------------------------------------------------------

    def kernel_now(self) -> int:
        """The time the calendar tells the kernel: pyvirtio's clock, never below the kernel's own."""
        return max(self.machine.now, self._floor)

    def catch_up(self) -> None:
        """Bring pyvirtio's clock to the kernel's (after it ran freely): steps due by then run first."""
        sched = self.machine.scheduler
        while True:
            nxt = sched.next_time()
            if nxt is None or nxt > self._floor:
                break
            self._step()
        sched.now = max(sched.now, self._floor)

    def tighten(self) -> None:
        """If pyvirtio now has a step before the kernel's FREE_UNTIL, send the earlier one and wait for its ACK
        (the kernel is waiting for an answer and reads it first), so it never runs past the step."""
        conn, cal = self._cal, self.calendar
        nxt = self.machine.scheduler.next_time()
        if conn is None or cal is None or self._free_until is None or nxt is None or nxt >= self._free_until:
            return
        seq, msg = cal.free_until(nxt)
        self._free_until = nxt
        conn.sendall(msg)
        deadline = time.monotonic() + CALL_REPLY_TIMEOUT
        while cal.acked != seq and self._cal is not None and time.monotonic() < deadline:
            readable, _, _ = select.select([self._cal], [], [], 0.5)
            if readable:
                self._read_calendar()

    def _step(self) -> bool:
        sched = self.machine.scheduler
        t0 = time.monotonic_ns()
        ran = sched.step()
        if ran:
            self.stats.steps += 1
            for hook in self.step_hooks:
                hook()
            spent = time.monotonic_ns() - t0
            self.stats.max_step_ns = max(self.stats.max_step_ns, spent)
            if spent > READ_BUDGET_NS:
                self.stats.slow_steps += 1
        return ran

    def settle(self) -> None:
        """Run every step due by now (what a kick set off), in order. Not re-entrant: a step that kicks again
        leaves the new work to the running pass."""
        if self._settling:
            return
        self._settling = True
        try:
            sched = self.machine.scheduler
            while True:
                nxt = sched.next_time()
                if nxt is None or nxt > sched.now:
                    return
                self._step()
        finally:
            self._settling = False

    def _advance_realtime(self) -> None:
        sched = self.machine.scheduler
        target = time.monotonic_ns() - self._t0
        while True:
            nxt = sched.next_time()
            if nxt is None or nxt > target:
                break
            self._step()
        sched.now = max(sched.now, target)

    def _calendar_turn(self) -> bool:
        """If the kernel waits: run our next due step, or let it run. Whether anything happened."""
        cal, conn = self.calendar, self._cal
        if cal is None or conn is None or not cal.waiting:
            return False
        sched = self.machine.scheduler
        at = cal.runnable_at
        nxt = sched.next_time()
        if nxt is not None and (at is None or nxt <= at):
            self._step()
            return True
        if at is None:
            if self.stats.idle_forever_at is None:
                self.stats.idle_forever_at = sched.now
            return False
        self.stats.idle_forever_at = None
        sched.now = max(sched.now, at)
        self._floor = max(self._floor, sched.now)
        if self.free_running:
            nxt = sched.next_time()
            until = nxt if nxt is not None else NEVER
            conn.sendall(cal.free_until(until)[1])
            self._free_until = until
        conn.sendall(cal.grant(sched.now))
        self.stats.runs_granted += 1
        return True

    def inband_call(self, session: Session, queue: int) -> None:
        """Send VRING_CALL for ``queue`` on the back-end channel and, when REPLY_ACK was negotiated, wait for the
        kernel's answer while answering the calendar: the interrupt is in the kernel's event list before
        anything else happens."""
        backend = session.backend
        if backend is None:
            session.dropped_calls += 1
            return
        need = session.protocol is not None and bool(session.protocol & _REPLY_ACK)
        msg = encode(BackendRequest.VRING_CALL, pack_state(queue, 0), VERSION | (FLAG_NEED_REPLY if need else 0))
        try:
            backend.setblocking(True)
            backend.sendall(msg)
        except OSError as e:
            self.log(f"VRING_CALL not sent: {e.strerror or e}")
            session.dropped_calls += 1
            return
        finally:
            with contextlib.suppress(OSError):
                backend.setblocking(False)
        self.stats.inband_calls += 1
        session.calls += 1
        if need:
            self._await_reply(backend)

    def _await_reply(self, backend: socket.socket) -> None:
        buf = b""
        deadline = time.monotonic() + CALL_REPLY_TIMEOUT
        while True:
            want = HEADER_SIZE if len(buf) < HEADER_SIZE else HEADER_SIZE + HEADER.unpack_from(buf)[2]
            if len(buf) >= want and len(buf) >= HEADER_SIZE:
                return
            watch = [backend] + ([self._cal] if self._cal is not None else [])
            left = deadline - time.monotonic()
            if left <= 0:
                self.log("the kernel did not answer a VRING_CALL")
                return
            readable, _, _ = select.select(watch, [], [], left)
            if self._cal is not None and self._cal in readable:
                self._read_calendar()
            if backend in readable:
                try:
                    chunk = backend.recv(want - len(buf))
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self, until: Callable[[], bool], *, timeout: float, extra: Callable[[], None] | None = None) -> bool:
        """Serve until ``until()`` holds (True) or ``timeout`` seconds of real time pass (False). ``extra`` runs
        once per pass (the runner reads the console there)."""
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() >= deadline:
                return False
            self.run_once(extra)
        return True

    def run_once(self, extra: Callable[[], None] | None = None, *, wait: float = 0.05) -> None:
        """One pass of the loop: time moves (real time: to now; time travel: one calendar turn), then the
        descriptors that are ready are served (waiting at most ``wait`` seconds when nothing else is to do)."""
        if self.mode is Mode.REALTIME:
            self._advance_realtime()
            nxt = self.machine.scheduler.next_time()
            w = wait if nxt is None else max(0.0, min(wait, (nxt - self.machine.now) / 1e9))
            self.loop.poll(w)
            self.settle()
        elif self._calendar_turn():
            self.loop.poll(0.0)
        else:
            self.loop.poll(wait)
        if extra is not None:
            extra()
        self.stats.passes += 1

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Watch another descriptor in the loop (the console)."""
        self.loop.add_reader(fd, callback)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd``."""
        self.loop.remove_reader(fd)

    def close(self) -> None:
        """Close every connection and socket; the sockets' files are removed."""
        if self.calendar is not None:
            c = self.calendar
            self.stats.calendar_problems = list(c.problems)
            self.stats.calendar_end = (f"waiting={c.waiting} request={c.request} free_until={self._free_until} "
                                       f"now={self.machine.now} floor={self._floor} counts={c.counts}")
        for s in self.slots:
            if s.session is not None:
                s.session.close("the run ended")
            with contextlib.suppress(OSError):
                s.listener.close()
            with contextlib.suppress(OSError):
                os.unlink(s.path)
        for sock in (self._cal, self._cal_listener):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.calendar_path)
        self.loop.close()


__all__ = ["CALL_REPLY_TIMEOUT", "READ_BUDGET_NS", "Bridge", "BridgeStats", "Mode", "Slot"]
