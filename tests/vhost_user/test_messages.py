"""The vhost-user wire format: framing, decoding every request pyvirtio serves, and hostile bytes (QEMU
docs/interop/vhost-user.rst, "Message Specification")."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvirtio.vhost_user.messages import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HEADER,
    HEADER_SIZE,
    MAX_CONFIG_SIZE,
    MAX_PAYLOAD,
    REQUESTS,
    U64,
    VERSION,
    VRING_NOFD,
    ConfigSpace,
    Frame,
    Framer,
    FramingError,
    Header,
    MemRegion,
    MemTable,
    Message,
    NoPayload,
    ProtocolError,
    Request,
    SingleRegion,
    VringAddr,
    VringState,
    decode,
    encode,
    encode_reply,
    pack_addr,
    pack_config,
    pack_single_region,
    pack_state,
    pack_table,
    pack_u64,
)


def frame(request: int, payload: bytes = b"", flags: int = VERSION) -> Frame:
    return Frame(Header(request, flags, len(payload)), payload)


REGION = MemRegion(0x1000, 0x10000, 0x7F0000001000, 0)


@pytest.mark.parametrize(("request_", "payload", "fds", "want"), [
    (Request.GET_FEATURES, b"", (), NoPayload()),
    (Request.SET_FEATURES, pack_u64(0x1_4000_0000), (), U64(0x1_4000_0000)),
    (Request.SET_VRING_NUM, pack_state(0, 256), (), VringState(0, 256)),
    (Request.SET_VRING_ADDR, pack_addr(VringAddr(1, 0, 0x10, 0x20, 0x30, 0)), (), VringAddr(1, 0, 0x10, 0x20, 0x30, 0)),
    (Request.SET_MEM_TABLE, pack_table([REGION, MemRegion(0x100000, 0x1000, 0x7F0000100000, 0x1000)]), (5, 6),
     MemTable((REGION, MemRegion(0x100000, 0x1000, 0x7F0000100000, 0x1000)))),
    (Request.ADD_MEM_REG, pack_single_region(REGION), (9,), SingleRegion(REGION)),
    (Request.REM_MEM_REG, pack_single_region(REGION), (), SingleRegion(REGION)),
    (Request.REM_MEM_REG, pack_single_region(REGION), (9,), SingleRegion(REGION)),
    (Request.SET_VRING_KICK, pack_u64(0), (7,), U64(0)),
    (Request.SET_VRING_CALL, pack_u64(1 | VRING_NOFD), (), U64(1 | VRING_NOFD)),
    (Request.GET_CONFIG, pack_config(4, bytes(8)), (), ConfigSpace(4, 8, 0, bytes(8))),
    (Request.SET_BACKEND_REQ_FD, b"", (3,), NoPayload()),
])
def test_decode_every_shape(request_: Request, payload: bytes, fds: tuple[int, ...], want: object) -> None:
    """Each payload shape decodes to its typed structure; the descriptors travel with the message."""
    msg = decode(frame(request_, payload), fds)
    assert isinstance(msg, Message), msg
    assert msg.request is request_ and msg.payload == want and msg.fds == fds


def test_need_reply_flag() -> None:
    """flags bit 3 is need_reply (REPLY_ACK)."""
    msg = decode(frame(Request.SET_OWNER, flags=VERSION | FLAG_NEED_REPLY))
    assert isinstance(msg, Message) and msg.need_reply


@pytest.mark.parametrize(("f", "why"), [
    (frame(Request.SET_FEATURES, b"\0" * 4), "expected 8 bytes"),
    (frame(Request.GET_FEATURES, b"\0" * 8), "expected no payload"),
    (frame(Request.SET_VRING_ADDR, b"\0" * 39), "expected 40 bytes"),
    (frame(Request.SET_MEM_TABLE, struct.pack("=II", 0, 0)), "0 regions"),
    (frame(Request.SET_MEM_TABLE, struct.pack("=II", 9, 0) + bytes(9 * 32)), "9 regions"),
    (frame(Request.SET_MEM_TABLE, struct.pack("=II", 2, 0) + bytes(32)), "must be 72 bytes"),
    (frame(Request.SET_MEM_TABLE, b"\0"), "shorter than"),
    (frame(Request.GET_CONFIG, struct.pack("=III", 0, MAX_CONFIG_SIZE + 1, 0)), "larger than"),
    (frame(Request.GET_CONFIG, struct.pack("=III", 0, 8, 0) + bytes(4)), "carries 4"),
    (frame(999), "unknown request"),
    (frame(Request.SET_LOG_BASE, pack_u64(0)), "not supported"),
    (frame(Request.SET_OWNER, flags=2), "flags"),
    (frame(Request.SET_OWNER, flags=VERSION | 0x10), "flags"),
    (frame(Request.SET_OWNER, flags=VERSION | FLAG_REPLY), "reply flag"),
])
def test_malformed_requests_are_typed_errors(f: Frame, why: str) -> None:
    """Wrong sizes, unknown requests, bad flags: a ProtocolError naming the problem, never an exception."""
    got = decode(f, (4,))
    assert isinstance(got, ProtocolError) and why in got.reason, got
    assert got.fds == (4,)  # handed back, for the caller to close


@pytest.mark.parametrize(("request_", "payload", "fds", "want"), [
    (Request.SET_VRING_KICK, pack_u64(0), (), "carries 0 file descriptors, want 1"),
    (Request.SET_VRING_KICK, pack_u64(VRING_NOFD), (3,), "carries 1 file descriptors, want 0"),
    (Request.SET_MEM_TABLE, pack_table([REGION]), (3, 4), "want 1"),
    (Request.ADD_MEM_REG, pack_single_region(REGION), (), "want 1"),
    (Request.REM_MEM_REG, pack_single_region(REGION), (3, 4), "want 0..1"),
    (Request.SET_OWNER, b"", (3,), "want 0"),
])
def test_descriptor_counts(request_: Request, payload: bytes, fds: tuple[int, ...], want: str) -> None:
    """Descriptors missing or extra: a ProtocolError, and every descriptor comes back to be closed."""
    got = decode(frame(request_, payload), fds)
    assert isinstance(got, ProtocolError) and want in got.reason and got.fds == fds


def test_framer_splits_a_stream() -> None:
    """Two messages fed a byte at a time come out whole, in order; needed() never asks past a message."""
    stream = encode(Request.SET_OWNER) + encode(Request.SET_FEATURES, pack_u64(5))
    fr = Framer()
    out = []
    pos = 0
    while pos < len(stream):
        n = min(fr.needed(), 1)
        got = fr.feed(stream[pos:pos + n])
        pos += n
        if got is not None:
            out.append(got)
    assert [f.header.request for f in out] == [Request.SET_OWNER, Request.SET_FEATURES]
    assert isinstance(out[1], Frame) and out[1].payload == pack_u64(5)
    assert not fr.mid_message and fr.needed() == HEADER_SIZE


def test_framer_refuses_oversized_payloads() -> None:
    """A header announcing more than MAX_PAYLOAD bytes breaks the stream for good."""
    fr = Framer()
    got = fr.feed(HEADER.pack(Request.SET_FEATURES, VERSION, MAX_PAYLOAD + 1))
    assert isinstance(got, FramingError) and fr.needed() == 0 and fr.feed(b"") is got
    with pytest.raises(ValueError):
        Framer().feed(b"\0" * (HEADER_SIZE + 1))


def test_reply_encoding() -> None:
    """A reply has the request's code and flags version | reply."""
    raw = encode_reply(Request.GET_FEATURES, pack_u64(7))
    h = Header.unpack(raw[:HEADER_SIZE])
    assert (h.request, h.flags, h.size) == (Request.GET_FEATURES, VERSION | FLAG_REPLY, 8)


def test_every_served_request_has_a_decoder() -> None:
    """Every entry of the request table decodes its own well-formed payload (no KeyError anywhere)."""
    for req in REQUESTS:
        got = decode(frame(req, b""), ())
        assert isinstance(got, (Message, ProtocolError))


@given(st.lists(st.tuples(st.binary(min_size=0, max_size=80), st.integers(0, 3)), max_size=30),
       st.integers(1, 64))
def test_random_streams_never_raise_and_lose_no_descriptor(chunks: list[tuple[bytes, int]], step: int) -> None:
    """Property: any byte stream, cut anywhere, with any descriptors attached, frames and decodes without an
    exception, and every descriptor ends in exactly one decoded result (or with the reader, mid-message)."""
    fr = Framer()
    next_fd = 100
    pending: list[int] = []
    delivered: list[int] = []
    given_fds: list[int] = []
    for data, nfds in chunks:
        fds = list(range(next_fd, next_fd + nfds))
        next_fd += nfds
        given_fds += fds
        pending += fds
        pos = 0
        while pos < len(data) and fr.broken is None:
            n = min(fr.needed(), step, len(data) - pos)
            got = fr.feed(data[pos:pos + n])
            pos += n
            if isinstance(got, Frame):
                res = decode(got, tuple(pending))
                assert isinstance(res, (Message, ProtocolError))
                delivered += list(res.fds)
                pending = []
            elif isinstance(got, FramingError):
                break
        if fr.broken is not None:
            break
    assert sorted(delivered + pending) == sorted(given_fds)
    assert len(set(delivered)) == len(delivered)
