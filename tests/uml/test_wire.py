"""The PCI-over-virtio wire format: every shape Linux sends parses to its access, anything else is one rejection
naming the problem, and no byte string makes the parser raise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvirtio.uml.wire import (
    CONFIG_SPACE_SIZE,
    HEADER,
    HEADER_SIZE,
    IRQ_MESSAGE_SIZE,
    MAX_ACCESS,
    BarMemset,
    BarRead,
    BarWrite,
    ConfigRead,
    ConfigWrite,
    Op,
    Rejected,
    irq_message,
    parse_command,
    reply_size,
    split_access,
)


def msg(op: int, *, bar: int = 0, size: int = 4, addr: int = 0, data: bytes = b"") -> bytes:
    return HEADER.pack(op, bar, 0, size, addr) + data


def test_config_read_and_write_as_linux_sends_them() -> None:
    assert parse_command(msg(Op.CFG_READ, size=2, addr=0x2), 8) == ConfigRead(2, 2)
    # um_pci_cfgspace_write: one 24-byte buffer, header + 8 data bytes of which `size` count
    w = parse_command(msg(Op.CFG_WRITE, size=2, addr=0x4, data=(0x0406).to_bytes(8, "little")), 0)
    assert w == ConfigWrite(4, 2, 0x0406)
    assert parse_command(msg(Op.CFG_READ, size=8, addr=0x10), 8) == ConfigRead(0x10, 8)


def test_bar_accesses_keep_their_width() -> None:
    assert parse_command(msg(Op.MMIO_READ, bar=4, size=2, addr=0x12), 2) == BarRead(4, 0x12, 2)
    w = parse_command(msg(Op.MMIO_WRITE, bar=4, size=1, addr=0x14, data=b"\x0f"), 0)
    assert w == BarWrite(4, 0x14, b"\x0f")
    assert parse_command(msg(Op.MMIO_READ, bar=1, size=100, addr=0), 100) == BarRead(1, 0, 100)


def test_memset_both_forms() -> None:
    assert parse_command(msg(Op.MMIO_MEMSET, bar=2, size=64, addr=8, data=b"\xaa"), 0) == BarMemset(2, 8, 64, 0xAA)
    # Linux 6.12 um_pci_bar_set sends opcode 2 (CFG_WRITE) with `bar` set and one data byte
    assert parse_command(msg(Op.CFG_WRITE, bar=4, size=16, addr=0x40, data=b"\x00"), 0) == \
        BarMemset(4, 0x40, 16, 0, quirk=True)


@pytest.mark.parametrize(("raw", "writable", "why"), [
    (b"\x01\x00", 8, "shorter than the 16-byte header"),
    (msg(99), 8, "unknown opcode 99"),
    (msg(Op.CFG_READ, size=3), 8, "want 1, 2, 4 or 8"),
    (msg(Op.CFG_READ, size=4, addr=CONFIG_SPACE_SIZE - 2), 8, "outside the 4096-byte"),
    (msg(Op.CFG_READ, size=4), 2, "2-byte reply buffer"),
    (msg(Op.CFG_WRITE, size=4, data=b"\x01\x02"), 0, "carries 2 data bytes"),
    (msg(Op.MMIO_READ, bar=6, size=4), 4, "BAR 6"),
    (msg(Op.MMIO_READ, bar=0, size=0), 4, "0 bytes"),
    (msg(Op.MMIO_READ, bar=0, size=MAX_ACCESS + 1), MAX_ACCESS + 1, "bytes (want 1.."),
    (msg(Op.MMIO_READ, bar=0, size=4, addr=1 << 40), 4, "beyond 4 GiB"),
    (msg(Op.MMIO_WRITE, bar=0, size=4, data=b"\x00"), 0, "carries 1 data bytes"),
    (msg(Op.MMIO_MEMSET, bar=0, size=4), 0, "without its data byte"),
    (msg(Op.MSI, size=4, data=b"\x41\0\0\0"), 0, "device-to-driver message"),
    (msg(Op.PME), 0, "device-to-driver message"),
])
def test_bad_requests_are_rejected_with_the_reason(raw: bytes, writable: int, why: str) -> None:
    r = parse_command(raw, writable)
    assert isinstance(r, Rejected), r
    assert why in r.reason
    assert reply_size(r) == 0


@given(st.binary(max_size=64), st.integers(0, 1 << 20))
def test_any_bytes_parse_without_raising(raw: bytes, writable: int) -> None:
    r = parse_command(raw, writable)
    if isinstance(r, ConfigRead | BarRead):
        assert r.size <= writable  # a read never replies more than the buffer holds
    if isinstance(r, ConfigRead | ConfigWrite):
        assert r.offset >= 0 and r.offset + r.size <= CONFIG_SPACE_SIZE


@given(st.integers(0, 7), st.integers(0, 4095), st.sampled_from([1, 2, 4, 8]), st.binary(min_size=8, max_size=8))
def test_valid_config_messages_round_trip(bar: int, addr: int, size: int, data: bytes) -> None:
    addr = min(addr, CONFIG_SPACE_SIZE - size)
    assert parse_command(msg(Op.CFG_READ, size=size, addr=addr), 8) == ConfigRead(addr, size)
    w = parse_command(msg(Op.CFG_WRITE, size=size, addr=addr, data=data), 0)
    assert w == ConfigWrite(addr, size, int.from_bytes(data[:size], "little"))


@given(st.integers(0, 1 << 16), st.integers(1, 64))
def test_split_access_covers_the_range_with_aligned_pieces(offset: int, size: int) -> None:
    pieces = split_access(offset, size)
    pos = offset
    for off, w in pieces:
        assert off == pos and w in (1, 2, 4) and off % w == 0
        pos += w
    assert pos == offset + size
    if size in (1, 2, 4) and offset % size == 0:
        assert pieces == [(offset, size)]  # a 2-byte access stays one 2-byte access


def test_irq_messages() -> None:
    m = irq_message(Op.MSI, 0x41)
    assert len(m) == IRQ_MESSAGE_SIZE and HEADER.unpack_from(m) == (Op.MSI, 0, 0, 4, 0)
    assert m[HEADER_SIZE:] == (0x41).to_bytes(4, "little")
    assert irq_message(Op.MSI, 0x1234, size=2)[HEADER_SIZE:] == b"\x34\x12"
    assert irq_message(Op.PME) == bytes([Op.PME]) + bytes(HEADER_SIZE - 1)  # op set, the rest zero
    assert HEADER.unpack_from(irq_message(Op.INT, addr=1))[4] == 1
    with pytest.raises(ValueError):
        irq_message(Op.CFG_READ)
    with pytest.raises(ValueError):
        irq_message(Op.MSI, 1, size=3)
