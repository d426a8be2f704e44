"""Issue 9 defect 15: a hostile S4 image whose checksum is valid.

The digests only say the file is what was written, not that what was written is sane. Whatever the header
holds (wrong types, missing or unknown keys, huge or negative numbers, NaN, deep nesting, odd unicode, bytes
that are not UTF-8) and whatever the region table says (overlapping, huge, negative, not matching the file),
:func:`~pyvirtio.pm.system.boot_from_image` raises exactly one kind of exception, a one-line
:class:`~pyvirtio.errors.UserInputError`, or boots a system. Never KeyError, TypeError, ValueError,
OverflowError, RecursionError, struct.error, MemoryError.
"""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtio.errors import UserInputError
from pyvirtio.pm.config import ScenarioConfig
from pyvirtio.pm.image import ALIGN, CHUNK, MAGIC, REGIONS_KEY, VERSION, read_image
from pyvirtio.pm.profiles import parse_profile
from pyvirtio.pm.system import boot_from_image, build_system, image_header

_HEAD = struct.Struct("<8sIIQ")
DEEP = "\x00deep\x00"  # a marker value: replaced in the JSON text by a deeply nested array or object


def _padded(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def chunk_table(ram: bytes) -> bytes:
    """The digests of one region holding ``ram`` (padded with zeros to ALIGN), as pyvirtio.pm.image writes them."""
    padded = ram.ljust(_padded(len(ram)), b"\0")
    return b"".join(struct.pack("<Q", xxhash.xxh3_64_intdigest(padded[i : i + CHUNK]))
                    for i in range(0, len(padded), CHUNK))


def frame(head: bytes, header_text: bytes, table: bytes) -> bytes:
    """The part before the RAM: fixed fields, header, chunk table, zero padding to ALIGN."""
    prefix = head + header_text + table
    return prefix.ljust(_padded(len(prefix)), b"\0")


def trailer(prefix: bytes) -> bytes:
    return struct.pack("<Q", xxhash.xxh3_64_intdigest(prefix))


#: Room for the header in :class:`ImageFile`: edits that fit are written in place, padded with spaces.
HEADER_ROOM = 1 << 20


class Valid:
    """A valid image's parts: the stored header (with ``regions``), guest RAM (one region) and its chunk table."""

    def __init__(self) -> None:
        system = build_system(parse_profile("baseline"), ScenarioConfig(resources=1, resource_size=4096))
        mem = system.machine.memory
        assert len(mem.regions) == 1
        self.header: dict[str, Any] = image_header(system).to_dict()
        self.header[REGIONS_KEY] = [[r.base, r.size] for r in mem.regions]
        self.ram = b"".join(bytes(mem.read(r.base, r.size)) for r in mem.regions)
        self.table = chunk_table(self.ram)


class ImageFile:
    """One image file whose header is replaced in place (JSON allows trailing spaces), with the digest of the
    part before the RAM recomputed: a correctly checksummed image per example, at the cost of the header."""

    def __init__(self, valid: Valid, path: Path) -> None:
        self.valid, self.path = valid, path
        self._lay_out()

    def _head(self) -> bytes:
        return _HEAD.pack(MAGIC, VERSION, HEADER_ROOM, len(self.valid.table) // 8)

    def _lay_out(self) -> None:
        """(Re)write the file with HEADER_ROOM bytes of header room, the valid RAM and a digest slot."""
        with open(self.path, "wb") as f:
            f.write(frame(self._head(), b" " * HEADER_ROOM, self.valid.table))
            f.write(self.valid.ram.ljust(_padded(len(self.valid.ram)), b"\0"))
            f.write(bytes(8))
        self.laid_out = True

    def put(self, header_text: bytes) -> Path:
        """Make the file an image with ``header_text`` (padded) and the valid RAM; returns its path."""
        if len(header_text) > HEADER_ROOM:
            self.path.write_bytes(raw_image(header_text, self.valid.ram))
            self.laid_out = False  # the next in-place edit needs the standard layout back
            return self.path
        if not self.laid_out:
            self._lay_out()
        prefix = frame(self._head(), header_text.ljust(HEADER_ROOM), self.valid.table)
        with open(self.path, "r+b") as f:
            f.write(prefix)
            f.seek(-8, 2)
            f.write(trailer(prefix))
        return self.path


@pytest.fixture(scope="module")
def valid() -> Valid:
    return Valid()


@pytest.fixture(scope="module")
def image_file(valid: Valid, tmp_path_factory: pytest.TempPathFactory) -> ImageFile:
    return ImageFile(valid, tmp_path_factory.mktemp("fuzz") / "hib.img")


def raw_image(header_text: bytes, ram: bytes) -> bytes:
    """An image file around any header bytes and one region of ``ram``, correctly checksummed (what
    pyvirtio.pm.image writes for a header whose region table says so)."""
    table = chunk_table(ram)
    prefix = frame(_HEAD.pack(MAGIC, VERSION, len(header_text), len(table) // 8), header_text, table)
    return prefix + ram.ljust(_padded(len(ram)), b"\0") + trailer(prefix)


def dump(header: object, depth: int = 0) -> bytes:
    """``header`` as JSON text (NaN and Infinity as Python writes them); every :data:`DEEP` marker becomes an
    array or object nested ``depth`` levels deep."""
    text = json.dumps(header, sort_keys=True)
    marker = json.dumps(DEEP)
    if marker in text:
        nested = "[" * depth + "]" * depth if depth % 2 else '{"a":' * depth + "0" + "}" * depth
        text = text.replace(marker, nested)
    return text.encode("utf-8", "surrogatepass")


def boot_must_be_clean(path: Path) -> None:
    """Boot ``path``; the only acceptable failure is one line of UserInputError."""
    try:
        boot_from_image(path)
    except UserInputError as e:
        msg = str(e)
        assert msg and "\n" not in msg and len(msg) < 2000, msg


def paths(node: object, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every key path in a JSON document (dict keys and list indices), parents before children."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*prefix, k)
            yield from paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (*prefix, i)
            yield from paths(v, (*prefix, i))


HUGE = [2**31, 2**32, 2**63, 2**64, 2**64 + 1, 2**200, -1, -(2**63), -(2**200), 10**4000]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 1e400, -0.0]),
    st.text(max_size=20), st.sampled_from(["", "\u202e", "\ud800", "[red]x[/]", "[/]", "S4", "gpu", "q35", "\x00"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)


@st.composite
def mutated(draw: st.DrawFn, header: dict[str, Any]) -> tuple[object, int]:
    """A header with one to three edits: a value replaced (or made deep), a key deleted, a key added."""
    h: Any = copy.deepcopy(header)
    for _ in range(draw(st.integers(1, 3))):
        all_paths = list(paths(h)) or [()]
        path = draw(st.sampled_from(all_paths))
        parent: Any = h
        for k in path[:-1]:
            parent = parent[k]
        kind = draw(st.sampled_from(["replace", "replace", "deep", "delete", "add"]))
        if not path:
            h = draw(values)
        elif kind == "replace":
            parent[path[-1]] = draw(values)
        elif kind == "deep":
            parent[path[-1]] = DEEP
        elif kind == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(values)
        else:
            parent.append(draw(values))
        if not isinstance(h, (dict, list)):
            break
    return h, draw(st.sampled_from([50, 999, 1001, 5000, 100_000]))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_header_is_one_line_or_boots(valid: Valid, image_file: ImageFile, data: st.DataObject) -> None:
    """Issue 9 defect 15: any edit of a valid header (types, missing or unknown keys, huge numbers, NaN, deep
    nesting, unicode) in a correctly checksummed image is refused with one UserInputError line, never another
    exception. When the region table is untouched the image carries the real RAM, so edits of driver and
    allocator state reach the drivers' own validation."""
    header, depth = data.draw(mutated(valid.header))
    boot_must_be_clean(image_file.put(dump(header, depth)))


region = st.tuples(st.one_of(st.integers(-4, 1 << 22), st.sampled_from(HUGE)),
                   st.one_of(st.integers(-4, 1 << 14), st.sampled_from(HUGE)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(regions=st.one_of(st.lists(region, max_size=5), values), pad=st.integers(0, 1 << 15),
       matching=st.booleans())
def test_hostile_region_table_is_one_line(valid: Valid, tmp_path: Path, regions: object, pad: int,
                                          matching: bool) -> None:
    """Issue 9 defect 15: the container's region table (overlapping, huge, negative, not pairs, not matching
    the file, not matching the machine) is refused with one UserInputError line. With ``matching`` the file
    holds exactly the bytes the table asks for, so the check that catches it is not the file size."""
    header = {**valid.header, REGIONS_KEY: regions}
    if matching and isinstance(regions, list):
        sizes = [r[1] for r in regions if isinstance(r, tuple) and isinstance(r[1], int) and 0 < r[1] < 1 << 20]
        pad = sum(sizes) if len(sizes) == len(regions) else pad
    p = tmp_path / "hib.img"
    p.write_bytes(raw_image(dump(header), bytes(pad)))
    boot_must_be_clean(p)


FILE_LEVEL = {
    "not UTF-8": b'{"profile": "\xff\xfe"}',
    "not JSON": b"{",
    "a list": b"[]",
    "a number": b"1e400",
    "NaN": b"NaN",
    "nested 100000 deep": b"[" * 100_000 + b"]" * 100_000,
    "object nested deep": b'{"a":' * 50_000 + b"0" + b"}" * 50_000,
    "4301-digit integer": b'{"regions": [[0, ' + b"9" * 4301 + b"]]}",
    "duplicate keys": b'{"regions": [], "regions": [[0, 1]]}',
    "empty": b"",
}


@pytest.mark.parametrize("case", sorted(FILE_LEVEL))
def test_hostile_header_bytes_are_one_line(tmp_path: Path, case: str) -> None:
    """Issue 9 defect 15: the header bytes themselves (not UTF-8, not JSON, not an object, nested deeper than
    the recursion limit, integers longer than Python parses) are one UserInputError line naming the image."""
    p = tmp_path / "hib.img"
    p.write_bytes(raw_image(FILE_LEVEL[case], b""))
    with pytest.raises(UserInputError) as e:
        read_image(p)
    assert str(e.value).startswith(f"S4 image {p}: ") and "\n" not in str(e.value)
    boot_must_be_clean(p)


@pytest.mark.parametrize("field,value", [("version", 2**32 - 1), ("header length", 2**32 - 1),
                                         ("header length", 0)])
def test_hostile_file_level_fields_are_one_line(valid: Valid, tmp_path: Path, field: str, value: int) -> None:
    """Issue 9 defect 15: the fixed fields before the header (file format version, header length) are
    checked before they are used."""
    text = dump(valid.header)
    version, hlen = (value, len(text)) if field == "version" else (VERSION, value)
    prefix = frame(_HEAD.pack(MAGIC, version, hlen, len(valid.table) // 8), text, valid.table)
    p = tmp_path / "hib.img"
    p.write_bytes(prefix + valid.ram + trailer(prefix))
    boot_must_be_clean(p)
    with pytest.raises(UserInputError):
        boot_from_image(p)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(magic=st.one_of(st.just(MAGIC), st.binary(min_size=8, max_size=8)),
       version=st.one_of(st.just(VERSION), st.integers(0, 2**32 - 1)),
       hlen=st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)),
       count=st.one_of(st.integers(0, 4), st.integers(0, 2**64 - 1)), tail=st.binary(max_size=96),
       ram=st.sampled_from([0, 1, ALIGN]))
def test_any_file_level_fields_are_one_line(tmp_path: Path, magic: bytes, version: int, hlen: int, count: int,
                                            tail: bytes, ram: int) -> None:
    """Issue 9 defect 15 (property): any magic, file format version, header length and chunk count before any
    bytes, laid out and checksummed as the reader expects where that is possible, is read or refused in one
    UserInputError line (never struct.error, IndexError or MemoryError)."""
    head = _HEAD.pack(magic, version, hlen, count)
    body = frame(head, tail, b"") if len(tail) + _HEAD.size < 1 << 20 else head + tail
    p = tmp_path / "hib.img"
    p.write_bytes(body + bytes(ram) + trailer(body))
    boot_must_be_clean(p)


def test_the_valid_image_boots(valid: Valid, image_file: ImageFile) -> None:
    """The fuzzers' starting point is itself a bootable image (so their edits are what gets refused), and the
    in-place rewrite makes a correctly checksummed file, laid out byte for byte as write_image lays it out."""
    from pyvirtio.memory import GuestMemory
    from pyvirtio.pm.image import write_image

    mem = GuestMemory(len(valid.ram))
    mem.write(0, valid.ram)
    header = {k: v for k, v in valid.header.items() if k != REGIONS_KEY}
    written = image_file.path.parent / "written.img"
    write_image(written, header, mem)
    assert written.read_bytes() == raw_image(json.dumps(valid.header, sort_keys=True).encode(), valid.ram)
    system = boot_from_image(image_file.put(dump(valid.header)))
    assert system.profile.name == "baseline" and [d.name for d in system.drivers] == ["gpu", "rng"]
