"""A 128-byte VESA EDID 1.4 base block for a virtual display (answer to VIRTIO_GPU_CMD_GET_EDID, §5.7.6.8).

The preferred mode — the first detailed timing descriptor — is the display's current size, with reduced
blanking at 60 Hz (lower when the pixel clock would not fit the 16-bit 10 kHz field). The DTD holds 12-bit
active sizes, so modes are limited to 4095x4095. The block has no extensions and its checksum makes the byte
sum 0 mod 256.
"""

from __future__ import annotations

import struct

from pyvirtio.spec.constants import GPU_EDID_BLOCK_SIZE, GPU_EDID_MAX_MODE

EDID_HEADER = bytes((0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00))
MANUFACTURER = "PYV"
PRODUCT_NAME = "pyvirtio"
#: 96 DPI: physical size reported for a mode.
DPI = 96
REFRESH_HZ = 60
H_BLANK, H_FRONT, H_SYNC = 160, 48, 32  # CVT reduced blanking, horizontal
V_BLANK, V_FRONT, V_SYNC = 23, 3, 5
_MAX_CLOCK_10KHZ = 0xFFFF

# byte offsets in the base block (VESA E-EDID 1.4 §3)
OFF_MANUFACTURER = 8
OFF_VERSION = 18
OFF_DESCRIPTORS = 54
DESCRIPTOR_SIZE = 18
OFF_EXTENSIONS = 126
OFF_CHECKSUM = 127

# sRGB primaries and D65 white point (x, y)
_CHROMA = ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060), (0.3127, 0.3290))


def _manufacturer_id(code: str) -> bytes:
    """Three letters A-Z packed 5 bits each, big-endian (EDID bytes 8-9)."""
    v = 0
    for ch in code:
        v = (v << 5) | (ord(ch) - ord("A") + 1)
    return v.to_bytes(2, "big")


def _chromaticity() -> bytes:
    vals = [round(c * 1024) for xy in _CHROMA for c in xy]  # 10-bit fractions
    rx, ry, gx, gy, bx, by, wx, wy = vals
    lo1 = ((rx & 3) << 6) | ((ry & 3) << 4) | ((gx & 3) << 2) | (gy & 3)
    lo2 = ((bx & 3) << 6) | ((by & 3) << 4) | ((wx & 3) << 2) | (wy & 3)
    return bytes([lo1, lo2, *(v >> 2 for v in vals)])


def detailed_timing(width: int, height: int, width_mm: int, height_mm: int) -> bytes:
    """An 18-byte detailed timing descriptor for ``width`` x ``height``."""
    htotal, vtotal = width + H_BLANK, height + V_BLANK
    refresh = REFRESH_HZ
    while refresh > 1 and htotal * vtotal * refresh // 10_000 > _MAX_CLOCK_10KHZ:
        refresh -= 1
    clock = max(1, htotal * vtotal * refresh // 10_000)
    return bytes(
        [
            clock & 0xFF,
            clock >> 8,
            width & 0xFF,
            H_BLANK & 0xFF,
            ((width >> 8) << 4) | (H_BLANK >> 8),
            height & 0xFF,
            V_BLANK & 0xFF,
            ((height >> 8) << 4) | (V_BLANK >> 8),
            H_FRONT & 0xFF,
            H_SYNC & 0xFF,
            ((V_FRONT & 0xF) << 4) | (V_SYNC & 0xF),
            ((H_FRONT >> 8) << 6) | ((H_SYNC >> 8) << 4) | ((V_FRONT >> 4) << 2) | (V_SYNC >> 4),
            width_mm & 0xFF,
            height_mm & 0xFF,
            ((width_mm >> 8) << 4) | (height_mm >> 8),
            0,
            0,
            0x1E,  # non-interlaced, digital separate sync, +vsync, +hsync
        ]
    )


def _text_descriptor(tag: int, text: str) -> bytes:
    """Display descriptor with ASCII text (0xFC product name, 0xFF serial): LF-terminated, space-padded."""
    data = text.encode("ascii")[:13]
    if len(data) < 13:
        data += b"\n" + b" " * (12 - len(data))
    return bytes([0, 0, 0, tag, 0]) + data


def _dummy_descriptor() -> bytes:
    return bytes([0, 0, 0, 0x10, 0]) + bytes(13)


def generate(width: int, height: int, *, serial: int = 0) -> bytes:
    """The EDID 1.4 base block of a display whose preferred (native) mode is ``width`` x ``height``."""
    if not (1 <= width <= GPU_EDID_MAX_MODE and 1 <= height <= GPU_EDID_MAX_MODE):
        raise ValueError(f"EDID detailed timings hold 1..{GPU_EDID_MAX_MODE}, not {width}x{height}")
    width_mm = min(0xFFF, round(width * 25.4 / DPI))
    height_mm = min(0xFFF, round(height * 25.4 / DPI))
    b = bytearray(GPU_EDID_BLOCK_SIZE)
    b[0:8] = EDID_HEADER
    b[8:10] = _manufacturer_id(MANUFACTURER)
    struct.pack_into("<HI", b, 10, 0x1234, serial & 0xFFFFFFFF)  # product code, serial number
    b[16] = 1  # week of manufacture
    b[17] = 2026 - 1990  # year of manufacture
    b[OFF_VERSION] = 1
    b[OFF_VERSION + 1] = 4  # EDID 1.4
    b[20] = 0x80 | (0b010 << 4) | 0x05  # digital input, 8 bits per colour, DisplayPort
    b[21] = max(1, min(255, round(width_mm / 10)))  # screen size in cm
    b[22] = max(1, min(255, round(height_mm / 10)))
    b[23] = 120  # gamma 2.2: (2.2 * 100) - 100
    b[24] = 0x06  # sRGB default colour space, preferred timing mode is native; RGB 4:4:4
    b[25:35] = _chromaticity()
    b[35:38] = bytes(3)  # no established timings
    b[38:54] = bytes([0x01, 0x01] * 8)  # standard timings unused
    descriptors = (
        detailed_timing(width, height, width_mm, height_mm),
        _text_descriptor(0xFC, PRODUCT_NAME),
        _text_descriptor(0xFF, f"{serial:08d}"),
        _dummy_descriptor(),
    )
    for i, d in enumerate(descriptors):
        start = OFF_DESCRIPTORS + i * DESCRIPTOR_SIZE
        b[start : start + DESCRIPTOR_SIZE] = d
    b[OFF_EXTENSIONS] = 0
    b[OFF_CHECKSUM] = (-sum(b[:OFF_CHECKSUM])) & 0xFF
    return bytes(b)
