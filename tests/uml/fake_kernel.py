"""A fake UML kernel for tests: virtio_uml's vhost-user front-end and virt-pci's two queues, in Python.

It connects to a bridge slot's socket, negotiates as Linux 6.12's ``virtio_uml`` does (SET_OWNER, features,
protocol features masked to REPLY_ACK | BACKEND_REQ | CONFIG | INBAND_NOTIFICATIONS, the back-end channel,
SET_MEM_TABLE with one memfd region whose guest and user addresses are equal, then per queue CALL, NUM, BASE,
ADDR, KICK, ENABLE), posts irq buffers like ``um_pci_init_vqs`` and sends cmd-queue requests. The bridge runs in
the same thread: every step pumps it (:meth:`FakeKernel.pump`) until the expected answer is there.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import socket
import threading

from pyvirtio.dma import GuestAllocator
from pyvirtio.memory import Backing, GuestMemory
from pyvirtio.spec.constants import Feature, bit
from pyvirtio.uml.bridge import Bridge
from pyvirtio.uml.wire import HEADER, IRQ_MESSAGE_SIZE, Op
from pyvirtio.vhost_user.messages import (
    F_PROTOCOL_FEATURES,
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HEADER_SIZE,
    VERSION,
    Header,
    MemRegion,
    ProtocolFeature,
    Request,
    VringAddr,
    encode,
    pack_addr,
    pack_state,
    pack_table,
    pack_u64,
)
from pyvirtio.virtqueue.driver import DriverQueue
from pyvirtio.virtqueue.layout import RingLayout

MEM_SIZE = 4 << 20
HEAP = 1 << 20
RING = 64
_PF = ProtocolFeature
UML_PROTOCOL = (1 << _PF.REPLY_ACK) | (1 << _PF.BACKEND_REQ) | (1 << _PF.CONFIG) | (1 << _PF.INBAND_NOTIFICATIONS)


class FakeKernel:
    """One virt-pci device of a fake UML kernel, connected to ``bridge``'s slot ``slot``."""

    def __init__(self, bridge: Bridge, slot: int = 0, *, inband: bool = False) -> None:
        self.bridge = bridge
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(os.fspath(bridge.slots[slot].path))
        self.sock.setblocking(False)
        self.mem = GuestMemory(MEM_SIZE, backing=Backing.MEMFD)
        self.alloc = GuestAllocator(self.mem, HEAP, MEM_SIZE - HEAP)
        self.inband = inband
        self.queues: list[DriverQueue] = []
        self.kicks: list[int] = []
        self.calls: list[int] = []
        self.backend: socket.socket | None = None
        self.protocol = 0
        self.irq_tokens = 0
        self.backend_log: list[tuple[Header, bytes]] = []
        self._stop = threading.Event()
        self._responder: threading.Thread | None = None

    # -- plumbing ---------------------------------------------------------------------------------------------

    def pump(self, until: object = None, timeout: float = 5.0) -> bool:
        """Run the bridge until ``until()`` (a callable) holds, or once when None."""
        if until is None:
            for _ in range(3):
                self.bridge.run_once(wait=0.0)
            return True
        assert callable(until)
        return self.bridge.run(until, timeout=timeout)

    def _readable(self) -> bool:
        try:
            return len(self.sock.recv(HEADER_SIZE, socket.MSG_PEEK)) >= HEADER_SIZE
        except BlockingIOError:
            return False

    def send(self, request: int, payload: bytes = b"", fds: list[int] | tuple[int, ...] = (),
             need_reply: bool = False, flags: int | None = None) -> None:
        """One request, as it is."""
        f = VERSION | (FLAG_NEED_REPLY if need_reply else 0) if flags is None else flags
        data = encode(request, payload, f)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([data], anc)

    def reply(self) -> tuple[Header, bytes]:
        """Wait (pumping the bridge) for the next reply."""
        assert self.pump(self._readable), "no reply from the bridge"
        h = Header.unpack(self.sock.recv(HEADER_SIZE))
        payload = self.sock.recv(h.size) if h.size else b""
        assert h.flags == VERSION | FLAG_REPLY, h  # virtio_uml checks flags == 0x5 exactly
        return h, payload

    def request(self, request: int, payload: bytes = b"", fds: list[int] | tuple[int, ...] = ()) -> int | None:
        """Send; with REPLY_ACK negotiated wait for the ACK and return it (None otherwise), as vhost_user_send."""
        ack = bool(self.protocol & (1 << _PF.REPLY_ACK))
        self.send(request, payload, fds, need_reply=ack)
        if not ack:
            self.pump()
            return None
        _, p = self.reply()
        return int.from_bytes(p, "little")

    # -- virtio_uml's start -----------------------------------------------------------------------------------

    def start(self) -> None:
        """The whole negotiation and both queues, then the irq buffers."""
        self.send(Request.SET_OWNER)
        self.send(Request.GET_FEATURES)
        _, p = self.reply()
        features = int.from_bytes(p, "little")
        assert features & (1 << F_PROTOCOL_FEATURES) and features & bit(Feature.VERSION_1)
        self.send(Request.GET_PROTOCOL_FEATURES)
        _, p = self.reply()
        mask = UML_PROTOCOL if self.inband else UML_PROTOCOL & ~(1 << _PF.INBAND_NOTIFICATIONS)
        self.protocol = int.from_bytes(p, "little") & mask
        self.send(Request.SET_PROTOCOL_FEATURES, pack_u64(self.protocol), need_reply=True)
        self.reply()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.backend = mine
        assert self.request(Request.SET_BACKEND_REQ_FD, b"", [theirs.fileno()]) == 0
        theirs.close()
        # virtio_uml answers back-end requests from its SIGIO handler, whatever the kernel is doing: a thread here
        self._responder = threading.Thread(target=self._respond, daemon=True)
        self._responder.start()
        assert self.request(Request.SET_FEATURES, pack_u64(bit(Feature.VERSION_1) | (1 << F_PROTOCOL_FEATURES))) == 0
        fd = self.mem.regions[0].fd
        assert self.request(Request.SET_MEM_TABLE, pack_table([MemRegion(0, MEM_SIZE, 0, 0)]), [fd]) == 0
        for i in range(2):
            lay = RingLayout.contiguous(self.alloc.alloc(RingLayout.contiguous(0, RING).total_bytes, 4096), RING)
            q = DriverQueue(self.mem, lay, event_idx=False, indirect=False, alloc=self.alloc)
            self.queues.append(q)
            if not self.inband:
                r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                self.calls.append(r)
                assert self.request(Request.SET_VRING_CALL, pack_u64(i), [w]) == 0
                os.close(w)
            assert self.request(Request.SET_VRING_NUM, pack_state(i, RING)) == 0
            assert self.request(Request.SET_VRING_BASE, pack_state(i, 0)) == 0
            assert self.request(Request.SET_VRING_ADDR, pack_addr(VringAddr(i, 0, lay.desc, lay.used, lay.avail,
                                                                           (1 << 64) - 1))) == 0
        for i in range(2):
            if not self.inband:
                k = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self.kicks.append(k)
                assert self.request(Request.SET_VRING_KICK, pack_u64(i), [k]) == 0
            assert self.request(Request.SET_VRING_ENABLE, pack_state(i, 1)) == 0
        for _ in range(10):
            self.post_irq_buffer()
        self.kick(1)

    def post_irq_buffer(self) -> None:
        """One 20-byte irq buffer (``um_pci_irq_vq_addbuf``)."""
        addr = self.alloc.alloc(IRQ_MESSAGE_SIZE)
        self.queues[1].add([], [(addr, IRQ_MESSAGE_SIZE)], ("irq", addr))

    def kick(self, i: int) -> None:
        """Notify queue ``i`` (eventfd, or VRING_KICK when in-band)."""
        if self.inband:
            assert self.request(Request.VRING_KICK, pack_state(i, 0)) == 0
        else:
            os.eventfd_write(self.kicks[i], 1)
            self.pump()

    # -- virt-pci ---------------------------------------------------------------------------------------------

    def command(self, raw: bytes, reply_len: int = 0, *, extra: bytes | None = None) -> tuple[int, bytes]:
        """Send one cmd-queue request (``raw`` readable, ``reply_len`` writable) and wait for it: (used len, reply)."""
        q = self.queues[0]
        out = [(self.alloc.alloc_bytes(raw), len(raw))] if raw else []
        if extra is not None:
            out.append((self.alloc.alloc_bytes(extra), len(extra)))
        in_addr = self.alloc.alloc(reply_len) if reply_len else 0
        if reply_len:
            self.mem.write(in_addr, b"\xff" * reply_len)
        token = object()
        q.add(out, [(in_addr, reply_len)] if reply_len else [], token)
        self.kick(0)
        got: list[tuple[object, int]] = []

        def done() -> bool:
            got.extend(q.drain_used())
            return any(t is token for t, _ in got)

        assert self.pump(done), "the bridge did not answer the request"
        n = next(n for t, n in got if t is token)
        return n, self.mem.read(in_addr, reply_len) if reply_len else b""

    def cfg_read(self, offset: int, size: int) -> int:
        """CFG_READ as ``um_pci_cfgspace_read`` sends it (8-byte reply buffer)."""
        n, data = self.command(HEADER.pack(Op.CFG_READ, 0, 0, size, offset), 8)
        assert n == size
        return int.from_bytes(data[:size], "little")

    def cfg_write(self, offset: int, size: int, value: int) -> None:
        """CFG_WRITE as ``um_pci_cfgspace_write`` sends it (one 24-byte buffer)."""
        self.command(HEADER.pack(Op.CFG_WRITE, 0, 0, size, offset) + value.to_bytes(8, "little"))

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        """MMIO_READ."""
        n, data = self.command(HEADER.pack(Op.MMIO_READ, bar, 0, size, offset), size)
        assert n == size
        return int.from_bytes(data, "little")

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        """MMIO_WRITE (posted: header and data in one buffer)."""
        self.command(HEADER.pack(Op.MMIO_WRITE, bar, 0, size, offset) + value.to_bytes(size, "little"))

    def irqs(self) -> list[bytes]:
        """The irq messages the device has put into our buffers so far (the buffers are reposted)."""
        out = []
        for token, n in self.queues[1].drain_used():
            assert isinstance(token, tuple)
            out.append(self.mem.read(token[1], n))
            self.queues[1].add([], [(token[1], IRQ_MESSAGE_SIZE)], token)
        return out

    def _respond(self) -> None:
        assert self.backend is not None
        buf = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.backend], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = self.backend.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while len(buf) >= HEADER_SIZE:
                h = Header.unpack(buf[:HEADER_SIZE])
                if len(buf) < HEADER_SIZE + h.size:
                    break
                payload, buf = buf[HEADER_SIZE:HEADER_SIZE + h.size], buf[HEADER_SIZE + h.size:]
                self.backend_log.append((h, payload))
                if h.flags & FLAG_NEED_REPLY:
                    self.backend.sendall(encode(h.request, pack_u64(0), VERSION | FLAG_REPLY))

    def backend_messages(self) -> list[tuple[Header, bytes]]:
        """Messages the bridge sent on the back-end channel so far (NEED_REPLY ones were answered with 0)."""
        return list(self.backend_log)

    def close(self) -> None:
        """Disconnect."""
        self._stop.set()
        if self._responder is not None:
            self._responder.join(timeout=5)
        for fd in self.kicks + self.calls:
            with contextlib.suppress(OSError):
                os.close(fd)
        for s in (self.sock, self.backend):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        self.mem.close()
