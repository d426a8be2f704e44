"""Broken guest input, one test per case: the spec's ERR_* answer, a traced violation, never an exception, never
DEVICE_NEEDS_RESET, never an access outside guest RAM (§5.7.6.7 "On error the device will return one of the
VIRTIO_GPU_RESP_ERR_* error codes")."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import pytest

from pyvirtio.errors import GuestMemoryError
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import Status
from pyvirtio.trace import Kind

from .helpers import (
    ATTACH_BACKING,
    B8G8R8A8,
    B8G8R8X8,
    BLOB_MEM_GUEST,
    BLOB_MEM_HOST3D,
    CREATE_3D,
    CTX_CREATE,
    DETACH_BACKING,
    ERR_CONTEXT,
    ERR_OOM,
    ERR_PARAM,
    ERR_RESOURCE,
    ERR_SCANOUT,
    ERR_UNSPEC,
    FLAG_FENCE,
    FLAG_INFO_RING_IDX,
    GET_DISPLAY_INFO,
    GET_EDID,
    OK_NODATA,
    RESOURCE_UNREF,
    SUBMIT_3D,
    UPDATE_CURSOR,
    Rig,
    attach,
    create_2d,
    create_blob,
    cursor,
    flush,
    hdr,
    make_rig,
    req,
    resp_type,
    rid_cmd,
    set_scanout,
    set_scanout_blob,
    transfer,
)


def install_spy(mem: GuestMemory) -> list[tuple[int, int]]:
    """Record every access that misses guest RAM (a ``contains`` query is not an access)."""
    misses: list[tuple[int, int]] = []
    orig = mem._locate

    def locate(addr: int, n: int):  # type: ignore[no-untyped-def]
        try:
            return orig(addr, n)
        except GuestMemoryError:
            misses.append((addr, n))
            raise

    def contains(addr: int, n: int) -> bool:
        try:
            orig(addr, n)
        except GuestMemoryError:
            return False
        return True

    mem._locate = locate  # type: ignore[method-assign]
    mem.contains = contains  # type: ignore[method-assign]
    return misses


@pytest.fixture
def g() -> Iterator[Rig]:
    r = make_rig(dev_kw={"num_scanouts": 2, "width": 320, "height": 200}, create_framebuffers=False)
    misses = install_spy(r.machine.memory)
    yield r
    assert not r.dev.status & Status.DEVICE_NEEDS_RESET
    assert not [e for e in r.machine.trace.select(Kind.DEVICE) if e.detail.get("event") == "device_error"]
    assert misses == []


def backed(r: Rig, rid: int, w: int = 32, h: int = 32, fmt: int = B8G8R8X8) -> int:
    addr = r.alloc.alloc(w * h * 4, 4096)
    assert resp_type(r.drv.call(create_2d(rid, fmt, w, h))) == OK_NODATA
    assert resp_type(r.drv.call(attach(rid, [(addr, w * h * 4)]))) == OK_NODATA
    return addr


def violated(r: Rig, text: str) -> bool:
    return any(text in v for v in r.violations())


def test_unknown_command_err_unspec(g: Rig) -> None:
    """QEMU / reference §4.3: an unknown command gets ERR_UNSPEC."""
    for cmd in (0, 0x0999, 0x0400, 0x1100, 0xFFFFFFFF):  # 0x0400 = the never-merged STATUS_FREEZING
        assert resp_type(g.drv.call(req(cmd, 64, {}))) == ERR_UNSPEC
    assert violated(g, "unknown")


def test_unknown_resource_invalid_resource_id(g: Rig) -> None:
    for request in (rid_cmd(RESOURCE_UNREF, 42), rid_cmd(DETACH_BACKING, 42), flush(42, 0, 0, 1, 1),
                    transfer(42, 0, 0, 1, 1, 0), set_scanout(0, 42, 0, 0, 16, 16), attach(42, []),
                    rid_cmd(0x10B, 42)):
        assert resp_type(g.drv.call(request, 40)) == ERR_RESOURCE


def test_resource_id_zero(g: Rig) -> None:
    """Resource id 0 is reserved (it disables a scanout): creating it is ERR_INVALID_RESOURCE_ID."""
    assert resp_type(g.drv.call(create_2d(0, B8G8R8X8, 16, 16))) == ERR_RESOURCE
    assert resp_type(g.drv.call(create_blob(0, BLOB_MEM_GUEST, 0, [], 0, 4096))) == ERR_RESOURCE
    assert g.dev.resources == {}


def test_duplicate_resource_id(g: Rig) -> None:
    assert resp_type(g.drv.call(create_2d(3, B8G8R8X8, 16, 16))) == OK_NODATA
    assert resp_type(g.drv.call(create_2d(3, B8G8R8A8, 8, 8))) == ERR_RESOURCE
    assert resp_type(g.drv.call(create_blob(3, BLOB_MEM_GUEST, 0, [], 0, 4096))) == ERR_RESOURCE
    assert g.dev.resources[3].format == B8G8R8X8 and g.dev.resources[3].width == 16


def test_scanout_id_out_of_range(g: Rig) -> None:
    backed(g, 1)
    assert resp_type(g.drv.call(set_scanout(2, 1, 0, 0, 16, 16))) == ERR_SCANOUT
    assert resp_type(g.drv.call(set_scanout(0xFFFFFFFF, 0, 0, 0, 0, 0))) == ERR_SCANOUT
    blob = set_scanout_blob(16, 1, (0, 0, 16, 16), 16, 16, B8G8R8X8, 64, 0)
    assert resp_type(g.drv.call(blob)) == ERR_SCANOUT
    # GET_EDID answers INVALID_PARAMETER for a bad scanout, as QEMU does
    assert resp_type(g.drv.call(req(GET_EDID, 32, {24: ("I", 2)}), 1056)) == ERR_PARAM


def test_rectangles_outside_the_resource(g: Rig) -> None:
    """§5.7.6.8 "Scanout rectangles must be completely covered by the underlying resource"; transfer and flush
    rectangles likewise (QEMU bounds checks, no u32 wrap-around)."""
    backed(g, 1, 32, 32)
    big = 0xFFFFFFF0
    for x, y, w, h in ((0, 0, 33, 1), (0, 31, 1, 2), (32, 0, 1, 1), (big, 0, 0x20, 1), (0, big, 1, 0x20),
                       (1, 1, 0xFFFFFFFF, 1)):
        assert resp_type(g.drv.call(transfer(1, x, y, w, h, 0))) == ERR_PARAM
        assert resp_type(g.drv.call(flush(1, x, y, w, h))) == ERR_PARAM
        assert resp_type(g.drv.call(set_scanout(0, 1, x, y, max(w, 16), max(h, 16)))) == ERR_PARAM
    assert resp_type(g.drv.call(set_scanout(0, 1, 0, 0, 15, 32))) == ERR_PARAM  # QEMU: at least 16x16
    assert not g.dev.scanouts[0].enabled


def test_zero_and_enormous_dimensions(g: Rig) -> None:
    """pyvirtio caps width/height at 1..16384 (ERR_INVALID_PARAMETER); QEMU only caps host memory."""
    for w, h in ((0, 16), (16, 0), (16385, 1), (1, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF)):
        assert resp_type(g.drv.call(create_2d(1, B8G8R8X8, w, h))) == ERR_PARAM
    assert g.dev.resources == {}


def test_stride_times_height_beyond_host_memory(g: Rig) -> None:
    """16384 x 16384 x 4 = 1 GiB: more than the 256 MiB host budget -> ERR_OUT_OF_MEMORY, nothing allocated."""
    assert resp_type(g.drv.call(create_2d(1, B8G8R8X8, 16384, 16384))) == ERR_OOM
    assert g.dev.resources == {} and g.dev.hostmem == 0


def test_unknown_format(g: Rig) -> None:
    for fmt in (0, 5, 66, 0xFFFFFFFF):
        assert resp_type(g.drv.call(create_2d(1, fmt, 16, 16))) == ERR_PARAM


def test_transfer_beyond_the_backing(g: Rig) -> None:
    """pyvirtio: the whole source range must lie in the backing, else ERR_INVALID_PARAMETER and nothing is copied
    (QEMU copies what there is and answers OK)."""
    addr = g.alloc.alloc(4096, 4096)
    g.drv.call(create_2d(1, B8G8R8X8, 32, 32))  # needs 4096 bytes
    g.alloc.mem.write(addr, b"\x77" * 4096)
    g.drv.call(attach(1, [(addr, 2048)]))  # half of it
    assert resp_type(g.drv.call(transfer(1, 0, 0, 32, 32, 0))) == ERR_PARAM
    assert resp_type(g.drv.call(transfer(1, 0, 0, 32, 16, 1))) == ERR_PARAM
    assert resp_type(g.drv.call(transfer(1, 0, 0, 1, 1, 2**64 - 1))) == ERR_PARAM
    img = g.dev.resources[1].image
    assert img is not None and not img.any()
    assert resp_type(g.drv.call(transfer(1, 0, 0, 32, 16, 0))) == OK_NODATA  # what fits works


def test_transfer_without_backing(g: Rig) -> None:
    g.drv.call(create_2d(1, B8G8R8X8, 16, 16))
    assert resp_type(g.drv.call(transfer(1, 0, 0, 16, 16, 0))) == ERR_RESOURCE


def test_backing_entries_outside_guest_memory(g: Rig) -> None:
    """QEMU virtio_gpu_create_mapping_iov: an unmappable entry is ERR_UNSPEC and nothing is attached."""
    g.drv.call(create_2d(1, B8G8R8X8, 16, 16))
    ram = g.machine.memory.size
    good = g.alloc.alloc(1024, 4096)
    for bad in ((ram, 1024), (ram - 512, 1024), (2**64 - 16, 1024), (0, 2**32 - 1)):
        assert resp_type(g.drv.call(attach(1, [(good, 1024), bad]))) == ERR_UNSPEC
        assert g.dev.resources[1].backing is None
    assert violated(g, "outside guest memory")


def test_huge_nr_entries(g: Rig) -> None:
    """QEMU caps nr_entries at 16384; fewer entries than announced is also ERR_UNSPEC."""
    g.drv.call(create_2d(1, B8G8R8X8, 16, 16))
    a = g.alloc.alloc(1024, 4096)
    assert resp_type(g.drv.call(attach(1, [(a, 1024)], nr=16385))) == ERR_UNSPEC
    assert resp_type(g.drv.call(attach(1, [(a, 1024)], nr=0xFFFFFFFF))) == ERR_UNSPEC
    assert resp_type(g.drv.call(attach(1, [(a, 1024)], nr=3))) == ERR_UNSPEC
    assert g.dev.resources[1].backing is None
    assert resp_type(g.drv.call(attach(1, [(a, 1024)] * 16384))) == OK_NODATA  # exactly the cap is fine


def test_attach_twice(g: Rig) -> None:
    backed(g, 1)
    a = g.alloc.alloc(4096, 4096)
    assert resp_type(g.drv.call(attach(1, [(a, 4096)]))) == ERR_UNSPEC  # QEMU: already has backing


def test_request_shorter_than_its_command(g: Rig) -> None:
    """Current QEMU VIRTIO_GPU_FILL_CMD: a short request is answered ERR_INVALID_PARAMETER, nothing happens."""
    full = create_2d(1, B8G8R8X8, 16, 16, flags=FLAG_FENCE, fence_id=5)
    for n in (25, 39):
        resp = g.drv.call(full[:n])
        assert resp_type(resp) == ERR_PARAM
        assert struct.unpack_from("<IQ", resp, 4) == (1, 5)  # the header was complete: fence still echoed
    assert g.dev.resources == {}
    for n in (0, 1, 23):  # not even a header: zeroed header, no fence echo
        resp = g.drv.call(full[:n] if n else b"")
        assert resp_type(resp) == ERR_PARAM and struct.unpack_from("<IQ", resp, 4) == (0, 0)
    assert violated(g, "shorter than")


def test_request_split_across_segments_is_gathered(g: Rig) -> None:
    full = create_2d(1, B8G8R8X8, 16, 16)
    r = g.drv.raw([full[:10], full[10:30], full[30:]], [24])
    assert resp_type(g.drv.response(r)) == OK_NODATA


def test_response_buffer_too_small(g: Rig) -> None:
    """iov_from_buf semantics: what fits is written, the used length says how much, a violation is traced."""
    r = g.drv.raw([hdr(GET_DISPLAY_INFO)], [100])
    assert r.used == 100
    assert resp_type(g.drv.response(r)) == 0x1101
    r = g.drv.raw([hdr(GET_DISPLAY_INFO)], [2, 3])  # split and tiny
    assert r.used == 5 and g.drv.response(r) == struct.pack("<I", 0x1101) + b"\x00"
    assert violated(g, "response buffer too small")


def test_chain_without_writable_part(g: Rig) -> None:
    r = g.drv.raw([create_2d(1, B8G8R8X8, 16, 16)], [])
    assert r.used == 0
    assert 1 in g.dev.resources  # executed; just nowhere to answer
    assert violated(g, "without a device-writable")


def test_control_commands_on_the_cursor_queue_are_ignored(g: Rig) -> None:
    r = g.drv.raw([create_2d(1, B8G8R8X8, 16, 16) + bytes(16)], [24], queue=1)  # padded to the cursor size
    assert r.used == 0 and g.dev.resources == {}
    assert violated(g, "cursor queue")


def test_cursor_commands_on_the_control_queue(g: Rig) -> None:
    """QEMU's control queue does not know cursor commands: ERR_UNSPEC."""
    assert resp_type(g.drv.call(cursor(UPDATE_CURSOR, 0, 1, 1, 0, 0, 0))) == ERR_UNSPEC


def test_bad_cursor_requests_are_ignored(g: Rig) -> None:
    c = g.dev.scanouts[0].cursor
    r = g.drv.raw([cursor(UPDATE_CURSOR, 0, 5, 5, 0, 0, 0)[:40]], [], queue=1)  # short
    assert r.used == 0 and (c.x, c.y) == (0, 0)
    g.drv.raw([cursor(UPDATE_CURSOR, 9, 5, 5, 0, 0, 0)], [], queue=1)  # scanout out of range
    backed(g, 2, 32, 32)  # §5.7.6.6 cursor MUST be 64x64
    g.drv.raw([cursor(UPDATE_CURSOR, 0, 5, 5, 2, 0, 0)], [], queue=1)
    assert not c.image.any()
    g.drv.raw([cursor(UPDATE_CURSOR, 0, 5, 5, 77, 0, 0)], [], queue=1)  # unknown resource
    assert violated(g, "MUST be 64x64") and violated(g, "cursor scanout id")


def test_blob_errors(g: Rig) -> None:
    """§5.7.6.8: blob_mem MUST be non-zero and HOST3D needs VIRGL; size MUST be aligned to blob_alignment;
    the backing must cover the size; SET_SCANOUT_BLOB "format MUST be one of enum virtio_gpu_formats";
    SET_SCANOUT/SET_SCANOUT_BLOB only for their kind of resource."""
    a = g.alloc.alloc(16384, 4096)
    assert resp_type(g.drv.call(create_blob(1, 0, 0, [(a, 4096)], 0, 4096))) == ERR_PARAM
    assert resp_type(g.drv.call(create_blob(1, BLOB_MEM_HOST3D, 0, [], 0, 4096))) == ERR_PARAM
    assert resp_type(g.drv.call(create_blob(1, BLOB_MEM_GUEST, 0, [(a, 8192)], 0, 4100))) == ERR_PARAM
    assert resp_type(g.drv.call(create_blob(1, BLOB_MEM_GUEST, 0, [(a, 4096)], 0, 8192))) == ERR_PARAM
    assert resp_type(g.drv.call(create_blob(1, BLOB_MEM_GUEST, 0, [(a, 4096)], 0, 0))) == ERR_PARAM
    assert g.dev.resources == {}
    assert resp_type(g.drv.call(create_blob(1, BLOB_MEM_GUEST, 0, [(a, 16384)], 0, 16384))) == OK_NODATA
    assert resp_type(g.drv.call(set_scanout(0, 1, 0, 0, 16, 16))) == ERR_RESOURCE
    # TRANSFER_TO_HOST_2D on a guest blob: defined for any resource, nothing to copy (Linux 6.12 sends it, QEMU
    # answers OK_NODATA): not an error, not a violation
    before = len(g.dev.ctx.trace.violations())  # type: ignore[attr-defined]
    assert resp_type(g.drv.call(transfer(1, 0, 0, 1, 1, 0))) == OK_NODATA
    assert len(g.dev.ctx.trace.violations()) == before  # type: ignore[attr-defined]
    assert resp_type(g.drv.call(set_scanout_blob(0, 1, (0, 0, 64, 64), 64, 64, B8G8R8X8, 255, 0))) == ERR_PARAM
    assert resp_type(g.drv.call(set_scanout_blob(0, 1, (0, 0, 64, 65), 64, 65, B8G8R8X8, 256, 0))) == ERR_PARAM
    assert resp_type(g.drv.call(set_scanout_blob(0, 1, (0, 0, 64, 64), 64, 64, 99, 256, 0))) == ERR_PARAM
    assert resp_type(g.drv.call(set_scanout_blob(0, 1, (0, 0, 64, 64), 64, 64, B8G8R8X8, 256, 0))) == OK_NODATA
    assert resp_type(g.drv.call(flush(1, 100, 100, 1, 1))) == ERR_PARAM  # QEMU: must hit the blob's scanout
    backed(g, 2)
    assert resp_type(g.drv.call(set_scanout_blob(1, 2, (0, 0, 16, 16), 16, 16, B8G8R8X8, 64, 0))) == ERR_RESOURCE
    g.drv.call(rid_cmd(DETACH_BACKING, 1))
    img = g.dev.scanout_image(0)  # the blob lost its pages: the scanout shows black, nothing is read
    assert img is not None and not img[..., :3].any()
    b = g.alloc.alloc(4096, 4096)
    assert resp_type(g.drv.call(attach(1, [(b, 4096)]))) == ERR_PARAM  # smaller than the blob


def test_commands_of_features_not_negotiated() -> None:
    """A command whose feature was not negotiated is an unknown command to this device: ERR_UNSPEC."""
    r = make_rig(want_edid=False, want_blob=False, want_uuid=False, create_framebuffers=False)
    assert resp_type(r.drv.call(req(GET_EDID, 32, {}), 1056)) == ERR_UNSPEC
    assert resp_type(r.drv.call(create_blob(1, BLOB_MEM_GUEST, 0, [], 0, 4096))) == ERR_UNSPEC
    assert resp_type(r.drv.call(rid_cmd(0x10B, 1), 40)) == ERR_UNSPEC
    assert resp_type(r.drv.call(req(CTX_CREATE, 96, {}, ctx_id=1))) == ERR_UNSPEC  # 3D without VIRGL
    assert resp_type(r.drv.call(req(CREATE_3D, 72, {24: ("I", 1), 40: ("I", 4), 44: ("I", 4)}))) == ERR_UNSPEC


def test_3d_errors(virgl: Rig) -> None:
    assert resp_type(virgl.drv.call(req(CTX_CREATE, 96, {}, ctx_id=0))) == ERR_CONTEXT
    assert resp_type(virgl.drv.call(req(CTX_CREATE, 96, {}, ctx_id=1))) == OK_NODATA
    assert resp_type(virgl.drv.call(req(CTX_CREATE, 96, {}, ctx_id=1))) == ERR_CONTEXT
    assert resp_type(virgl.drv.call(req(CTX_CREATE, 96, {24: ("I", 65)}, ctx_id=2))) == ERR_PARAM
    assert resp_type(virgl.drv.call(req(CTX_CREATE, 96, {28: ("I", 4)}, ctx_id=2))) == ERR_PARAM  # no capsets
    assert resp_type(virgl.drv.call(req(SUBMIT_3D, 32, {24: ("I", 8)}, ctx_id=9) + bytes(8))) == ERR_CONTEXT
    assert resp_type(virgl.drv.call(req(SUBMIT_3D, 32, {24: ("I", 100)}, ctx_id=1) + bytes(8))) == ERR_PARAM
    assert resp_type(virgl.drv.call(rid_cmd(0x202, 5, ctx_id=1))) == ERR_RESOURCE
    assert resp_type(virgl.drv.call(rid_cmd(0x202, 5, ctx_id=7))) == ERR_CONTEXT
    assert resp_type(virgl.drv.call(create_blob(3, BLOB_MEM_HOST3D, 0, [], 0, 4096, ctx_id=8))) == ERR_CONTEXT
    bad_ring = req(SUBMIT_3D, 32, {}, flags=FLAG_FENCE | FLAG_INFO_RING_IDX, fence_id=1, ctx_id=1, ring_idx=64)
    assert resp_type(virgl.drv.call(bad_ring)) == ERR_PARAM  # §5.7.6.7 ring_idx 0..63


def test_request_larger_than_needed_is_fine(g: Rig) -> None:
    assert resp_type(g.drv.call(create_2d(1, B8G8R8X8, 16, 16) + bytes(100))) == OK_NODATA


def test_nothing_raised_and_valid_work_still_works(g: Rig) -> None:
    """After all kinds of garbage, a valid sequence still shows its pixels."""
    for junk in (b"\xff" * 7, bytes(range(256)), req(ATTACH_BACKING, 32, {24: ("I", 1), 28: ("I", 5)})):
        g.drv.call(junk, 64)
    addr = backed(g, 1, 16, 16, B8G8R8A8)
    g.alloc.mem.write(addr, bytes([1, 2, 3, 4]) * 256)
    g.drv.call(transfer(1, 0, 0, 16, 16, 0))
    g.drv.call(set_scanout(0, 1, 0, 0, 16, 16))
    img = g.dev.scanout_image(0)
    assert img is not None and (img.reshape(-1, 4) == np.array([3, 2, 1, 255], np.uint8)).all()
