"""Property: random command streams — valid, broken and pure noise — through a real DriverQueue never break the
device. After every well-formed chain the device is not in DEVICE_NEEDS_RESET, every response type is a code the
spec defines (§5.7.6.7), nothing outside guest RAM is touched, and a known-valid sequence afterwards still puts
the right pixels on the screen. And no command sequence makes the host's display composition raise
(``scanout_image``, ``save_png``: issue 9 defect 7)."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtio.spec.constants import Status

from .helpers import (
    ALL_FORMATS,
    ALL_RESPONSES,
    B8G8R8A8,
    BLOB_MEM_GUEST,
    BLOB_MEM_HOST3D,
    CREATE_3D,
    OK_NODATA,
    UPDATE_CURSOR,
    attach,
    create_2d,
    create_blob,
    cursor,
    flush,
    hdr,
    make_rig,
    req,
    resp_type,
    set_scanout,
    set_scanout_blob,
    transfer,
)
from .test_bad_input import install_spy

COMMANDS = [*range(0x100, 0x10E), *range(0x200, 0x20A), 0x300, 0x301, 0x400, 0, 0x1100, 0xFFFFFFFF]
SIZES = {0x100: 24, 0x101: 40, 0x102: 32, 0x103: 48, 0x104: 48, 0x105: 56, 0x106: 32, 0x107: 32, 0x108: 32,
         0x109: 32, 0x10A: 32, 0x10B: 32, 0x10C: 56, 0x10D: 96, 0x200: 96, 0x201: 24, 0x202: 32, 0x203: 32,
         0x204: 72, 0x205: 72, 0x206: 72, 0x207: 32, 0x208: 40, 0x209: 32, 0x300: 56, 0x301: 56}
RAM = 16 << 20

small = st.sampled_from([0, 1, 2, 3, 5, 16, 17, 63, 64])
u32 = st.one_of(small, st.integers(0, 2**32 - 1), st.sampled_from([2**31, 2**32 - 1, 16384, 16385]))
u64 = st.one_of(small, st.integers(0, 2**64 - 1))
fmt = st.one_of(st.sampled_from(ALL_FORMATS), u32)
#: mostly-plausible field values, so that streams reach deep states (resources with backing on scanouts)
plausible = st.sampled_from([1, 1, 2, 2, 3, 0, 16, 16, 32, 64])


@st.composite
def mem_entry(draw: st.DrawFn) -> bytes:
    addr = draw(st.one_of(st.integers(0x200000, 0x280000), st.integers(0, 2**64 - 1),
                          st.sampled_from([RAM - 8, RAM, 0])))
    length = draw(st.one_of(st.sampled_from([0, 8, 4096, 16384]), u32))
    return struct.pack("<QII", addr, length, 0)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    cmd = draw(st.sampled_from(COMMANDS))
    size = SIZES.get(cmd, 24)
    flags = draw(st.sampled_from([0, 0, 1, 1, 2, 3, 0xFFFFFFFF]))
    ring = draw(st.one_of(st.just(0), st.integers(0, 255)))
    b = bytearray(hdr(cmd, flags=flags, fence_id=draw(u64), ctx_id=draw(st.sampled_from([0, 1, 2])), ring_idx=ring))
    b += bytes(size - 24)
    tame = draw(st.booleans())
    for off in range(24, size, 4):  # every field drawn from plausible, small / edge or random values
        if tame:
            value = draw(st.sampled_from(ALL_FORMATS)) if off == 28 and cmd == 0x101 else draw(plausible)
        else:
            value = draw(st.one_of(small, fmt if off == 28 else u32))
        struct.pack_into("<I", b, off, value)
    if cmd in (0x106, 0x10C):  # mem entries after the struct
        entries = draw(st.lists(mem_entry(), max_size=4))
        nr_off = 28 if cmd == 0x106 else 36
        struct.pack_into("<I", b, nr_off, draw(st.sampled_from([len(entries), len(entries) + 1, 16385])))
        b += b"".join(entries)
    cut = draw(st.one_of(st.none(), st.none(), st.none(), st.integers(0, len(b))))
    return bytes(b if cut is None else b[:cut])


@st.composite
def scripted(draw: st.DrawFn) -> list[bytes]:
    """A mostly valid 2D sequence with drawn parameters (some of them out of range), to reach deep states."""
    rid = draw(st.integers(1, 4))
    w, h = draw(st.integers(16, 64)), draw(st.integers(16, 64))
    addr = draw(st.sampled_from([0x200000, 0x240000, RAM - 4096, RAM + 4096]))
    rect = (draw(st.integers(0, 8)), draw(st.integers(0, 8)), draw(st.integers(0, 70)), draw(st.integers(0, 70)))
    seq = [create_2d(rid, draw(st.sampled_from(ALL_FORMATS)), w, h), attach(rid, [(addr, w * h * 4)]),
           transfer(rid, *rect, draw(st.sampled_from([0, 4, w * 4]))), set_scanout(draw(st.integers(0, 2)), rid, *rect),
           flush(rid, *rect)]
    if draw(st.booleans()):
        seq.append(cursor(UPDATE_CURSOR, 0, rect[0], rect[1], rid, 1, 1) + b"cursor-on-controlq")
    if draw(st.booleans()):
        seq.append(hdr(0x102) + struct.pack("<II", rid, 0))
    return seq


@st.composite
def op(draw: st.DrawFn) -> list[tuple[int, list[bytes], list[int]]]:
    """One or more chains: (queue, readable segments, writable segment sizes)."""
    kind = draw(st.sampled_from(["structured", "structured", "noise", "scripted"]))
    if kind == "scripted":
        return [(0, [r], [24]) for r in draw(scripted())]
    queue = draw(st.sampled_from([0, 0, 0, 1]))
    request = draw(structured() if kind == "structured" else st.binary(max_size=120))
    pieces = draw(st.integers(1, 3))
    cuts = sorted(draw(st.lists(st.integers(0, len(request)), min_size=pieces - 1, max_size=pieces - 1)))
    readable = [request[a:b] for a, b in zip([0, *cuts], [*cuts, len(request)], strict=True)]
    writable = draw(st.lists(st.sampled_from([1, 7, 24, 40, 408, 1056, 2000]), max_size=2))
    return [(queue, readable, writable)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op(), min_size=1, max_size=12))
def test_random_command_streams(batches: list[list[tuple[int, list[bytes], list[int]]]]) -> None:
    r = make_rig(memory=RAM, dev_kw={"num_scanouts": 2, "virgl": True, "context_init": True},
                 want_virgl=True, want_context_init=True, create_framebuffers=False)
    misses = install_spy(r.machine.memory)
    for queue, readable, writable in (chain for batch in batches for chain in batch):
        res = r.drv.raw(readable, writable, queue)
        assert not r.dev.status & Status.DEVICE_NEEDS_RESET
        assert 0 <= res.used <= sum(writable)
        if queue == 1:
            assert res.used == 0  # QEMU writes nothing for cursor commands
        elif res.used >= 4:
            assert resp_type(r.drv.response(res)) in ALL_RESPONSES
        elif writable:
            assert res.used == min(sum(writable), res.used)
    assert misses == []
    # a known-valid sequence still works, pixel for pixel
    w = h = 16
    rid = 1000
    addr = r.alloc.alloc(w * h * 4, 4096)
    pix = np.arange(w * h * 4, dtype=np.uint32).astype(np.uint8).reshape(h, w, 4)
    r.alloc.mem.write(addr, pix.tobytes())
    for request in (create_2d(rid, B8G8R8A8, w, h), attach(rid, [(addr, w * h * 4)]),
                    transfer(rid, 0, 0, w, h, 0), set_scanout(0, rid, 0, 0, w, h)):
        assert resp_type(r.drv.call(request)) == OK_NODATA
    r.drv.raw([cursor(UPDATE_CURSOR, 0, 0, 0, 0, 0, 0)], [], 1)  # hide any cursor the noise defined
    img = r.dev.scanout_image(0)
    assert img is not None
    assert np.array_equal(img[..., :3], pix[..., [2, 1, 0]]) and (img[..., 3] == 255).all()
    assert not r.dev.status & Status.DEVICE_NEEDS_RESET


@st.composite
def display_op(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """Commands that change what a scanout shows: resources of every kind (2D, 3D of any format, guest and
    host blobs), often put on a scanout at once, scanouts with drawn rectangles and formats, cursors, unrefs and
    detaches. Returns ``(queue, request)`` pairs."""
    rid = draw(st.integers(1, 3))
    sid = draw(st.integers(0, 1))
    w, h = draw(st.sampled_from([16, 17, 64, 1])), draw(st.sampled_from([16, 33, 64, 1]))
    any_fmt = st.one_of(st.sampled_from(ALL_FORMATS), u32)
    rect = (draw(st.sampled_from([0, 1, 8])), draw(st.sampled_from([0, 1, 8])),
            draw(st.sampled_from([16, 17, 64, 0])), draw(st.sampled_from([16, 33, 64, 0])))
    whole = set_scanout(sid, rid, 0, 0, w, h)
    shown = draw(st.booleans())
    kind = draw(st.sampled_from(["2d", "3d", "3d", "blob", "scanout", "scanout_blob", "cursor", "unref", "detach",
                                 "transfer", "flush"]))
    addr = draw(st.sampled_from([0x200000, 0x240000]))
    if kind == "2d":
        ops = [create_2d(rid, draw(any_fmt), w, h), attach(rid, [(addr, w * h * 4)])]
        return [(0, r) for r in (*ops, transfer(rid, 0, 0, w, h, 0), whole)] if shown else [(0, r) for r in ops]
    if kind == "3d":
        fields = {24: ("I", rid), 28: ("I", 2), 32: ("I", draw(any_fmt)), 40: ("I", w), 44: ("I", h),
                  48: ("I", draw(st.sampled_from([0, 1, 2]))), 52: ("I", draw(st.sampled_from([0, 1, 3])))}
        c3d = req(CREATE_3D, 72, fields, ctx_id=draw(st.sampled_from([0, 1])))
        return [(0, c3d), (0, whole)] if shown else [(0, c3d)]
    if kind == "blob":
        blob_mem = draw(st.sampled_from([BLOB_MEM_GUEST, BLOB_MEM_HOST3D]))
        size = draw(st.sampled_from([4096, 64 * 64 * 4, 16]))
        entries = [(addr, size)] if blob_mem == BLOB_MEM_GUEST else []
        return [(0, create_blob(rid, blob_mem, 1, entries, draw(st.sampled_from([0, 5])), size, ctx_id=1))]
    if kind == "scanout":
        return [(0, set_scanout(sid, rid, *rect))]
    if kind == "scanout_blob":
        return [(0, set_scanout_blob(sid, rid, rect, w, h, draw(any_fmt), draw(st.sampled_from([w * 4, 64 * 4, 0])),
                                     draw(st.sampled_from([0, 4, 4096]))))]
    if kind == "cursor":
        return [(1, cursor(UPDATE_CURSOR, sid, rect[0], rect[1], rid, 1, 1))]
    if kind == "unref":
        return [(0, hdr(0x102) + struct.pack("<II", rid, 0))]
    if kind == "detach":
        return [(0, hdr(0x107) + struct.pack("<II", rid, 0))]
    if kind == "transfer":
        return [(0, transfer(rid, *rect, 0))]
    return [(0, flush(rid, *rect))]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(display_op(), min_size=1, max_size=10))
def test_no_command_sequence_makes_the_display_raise(batches: list[list[tuple[int, bytes]]]) -> None:
    """Issue 9 defect 7: whatever a guest sends (2D, 3D resources of arbitrary formats, blobs, scanouts,
    cursors, unrefs), after every command each scanout either shows an opaque image of its rectangle or is
    disabled (None), and ``save_png`` writes it: the host's composition never raises."""
    r = make_rig(memory=RAM, dev_kw={"num_scanouts": 2, "virgl": True, "context_init": True},
                 want_virgl=True, want_context_init=True, create_framebuffers=False)
    r.drv.call(req(0x200, 96, {}, ctx_id=1))  # a context for HOST3D blobs
    with tempfile.TemporaryDirectory() as tmp:
        for queue, request in (op for batch in batches for op in batch):
            r.drv.raw([request], [24] if queue == 0 else [], queue)
            for sid in range(2):
                img = r.dev.scanout_image(sid)
                if img is None:
                    continue
                s = r.dev.scanouts[sid]
                assert img.shape == (s.rect.height, s.rect.width, 4) and (img[..., 3] == 255).all()
                r.dev.save_png(sid, Path(tmp) / f"s{sid}.png")
    assert not r.dev.status & Status.DEVICE_NEEDS_RESET
