"""Wire layout of every virtio-gpu command (virtio 1.4 §5.7; pyvirtio reference §4).

Requests are hand-packed at the reference offsets (``helpers.req``) and responses parsed at those offsets with
``struct``: nothing here uses ``pyvirtio.spec.gpu_wire``.
"""

from __future__ import annotations

import struct

import numpy as np

from .helpers import (
    ASSIGN_UUID,
    B8G8R8A8,
    B8G8R8X8,
    BLOB_MEM_GUEST,
    BLOB_MEM_HOST3D,
    CREATE_3D,
    CTX_ATTACH,
    CTX_CREATE,
    CTX_DESTROY,
    CTX_DETACH,
    DETACH_BACKING,
    ERR_PARAM,
    ERR_UNSPEC,
    FLAG_FENCE,
    FLAG_INFO_RING_IDX,
    GET_CAPSET,
    GET_CAPSET_INFO,
    GET_DISPLAY_INFO,
    GET_EDID,
    MAP_BLOB,
    MOVE_CURSOR,
    OK_DISPLAY_INFO,
    OK_EDID,
    OK_NODATA,
    OK_UUID,
    RESOURCE_UNREF,
    SUBMIT_3D,
    TRANSFER_FROM_HOST_3D,
    TRANSFER_TO_HOST_3D,
    UNMAP_BLOB,
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

# -- device configuration (§5.7.4, reference §4.1) ---------------------------------------------------------------


def test_config_layout_offsets() -> None:
    """§5.7.4: num_scanouts @8, num_capsets @12, blob_alignment @16 (20 bytes with BLOB_ALIGNMENT)."""
    r = make_rig(dev_kw={"num_scanouts": 3}, probe=False)
    r.drv.probe()
    t = r.drv.t
    assert t.device_cfg is not None and t.device_cfg.length >= 20
    assert t.config_read(8, 4) == 3
    assert t.config_read(12, 4) == 0
    assert t.config_read(16, 4) == 4096
    assert t.config_read(0, 4) == 0  # events_read
    assert t.config_read(4, 4) == 0  # events_clear reads 0
    assert r.dev.config_size() == 20
    r2 = make_rig(dev_kw={"offer_blob_alignment": False}, probe=False)
    assert r2.dev.config_size() == 16


def test_events_clear_write_one_to_clear_5_7_4_1() -> None:
    """§5.7.4.1: writing 1 to events_clear clears that bit of events_read; events_read MUST NOT be written."""
    r = make_rig(create_framebuffers=False)
    r.dev.events_read = 1
    r.drv.t.config_write(4, 4, 0)
    assert r.drv.t.config_read(0, 4) == 1
    r.drv.t.config_write(0, 4, 0)  # driver MUST NOT write events_read: ignored + violation
    assert r.drv.t.config_read(0, 4) == 1
    assert any("MUST NOT write events_read" in v for v in r.violations())
    r.drv.t.config_write(4, 4, 1)
    assert r.drv.t.config_read(0, 4) == 0


def test_pci_identity_5_7_1_and_5_7_7() -> None:
    """§5.7.1 device id 16 -> PCI device 0x1050; §5.7.7: without VGA the class SHOULD be DISPLAY_OTHER (0x0380)."""
    r = make_rig(probe=False)
    fn = r.machine.functions[0]
    assert fn.config_read(0x00, 2) == 0x1AF4 and fn.config_read(0x02, 2) == 0x1040 + 16
    assert fn.config_read(0x08, 4) >> 8 == 0x038000


def test_feature_bits_5_7_3() -> None:
    """§5.7.3: EDID=1, RESOURCE_UUID=2, RESOURCE_BLOB=3, BLOB_ALIGNMENT=5 by default; VIRGL=0/CONTEXT_INIT=4 opt."""
    r = make_rig(probe=False)
    assert r.dev.offered == (1 << 1) | (1 << 2) | (1 << 3) | (1 << 5)
    r = make_rig(probe=False, dev_kw={"virgl": True, "context_init": True})
    assert r.dev.offered & 0b11111 == 0b11111


# -- controlq commands -------------------------------------------------------------------------------------------


def test_get_display_info_layout(bare: Rig) -> None:
    """Request: bare 24-byte header. Response 408 bytes: pmodes[16] at 24 + 24*i = {rect, enabled @16, flags @20}."""
    bare.dev.displays[1].x = 320
    resp = bare.drv.call(hdr(GET_DISPLAY_INFO), 408)
    assert len(resp) == 408
    assert resp_type(resp) == OK_DISPLAY_INFO
    for i in range(16):
        x, y, w, h, enabled, flags = struct.unpack_from("<6I", resp, 24 + 24 * i)
        if i < 2:
            assert (x, y, w, h, enabled, flags) == (320 * i, 0, 320, 200, 1, 0)
        else:
            assert (x, y, w, h, enabled, flags) == (0, 0, 0, 0, 0, 0)


def decode_dtd(edid_block: bytes) -> tuple[int, int, int]:
    """Horizontal active, vertical active and pixel clock (10 kHz) of the first detailed timing (VESA EDID 1.4)."""
    d = edid_block[54:72]
    clock = d[0] | d[1] << 8
    h_active = d[2] | (d[4] >> 4) << 8
    v_active = d[5] | (d[7] >> 4) << 8
    return h_active, v_active, clock


def test_get_edid_layout_and_block_5_7_6_8() -> None:
    """GET_EDID: scanout @24. Response 1056 bytes: size @24, edid @32. A valid EDID 1.4 whose preferred mode is
    the scanout's size; checksum makes the 128-byte sum 0 mod 256."""
    r = make_rig(dev_kw={"num_scanouts": 2, "width": 1920, "height": 1080}, create_framebuffers=False)
    r.dev.displays[1].width, r.dev.displays[1].height = 3840, 2160
    for sid, mode in ((0, (1920, 1080)), (1, (3840, 2160))):
        resp = r.drv.call(req(GET_EDID, 32, {24: ("I", sid)}), 1056)
        assert len(resp) == 1056 and resp_type(resp) == OK_EDID
        size = struct.unpack_from("<I", resp, 24)[0]
        assert size == 128
        block = resp[32 : 32 + 128]
        assert block[:8] == bytes([0, 255, 255, 255, 255, 255, 255, 0])
        assert sum(block) % 256 == 0
        assert (block[18], block[19]) == (1, 4)  # EDID 1.4
        assert block[24] & 0x02  # preferred timing is native
        h, v, clock = decode_dtd(block)
        assert (h, v) == mode and clock > 0
        assert block[126] == 0  # no extension blocks
        assert resp[32 + 128 :] == bytes(1024 - 128)


def test_resource_create_2d_layout(bare: Rig) -> None:
    """RESOURCE_CREATE_2D: resource_id @24, format @28, width @32, height @36 -> OK_NODATA (0x1100)."""
    resp = bare.drv.call(create_2d(7, B8G8R8A8, 33, 17))
    assert len(resp) == 24 and resp_type(resp) == OK_NODATA
    res = bare.dev.resources[7]
    assert (res.id, res.format, res.width, res.height, res.virgl) == (7, B8G8R8A8, 33, 17, False)
    assert res.image is not None and res.image.shape == (17, 33 * 4)


def test_resource_unref_layout(bare: Rig) -> None:
    """RESOURCE_UNREF: resource_id @24 (32 bytes)."""
    bare.drv.call(create_2d(5, B8G8R8X8, 16, 16))
    assert resp_type(bare.drv.call(rid_cmd(RESOURCE_UNREF, 5))) == OK_NODATA
    assert 5 not in bare.dev.resources


def _backed(r: Rig, rid: int, w: int, h: int, fmt: int = B8G8R8X8) -> int:
    addr = r.alloc.alloc(w * h * 4, 4096)
    r.drv.call(create_2d(rid, fmt, w, h))
    assert resp_type(r.drv.call(attach(rid, [(addr, w * h * 4)]))) == OK_NODATA
    return addr


def test_attach_backing_layout(bare: Rig) -> None:
    """ATTACH_BACKING: resource_id @24, nr_entries @28, entries {le64 addr, le32 length, pad} from offset 32, in the
    request buffer or a following readable segment."""
    a1, a2 = bare.alloc.alloc(4096, 4096), bare.alloc.alloc(4096, 4096)
    bare.drv.call(create_2d(1, B8G8R8X8, 32, 32))
    assert resp_type(bare.drv.call(attach(1, [(a1, 4096), (a2, 4096)]))) == OK_NODATA
    assert [(e.addr, e.length) for e in bare.dev.resources[1].backing or []] == [(a1, 4096), (a2, 4096)]
    bare.drv.call(create_2d(2, B8G8R8X8, 32, 32))
    whole = attach(2, [(a2, 4096)])
    assert resp_type(bare.drv.call(whole[:32], extra=whole[32:])) == OK_NODATA  # Linux: entries as 2nd segment
    assert bare.dev.resources[2].backing_size == 4096


def test_detach_backing_layout(bare: Rig) -> None:
    """DETACH_BACKING: resource_id @24."""
    _backed(bare, 1, 16, 16)
    assert resp_type(bare.drv.call(rid_cmd(DETACH_BACKING, 1))) == OK_NODATA
    assert bare.dev.resources[1].backing is None


def test_set_scanout_and_flush_layout(bare: Rig) -> None:
    """SET_SCANOUT: rect @24..39, scanout_id @40, resource_id @44. RESOURCE_FLUSH: rect @24, resource_id @40."""
    _backed(bare, 3, 64, 48)
    assert resp_type(bare.drv.call(set_scanout(1, 3, 8, 4, 32, 20))) == OK_NODATA
    s = bare.dev.scanouts[1]
    assert (s.resource_id, s.rect.x, s.rect.y, s.rect.width, s.rect.height) == (3, 8, 4, 32, 20)
    assert bare.dev.scanout_image(1) is not None and bare.dev.scanout_image(1).shape == (20, 32, 4)  # type: ignore
    assert resp_type(bare.drv.call(flush(3, 0, 0, 64, 48))) == OK_NODATA
    assert s.flushes == 1
    assert resp_type(bare.drv.call(set_scanout(1, 0, 0, 0, 0, 0))) == OK_NODATA  # resource 0 disables
    assert bare.dev.scanout_image(1) is None


def test_transfer_to_host_2d_layout_and_qemu_offsets(bare: Rig) -> None:
    """TRANSFER_TO_HOST_2D: rect @24, le64 offset @40, resource_id @48. Row h of the rect comes from backing
    offset ``offset + stride*h`` (stride = width*bpp), as QEMU."""
    w, h = 40, 30
    addr = _backed(bare, 1, w, h, B8G8R8A8)
    src = np.arange(w * h * 4, dtype=np.uint32).astype(np.uint8)
    bare.alloc.mem.write(addr, src.tobytes())
    offset = 12
    assert resp_type(bare.drv.call(transfer(1, 5, 3, 10, 7, offset))) == OK_NODATA
    img = bare.dev.resources[1].image
    assert img is not None
    stride = w * 4
    for row in range(7):
        expect = src[offset + stride * row : offset + stride * row + 10 * 4]
        assert np.array_equal(img[3 + row, 5 * 4 : 15 * 4], expect)
    assert not img[:3].any() and not img[10:].any()  # outside the rect untouched
    # full width at x=0: one contiguous copy of stride*h bytes from offset into row y
    assert resp_type(bare.drv.call(transfer(1, 0, 20, w, 10, 0))) == OK_NODATA
    assert np.array_equal(img[20:30].reshape(-1), src[: stride * 10])


def test_get_capset_info_and_capset_layout(bare: Rig) -> None:
    """GET_CAPSET_INFO: capset_index @24; GET_CAPSET: capset_id @24, version @28. No capsets: INVALID_PARAMETER
    (§5.7.6.8 "capset_index MUST [be] less than num_capsets")."""
    assert resp_type(bare.drv.call(req(GET_CAPSET_INFO, 32, {24: ("I", 0)}), 40)) == ERR_PARAM
    assert resp_type(bare.drv.call(req(GET_CAPSET, 32, {24: ("I", 1), 28: ("I", 0)}), 64)) == ERR_PARAM


def test_assign_uuid_layout(bare: Rig) -> None:
    """ASSIGN_UUID: resource_id @24. Response 40 bytes: OK_RESOURCE_UUID, uuid[16] @24; stable per resource."""
    bare.drv.call(create_2d(4, B8G8R8X8, 16, 16))
    resp = bare.drv.call(rid_cmd(ASSIGN_UUID, 4), 40)
    assert len(resp) == 40 and resp_type(resp) == OK_UUID
    u = resp[24:40]
    assert u != bytes(16)
    assert bare.dev.resources[4].uuid is not None and bare.dev.resources[4].uuid.bytes == u
    assert bare.drv.call(rid_cmd(ASSIGN_UUID, 4), 40)[24:40] == u


def test_create_blob_and_set_scanout_blob_layout(bare: Rig) -> None:
    """CREATE_BLOB: resource_id @24, blob_mem @28, blob_flags @32, nr_entries @36, le64 blob_id @40, le64 size @48,
    entries from 56. SET_SCANOUT_BLOB: rect @24, scanout @40, resource @44, width @48, height @52, format @56,
    strides[4] @64, offsets[4] @80; pixels are read from the blob with that stride and offset."""
    w, h, stride, off = 20, 16, 128, 256
    size = 8192
    addr = bare.alloc.alloc(size, 4096)
    pix = np.zeros((h, w, 4), np.uint8)
    pix[..., 0] = np.arange(w)[None, :] * 10  # B
    pix[..., 1] = np.arange(h)[:, None] * 10  # G
    pix[..., 2] = 200  # R
    for row in range(h):
        bare.alloc.mem.write(addr + off + row * stride, pix[row].tobytes())
    resp = bare.drv.call(create_blob(9, BLOB_MEM_GUEST, 2, [(addr, size)], 0x1122334455, size))
    assert resp_type(resp) == OK_NODATA
    res = bare.dev.resources[9]
    assert res.blob is not None
    assert (res.blob.blob_mem, res.blob.blob_flags, res.blob.blob_id, res.blob.size) == (1, 2, 0x1122334455, size)
    assert resp_type(bare.drv.call(set_scanout_blob(0, 9, (0, 0, w, h), w, h, B8G8R8X8, stride, off))) == OK_NODATA
    img = bare.dev.scanout_image(0)
    assert img is not None
    assert np.array_equal(img[..., 0], pix[..., 2]) and np.array_equal(img[..., 1], pix[..., 1])
    assert np.array_equal(img[..., 2], pix[..., 0]) and (img[..., 3] == 255).all()


def test_fence_echo_5_7_6_7(bare: Rig) -> None:
    """§5.7.6.7 MUST: with FENCE the response sets FENCE (flags @4) and copies fence_id (@8)."""
    resp = bare.drv.call(create_2d(1, B8G8R8X8, 16, 16, flags=FLAG_FENCE, fence_id=0xABCDEF0123, ctx_id=0))
    flags, fence_id = struct.unpack_from("<IQ", resp, 4)
    assert resp_type(resp) == OK_NODATA and flags & FLAG_FENCE and fence_id == 0xABCDEF0123
    resp = bare.drv.call(create_2d(2, B8G8R8X8, 16, 16, fence_id=77))  # no FENCE: nothing echoed
    assert struct.unpack_from("<IQ", resp, 4) == (0, 0)


def test_fence_ring_idx_with_context_init(virgl: Rig) -> None:
    """§5.7.6.7: with CONTEXT_INIT, INFO_RING_IDX + ring_idx (@20) are echoed with the fence and ctx_id (@16)."""
    cid = virgl.drv.ctx_create("t")
    resp = virgl.drv.call(req(SUBMIT_3D, 32, {24: ("I", 4)}, flags=FLAG_FENCE | FLAG_INFO_RING_IDX, fence_id=9,
                              ctx_id=cid, ring_idx=5), extra=b"abcd")
    assert resp_type(resp) == OK_NODATA
    flags, fence, ctx, ring = struct.unpack_from("<IQIB", resp, 4)
    assert (flags, fence, ctx, ring) == (FLAG_FENCE | FLAG_INFO_RING_IDX, 9, cid, 5)


# -- 3D (§5.7.6.9) -----------------------------------------------------------------------------------------------


def test_3d_commands_layout(virgl: Rig) -> None:
    """§5.7.6.9 "MUST create a context for the given ctx_id in the hdr".
    CTX_CREATE: nlen @24, context_init @28, debug_name @32 (96 bytes); CTX_DESTROY: header (ctx_id @16);
    CTX_ATTACH/DETACH_RESOURCE: resource_id @24; RESOURCE_CREATE_3D (72): resource_id @24 ... flags @64;
    TRANSFER_*_HOST_3D (72): resource_id @56; SUBMIT_3D: size @24 then the stream."""
    name = b"glxgears"
    f = {24: ("I", len(name)), 28: ("I", 0)}
    r = req(CTX_CREATE, 96, f, ctx_id=3)
    r = r[:32] + name + r[32 + len(name) :]
    assert resp_type(virgl.drv.call(r)) == OK_NODATA
    assert virgl.dev.contexts[3].name == "glxgears"
    c3d = {24: ("I", 11), 28: ("I", 2), 32: ("I", B8G8R8A8), 36: ("I", 0), 40: ("I", 64), 44: ("I", 32),
           48: ("I", 1), 52: ("I", 1)}
    assert resp_type(virgl.drv.call(req(CREATE_3D, 72, c3d, ctx_id=3))) == OK_NODATA
    res = virgl.dev.resources[11]
    assert res.virgl and (res.width, res.height) == (64, 32)
    assert resp_type(virgl.drv.call(rid_cmd(CTX_ATTACH, 11, ctx_id=3))) == OK_NODATA
    assert 11 in virgl.dev.contexts[3].resources
    for cmd in (TRANSFER_TO_HOST_3D, TRANSFER_FROM_HOST_3D):
        assert resp_type(virgl.drv.call(req(cmd, 72, {56: ("I", 11)}, ctx_id=3))) == OK_NODATA
        assert resp_type(virgl.drv.call(req(cmd, 72, {56: ("I", 99)}, ctx_id=3))) == 0x1203
    stream = bytes(range(40))
    assert resp_type(virgl.drv.call(req(SUBMIT_3D, 32, {24: ("I", 40)}, ctx_id=3) + stream)) == OK_NODATA
    assert virgl.dev.contexts[3].submitted_bytes == 40
    assert resp_type(virgl.drv.call(rid_cmd(CTX_DETACH, 11, ctx_id=3))) == OK_NODATA
    assert resp_type(virgl.drv.call(hdr(CTX_DESTROY, ctx_id=3))) == OK_NODATA
    assert 3 not in virgl.dev.contexts
    # HOST3D blob from a context: a virgl resource
    virgl.drv.call(req(CTX_CREATE, 96, {}, ctx_id=4))
    assert resp_type(virgl.drv.call(create_blob(12, BLOB_MEM_HOST3D, 1, [], 5, 4096, ctx_id=4))) == OK_NODATA
    assert virgl.dev.resources[12].virgl


def test_map_blob_has_no_host_visible_region(virgl: Rig) -> None:
    """MAP_BLOB (40: resource_id @24, offset @32) / UNMAP_BLOB: no host-visible shm region -> ERR_UNSPEC."""
    assert resp_type(virgl.drv.call(req(MAP_BLOB, 40, {24: ("I", 1), 32: ("Q", 0)}), 32)) == ERR_UNSPEC
    assert resp_type(virgl.drv.call(rid_cmd(UNMAP_BLOB, 1))) == ERR_UNSPEC


# -- cursorq (§5.7.6.10) -----------------------------------------------------------------------------------------


def test_cursor_commands_layout_and_no_response(bare: Rig) -> None:
    """UPDATE/MOVE_CURSOR (56): pos{scanout_id @24, x @28, y @32}, resource_id @40, hot_x @44, hot_y @48.
    Like QEMU the device writes nothing back (used length 0) even with a response buffer."""
    addr = _backed(bare, 1, 64, 64, B8G8R8A8)
    bare.alloc.mem.write(addr, bytes([10, 20, 30, 255]) * 64 * 64)
    bare.drv.call(transfer(1, 0, 0, 64, 64, 0))
    r = bare.drv.raw([cursor(UPDATE_CURSOR, 1, 100, 50, 1, 3, 4)], [24], queue=1)
    assert r.used == 0
    assert bare.alloc.mem.read(r.writable[0][0], 24) == bytes([0xEE]) * 24  # untouched
    c = bare.dev.scanouts[1].cursor
    assert (c.x, c.y, c.resource_id, c.hot_x, c.hot_y) == (100, 50, 1, 3, 4)
    assert tuple(c.image[0, 0]) == (30, 20, 10, 255)  # B,G,R,A bytes -> RGBA
    r = bare.drv.raw([cursor(MOVE_CURSOR, 1, 7, 8, 0, 9, 9)], [], queue=1)
    assert r.used == 0
    assert (c.x, c.y, c.resource_id, c.hot_x, c.hot_y) == (7, 8, 1, 3, 4)  # §5.7.6.10 other fields ignored
