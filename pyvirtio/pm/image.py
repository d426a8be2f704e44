"""The S4 hibernation image: guest memory plus guest-side kernel state, in one self-validating file.

Layout (file format version :data:`VERSION`, little-endian)::

    magic "PYVIRTS4" | u32 version | u32 header length | u64 chunk count
    | header (JSON, UTF-8) | chunk table: u64 XXH3-64 digest per chunk | zero padding to ALIGN
    | each region's bytes, in header order, each padded with zeros to a multiple of ALIGN
    | u64 XXH3-64 digest of everything before the first region

Every byte is covered: the last field checks the fixed fields, the header and the chunk table; the table has one
digest per :data:`CHUNK` bytes of each padded region (the last chunk of a region may be shorter). Chunks the
guest never wrote (:meth:`~pyvirtio.memory.Region.written_chunks`, or found all zero) are not written: the file
has a hole there, which reads as zeros. Regions start on :data:`ALIGN` boundaries so that
:func:`load_memory` can map them copy-on-write instead of copying them.

This module is the container: it stores any JSON header object (its content is
:class:`~pyvirtio.pm.image_header.ImageHeader`'s business) plus the key ``regions`` it owns, the list of
``[base, size]`` of guest RAM. The file is written atomically (temporary file, fsync, rename); reading checks the
magic, the file format version (another version is one line naming it), the sizes and the digests, in one
streaming pass that holds at most one chunk in memory, then treats the content as untrusted all the same (a
valid digest says the file is what was written, not that it is sane): the header is bounded JSON
(:func:`~pyvirtio.atomicio.loads_json`: UTF-8, strict, nested at most :data:`~pyvirtio.atomicio.MAX_JSON_DEPTH`
deep) and must be an object; the region table must be at most :data:`MAX_REGIONS` ``[base, size]`` integer pairs
of non-empty 64-bit ranges in address order, not overlapping, whose sizes match the chunk count and the file. Any
problem is one :class:`~pyvirtio.errors.UserInputError` line naming it. Nothing is half-restored: the caller gets
a fully verified image or an error. XXH3 (the ``xxhash`` package) runs at memory speed; it detects corruption and
truncation, not tampering (neither did the CRC-32 of version 1).
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import struct
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from pyvirtio.atomicio import atomic_open, brief, loads_json
from pyvirtio.errors import UserInputError
from pyvirtio.memory import GuestMemory

MAGIC = b"PYVIRTS4"
#: The file format version (the layout above); the header's content has its own version. Version 1 had a CRC-32
#: of the whole file and unaligned regions.
VERSION = 2
#: The header key the container owns.
REGIONS_KEY = "regions"
_HEAD = struct.Struct("<8sIIQ")
_DIGEST = struct.Struct("<Q")
MAX_HEADER = 16 << 20
#: Most RAM regions an image may list (a machine has one or two).
MAX_REGIONS = 64
#: Guest-physical addresses are 64-bit.
ADDR_LIMIT = 1 << 64
#: Bytes of region per digest (and the granularity of the holes of unwritten memory).
CHUNK = 1 << 20
#: Most bytes of consecutive data chunks written with one system call.
_WRITE_RUN = 16 << 20
#: Where regions start in the file and what their sizes are padded to (a multiple of every page size Linux uses,
#: so a region can be mapped).
ALIGN = 1 << 16


def _padded(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def _chunk_count(size: int) -> int:
    return -(-_padded(size) // CHUNK)


_zero_digests: dict[int, int] = {}


def _zero_digest(n: int) -> int:
    """XXH3-64 of ``n`` zero bytes (a chunk that is a hole)."""
    d = _zero_digests.get(n)
    if d is None:
        d = _zero_digests[n] = xxhash.xxh3_64_intdigest(bytes(n))
    return d


class _OpenImage:
    """The verified image file kept open (and mapped read-only) while an :class:`S4Image` refers to it."""

    def __init__(self, fd: int) -> None:
        self.mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        self.fd = os.dup(fd)  # its own descriptor, closed with it
        weakref.finalize(self, os.close, self.fd)
        self.offsets: list[int] = []  # file offset of each region


@dataclass
class S4Image:
    """A parsed image: the caller's header (without ``regions``) and each RAM region's base and bytes (views of
    the read-only mapped file for a read image: reading them costs what is read)."""

    header: dict[str, Any]
    regions: list[tuple[int, bytes | memoryview]] = field(default_factory=list)
    _file: _OpenImage | None = field(default=None, repr=False)


def write_image(path: str | Path, header: dict[str, Any], memory: GuestMemory) -> int:
    """Write ``memory`` and ``header`` atomically; returns the file size. ``header`` must be JSON and must not
    use the key ``regions``. Only the chunks that may hold data are read and written (large sequential writes
    straight from guest memory, no copy); the digests are computed in the same pass."""
    if REGIONS_KEY in header:
        raise ValueError(f"the image header key {REGIONS_KEY!r} is the container's")
    hdr = dict(header)
    hdr[REGIONS_KEY] = [[r.base, r.size] for r in memory.regions]
    raw = json.dumps(hdr, sort_keys=True).encode()
    count = sum(_chunk_count(r.size) for r in memory.regions)
    start = _padded(_HEAD.size + len(raw) + _DIGEST.size * count)
    digests = np.zeros(count, dtype="<u8")
    k = 0
    pos = start
    with atomic_open(path) as f:
        fd = f.fileno()
        for r in memory.regions:
            written = r.written_chunks(CHUNK)
            padded = _padded(r.size)
            view = memoryview(r.mm)
            run = 0  # start of the bytes hashed but not written yet (a run of data chunks, written at once)
            try:
                for j, off in enumerate(range(0, padded, CHUNK)):
                    n = min(CHUNK, padded - off)
                    digest, data = _chunk(view[off : off + n], n, written is None or written[j])
                    digests[k] = digest
                    k += 1
                    if not data or off + n - run >= _WRITE_RUN:
                        _pwrite_all(fd, view[run : off + n if data else off], pos + run)
                        run = off + n
                _pwrite_all(fd, view[run:padded], pos + run)
            finally:
                view.release()
            pos += padded
        prefix = _HEAD.pack(MAGIC, VERSION, len(raw), count) + raw + digests.tobytes()
        prefix += bytes(start - len(prefix))
        _pwrite_all(fd, prefix, 0)
        _pwrite_all(fd, _DIGEST.pack(xxhash.xxh3_64_intdigest(prefix)), pos)
    return pos + _DIGEST.size


def _chunk(data: memoryview, n: int, maybe_data: bool) -> tuple[int, bool]:
    """The digest of one chunk (``data`` may stop short of ``n`` at the end of a region: the rest is zero padding)
    and whether it holds data (False: all zeros, left as a hole)."""
    if not maybe_data:
        return _zero_digest(n), False
    h = xxhash.xxh3_64(data)
    if len(data) < n:
        h.update(bytes(n - len(data)))
    digest = h.intdigest()
    if digest == _zero_digest(n) and not np.frombuffer(data, dtype=np.uint8).any():
        return digest, False
    return digest, True


def _pwrite_all(fd: int, data: bytes | memoryview, at: int) -> None:
    """Write all of ``data`` at file offset ``at`` (nothing for empty data: a hole stays a hole)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


def read_image(path: str | Path) -> S4Image:
    """Parse and verify an image; raises :class:`UserInputError` with one line naming the problem. The file
    stays open (mapped read-only) while the returned image is alive."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise UserInputError(f"S4 image {p}: cannot read ({e.strerror})") from None
    try:
        return _read(fd, p)
    except OSError as e:
        raise UserInputError(f"S4 image {p}: cannot read ({e.strerror})") from None
    finally:
        os.close(fd)


def _read(fd: int, p: Path) -> S4Image:
    size = os.fstat(fd).st_size
    if size < _HEAD.size + _DIGEST.size:
        raise UserInputError(f"S4 image {p}: truncated ({size} bytes)")
    magic, version, hlen, count = _HEAD.unpack(os.pread(fd, _HEAD.size, 0))
    if magic != MAGIC:
        raise UserInputError(f"S4 image {p}: not a pyvirtio hibernation image (bad magic)")
    if version != VERSION:
        raise UserInputError(f"S4 image {p}: file format version {version} is not supported "
                             f"(this pyvirtio reads version {VERSION})")
    if hlen > MAX_HEADER or count > size // _DIGEST.size:
        raise UserInputError(f"S4 image {p}: truncated header")
    start = _padded(_HEAD.size + hlen + _DIGEST.size * count)
    if start + _DIGEST.size > size:
        raise UserInputError(f"S4 image {p}: truncated header")
    prefix = os.pread(fd, start, 0)
    (digest,) = _DIGEST.unpack(os.pread(fd, _DIGEST.size, size - _DIGEST.size))
    if len(prefix) != start or xxhash.xxh3_64_intdigest(prefix) != digest:
        raise UserInputError(f"S4 image {p}: checksum mismatch (corrupt or truncated)")
    header = loads_json(prefix[_HEAD.size : _HEAD.size + hlen], f"S4 image {p}: header")
    if not isinstance(header, dict):
        raise UserInputError(f"S4 image {p}: malformed header (not an object)")
    if REGIONS_KEY not in header:
        raise UserInputError(f"S4 image {p}: malformed header (no {REGIONS_KEY!r})")
    specs = _regions(header.pop(REGIONS_KEY), p)
    if (sum(_chunk_count(n) for _, n in specs) != count
            or start + sum(_padded(n) for _, n in specs) + _DIGEST.size != size):
        raise UserInputError(f"S4 image {p}: region sizes do not match the file")
    table = np.frombuffer(prefix, dtype="<u8", count=count, offset=_HEAD.size + hlen)
    opened = _OpenImage(fd)
    view = memoryview(opened.mm)
    regions: list[tuple[int, bytes | memoryview]] = []
    off, k = start, 0
    for base, n in specs:
        k = _verify_region(fd, opened.mm, view, off, _padded(n), table, k, base, p)
        opened.offsets.append(off)
        regions.append((base, view[off : off + n]))
        off += _padded(n)
    return S4Image(header, regions, opened)


def _verify_region(fd: int, mm: mmap.mmap, view: memoryview, start: int, size: int, table: Any, k: int,
                   base: int, p: Path) -> int:
    """Check the digests of the chunks of one region at file offset ``start``; a chunk that lies in a hole is zero
    without reading it. Pages are dropped from this process once hashed. Returns the next table index."""
    data_at = -1  # the first data byte at or after the current chunk (SEEK_DATA), refreshed once passed
    for off in range(0, size, CHUNK):
        n = min(CHUNK, size - off)
        at = start + off
        if data_at < at:
            data_at = _next_data(fd, at)
        if data_at >= at + n:
            got = _zero_digest(n)
        else:
            got = xxhash.xxh3_64_intdigest(view[at : at + n])
            mm.madvise(mmap.MADV_DONTNEED, at, n)
        if got != int(table[k]):
            raise UserInputError(f"S4 image {p}: checksum mismatch in guest memory at {base + off:#x} "
                                 f"(corrupt or truncated)")
        k += 1
    return k


def _next_data(fd: int, at: int) -> int:
    """The first offset >= ``at`` that is not in a hole; ``at`` itself when the file system cannot tell."""
    try:
        return os.lseek(fd, at, os.SEEK_DATA)
    except OSError as e:
        return 1 << 63 if e.errno == errno.ENXIO else at


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
    """Make a fresh machine's memory the image's regions (same layout required). Regions of a read image are
    mapped copy-on-write from the file (:meth:`~pyvirtio.memory.Region.load_file`): nothing is copied until the
    guest writes a page; the file must stay unchanged while the machine runs (a deleted file is fine)."""
    layout = [(r.base, r.size) for r in memory.regions]
    want = [(b, len(d)) for b, d in image.regions]
    if layout != want:
        raise UserInputError(f"S4 image memory layout {want} does not match the machine {layout}")
    src = image._file
    for i, (region, (base, data)) in enumerate(zip(memory.regions, image.regions, strict=True)):
        if src is not None:
            region.load_file(src.fd, src.offsets[i])
        else:
            memory.write(base, data)
