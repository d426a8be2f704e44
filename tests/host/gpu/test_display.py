"""What the monitor shows: pixels through the driver, all eight formats, the cursor, blobs, PNGs (§5.7.6.1-6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyvirtio.guest.gpu.driver import arrow_cursor
from pyvirtio.guest.gpu.objects import ObjectKind
from pyvirtio.spec.constants import GpuCmd

from .helpers import (
    ALL_FORMATS,
    B8G8R8A8,
    B8G8R8X8,
    CREATE_3D,
    OK_NODATA,
    Rig,
    attach,
    create_2d,
    flush,
    make_rig,
    req,
    resp_type,
    set_scanout,
    transfer,
)


def pattern(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    img[..., 3] = 255
    return img


def blend(dst: np.ndarray, cur: np.ndarray, x: int, y: int) -> np.ndarray:
    """Expected composition, written out independently: out = (c*a + d*(255-a) + 127) // 255, clipped."""
    out = dst.copy()
    h, w = out.shape[:2]
    for cy in range(64):
        for cx in range(64):
            px, py = x + cx, y + cy
            if 0 <= px < w and 0 <= py < h:
                a = int(cur[cy, cx, 3])
                for ch in range(3):
                    out[py, px, ch] = (int(cur[cy, cx, ch]) * a + int(dst[py, px, ch]) * (255 - a) + 127) // 255
    return out


def test_known_pattern_pixel_for_pixel_with_cursor(rig: Rig) -> None:
    """§5.7.6.2 (render, TRANSFER_TO_HOST_2D, RESOURCE_FLUSH) and §5.7.6.6 (cursor): the scanout shows exactly the
    drawn pattern with the cursor blended at pos - hotspot."""
    img = pattern(320, 200, 1)
    rig.drv.draw(0, img)
    out = rig.dev.scanout_image(0)
    assert out is not None and out.dtype == np.uint8 and out.shape == (200, 320, 4)
    assert np.array_equal(out, img)
    cur = np.zeros((64, 64, 4), np.uint8)
    cur[10:30, 5:25] = (250, 10, 20, 255)  # opaque square
    cur[40:50, 40:50] = (0, 0, 255, 128)  # half transparent
    rig.drv.set_cursor(0, 300, 180, image=cur, hot=(5, 10))
    out = rig.dev.scanout_image(0)
    assert out is not None
    expect = blend(img, cur, 300 - 5, 180 - 10)
    assert np.array_equal(out, expect)
    assert tuple(out[180, 300]) == (250, 10, 20, 255)  # the hotspot pixel is at pos
    rig.drv.move_cursor(0, 10, 10)
    assert np.array_equal(rig.dev.scanout_image(0), blend(img, cur, 5, 0))
    rig.drv.hide_cursor(0)
    assert np.array_equal(rig.dev.scanout_image(0), img)
    assert rig.dev.scanout_image(1) is not None and not rig.dev.scanout_image(1)[..., :3].any()  # type: ignore


def test_cursor_partly_off_screen_and_negative_position(rig: Rig) -> None:
    img = pattern(320, 200, 2)
    rig.drv.draw(0, img)
    cur = arrow_cursor()
    rig.drv.set_cursor(0, -10, -20, image=cur)  # negative positions are two's complement on the wire
    assert np.array_equal(rig.dev.scanout_image(0), blend(img, cur, -10, -20))
    rig.drv.move_cursor(0, 310, 195)
    assert np.array_equal(rig.dev.scanout_image(0), blend(img, cur, 310, 195))


def test_partial_draw_updates_only_its_rect(rig: Rig) -> None:
    img = pattern(320, 200, 3)
    rig.drv.draw(0, img)
    patch = pattern(50, 20, 4)
    rig.drv.draw(0, patch, at=(100, 60))
    expect = img.copy()
    expect[60:80, 100:150] = patch
    assert np.array_equal(rig.dev.scanout_image(0), expect)


def test_scatter_list_backing() -> None:
    """§5.7.6.1: the framebuffer need not be contiguous; 4 KiB entries scattered in guest memory."""
    r = make_rig(dev_kw={"width": 200, "height": 100}, backing_chunk=4096)
    fb = r.drv.framebuffers[0]
    assert len(fb.backing) == (200 * 100 * 4 + 4095) // 4096
    assert len(r.dev.resources[fb.id].backing or []) == len(fb.backing)
    img = pattern(200, 100, 5)
    r.drv.draw(0, img)
    assert np.array_equal(r.dev.scanout_image(0), img)
    patch = pattern(33, 41, 6)
    r.drv.draw(0, patch, at=(150, 50))  # rows straddle entry boundaries
    img[50:91, 150:183] = patch
    assert np.array_equal(r.dev.scanout_image(0), img)


# byte order of each format in memory, typed from the reference names (Gallium: name = memory order)
ORDER = {
    B8G8R8A8: "BGRA", B8G8R8X8: "BGRX", 3: "ARGB", 4: "XRGB", 67: "RGBA", 68: "XBGR", 121: "ABGR", 134: "RGBX",
}


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_all_eight_formats(bare: Rig, fmt: int) -> None:
    """§5.7.6.8 enum virtio_gpu_formats: each is converted to RGBA from its memory byte order; X is opaque."""
    w, h = 16, 16
    rgba = pattern(w, h, fmt)
    rgba[..., 3] = np.arange(w * h).reshape(h, w) % 256  # distinct alpha values
    order = ORDER[fmt]
    raw = np.zeros((h, w, 4), np.uint8)
    for i, ch in enumerate(order):
        raw[..., i] = 0x5A if ch == "X" else rgba[..., "RGBA".index(ch)]
    addr = bare.alloc.alloc(w * h * 4, 64)
    bare.alloc.mem.write(addr, raw.tobytes())
    assert resp_type(bare.drv.call(create_2d(1, fmt, w, h))) == OK_NODATA
    bare.drv.call(attach(1, [(addr, w * h * 4)]))
    assert resp_type(bare.drv.call(transfer(1, 0, 0, w, h, 0))) == OK_NODATA
    assert resp_type(bare.drv.call(set_scanout(0, 1, 0, 0, w, h))) == OK_NODATA
    shown = bare.dev.scanout_image(0)
    assert shown is not None
    assert np.array_equal(shown[..., :3], rgba[..., :3])
    assert (shown[..., 3] == 255).all()  # a monitor is opaque
    host = bare.dev.resource_rgba(1)
    assert host is not None
    assert np.array_equal(host[..., 3], rgba[..., 3] if "A" in order else np.full((h, w), 255, np.uint8))


def test_multihead_one_big_framebuffer(bare: Rig) -> None:
    """§5.7.6.4: one framebuffer, each scanout shows a different rectangle of it; flush reaches both."""
    w, h = 640, 200
    addr = bare.alloc.alloc(w * h * 4, 4096)
    img = pattern(w, h, 9)
    packed = np.stack([img[..., 2], img[..., 1], img[..., 0], img[..., 3]], axis=-1)  # BGRA bytes
    bare.alloc.mem.write(addr, packed.tobytes())
    bare.drv.call(create_2d(1, B8G8R8A8, w, h))
    bare.drv.call(attach(1, [(addr, w * h * 4)]))
    bare.drv.call(transfer(1, 0, 0, w, h, 0))
    bare.drv.call(set_scanout(0, 1, 0, 0, 320, 200))
    bare.drv.call(set_scanout(1, 1, 320, 0, 320, 200))
    assert np.array_equal(bare.dev.scanout_image(0), img[:, :320])
    assert np.array_equal(bare.dev.scanout_image(1), img[:, 320:])
    bare.drv.call(flush(1, 300, 0, 40, 10))
    assert bare.dev.scanouts[0].flushes == 1 and bare.dev.scanouts[1].flushes == 1
    bare.drv.call(flush(1, 0, 0, 10, 10))
    assert bare.dev.scanouts[0].flushes == 2 and bare.dev.scanouts[1].flushes == 1


def test_blob_scanout_through_driver() -> None:
    r = make_rig(dev_kw={"width": 256, "height": 128})
    img = pattern(256, 128, 11)
    obj = r.drv.show_blob(0, img)
    assert obj.blob is not None and obj.blob.size % 4096 == 0  # §5.7.6.8 size aligned to blob_alignment
    assert np.array_equal(r.dev.scanout_image(0), img)
    # a blob is guest memory: a write shows without any transfer (QEMU maps it)
    img2 = pattern(256, 128, 12)
    r.drv.write_pixels(obj, img2)
    assert np.array_equal(r.dev.scanout_image(0), img2)


def test_save_png_atomic_and_exact(rig: Rig, tmp_path: Path) -> None:
    img = pattern(320, 200, 13)
    rig.drv.draw(1, img)
    path = tmp_path / "sub" / "s1.png"
    rig.dev.save_png(1, path)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGBA")), img)
    assert [p.name for p in path.parent.iterdir()] == ["s1.png"]  # no temp file left behind
    rig.drv.set_scanout(1, None)
    with pytest.raises(ValueError, match="disabled"):
        rig.dev.save_png(1, tmp_path / "off.png")
    assert not (tmp_path / "off.png").exists()


@pytest.mark.parametrize("fmt", [0, 5, 0x1234, 0xFFFFFFFF, B8G8R8A8])
def test_a_3d_resource_of_any_format_on_a_scanout_composes(virgl: Rig, fmt: int, tmp_path: Path) -> None:
    """Issue 9 defect 7: a guest must never make the host's display composition raise. §5.7.6.9 RESOURCE_CREATE_3D
    takes any format (the renderer's business, not ``enum virtio_gpu_formats``), and SET_SCANOUT of a virgl
    resource is accepted whatever its format, as QEMU's virgl path does (it hands the texture to the GL display).
    pyvirtio renders no 3D, so the scanout shows black, opaque; ``scanout_image`` and ``save_png`` never raise."""
    c3d = {24: ("I", 5), 28: ("I", 2), 32: ("I", fmt), 40: ("I", 32), 44: ("I", 16), 48: ("I", 1), 52: ("I", 1)}
    assert resp_type(virgl.drv.call(req(CREATE_3D, 72, c3d))) == OK_NODATA
    assert resp_type(virgl.drv.call(set_scanout(0, 5, 0, 0, 32, 16))) == OK_NODATA
    img = virgl.dev.scanout_image(0)
    assert img is not None and img.shape == (16, 32, 4)
    assert (img[..., :3] == 0).all() and (img[..., 3] == 255).all()
    virgl.dev.save_png(0, tmp_path / "3d.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "3d.png").convert("RGBA")), img)


def test_cursor_of_an_xrgb_resource_keeps_the_alpha_in_its_x_byte(rig: Rig) -> None:
    """QEMU ``virtio_gpu_update_cursor_data`` copies a cursor resource's 32-bit pixels as a8r8g8b8 whatever its
    format. Linux's cursor is an XRGB dumb buffer whose X byte carries the alpha (found serving the gpu to the
    real 6.12 driver): a transparent part must stay transparent, not turn opaque black."""
    img = pattern(320, 200, 5)
    rig.drv.draw(0, img)
    obj = rig.drv.create_resource_2d(64, 64, B8G8R8X8, kind=ObjectKind.CURSOR)
    raw = np.zeros((64, 64, 4), np.uint8)
    raw[..., :3] = (30, 60, 90)  # B, G, R
    raw[..., 3] = 0xFF
    raw[:8, :8, 3] = 0  # a transparent corner, in the X byte
    rig.drv._write_backing(obj, 0, raw.reshape(-1))
    rig.drv.transfer_to_host_2d(obj, (0, 0, 64, 64), wait=True)
    rig.drv.wait(rig.drv._cursor_cmd(GpuCmd.UPDATE_CURSOR, 0, 100, 50, obj.id, 0, 0))
    cur = rig.dev.scanouts[0].cursor
    assert cur.visible and cur.image[0, 0, 3] == 0 and tuple(cur.image[20, 20]) == (90, 60, 30, 255)
    out = rig.dev.scanout_image(0)
    assert out is not None
    assert np.array_equal(out[50:58, 100:108], img[50:58, 100:108])  # under the transparent corner
    assert tuple(out[70, 120]) == (90, 60, 30, 255)
