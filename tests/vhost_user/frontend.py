"""A small vhost-user front-end in Python, for tests: what QEMU does, over a socketpair, with no QEMU.

Guest memory is a memfd-backed :class:`~pyvirtio.memory.GuestMemory` (guest-physical 0..size, "user addresses"
at :data:`UVA_BASE` + gpa) whose descriptor is passed to the back-end; kicks and calls are real eventfds; the
driver side of each ring is a :class:`~pyvirtio.virtqueue.driver.DriverQueue`. The server runs on a virtual-time
scheduler that the test advances itself (:meth:`Frontend.run`), and its event loop is polled without waiting:
nothing here sleeps.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from dataclasses import dataclass, field

from pyvirtio.clock import MS, Scheduler
from pyvirtio.dma import GuestAllocator
from pyvirtio.memory import Backing, GuestMemory
from pyvirtio.spec.constants import Feature, bit
from pyvirtio.vhost_user.catalog import ServeSpec
from pyvirtio.vhost_user.messages import (
    F_PROTOCOL_FEATURES,
    FLAG_NEED_REPLY,
    HEADER_SIZE,
    VERSION,
    VRING_NOFD,
    Header,
    MemRegion,
    ProtocolFeature,
    Request,
    VringAddr,
    encode,
    pack_addr,
    pack_single_region,
    pack_state,
    pack_table,
    pack_u64,
)
from pyvirtio.vhost_user.server import Server
from pyvirtio.virtqueue.chain import DESC_STRUCT
from pyvirtio.virtqueue.driver import DriverQueue
from pyvirtio.virtqueue.layout import RingLayout

UVA_BASE = 0x7F00_0000_0000
MEM_SIZE = 4 << 20
HEAP_BASE = 1 << 20


@dataclass
class Reply:
    """A reply from the back-end."""

    header: Header
    payload: bytes

    @property
    def u64(self) -> int:
        """The payload as a u64 (AssertionError if it is not 8 bytes)."""
        assert len(self.payload) == 8, self.payload
        return int.from_bytes(self.payload, "little")


@dataclass
class FrontRing:
    """One ring as the front-end set it up."""

    index: int
    queue: DriverQueue
    kick: int
    call: int
    err: int
    layout: RingLayout
    tokens: list[object] = field(default_factory=list)


class Frontend:
    """Drives a :class:`Server` (built on a virtual-time scheduler) through a socketpair."""

    def __init__(self, device: str | ServeSpec = "rng", *, seed: int = 7, faults: tuple[str, ...] = (),
                 mem_size: int = MEM_SIZE) -> None:
        self.scheduler = Scheduler(seed)
        self.logs: list[str] = []
        self.out: list[str] = []
        self.server = Server(device, seed=seed, faults=faults, log=self.logs.append, out=self.out.append,
                             scheduler=self.scheduler)
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(0)
        self.session = self.server.attach(theirs)
        self.mem = GuestMemory(mem_size, backing=Backing.MEMFD)
        self.alloc = GuestAllocator(self.mem, HEAP_BASE, mem_size - HEAP_BASE)
        self.rings: dict[int, FrontRing] = {}
        self.protocol = 0
        self.features = 0

    # -- plumbing ---------------------------------------------------------------------------------------------

    @property
    def memfd(self) -> int:
        """The memfd of guest RAM."""
        return self.mem.regions[0].fd

    def region(self) -> MemRegion:
        """The one region of guest RAM."""
        return MemRegion(0, self.mem.size, UVA_BASE, 0)

    def pump(self) -> None:
        """Let the server handle everything it can now (no waiting)."""
        while self.server.loop.poll(0):
            pass

    def send_raw(self, data: bytes, fds: tuple[int, ...] | list[int] = ()) -> None:
        """Send bytes (with descriptors) as they are."""
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([data], anc)

    def send(self, request: int, payload: bytes = b"", fds: tuple[int, ...] | list[int] = (),
             need_reply: bool = False) -> None:
        """Send one request."""
        self.send_raw(encode(request, payload, VERSION | (FLAG_NEED_REPLY if need_reply else 0)), fds)

    def recv(self) -> Reply | None:
        """The next reply, if one is there."""
        try:
            head = self.sock.recv(HEADER_SIZE, socket.MSG_PEEK)
        except BlockingIOError:
            return None
        if len(head) < HEADER_SIZE:
            return None
        h = Header.unpack(self.sock.recv(HEADER_SIZE))
        payload = self.sock.recv(h.size) if h.size else b""
        return Reply(h, payload)

    def request(self, request: int, payload: bytes = b"", fds: tuple[int, ...] | list[int] = (),
                need_reply: bool = False) -> Reply | None:
        """Send, let the server work, return its reply (if any)."""
        self.send(request, payload, fds, need_reply)
        self.pump()
        return self.recv()

    def ack(self, request: int, payload: bytes = b"", fds: tuple[int, ...] | list[int] = ()) -> int:
        """Send with need_reply; the REPLY_ACK value (0: success)."""
        r = self.request(request, payload, fds, need_reply=True)
        assert r is not None and r.header.request == request, r
        return r.u64

    def run(self, ns: int = 1 * MS) -> None:
        """Advance virtual time by ``ns`` (device steps run), then poll."""
        self.pump()
        self.scheduler.run_for(ns)
        self.pump()

    # -- what QEMU does ---------------------------------------------------------------------------------------

    def init(self, protocol_mask: int | None = None) -> None:
        """vhost_dev_init: features, protocol features, queue number, memory slots, owner."""
        feats = self.request(Request.GET_FEATURES)
        assert feats is not None
        self.offered = feats.u64
        assert self.offered & (1 << F_PROTOCOL_FEATURES)
        pf = self.request(Request.GET_PROTOCOL_FEATURES)
        assert pf is not None
        self.protocol = pf.u64 if protocol_mask is None else pf.u64 & protocol_mask
        self.send(Request.SET_PROTOCOL_FEATURES, pack_u64(self.protocol))
        self.pump()
        if self.protocol & (1 << ProtocolFeature.MQ):
            assert self.request(Request.GET_QUEUE_NUM) is not None
        if self.protocol & (1 << ProtocolFeature.CONFIGURE_MEM_SLOTS):
            assert self.request(Request.GET_MAX_MEM_SLOTS) is not None
        assert self.request(Request.SET_OWNER) is None

    def set_memory(self) -> None:
        """ADD_MEM_REG with CONFIGURE_MEM_SLOTS, else SET_MEM_TABLE (one region)."""
        if self.protocol & (1 << ProtocolFeature.CONFIGURE_MEM_SLOTS):
            assert self.ack(Request.ADD_MEM_REG, pack_single_region(self.region()), [self.memfd]) == 0
        else:
            assert self.ack(Request.SET_MEM_TABLE, pack_table([self.region()]), [self.memfd]) == 0

    def set_features(self, want: int | None = None) -> int:
        """SET_FEATURES: the offer (or ``want``) with VERSION_1, EVENT_IDX, INDIRECT_DESC, and the vhost bit."""
        if want is None:
            want = bit(Feature.VERSION_1) | bit(Feature.EVENT_IDX) | bit(Feature.INDIRECT_DESC)
        self.features = want & self.offered
        assert self.ack(Request.SET_FEATURES, pack_u64(self.features | (1 << F_PROTOCOL_FEATURES))) == 0
        return self.features

    def setup_ring(self, index: int, size: int = 16, *, base: int = 0, enable: bool = True) -> FrontRing:
        """SET_VRING_NUM/BASE/ADDR/KICK/CALL/ERR (and ENABLE) for a fresh ring in guest memory."""
        lay = RingLayout.contiguous(self.alloc.alloc(RingLayout.contiguous(0, size).total_bytes, 4096), size)
        q = DriverQueue(self.mem, lay, event_idx=bool(self.features & bit(Feature.EVENT_IDX)),
                        indirect=bool(self.features & bit(Feature.INDIRECT_DESC)), alloc=self.alloc)
        kick, call, err = (os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(3))
        ring = FrontRing(index, q, kick, call, err, lay)
        self.rings[index] = ring
        assert self.ack(Request.SET_VRING_NUM, pack_state(index, size)) == 0
        assert self.ack(Request.SET_VRING_BASE, pack_state(index, base)) == 0
        addr = VringAddr(index, 0, UVA_BASE + lay.desc, UVA_BASE + lay.used, UVA_BASE + lay.avail, 0)
        assert self.ack(Request.SET_VRING_ADDR, pack_addr(addr)) == 0
        assert self.ack(Request.SET_VRING_KICK, pack_u64(index), [kick]) == 0
        assert self.ack(Request.SET_VRING_CALL, pack_u64(index), [call]) == 0
        assert self.ack(Request.SET_VRING_ERR, pack_u64(index), [err]) == 0
        if enable:
            assert self.ack(Request.SET_VRING_ENABLE, pack_state(index, 1)) == 0
        return ring

    def restart_ring(self, index: int, base: int) -> None:
        """Start a stopped ring again where it was (SET_VRING_BASE/ADDR, a new kick eventfd, ENABLE)."""
        ring = self.rings[index]
        lay = ring.layout
        assert self.ack(Request.SET_VRING_BASE, pack_state(index, base)) == 0
        addr = VringAddr(index, 0, UVA_BASE + lay.desc, UVA_BASE + lay.used, UVA_BASE + lay.avail, 0)
        assert self.ack(Request.SET_VRING_ADDR, pack_addr(addr)) == 0
        os.close(ring.kick)
        ring.kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        assert self.ack(Request.SET_VRING_KICK, pack_u64(index), [ring.kick]) == 0
        assert self.ack(Request.SET_VRING_ENABLE, pack_state(index, 1)) == 0

    def start(self, queues: int = 1, size: int = 16) -> None:
        """init + memory + features + rings: the device is live."""
        self.init()
        self.set_memory()
        self.set_features()
        for i in range(queues):
            self.setup_ring(i, size)

    def stop_ring(self, index: int) -> int:
        """SET_VRING_ENABLE 0 + GET_VRING_BASE (how QEMU stops a ring); the base."""
        assert self.ack(Request.SET_VRING_ENABLE, pack_state(index, 0)) == 0
        r = self.request(Request.GET_VRING_BASE, pack_state(index, 0))
        assert r is not None and len(r.payload) == 8, r
        return int.from_bytes(r.payload[4:], "little")

    # -- traffic ----------------------------------------------------------------------------------------------

    def submit(self, index: int, in_len: int, out: bytes = b"", token: object | None = None) -> int:
        """Make a buffer available and kick if the device asks for it; the address of the writable part."""
        ring = self.rings[index]
        in_addr = self.alloc.alloc(in_len) if in_len else 0
        out_addr = self.alloc.alloc_bytes(out) if out else 0
        tok = token if token is not None else len(ring.tokens)
        ring.tokens.append(tok)
        ring.queue.add([(out_addr, len(out))] if out else [], [(in_addr, in_len)] if in_len else [], tok)
        if ring.queue.kick_prepare():
            os.eventfd_write(ring.kick, 1)
        return in_addr

    def calls(self, index: int) -> int:
        """How many used-buffer notifications arrived on ``index``'s call eventfd since the last look."""
        with contextlib.suppress(BlockingIOError):
            return os.eventfd_read(self.rings[index].call)
        return 0

    def errors(self, index: int) -> int:
        """Signals on ``index``'s error eventfd since the last look."""
        with contextlib.suppress(BlockingIOError):
            return os.eventfd_read(self.rings[index].err)
        return 0

    def used(self, index: int) -> list[tuple[object, int]]:
        """Every used buffer of ``index`` available now."""
        return self.rings[index].queue.drain_used()

    def close(self) -> None:
        """Disconnect and release everything."""
        with contextlib.suppress(OSError):
            self.sock.close()
        self.pump()
        for r in self.rings.values():
            for fd in (r.kick, r.call, r.err):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.server.close()
        self.mem.close()


def nofd(index: int) -> bytes:
    """SET_VRING_KICK/CALL payload for ``index`` with no descriptor."""
    return pack_u64(index | VRING_NOFD)


def publish_raw(fe: Frontend, index: int, descs: list[tuple[int, int, int, int]], first_slot: int) -> None:
    """Write descriptors ``(addr, len, flags, next)`` at ``first_slot``.. and make the first available, by hand
    (a hostile driver: no DriverQueue bookkeeping), then kick."""
    ring = fe.rings[index]
    lay = ring.layout
    for k, (addr, ln, flags, nxt) in enumerate(descs):
        fe.mem.pack_into(DESC_STRUCT, lay.desc + 16 * (first_slot + k), addr, ln, flags, nxt)
    idx = fe.mem.read_u16(lay.avail + 2)
    fe.mem.write_u16(lay.avail + 4 + 2 * (idx % lay.size), first_slot)
    fe.mem.write_u16(lay.avail + 2, (idx + 1) & 0xFFFF)
    os.eventfd_write(ring.kick, 1)
