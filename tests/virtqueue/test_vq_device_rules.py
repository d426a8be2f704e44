"""Device-side rules of the split virtqueue (virtio 1.4 §2.7.4-§2.7.10) that are about what the device may write
and how it reads a buffer: message framing, readable/writable parts, the descriptor table, the used ring's order
of writes and its flags word."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vq_helpers import Rig, changed_outside

from pyvirtio.spec.constants import VIRTQ_USED_F_NO_NOTIFY, DescFlag

NEXT, WRITE, INDIRECT = int(DescFlag.NEXT), int(DescFlag.WRITE), int(DescFlag.INDIRECT)
_U16 = struct.Struct("<H")


def _cuts(draw: st.DrawFn, data_len: int, most: int) -> list[int]:
    """Segment lengths (each >= 1) that add up to ``data_len``: an arbitrary arrangement."""
    if data_len == 0:
        return []
    k = draw(st.integers(1, min(most, data_len)))
    points = sorted(draw(st.lists(st.integers(1, data_len - 1), min_size=k - 1, max_size=k - 1, unique=True))) \
        if data_len > 1 else []
    bounds = [0, *points, data_len]
    return [b - a for a, b in itertools.pairwise(bounds)]


@st.composite
def arrangement(draw: st.DrawFn) -> tuple[bytes, list[int], list[int], int]:
    """A message, how its readable part is cut, how its writable part is cut, and how many leading descriptors
    stay direct before an indirect table holds the rest (-1: all direct)."""
    msg = draw(st.binary(min_size=1, max_size=48))
    out = _cuts(draw, len(msg), 6)
    ins = _cuts(draw, draw(st.integers(1, 40)), 5)
    direct = draw(st.integers(-1, len(out) + len(ins) - 1))
    return msg, out, ins, direct


def _expose(rig: Rig, msg: bytes, out: list[int], ins: list[int], direct: int) -> list[tuple[int, int]]:
    """Write the buffer by hand (hostile-driver style) as ``direct`` direct descriptors then one INDIRECT; returns
    the writable segments."""
    segs: list[tuple[int, int, int]] = []
    pos = 0
    for n in out:
        segs.append((rig.buf(n, msg[pos : pos + n]), n, 0))
        pos += n
    for n in ins:
        segs.append((rig.buf(n), n, WRITE))
    n_direct = len(segs) if direct < 0 else direct
    head = 0
    for i in range(n_direct):
        addr, n, flags = segs[i]
        last = i == len(segs) - 1
        rig.desc(i, addr, n, flags | (0 if last else NEXT), i + 1)
    if n_direct < len(segs):
        rest = segs[n_direct:]
        table = rig.table([(a, n, f | (NEXT if j < len(rest) - 1 else 0), j + 1) for j, (a, n, f) in enumerate(rest)])
        rig.desc(n_direct, table, 16 * len(rest), INDIRECT, 0)
    rig.publish(head)
    return [(a, n) for a, n, f in segs if f & WRITE]


@settings(max_examples=150, deadline=None)
@given(arr=arrangement(), reply=st.binary(min_size=1, max_size=60))
@pytest.mark.spec("dev:split/framing#1", "dev:split/desc#1", "dev:split/desc#2", "dev:split/indirect#2")
def test_any_arrangement_of_descriptors_is_the_same_message(arr: tuple[bytes, list[int], list[int], int],
                                                            reply: bytes) -> None:
    """§2.7.4.1: the device MUST NOT assume any particular arrangement of descriptors: the same message cut into
    any number of readable and writable descriptors, direct or in an indirect table after direct ones
    (§2.7.5.3.2), reads as the same bytes and a reply scatters over the writable part in order. §2.7.5.1: the
    device writes nothing but the writable buffers and the used ring — not a readable buffer, not a descriptor
    table entry (direct or indirect)."""
    msg, out, ins, direct = arr
    rig = Rig(16, indirect=True)
    try:
        writable = _expose(rig, msg, out, ins, direct)
        before = rig.mem.snapshot()
        chain = rig.dev.pop()
        assert chain is not None and chain.error is None, chain
        assert chain.read(rig.mem) == msg
        assert [n for _, n in chain.writable] == ins
        written = chain.write(rig.mem, reply)
        assert written == min(len(reply), sum(ins))
        assert b"".join(rig.mem.read(a, n) for a, n in writable)[:written] == reply[:written]
        rig.dev.push(chain.head, written)
        assert changed_outside(rig.mem, before, [rig.used_ring_span(), *writable]) == []
    finally:
        rig.mem.close()


@pytest.mark.spec("dev:split/indirect#1")
def test_write_flag_on_the_indirect_descriptor_is_ignored(make_rig):
    """§2.7.5.3.2: the device MUST ignore the WRITE flag of a descriptor that refers to an indirect table. With
    INDIRECT | WRITE on the only descriptor, readable and writable parts come from the table entries alone."""
    rig = make_rig(4, indirect=True)
    r, w = rig.buf(8, b"request!"), rig.buf(8)
    t = rig.table([(r, 8, NEXT, 1), (w, 8, WRITE, 0)])
    rig.desc(0, t, 32, INDIRECT | WRITE, 0)
    rig.publish(0)
    chain = rig.dev.pop()
    assert chain is not None and chain.error is None
    assert chain.readable == [(r, 8)] and chain.writable == [(w, 8)]
    assert chain.read(rig.mem) == b"request!"


@pytest.mark.spec("dev:split/used#1")
def test_used_len_is_written_before_used_idx(make_rig, monkeypatch):
    """§2.7.8.2: the device MUST set len before it updates used idx: push writes the used element (id, len) and
    only then the idx that publishes it (the device packs straight into the used ring's buffer: the spies sit
    on its two pack functions and turn buffer offsets back into guest addresses)."""
    from pyvirtio.virtqueue import device

    rig = make_rig(4)
    log: list[int] = []
    _, off0 = rig.mem.locate(rig.layout.used, 1)

    def spying(pack):  # type: ignore[no-untyped-def]
        def spy(buf, off: int, *values: int) -> None:  # type: ignore[no-untyped-def]
            log.append(rig.layout.used + off - off0)
            pack(buf, off, *values)
        return spy

    monkeypatch.setattr(device, "_USED_PACK", spying(device._USED_PACK))
    monkeypatch.setattr(device, "_U16_PACK", spying(device._U16_PACK))
    for k in range(6):
        rig.drv.add([], [(rig.buf(4), 4)], k)
        chain = rig.dev.pop()
        assert chain is not None
        log.clear()
        rig.dev.push(chain.head, 3)
        slot = rig.layout.used + 4 + 8 * (k % 4)
        assert log == [slot, rig.layout.used + 2]
        assert rig.used_elem(k) == (chain.head, 3) and rig.used_idx == k + 1
        assert rig.drv.get_used() == (k, 3)


@pytest.mark.spec("dev:split/avail-event#1", "dev:split/avail-event#2")
@pytest.mark.parametrize("event_idx", [False, True])
def test_used_flags_are_only_ever_0_or_1(make_rig, event_idx: bool):
    """§2.7.10.2: without EVENT_IDX the device MUST set used.flags to 0 or 1 — exactly, even if the word held
    something else (the device owns it; it does not keep stray bits); with EVENT_IDX it MUST keep it 0 and uses
    avail_event instead."""
    rig = make_rig(8, event_idx=event_idx)
    flags = rig.layout.used
    for enable in (False, True, False, True):
        rig.dev.set_notification(enable)
        rig.drv.add([], [(rig.buf(4), 4)], enable)
        chain = rig.dev.pop()
        assert chain is not None
        rig.dev.push(chain.head, 0)
        rig.drv.get_used()
        if event_idx:
            assert rig.u16(flags) == 0
        else:
            assert rig.u16(flags) == (0 if enable else VIRTQ_USED_F_NO_NOTIFY)
    if not event_idx:
        rig.mem.pack_into(_U16, flags, 0xFF00)  # stray bits (a driver that did not initialise the word)
        rig.dev.set_notification(False)
        assert rig.u16(flags) == VIRTQ_USED_F_NO_NOTIFY
        rig.mem.pack_into(_U16, flags, 0xFF01)
        rig.dev.set_notification(True)
        assert rig.u16(flags) == 0

