"""The S4 hibernation image: guest memory plus guest-side kernel state, in one checksummed file.

Layout (little-endian)::

    magic "PYVIRTS4" | u32 version | u32 header length | header (JSON, UTF-8)
    | region bytes, in header order | u32 CRC-32 of everything before it

This module is the container: it stores any JSON header object (its content is
:class:`~pyvirtio.pm.image_header.ImageHeader`'s business) plus the key ``regions`` it owns, the list of
``[base, size]`` of guest RAM. The file is written atomically (temporary file, fsync, rename); reading checks the
magic, the file format version (:data:`VERSION`; another version is one line naming it), the sizes and the
CRC-32, then treats the content as untrusted all the same (a valid checksum says the file is what was written,
not that it is sane): the header is bounded JSON (:func:`~pyvirtio.atomicio.loads_json`: UTF-8, strict, nested
at most :data:`~pyvirtio.atomicio.MAX_JSON_DEPTH` deep) and must be an object; the region table must be at most
:data:`MAX_REGIONS` ``[base, size]`` integer pairs of non-empty 64-bit ranges in address order, not
overlapping, whose sizes add up to the file. Any problem is one :class:`~pyvirtio.errors.UserInputError` line
naming it. Nothing is half-restored: the caller gets a fully parsed image or an error.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyvirtio.atomicio import atomic_open, brief, loads_json
from pyvirtio.errors import UserInputError
from pyvirtio.memory import GuestMemory

MAGIC = b"PYVIRTS4"
#: The file format version (the layout above); the header's content has its own version.
VERSION = 1
#: The header key the container owns.
REGIONS_KEY = "regions"
_HEAD = struct.Struct("<8sII")
_CRC = struct.Struct("<I")
MAX_HEADER = 16 << 20
#: Most RAM regions an image may list (a machine has one or two).
MAX_REGIONS = 64
#: Guest-physical addresses are 64-bit.
ADDR_LIMIT = 1 << 64
CHUNK = 8 << 20


@dataclass
class S4Image:
    """A parsed image: the caller's header (without ``regions``) and each RAM region's base and bytes."""

    header: dict[str, Any]
    regions: list[tuple[int, bytes | memoryview]] = field(default_factory=list)


def write_image(path: str | Path, header: dict[str, Any], memory: GuestMemory) -> int:
    """Write ``memory`` and ``header`` atomically; returns the file size. ``header`` must be JSON and must not
    use the key ``regions``."""
    if REGIONS_KEY in header:
        raise ValueError(f"the image header key {REGIONS_KEY!r} is the container's")
    hdr = dict(header)
    hdr[REGIONS_KEY] = [[r.base, r.size] for r in memory.regions]
    raw = json.dumps(hdr, sort_keys=True).encode()
    crc = 0
    total = 0
    with atomic_open(path) as f:
        head = _HEAD.pack(MAGIC, VERSION, len(raw)) + raw
        f.write(head)
        crc = zlib.crc32(head, crc)
        total += len(head)
        for r in memory.regions:
            view = memoryview(r.mm)
            try:
                for off in range(0, r.size, CHUNK):
                    chunk = view[off : off + CHUNK]
                    f.write(chunk)
                    crc = zlib.crc32(chunk, crc)
            finally:
                view.release()
            total += r.size
        f.write(_CRC.pack(crc))
    return total + _CRC.size


def read_image(path: str | Path) -> S4Image:
    """Parse and verify an image; raises :class:`UserInputError` with one line naming the problem."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserInputError(f"S4 image {p}: cannot read ({e.strerror})") from None
    if len(data) < _HEAD.size + _CRC.size:
        raise UserInputError(f"S4 image {p}: truncated ({len(data)} bytes)")
    magic, version, hlen = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise UserInputError(f"S4 image {p}: not a pyvirtio hibernation image (bad magic)")
    if version != VERSION:
        raise UserInputError(f"S4 image {p}: file format version {version} is not supported "
                             f"(this pyvirtio reads version {VERSION})")
    if hlen > MAX_HEADER or _HEAD.size + hlen + _CRC.size > len(data):
        raise UserInputError(f"S4 image {p}: truncated header")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(memoryview(data)[: len(data) - _CRC.size]) != crc:
        raise UserInputError(f"S4 image {p}: checksum mismatch (corrupt or truncated)")
    header = loads_json(data[_HEAD.size : _HEAD.size + hlen], f"S4 image {p}: header")
    if not isinstance(header, dict):
        raise UserInputError(f"S4 image {p}: malformed header (not an object)")
    if REGIONS_KEY not in header:
        raise UserInputError(f"S4 image {p}: malformed header (no {REGIONS_KEY!r})")
    specs = _regions(header.pop(REGIONS_KEY), p)
    if _HEAD.size + hlen + sum(size for _, size in specs) + _CRC.size != len(data):
        raise UserInputError(f"S4 image {p}: region sizes do not match the file")
    regions: list[tuple[int, bytes | memoryview]] = []
    off = _HEAD.size + hlen
    for base, size in specs:
        regions.append((base, memoryview(data)[off : off + size]))
        off += size
    return S4Image(header, regions)


def _regions(raw: object, p: Path) -> list[tuple[int, int]]:
    """The region table: ``[[base, size], ...]`` of 64-bit guest-physical ranges, non-empty, in address order,
    not overlapping."""
    def bad(why: str, value: object) -> UserInputError:
        return UserInputError(f"S4 image {p}: malformed header ({REGIONS_KEY} {why}: {brief(value)})")

    if not isinstance(raw, list) or len(raw) > MAX_REGIONS:
        raise bad(f"is not a list of at most {MAX_REGIONS} [base, size] pairs", raw)
    out: list[tuple[int, int]] = []
    end = 0
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and all(type(v) is int for v in item)):
            raise bad("entry is not a [base, size] pair of integers", item)
        base, size = item
        if base < 0 or size <= 0 or base + size > ADDR_LIMIT:
            raise bad("entry is not a non-empty range of 64-bit guest addresses", item)
        if base < end:
            raise bad("entry overlaps or precedes the previous one", item)
        out.append((base, size))
        end = base + size
    return out


def load_memory(image: S4Image, memory: GuestMemory) -> None:
    """Copy the image's regions into a fresh machine's memory (same layout required)."""
    layout = [(r.base, r.size) for r in memory.regions]
    want = [(b, len(d)) for b, d in image.regions]
    if layout != want:
        raise UserInputError(f"S4 image memory layout {want} does not match the machine {layout}")
    for base, data in image.regions:
        memory.write(base, data)
