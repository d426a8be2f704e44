"""One vhost-user connection: the back-end's protocol state machine, as data, over a served device.

Contract:

* :class:`Session` reads the front-end's socket without blocking, never past the message it is reading (so each
  message's descriptors arrive with it), decodes with :func:`~pyvirtio.vhost_user.messages.decode`, and looks
  each request up in :data:`HANDLERS`: the handler, whether it needs SET_OWNER first, which negotiated protocol
  feature it needs. Session state is data (owner, protocol features, the virtio features, the status byte, the
  rings of :mod:`pyvirtio.vhost_user.rings`, the memory map);
* every problem gets the protocol's answer: a request with a reply of its own gets an empty reply (the
  front-end sees a bad size: its error), any other request asking for a reply (REPLY_ACK, ``need_reply``) gets
  a non-zero u64; the problem is logged as one line and recorded by the monitor; the session goes on. Only a
  broken stream (a payload larger than allowed, a socket error) or the front-end's disconnect ends it;
* every descriptor received is kept by exactly one owner (a ring, the memory map's mapping, the back-end
  channel, an extension) or closed at once; :meth:`Session.close` releases all of them, unmaps the memory and
  resets the device model: nothing outlives the connection;
* after each request the runnable rings are started on the model (:class:`~pyvirtio.vhost_user.transport.
  ServedDevice`), and a start that fails is that request's error.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass

from pyvirtio.errors import QueueError
from pyvirtio.host.lifecycle import DeviceLifecycle
from pyvirtio.spec.constants import VIRTQ_MAX_SIZE, Status
from pyvirtio.vhost_user.catalog import Extension, Readers
from pyvirtio.vhost_user.memory import VhostMemory, close_fds
from pyvirtio.vhost_user.messages import (
    F_LOG_ALL,
    F_PROTOCOL_FEATURES,
    MAX_FDS,
    REQUESTS,
    U64,
    VHOST_FEATURE_BITS,
    VRING_F_LOG,
    VRING_IDX_MASK,
    VRING_NOFD,
    BackendRequest,
    ConfigSpace,
    Framer,
    FramingError,
    MemTable,
    Message,
    ProtocolError,
    ProtocolFeature,
    Request,
    SingleRegion,
    VringAddr,
    VringState,
    decode,
    encode,
    encode_reply,
    pack_config,
    pack_state,
    pack_u64,
    request_name,
)
from pyvirtio.vhost_user.monitor import Monitor
from pyvirtio.vhost_user.rings import Ring, RingEvent, RingPhase, next_phase
from pyvirtio.vhost_user.transport import ServedDevice

Log = Callable[[str], None]
_PF = ProtocolFeature
#: Protocol features the back-end always offers; CONFIG too when the device has a configuration space.
BASE_PROTOCOL_FEATURES = sum(1 << f for f in (_PF.MQ, _PF.REPLY_ACK, _PF.BACKEND_REQ, _PF.RESET_DEVICE,
                                              _PF.CONFIGURE_MEM_SLOTS, _PF.STATUS))
#: How long a reply may wait for room in the socket before the connection is given up.
SEND_TIMEOUT = 5.0
_EVENT = (1).to_bytes(8, "little")


@dataclass(frozen=True)
class Answer:
    """A handler's result: ``problem`` (None: served) and, for requests with a reply, its payload."""

    problem: str | None = None
    payload: bytes | None = None


_OK = Answer()


def _fail(problem: str) -> Answer:
    return Answer(problem)


def _fd_kind(fd: int) -> str | None:
    """``eventfd``, ``fifo``, ``socket`` or None (anything else, or a closed descriptor)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    if stat.S_ISFIFO(st.st_mode):
        return "fifo"
    if stat.S_ISSOCK(st.st_mode):
        return "socket"
    try:
        if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]":
            return "eventfd"
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class Handler:
    """How a request is served: the method, whether SET_OWNER must come first, the protocol feature it needs."""

    method: Callable[[Session, Message], Answer]
    owner: bool = True
    feature: ProtocolFeature | None = None


class Session:
    """One front-end connection (see the module contract)."""

    def __init__(self, sock: socket.socket, served: ServedDevice, monitor: Monitor, *, readers: Readers,
                 log: Log, extension: Extension | None = None, on_close: Callable[[Session], None] | None = None,
                 ) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.served = served
        self.memory: VhostMemory = served.ctx.memory
        self.monitor = monitor
        self.readers = readers
        self.log = log
        self.extension = extension
        self._on_close = on_close
        self.framer = Framer()
        self._fds: list[int] = []  # descriptors received with the message being read
        self.owner = False
        self.protocol_offer = BASE_PROTOCOL_FEATURES
        if served.device.config_size() or (extension is not None and Request.GET_CONFIG in extension.requests):
            self.protocol_offer |= 1 << _PF.CONFIG
        self.protocol: int | None = None  # negotiated protocol features (SET_PROTOCOL_FEATURES)
        self.vhost_features = 0  # the last SET_FEATURES, vhost bits included
        self.status = 0  # the front-end's status byte (SET_STATUS)
        self.rings = [Ring(i) for i in range(served.num_queues)]
        self.failed: dict[int, str] = {}  # ring -> why it could not start (until its configuration changes)
        self.backend: socket.socket | None = None
        self.closed = False
        self.dropped_calls = 0
        self.calls = 0  # used-buffer notifications sent
        self._taken: set[int] = set()  # descriptors the current handler kept
        served.ctx.notifier = self
        readers.add_reader(sock.fileno(), self.on_readable)

    # -- reading ----------------------------------------------------------------------------------------------

    def on_readable(self) -> None:
        """Read what the socket holds, a message at a time, and serve each whole one."""
        while not self.closed:
            need = self.framer.needed()
            try:
                data, fds, flags = self._recv(need)
            except BlockingIOError:
                return
            except OSError as e:
                self.close(f"socket error: {e.strerror or e}")
                return
            self._fds.extend(fds)
            if flags & socket.MSG_CTRUNC:
                self._problem("(socket)", "more descriptors than a message may carry: closing")
                self.close("descriptors truncated")
                return
            if not data:
                self.close("the front-end disconnected mid-message" if self.framer.mid_message
                           else "the front-end disconnected")
                return
            frame = self.framer.feed(data)
            if frame is None:
                continue
            if isinstance(frame, FramingError):
                self._problem(request_name(frame.header.request), frame.reason + ": closing the connection")
                self.close("broken stream")
                return
            fds_now, self._fds = tuple(self._fds), []
            reply = self.handle(decode(frame, fds_now))
            if reply is not None and not self._send(reply):
                return

    def _recv(self, need: int) -> tuple[bytes, list[int], int]:
        data, anc, flags, _ = self.sock.recvmsg(need, socket.CMSG_SPACE(MAX_FDS * 2 * 4))
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
                fds.extend(arr)
        return data, fds, flags

    def _send(self, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            try:
                n = self.sock.send(view)
            except BlockingIOError:
                _, writable, _ = select.select([], [self.sock], [], SEND_TIMEOUT)
                if not writable:
                    self.close("the front-end does not read its replies")
                    return False
                continue
            except OSError as e:
                self.close(f"cannot reply: {e.strerror or e}")
                return False
            view = view[n:]
        return True

    # -- serving ----------------------------------------------------------------------------------------------

    def _problem(self, request: str, problem: str) -> None:
        self.log(f"vhost-user {request}: {problem}")
        self.monitor.protocol_error(request, problem)

    def handle(self, item: Message | ProtocolError) -> bytes | None:
        """Serve one decoded request; the reply to send (None: none is due). Never raises."""
        if isinstance(item, ProtocolError):
            close_fds(item.fds)
            self.monitor.message(item.name)
            self._problem(item.name, item.reason)
            return self._reply(item.request, item.need_reply, _fail(item.reason))
        self.monitor.message(item.request.name)
        handler = HANDLERS.get(item.request)
        answer: Answer
        if handler is None:
            answer = _fail("not served by this device")
            if self.extension is not None and item.request in self.extension.requests:
                answer = self._extension(item)
            else:
                close_fds(item.fds)
        else:
            self._taken = set()
            if handler.owner and not self.owner:
                answer = _fail("sent before SET_OWNER")
            elif handler.feature is not None and not self._negotiated(handler.feature):
                answer = _fail(f"needs protocol feature {handler.feature.name}, not negotiated")
            else:
                try:
                    answer = handler.method(self, item)
                except Exception as e:  # a bug here must not end the server
                    answer = _fail(f"internal error: {e!r}")
            close_fds([fd for fd in item.fds if fd not in self._taken])
        if answer.problem is None:
            problem = self._reconcile()
            if problem is not None:
                answer = Answer(problem, answer.payload)
        if answer.problem is not None:
            self._problem(item.request.name, answer.problem)
        return self._reply(item.request, item.need_reply, answer)

    def _extension(self, msg: Message) -> Answer:
        assert self.extension is not None
        if not self.owner:
            close_fds(msg.fds)
            return _fail("sent before SET_OWNER")
        try:
            problem = self.extension.handle(msg)
        except Exception as e:
            problem = f"internal error: {e!r}"
        return Answer(problem)

    def _reply(self, request: int, need_reply: bool, answer: Answer) -> bytes | None:
        try:
            spec = REQUESTS.get(Request(request))
        except ValueError:
            spec = None
        if spec is not None and spec.reply:
            return encode_reply(request, answer.payload if answer.problem is None and answer.payload else b"")
        if need_reply:
            return encode_reply(request, pack_u64(0 if answer.problem is None else 1))
        return None

    def _negotiated(self, f: ProtocolFeature) -> bool:
        return self.protocol is not None and bool(self.protocol & (1 << f))

    def _take(self, fd: int) -> int:
        self._taken.add(fd)
        return fd

    def _ring(self, index: int, event: RingEvent) -> Ring | str:
        if not 0 <= index < len(self.rings):
            return f"vring index {index} out of range (the device has {len(self.rings)})"
        ring = self.rings[index]
        nxt = next_phase(ring.phase, event)
        if nxt is None:
            return f"vring {index} is {ring.phase.value}: its size, base and addresses are fixed until GET_VRING_BASE"
        return ring

    def _reconcile(self) -> str | None:
        """Start every runnable ring not running yet on the model; the first problem, if any."""
        problem = None
        for ring in self.rings:
            i = ring.index
            if not ring.runnable() or i in self.served.running or i in self.failed or not self.memory.mapped:
                continue
            why = self.served.start(ring)
            if why is not None:
                self.failed[i] = why
                problem = problem or why
            elif ring.kicked:
                ring.kicked = False
        return problem

    # -- handlers ---------------------------------------------------------------------------------------------

    def _get_features(self, msg: Message) -> Answer:
        return Answer(payload=pack_u64(self.served.offered() | (1 << F_PROTOCOL_FEATURES)))

    def _set_features(self, msg: Message) -> Answer:
        assert isinstance(msg.payload, U64)
        value = msg.payload.value
        if value & (1 << F_LOG_ALL):
            return _fail("VHOST_F_LOG_ALL (dirty logging) is not supported")
        virtio = value & ~VHOST_FEATURE_BITS
        if self.served.renegotiates(virtio):
            for ring in self.rings:
                if ring.index in self.served.running:
                    ring.base = self.served.stop(ring)
        self.vhost_features = value
        self.served.set_features(virtio)
        self.monitor.record.frontend["features"] = f"{value:#x}"
        return _OK

    def _set_owner(self, msg: Message) -> Answer:
        if self.owner:
            return _fail("second SET_OWNER on this connection")
        self.owner = True
        return _OK

    def _reset_owner(self, msg: Message) -> Answer:
        for ring in self.rings:  # deprecated: "either ignore this message, or use it to disable all rings"
            ring.enabled = False
        return _OK

    def _memory_changed(self) -> None:
        """The regions were replaced, added or removed: the model's ready queues resolved their rings to the old
        mappings (closed now), so they resolve them again; a ring no longer inside guest memory is the device's
        error (DEVICE_NEEDS_RESET), as for any unusable ring."""
        for q in self.served.device.queues:
            try:
                q.rebind()
            except QueueError as e:
                self.served.device.needs_reset(f"ring no longer in guest memory after a memory update: {e}")

    def _set_mem_table(self, msg: Message) -> Answer:
        assert isinstance(msg.payload, MemTable)
        problem = self.memory.set_table(msg.payload.regions, msg.fds)
        if problem is not None:
            return _fail(problem)
        self.failed.clear()
        self._memory_changed()
        self.monitor.record.frontend["memory"] = self.memory.describe()
        return _OK

    def _set_vring_num(self, msg: Message) -> Answer:
        assert isinstance(msg.payload, VringState)
        ring = self._ring(msg.payload.index, RingEvent.CONFIGURE)
        if isinstance(ring, str):
            return _fail(ring)
        n = msg.payload.num
        if not (1 <= n <= VIRTQ_MAX_SIZE and n & (n - 1) == 0):
            return _fail(f"vring {ring.index}: size {n} is not a power of 2 in 1..{VIRTQ_MAX_SIZE}")
        ring.num = n
        self.failed.pop(ring.index, None)
        return _OK

    def _set_vring_addr(self, msg: Message) -> Answer:
        a = msg.payload
        assert isinstance(a, VringAddr)
        ring = self._ring(a.index, RingEvent.CONFIGURE)
        if isinstance(ring, str):
            return _fail(ring)
        if a.flags & VRING_F_LOG:
            return _fail(f"vring {ring.index}: used-ring logging is not supported")
        if a.flags:
            return _fail(f"vring {ring.index}: unknown address flags {a.flags:#x}")
        if self.memory.mapped:
            for what, uva in (("descriptor table", a.desc), ("available ring", a.avail), ("used ring", a.used)):
                if self.memory.uva_to_gpa(uva, 1) is None:
                    return _fail(f"vring {ring.index}: {what} at user address {uva:#x} is outside every region")
        ring.desc, ring.used, ring.avail = a.desc, a.used, a.avail
        self.failed.pop(ring.index, None)
        return _OK

    def _set_vring_base(self, msg: Message) -> Answer:
        assert isinstance(msg.payload, VringState)
        ring = self._ring(msg.payload.index, RingEvent.CONFIGURE)
        if isinstance(ring, str):
            return _fail(ring)
        if msg.payload.num > 0xFFFF:
            return _fail(f"vring {ring.index}: base {msg.payload.num} does not fit a split ring's 16-bit index")
        ring.base = msg.payload.num
        self.failed.pop(ring.index, None)
        return _OK

    def _get_vring_base(self, msg: Message) -> Answer:
        assert isinstance(msg.payload, VringState)
        ring = self._ring(msg.payload.index, RingEvent.GET_BASE)
        if isinstance(ring, str):
            return _fail(ring)
        ring.base = self.served.stop(ring)
        ring.phase = RingPhase.STOPPED
        if ring.kick_fd is not None:  # stopped: the next start brings its own kick descriptor
            self.readers.remove_reader(ring.kick_fd)
            ring.set_kick(None)
        ring.kicked = False
        self.failed.pop(ring.index, None)
        return Answer(payload=pack_state(ring.index, ring.base))

    def _vring_fd(self, msg: Message, event: RingEvent) -> tuple[Ring, int | None] | str:
        assert isinstance(msg.payload, U64)
        v = msg.payload.value
        if v & ~(VRING_IDX_MASK | VRING_NOFD):
            return f"payload {v:#x} has bits beyond the ring index and the no-descriptor flag"
        ring = self._ring(v & VRING_IDX_MASK, event)
        if isinstance(ring, str):
            return ring
        if v & VRING_NOFD:
            return ring, None
        fd = msg.fds[0]
        # a socket too: UML's virtio_uml passes one end of a socketpair as the call descriptor (its os_pipe)
        if _fd_kind(fd) not in ("eventfd", "fifo", "socket"):
            return f"vring {ring.index}: descriptor is not an eventfd, a pipe or a socket"
        return ring, self._take(fd)

    def _set_vring_kick(self, msg: Message) -> Answer:
        if not self.memory.mapped:
            return _fail("a vring was started before any memory was set")
        got = self._vring_fd(msg, RingEvent.KICK_FD)
        if isinstance(got, str):
            return _fail(got)
        ring, fd = got
        if ring.kick_fd is not None:
            self.readers.remove_reader(ring.kick_fd)
        ring.set_kick(fd)
        ring.phase = RingPhase.STARTED
        if not self.vhost_features & (1 << F_PROTOCOL_FEATURES):
            ring.enabled = True  # "the ring starts directly in the enabled state"
        self.failed.pop(ring.index, None)
        ring.kick_eventfd = fd is not None and _fd_kind(fd) == "eventfd"
        if fd is None:
            self.monitor.note("ring", f"vring {ring.index}: no kick descriptor (polling is not supported: the ring "
                                      "is looked at when it starts or is enabled)")
        else:
            i = ring.index
            self.readers.add_reader(fd, lambda: self._on_kick(i))
        return _OK

    def _set_vring_call(self, msg: Message) -> Answer:
        got = self._vring_fd(msg, RingEvent.CALL_FD)
        if isinstance(got, str):
            return _fail(got)
        got[0].set_call(got[1])
        return _OK

    def _set_vring_err(self, msg: Message) -> Answer:
        got = self._vring_fd(msg, RingEvent.CALL_FD)
        if isinstance(got, str):
            return _fail(got)
        got[0].set_err(got[1])
        return _OK

    def _get_protocol_features(self, msg: Message) -> Answer:
        return Answer(payload=pack_u64(self.protocol_offer))

    def _set_protocol_features(self, msg: Message) -> Answer:
        assert isinstance(msg.payload, U64)
        extra = msg.payload.value & ~self.protocol_offer
        if extra:
            return _fail(f"protocol features {extra:#x} were not offered")
        self.protocol = msg.payload.value
        self.monitor.record.frontend["protocol_features"] = f"{self.protocol:#x}"
        return _OK

    def _get_queue_num(self, msg: Message) -> Answer:
        return Answer(payload=pack_u64(len(self.rings)))

    def _set_vring_enable(self, msg: Message) -> Answer:
        assert isinstance(msg.payload, VringState)
        if self.protocol is None and not self.vhost_features & (1 << F_PROTOCOL_FEATURES):
            return _fail("SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES negotiated")
        ring = self._ring(msg.payload.index, RingEvent.ENABLE)
        if isinstance(ring, str):
            return _fail(ring)
        if msg.payload.num not in (0, 1):
            return _fail(f"vring {ring.index}: enable value {msg.payload.num} (want 0 or 1)")
        ring.enabled = bool(msg.payload.num)
        if ring.enabled and ring.phase is RingPhase.STOPPED and self._negotiated(_PF.INBAND_NOTIFICATIONS):
            # In-band kicks (VRING_KICK messages): a front-end such as UML's virtio_uml sends no SET_VRING_KICK
            # at all, so enabling a configured ring is what starts it.
            ring.phase = RingPhase.STARTED
        if ring.enabled:
            ring.kicked = False
            self.served.resume(ring.index)
        else:
            self.served.pause(ring.index)
        return _OK

    def _set_backend_req_fd(self, msg: Message) -> Answer:
        fd = msg.fds[0]
        if _fd_kind(fd) != "socket":
            return _fail("the back-end channel descriptor is not a socket")
        if self.backend is not None:
            self.backend.close()
        self.backend = socket.socket(fileno=self._take(fd))
        self.backend.setblocking(False)
        return _OK

    def _get_config(self, msg: Message) -> Answer:
        c = msg.payload
        assert isinstance(c, ConfigSpace)
        data = self.served.read_config(c.offset, c.size)
        if isinstance(data, str):
            return _fail(data)
        return Answer(payload=pack_config(c.offset, data, c.flags))

    def _set_config(self, msg: Message) -> Answer:
        c = msg.payload
        assert isinstance(c, ConfigSpace)
        if c.flags not in (0, 1):
            return _fail(f"config flags {c.flags:#x} (want 0: a driver write, or 1: migration)")
        problem = self.served.write_config(c.offset, c.data)
        return _OK if problem is None else _fail(problem)

    def _reset_device(self, msg: Message) -> Answer:
        self._release_rings()
        self.served.reset()
        self.status = 0
        self.vhost_features = 0
        return _OK

    def _get_max_mem_slots(self, msg: Message) -> Answer:
        return Answer(payload=pack_u64(self.memory.max_slots))

    def _add_mem_reg(self, msg: Message) -> Answer:
        assert isinstance(msg.payload, SingleRegion)
        problem = self.memory.add(msg.payload.region, msg.fds[0])
        if problem is not None:
            return _fail(problem)
        self.failed.clear()
        self._memory_changed()
        self.monitor.record.frontend["memory"] = self.memory.describe()
        return _OK

    def _rem_mem_reg(self, msg: Message) -> Answer:
        assert isinstance(msg.payload, SingleRegion)
        problem = self.memory.remove(msg.payload.region)
        self._memory_changed()
        self.monitor.record.frontend["memory"] = self.memory.describe()
        return _OK if problem is None else _fail(problem)

    def _set_status(self, msg: Message) -> Answer:
        assert isinstance(msg.payload, U64)
        if msg.payload.value > 0xFF:
            return _fail(f"status {msg.payload.value:#x} is not a byte")
        self.status = msg.payload.value
        self.monitor.record.frontend.setdefault("status_writes", []).append(f"{self.status:#04x}")
        return _OK

    def _get_status(self, msg: Message) -> Answer:
        needs = Status.DEVICE_NEEDS_RESET if self.served.device.lifecycle is DeviceLifecycle.NEEDS_RESET else 0
        return Answer(payload=pack_u64(self.status | needs))

    # -- notifications (the served device's Notifier) ---------------------------------------------------------

    def _on_kick(self, i: int) -> None:
        ring = self.rings[i]
        fd = ring.kick_fd
        if fd is None:
            return
        try:
            data = os.read(fd, 8 if ring.kick_eventfd else 4096)
        except BlockingIOError:
            return
        except OSError as e:
            self.readers.remove_reader(fd)
            self._problem("SET_VRING_KICK", f"vring {i}: kick descriptor failed ({e.strerror or e}); no more kicks")
            return
        if not data:  # a pipe whose writer went away
            self.readers.remove_reader(fd)
            return
        if ring.phase is not RingPhase.STARTED:
            return
        if not ring.enabled:
            ring.kicked = True
            return
        self.served.kick(i)

    def call(self, queue: int) -> None:
        """Signal ``queue``'s call eventfd (a used-buffer notification)."""
        fd = self.rings[queue].call_fd if 0 <= queue < len(self.rings) else None
        if fd is None:
            self.dropped_calls += 1
            return
        try:
            os.write(fd, _EVENT)
            self.calls += 1
        except OSError:
            self.dropped_calls += 1

    def config_changed(self) -> None:
        """Send CONFIG_CHANGE_MSG on the back-end channel (when CONFIG and BACKEND_REQ were negotiated)."""
        if self.backend is None or not self._negotiated(_PF.CONFIG):
            return
        try:
            self.backend.send(encode(BackendRequest.CONFIG_CHANGE_MSG))
        except OSError as e:
            self.log(f"vhost-user back-end channel: {e.strerror or e}; closed")
            self.backend.close()
            self.backend = None

    def device_error(self) -> None:
        """DEVICE_NEEDS_RESET: signal every ring's error eventfd."""
        for ring in self.rings:
            if ring.err_fd is not None:
                with contextlib.suppress(OSError):
                    os.write(ring.err_fd, _EVENT)

    # -- the end ----------------------------------------------------------------------------------------------

    def _release_rings(self) -> None:
        for ring in self.rings:
            if ring.kick_fd is not None:
                self.readers.remove_reader(ring.kick_fd)
            ring.release()
        self.failed.clear()

    def close(self, why: str = "closed") -> None:
        """End the connection: every descriptor closed, the memory unmapped, the device model reset."""
        if self.closed:
            return
        self.closed = True
        self.log(f"vhost-user connection closed: {why}")
        self.monitor.note("connection", why)
        self.readers.remove_reader(self.sock.fileno())
        close_fds(self._fds)
        self._fds = []
        self._release_rings()
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        if self.extension is not None:
            with contextlib.suppress(Exception):
                self.extension.close()
        self.served.reset()
        self.served.ctx.notifier = _Silent()
        self.memory.clear()
        with contextlib.suppress(OSError):
            self.sock.close()
        if self._on_close is not None:
            self._on_close(self)


class _Silent:
    """The notifier after a connection closed."""

    def call(self, queue: int) -> None:
        del queue

    def config_changed(self) -> None:
        pass

    def device_error(self) -> None:
        pass


_P = _PF
#: Every request the core serves, as data.
HANDLERS: dict[Request, Handler] = {
    Request.GET_FEATURES: Handler(Session._get_features, owner=False),
    Request.SET_FEATURES: Handler(Session._set_features),
    Request.SET_OWNER: Handler(Session._set_owner, owner=False),
    Request.RESET_OWNER: Handler(Session._reset_owner),
    Request.SET_MEM_TABLE: Handler(Session._set_mem_table),
    Request.SET_VRING_NUM: Handler(Session._set_vring_num),
    Request.SET_VRING_ADDR: Handler(Session._set_vring_addr),
    Request.SET_VRING_BASE: Handler(Session._set_vring_base),
    Request.GET_VRING_BASE: Handler(Session._get_vring_base),
    Request.SET_VRING_KICK: Handler(Session._set_vring_kick),
    Request.SET_VRING_CALL: Handler(Session._set_vring_call),
    Request.SET_VRING_ERR: Handler(Session._set_vring_err),
    Request.GET_PROTOCOL_FEATURES: Handler(Session._get_protocol_features, owner=False),
    Request.SET_PROTOCOL_FEATURES: Handler(Session._set_protocol_features, owner=False),
    Request.GET_QUEUE_NUM: Handler(Session._get_queue_num, owner=False, feature=_P.MQ),
    Request.SET_VRING_ENABLE: Handler(Session._set_vring_enable),
    Request.SET_BACKEND_REQ_FD: Handler(Session._set_backend_req_fd, owner=False, feature=_P.BACKEND_REQ),
    Request.GET_CONFIG: Handler(Session._get_config, owner=False, feature=_P.CONFIG),
    Request.SET_CONFIG: Handler(Session._set_config, feature=_P.CONFIG),
    Request.RESET_DEVICE: Handler(Session._reset_device, feature=_P.RESET_DEVICE),
    Request.GET_MAX_MEM_SLOTS: Handler(Session._get_max_mem_slots, owner=False, feature=_P.CONFIGURE_MEM_SLOTS),
    Request.ADD_MEM_REG: Handler(Session._add_mem_reg, feature=_P.CONFIGURE_MEM_SLOTS),
    Request.REM_MEM_REG: Handler(Session._rem_mem_reg, feature=_P.CONFIGURE_MEM_SLOTS),
    Request.SET_STATUS: Handler(Session._set_status, feature=_P.STATUS),
    Request.GET_STATUS: Handler(Session._get_status, owner=False, feature=_P.STATUS),
}


__all__ = ["BASE_PROTOCOL_FEATURES", "HANDLERS", "Answer", "Handler", "Session"]
