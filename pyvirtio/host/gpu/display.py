"""Displays, scanouts and the hardware cursor, and what a monitor would show (virtio 1.4 §5.7.6.1-§5.7.6.10).

A :class:`Display` is the host's monitor (QEMU ``req_state``: connected or not, preferred size); a
:class:`Scanout` is the guest's binding of a resource rectangle to it. :func:`compose` turns a scanout into an
``(H, W, 4)`` RGBA image: the scanned-out rectangle converted from its format, forced opaque (a monitor has no
alpha), with the cursor alpha-blended on top at its position minus its hotspot. Like QEMU's console surface,
which shares memory with the resource's pixman image (or, for a blob, with guest RAM), the image reflects the
host copy as it is now; RESOURCE_FLUSH is the repaint request and is counted per scanout.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PilImage

from pyvirtio.atomicio import write_atomic
from pyvirtio.host.gpu.resources import Resource, rows_view
from pyvirtio.memory import GuestMemory
from pyvirtio.spec.constants import GPU_BYTES_PER_PIXEL, GPU_CURSOR_SIZE
from pyvirtio.spec.gpu_formats import Image, is_valid, to_rgba


@dataclass
class Display:
    """The host side of one output: connected (``enabled``) and its preferred mode."""

    enabled: bool
    width: int
    height: int
    x: int = 0
    y: int = 0


@dataclass(frozen=True, slots=True)
class Rect:
    """A ``struct virtio_gpu_rect``: position and size in pixels."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class BlobFramebuffer:
    """SET_SCANOUT_BLOB metadata: where the scanned-out rectangle starts in the blob and its row pitch."""

    format: int
    width: int
    height: int
    stride: int
    offset: int  # offsets[0] + r.x * bpp + r.y * stride (QEMU ``virtio_gpu_scanout_blob_to_fb``)


@dataclass
class Cursor:
    """The cursor of one scanout (QEMU keeps one per scanout). ``image`` is a 64x64 RGBA snapshot taken at
    UPDATE_CURSOR, as QEMU copies the resource into its ``QEMUCursor``."""

    resource_id: int = 0
    x: int = 0
    y: int = 0
    hot_x: int = 0
    hot_y: int = 0
    image: Image = field(
        default_factory=lambda: np.zeros((GPU_CURSOR_SIZE, GPU_CURSOR_SIZE, 4), dtype=np.uint8), repr=False
    )

    @property
    def visible(self) -> bool:
        """A cursor resource is bound."""
        return self.resource_id != 0


@dataclass
class Scanout:
    """One scanout: disabled while ``resource_id`` is 0."""

    resource_id: int = 0
    rect: Rect = Rect(0, 0, 0, 0)
    blob_fb: BlobFramebuffer | None = None
    cursor: Cursor = field(default_factory=Cursor)
    flushes: int = 0
    last_flush: Rect | None = None

    @property
    def enabled(self) -> bool:
        """A resource is bound (SET_SCANOUT with a non-zero resource id)."""
        return self.resource_id != 0

    def disable(self) -> None:
        """Unbind: no resource, empty rectangle, no blob framebuffer (the cursor stays)."""
        self.resource_id = 0
        self.rect = Rect(0, 0, 0, 0)
        self.blob_fb = None


def _signed32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def resource_pixels(res: Resource, rect: Rect, mem: GuestMemory, fb: BlobFramebuffer | None) -> Image:
    """The raw ``(h, w, 4)`` pixels of ``rect`` (format-encoded): from the host image, or from guest memory
    for a blob. Virgl resources and a blob without backing give black."""
    w, h = rect.width, rect.height
    bpp = GPU_BYTES_PER_PIXEL
    if fb is not None:
        if not res.backing or res.virgl:
            return np.zeros((h, w, 4), dtype=np.uint8)
        span = fb.stride * (h - 1) + w * bpp if h else 0
        if fb.offset + span > res.backing_size:  # cannot happen after validation; never read past it
            return np.zeros((h, w, 4), dtype=np.uint8)
        flat = res.backing_bytes(mem, fb.offset, span, copy=True)
        return rows_view(flat, h, w * bpp, fb.stride).reshape(h, w, 4)
    if res.image is None:
        return np.zeros((h, w, 4), dtype=np.uint8)
    return res.image[rect.y : rect.y + h, rect.x * bpp : (rect.x + w) * bpp].reshape(h, w, 4)


def blend_cursor(img: Image, cursor: Cursor) -> None:
    """Alpha-blend the cursor into ``img`` in place at (x - hot_x, y - hot_y), clipped to the image."""
    if not cursor.visible:
        return
    h, w = img.shape[:2]
    cx = _signed32(cursor.x) - cursor.hot_x
    cy = _signed32(cursor.y) - cursor.hot_y
    x0, y0 = max(cx, 0), max(cy, 0)
    x1, y1 = min(cx + GPU_CURSOR_SIZE, w), min(cy + GPU_CURSOR_SIZE, h)
    if x0 >= x1 or y0 >= y1:
        return
    src = cursor.image[y0 - cy : y1 - cy, x0 - cx : x1 - cx].astype(np.uint16)
    dst = img[y0:y1, x0:x1]
    a = src[..., 3:4]
    rgb = (src[..., :3] * a + dst[..., :3].astype(np.uint16) * (255 - a) + 127) // 255
    dst[..., :3] = rgb.astype(np.uint8)


def compose(scanout: Scanout, res: Resource, mem: GuestMemory) -> Image:
    """What the monitor shows for an enabled scanout: opaque RGBA plus the cursor.

    Total over guest input: a format that is not one of the eight ``enum virtio_gpu_formats`` values shows black.
    Only a virgl resource can carry one (RESOURCE_CREATE_3D takes the renderer's formats, and QEMU's virgl
    SET_SCANOUT accepts any of them); pyvirtio renders no 3D, so such a scanout is black whatever its format.
    """
    fmt = scanout.blob_fb.format if scanout.blob_fb is not None else res.format
    raw = resource_pixels(res, scanout.rect, mem, scanout.blob_fb)
    img = to_rgba(raw, fmt, opaque=True) if is_valid(fmt) else np.zeros((*raw.shape[:2], 4), dtype=np.uint8)
    img[..., 3] = 0xFF
    blend_cursor(img, scanout.cursor)
    return img


def write_png(img: Image, path: str | Path) -> None:
    """Write an RGBA image as PNG atomically (the file appears complete or not at all)."""
    buf = io.BytesIO()
    PilImage.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG")
    write_atomic(path, buf.getvalue())
