"""The eight virtio-gpu pixel formats (virtio 1.4 §5.7.6.8 ``enum virtio_gpu_formats``) as numpy conversions.

Format names give the byte order in memory (Gallium convention): ``B8G8R8A8_UNORM`` is bytes B, G, R, A — what
QEMU maps to ``PIXMAN_a8r8g8b8`` on a little-endian host. Every format is 32 bits per pixel; ``X`` bytes are
padding and read as opaque. Conversions are vectorized over whole images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from pyvirtio.spec.constants import GpuFormat

Image = npt.NDArray[np.uint8]

#: Byte index of R, G, B and A inside a pixel; A is None for the X (padding) formats.
CHANNELS: dict[int, tuple[int, int, int, int | None]] = {
    GpuFormat.B8G8R8A8_UNORM: (2, 1, 0, 3),
    GpuFormat.B8G8R8X8_UNORM: (2, 1, 0, None),
    GpuFormat.A8R8G8B8_UNORM: (1, 2, 3, 0),
    GpuFormat.X8R8G8B8_UNORM: (1, 2, 3, None),
    GpuFormat.R8G8B8A8_UNORM: (0, 1, 2, 3),
    GpuFormat.X8B8G8R8_UNORM: (3, 2, 1, None),
    GpuFormat.A8B8G8R8_UNORM: (3, 2, 1, 0),
    GpuFormat.R8G8B8X8_UNORM: (0, 1, 2, None),
}

#: Value written into X (padding) bytes.
PAD_BYTE = 0xFF


def is_valid(fmt: int) -> bool:
    """Whether ``fmt`` is one of the eight ``enum virtio_gpu_formats`` values (§5.7.6.8)."""
    return fmt in CHANNELS


def to_rgba(raw: npt.NDArray[Any], fmt: int, *, opaque: bool = False) -> Image:
    """Pixels ``raw`` (``(..., 4)`` uint8 in format ``fmt``) as a new RGBA array.

    X formats, and every format when ``opaque``, get alpha 255.
    """
    r, g, b, a = CHANNELS[fmt]
    if a is None or opaque:
        out = np.empty(raw.shape, dtype=np.uint8)
        out[..., :3] = raw[..., [r, g, b]]
        out[..., 3] = 0xFF
        return out
    return np.ascontiguousarray(raw[..., [r, g, b, a]], dtype=np.uint8)


def from_rgba(rgba: npt.NDArray[Any], fmt: int) -> Image:
    """RGBA pixels (``(..., 4)`` uint8) packed in format ``fmt``; X bytes are set to :data:`PAD_BYTE`."""
    r, g, b, a = CHANNELS[fmt]
    out = np.empty(rgba.shape, dtype=np.uint8)
    out[..., r] = rgba[..., 0]
    out[..., g] = rgba[..., 1]
    out[..., b] = rgba[..., 2]
    if a is None:
        pad = ({0, 1, 2, 3} - {r, g, b}).pop()
        out[..., pad] = PAD_BYTE
    else:
        out[..., a] = rgba[..., 3]
    return out
