"""A hostile front-end: every malformed or out-of-order message gets the protocol's answer (REPLY_ACK non-zero, or
an empty reply where the request has its own), one log line, no exception, no descriptor leaked, no access
outside the regions; only a broken stream or a disconnect ends the connection."""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirtio.host.lifecycle import DeviceLifecycle
from pyvirtio.spec.constants import Feature, bit
from pyvirtio.vhost_user.messages import (
    F_LOG_ALL,
    HEADER,
    MAX_PAYLOAD,
    VERSION,
    VRING_F_LOG,
    MemRegion,
    ProtocolFeature,
    Request,
    VringAddr,
    pack_addr,
    pack_single_region,
    pack_state,
    pack_table,
    pack_u64,
)

from .frontend import UVA_BASE, Frontend

SEED = 3


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def fe() -> Iterator[Frontend]:
    f = Frontend(seed=SEED)
    yield f
    f.close()


def refused(fe: Frontend, request: int, payload: bytes = b"", fds: tuple[int, ...] | list[int] = (),
            why: str = "") -> None:
    """The request is answered with REPLY_ACK 1, one log line names it (and ``why``), the session goes on."""
    logs = len(fe.logs)
    assert fe.ack(request, payload, fds) == 1
    new = fe.logs[logs:]
    assert len(new) == 1 and why in new[0], new
    assert not fe.session.closed


def test_wrong_size_and_unknown_requests(fe: Frontend) -> None:
    """A payload of the wrong size, an unknown request, a request pyvirtio does not serve."""
    refused(fe, Request.SET_FEATURES, b"\0" * 4, why="expected 8 bytes")
    refused(fe, 77, why="unknown request")
    refused(fe, Request.SET_LOG_BASE, pack_u64(0), why="not supported")
    r = fe.request(Request.GET_FEATURES, b"\0" * 8)
    assert r is not None and r.header.request == Request.GET_FEATURES and r.payload == b""  # its own reply: empty


def test_descriptors_missing_or_extra(fe: Frontend) -> None:
    """SET_VRING_KICK without its descriptor, SET_OWNER with one: refused, and the extra one closed."""
    fe.init()
    efd = os.eventfd(0)
    try:
        before = open_fds()
        refused(fe, Request.SET_VRING_KICK, pack_u64(0), why="want 1")
        refused(fe, Request.SET_FEATURES, pack_u64(bit(Feature.VERSION_1)), [efd], why="want 0")
        assert open_fds() == before  # the back-end closed its copy
    finally:
        os.close(efd)


def test_order_and_ownership(fe: Frontend) -> None:
    """Before SET_OWNER nothing that changes the device is served; a second SET_OWNER is refused."""
    refused(fe, Request.SET_FEATURES, pack_u64(bit(Feature.VERSION_1)), why="before SET_OWNER")
    fe.init()
    refused(fe, Request.SET_OWNER, why="second SET_OWNER")


def test_protocol_features_gate_requests() -> None:
    """Requests of a protocol feature that was not negotiated are refused; unoffered protocol bits too."""
    fe = Frontend(seed=SEED)
    try:
        fe.init(protocol_mask=1 << ProtocolFeature.REPLY_ACK)
        r = fe.request(Request.GET_QUEUE_NUM)
        assert r is not None and r.payload == b""
        refused(fe, Request.ADD_MEM_REG, pack_single_region(fe.region()), [fe.memfd], why="CONFIGURE_MEM_SLOTS")
        refused(fe, Request.SET_PROTOCOL_FEATURES, pack_u64(1 << 40), why="not offered")
    finally:
        fe.close()


def test_bad_memory_tables(fe: Frontend) -> None:
    """Overlapping regions, a region outside the file, a non-file descriptor: refused, nothing mapped."""
    fe.init(protocol_mask=~(1 << ProtocolFeature.CONFIGURE_MEM_SLOTS))
    size = fe.mem.size
    overlap = [MemRegion(0, size, UVA_BASE, 0), MemRegion(size // 2, 4096, UVA_BASE + size * 2, 0)]
    refused(fe, Request.SET_MEM_TABLE, pack_table(overlap), [fe.memfd, fe.memfd], why="overlaps")
    refused(fe, Request.SET_MEM_TABLE, pack_table([MemRegion(0, size * 2, UVA_BASE, 0)]), [fe.memfd],
            why="outside the file")
    efd = os.eventfd(0)
    try:
        refused(fe, Request.SET_MEM_TABLE, pack_table([MemRegion(0, 4096, UVA_BASE, 0)]), [efd],
                why="not a mappable file")
    finally:
        os.close(efd)
    assert fe.server.memory.mapped == ()


def test_ring_messages_out_of_bounds(fe: Frontend) -> None:
    """vring index out of range, size not a power of 2, base beyond 16 bits, addresses outside every region,
    logging flags, a ring started before any memory, a kick descriptor that is a regular file."""
    fe.init()
    refused(fe, Request.SET_VRING_NUM, pack_state(5, 16), why="out of range")
    r = fe.request(Request.GET_VRING_BASE, pack_state(9, 0))
    assert r is not None and r.payload == b""
    efd = os.eventfd(0)
    try:
        refused(fe, Request.SET_VRING_KICK, pack_u64(0), [efd], why="before any memory")
    finally:
        os.close(efd)
    fe.set_memory()
    refused(fe, Request.SET_VRING_NUM, pack_state(0, 100), why="power of 2")
    refused(fe, Request.SET_VRING_BASE, pack_state(0, 1 << 16), why="16-bit")
    outside = VringAddr(0, 0, UVA_BASE + (64 << 20), UVA_BASE, UVA_BASE, 0)
    refused(fe, Request.SET_VRING_ADDR, pack_addr(outside), why="outside every region")
    refused(fe, Request.SET_VRING_ADDR, pack_addr(VringAddr(0, VRING_F_LOG, UVA_BASE, UVA_BASE, UVA_BASE, 0)),
            why="logging")
    refused(fe, Request.SET_FEATURES, pack_u64(1 << F_LOG_ALL), why="LOG_ALL")
    with open("/proc/self/cmdline", "rb") as f:
        refused(fe, Request.SET_VRING_KICK, pack_u64(0), [f.fileno()], why="not an eventfd")


def test_reconfiguring_a_started_ring(fe: Frontend) -> None:
    """SET_VRING_NUM/ADDR/BASE on a started ring: refused (only GET_VRING_BASE stops it)."""
    fe.start()
    refused(fe, Request.SET_VRING_NUM, pack_state(0, 8), why="started")
    fe.submit(0, 8)
    fe.run()
    assert fe.used(0) == [(0, 8)]  # still serving


def test_misaligned_ring_fails_its_start(fe: Frontend) -> None:
    """A descriptor table that is not 16-byte aligned (the guest driver's doing): the model gives the spec's
    answer (DEVICE_NEEDS_RESET, the violation drv:split/alignment#1 recorded) and the request that would have
    started the ring is refused."""
    fe.init()
    fe.set_memory()
    fe.set_features()
    assert fe.ack(Request.SET_VRING_NUM, pack_state(0, 16)) == 0
    base = fe.alloc.alloc(8192, 4096)
    addr = VringAddr(0, 0, UVA_BASE + base + 8, UVA_BASE + base + 4096, UVA_BASE + base + 2048, 0)
    assert fe.ack(Request.SET_VRING_ADDR, pack_addr(addr)) == 0
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        assert fe.ack(Request.SET_VRING_KICK, pack_u64(0), [efd]) == 0
        assert fe.ack(Request.SET_VRING_ENABLE, pack_state(0, 1)) == 1
        assert 0 not in fe.server.served.running
        assert fe.server.device.lifecycle is DeviceLifecycle.NEEDS_RESET
        assert any("drv:split/alignment#1" in f.statements for f in fe.server.monitor.record.findings)
        assert any("refused the queue" in line for line in fe.logs)
    finally:
        os.close(efd)


def test_memory_removed_under_a_running_ring(fe: Frontend) -> None:
    """REM_MEM_REG while the ring runs: the model's next access misses guest memory, so it answers with
    DEVICE_NEEDS_RESET; no byte outside the (now empty) map is touched and nothing is raised."""
    fe.start()
    assert fe.ack(Request.REM_MEM_REG, pack_single_region(fe.region())) == 0
    fe.submit(0, 8)
    fe.run()
    assert fe.server.device.lifecycle is DeviceLifecycle.NEEDS_RESET
    assert not fe.session.closed


def test_oversized_payload_closes_the_connection(fe: Frontend) -> None:
    """A header announcing more than the largest payload: the stream cannot be trusted, the connection ends."""
    fe.send_raw(HEADER.pack(Request.SET_FEATURES, VERSION, MAX_PAYLOAD + 1))
    fe.pump()
    assert fe.session.closed and any("larger than" in line for line in fe.logs)


def test_disconnect_mid_message(fe: Frontend) -> None:
    """The front-end disconnects half-way through a header: the connection ends cleanly, one line says so."""
    fe.init()
    fe.send_raw(HEADER.pack(Request.SET_FEATURES, VERSION, 8)[:6])
    fe.pump()
    fe.sock.close()
    fe.pump()
    assert fe.session.closed and any("mid-message" in line for line in fe.logs)


def test_too_many_descriptors(fe: Frontend) -> None:
    """More descriptors than a message may carry: the kernel truncates them, the connection ends, nothing
    leaks."""
    before = open_fds()
    fds = [os.eventfd(0) for _ in range(24)]
    try:
        fe.send_raw(HEADER.pack(Request.SET_OWNER, VERSION, 0), fds)
        fe.pump()
        assert fe.session.closed
    finally:
        for fd in fds:
            os.close(fd)
    assert open_fds() <= before


_REQS = [int(r) for r in Request] + [0, 44, 200, 0xFFFFFFFF]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_REQS), st.binary(max_size=72), st.integers(0, 3), st.booleans()),
                max_size=25))
def test_random_messages_never_break_the_server(msgs: list[tuple[int, bytes, int, bool]]) -> None:
    """Property: any sequence of requests (known or not, any payload, 0-3 descriptors) after a normal set-up
    is answered without an exception escaping, and when the front-end leaves no descriptor stays open."""
    before = open_fds()
    fe = Frontend(seed=SEED)
    try:
        fe.start()
        for request, payload, nfds, need_reply in msgs:
            fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(nfds)]
            try:
                fe.send(request, payload, fds, need_reply)
                fe.pump()
                while fe.recv() is not None:
                    pass
            finally:
                for fd in fds:
                    os.close(fd)
            if fe.session.closed:
                break
            fe.run()
    finally:
        fe.close()
    assert open_fds() <= before


def test_fds_received_are_real_ones() -> None:
    """Sanity of the helper: SCM_RIGHTS descriptors arrive as new descriptors of this process."""
    a, b = socket.socketpair()
    efd = os.eventfd(0)
    try:
        a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [efd]))])
        _, anc, _, _ = b.recvmsg(1, socket.CMSG_SPACE(4))
        got = array.array("i")
        got.frombytes(anc[0][2])
        assert got[0] != efd
        os.close(got[0])
    finally:
        os.close(efd)
        a.close()
        b.close()
