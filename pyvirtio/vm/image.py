"""Frames the guest draws, the blk test pattern, screendump (PPM) reading and comparison.

Contract: frames are deterministic functions of their name and size; a screendump that cannot be read is a
one-line :class:`~pyvirtio.vm.errors.VmError`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from pyvirtio.atomicio import atomic_open
from pyvirtio.vm.errors import VmError

#: Scanout geometry the harness asks QEMU for (``virtio-gpu-pci,xres=..,yres=..``) and draws frames at.
FRAME_WIDTH = 1280
FRAME_HEIGHT = 800
#: Size of the blk probe pattern; one pattern is written per probe into its own scratch slot.
BLK_PATTERN_SIZE = 64 * 1024

RGB = npt.NDArray[np.uint8]

_BARS = np.array([(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0),
                  (255, 0, 255), (255, 0, 0), (0, 0, 255), (16, 16, 16)], dtype=np.uint8)


def make_frame(kind: str, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT) -> RGB:
    """A known test frame (H, W, 3): ``"a"`` colour bars (drawn before sleep), ``"b"`` a checkerboard."""
    if kind == "a":
        cols = (np.arange(width) * len(_BARS)) // width
        return np.broadcast_to(_BARS[cols][None, :, :], (height, width, 3)).copy()
    if kind == "b":
        y, x = np.mgrid[0:height, 0:width]
        check = ((x // 80) + (y // 80)) % 2 == 0
        out = np.empty((height, width, 3), dtype=np.uint8)
        out[check] = (230, 120, 20)
        out[~check] = (20, 60, 200)
        return out
    raise ValueError(f"unknown frame {kind!r}")


def frame_to_xrgb8888(rgb: RGB) -> bytes:
    """Pack an RGB frame as the guest framebuffer's XRGB8888 (little endian: B, G, R, X per pixel)."""
    h, w, _ = rgb.shape
    out = np.zeros((h, w, 4), dtype=np.uint8)
    out[..., 0] = rgb[..., 2]
    out[..., 1] = rgb[..., 1]
    out[..., 2] = rgb[..., 0]
    return out.tobytes()


def blk_pattern(size: int = BLK_PATTERN_SIZE) -> bytes:
    """Deterministic pseudo-random bytes (a SHA-256 counter stream) for the blk write/read probe."""
    chunks = [hashlib.sha256(b"pyvirtio-blk-%d" % i).digest() for i in range((size + 31) // 32)]
    return b"".join(chunks)[:size]


def read_ppm(path: str | Path) -> RGB:
    """Read a QMP ``screendump`` (binary PPM; any format Pillow reads, e.g. the kept PNGs) as (H, W, 3) uint8."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except OSError as e:
        raise VmError(f"cannot read screendump {path}: {e}") from None


def save_png(rgb: RGB, path: str | Path) -> None:
    """Write ``rgb`` as a PNG atomically."""
    with atomic_open(path) as f:
        Image.fromarray(rgb, "RGB").save(f, format="PNG")


def ppm_to_png(ppm: str | Path, png: str | Path) -> RGB:
    """Convert a screendump PPM to PNG; returns the pixels."""
    rgb = read_ppm(ppm)
    save_png(rgb, png)
    return rgb


def same_image(a: RGB | None, b: RGB | None) -> bool:
    """Pixel-identical (same shape, same values)."""
    return a is not None and b is not None and a.shape == b.shape and bool(np.array_equal(a, b))


@dataclass(frozen=True)
class ScreenInfo:
    """A short description of a screendump, for notes and decisions."""

    width: int
    height: int
    black_fraction: float
    grey_only: bool

    @property
    def placeholder(self) -> bool:
        """Looks like QEMU's "Display output is not active." surface: almost all black, text in grey/white."""
        return self.grey_only and 0.9 < self.black_fraction < 1.0


def describe(rgb: RGB) -> ScreenInfo:
    """Measure the features :attr:`ScreenInfo.placeholder` needs."""
    h, w, _ = rgb.shape
    black = np.all(rgb == 0, axis=2)
    grey = bool(np.all((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])))
    return ScreenInfo(w, h, float(black.mean()), grey)
