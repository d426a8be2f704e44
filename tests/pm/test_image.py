"""S4 image: atomic write, strict read, one-line errors for corrupt or truncated files, another file format
version or another header version; the typed header (ImageHeader) round-trips and rejects bad input."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyvirtio.errors import UserInputError
from pyvirtio.memory import GuestMemory
from pyvirtio.pm.image import ALIGN, VERSION, load_memory, read_image, write_image
from pyvirtio.pm.image_header import HEADER_VERSION, ImageHeader


def make(tmp_path: Path) -> tuple[Path, GuestMemory]:
    mem = GuestMemory.from_ranges([(0, 0x4000), (0x100000, 0x2000)])
    mem.write(0x10, b"hello")
    mem.write(0x100100, b"world")
    p = tmp_path / "img"
    write_image(p, {"profile": "baseline", "drivers": []}, mem)
    return p, mem


def test_round_trip(tmp_path: Path) -> None:
    p, _ = make(tmp_path)
    img = read_image(p)
    assert img.header["profile"] == "baseline"
    fresh = GuestMemory.from_ranges([(0, 0x4000), (0x100000, 0x2000)])
    load_memory(img, fresh)
    assert fresh.read(0x10, 5) == b"hello" and fresh.read(0x100100, 5) == b"world"
    assert [f.name for f in tmp_path.iterdir()] == ["img"]  # no temporary left behind


@pytest.mark.parametrize("cut", [0, 10, 20, 200, -5, -1])
def test_truncated_image_is_a_clear_error(tmp_path: Path, cut: int) -> None:
    p, _ = make(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[:cut] if cut >= 0 else data[:len(data) + cut])
    with pytest.raises(UserInputError, match="S4 image") as e:
        read_image(p)
    assert "\n" not in str(e.value)


# the fixed fields, the header, the chunk table, the padding before the RAM, "hello" in region 0, the zero
# padding after region 0 (a hole in the file), region 1, the trailing digest
@pytest.mark.parametrize("offset", [0, 9, 30, 0x2000, ALIGN + 0x10, ALIGN + 0x5000, 2 * ALIGN + 0x100, -3])
def test_corrupt_image_is_a_clear_error(tmp_path: Path, offset: int) -> None:
    p, _ = make(tmp_path)
    data = bytearray(p.read_bytes())
    data[offset] ^= 0x5A
    p.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match="S4 image") as e:
        read_image(p)
    assert "\n" not in str(e.value)


def test_unwritten_memory_is_a_hole_and_reads_back_as_zeros(tmp_path: Path) -> None:
    """Guest RAM the guest never wrote (or zeroed) costs nothing in the file: it is a hole, verified without
    being read, and maps back as zeros."""
    mem = GuestMemory(64 << 20)
    mem.write(3 << 20, b"data")
    mem.write(40 << 20, b"more")
    mem.fill(40 << 20, 4, 0)  # written, then zeroed again: the page goes back to the kernel
    p = tmp_path / "img"
    size = write_image(p, {}, mem)
    assert size == p.stat().st_size > 64 << 20
    assert os.stat(p).st_blocks * 512 < 4 << 20  # one chunk of data, the header and the table
    fresh = GuestMemory(64 << 20)
    load_memory(read_image(p), fresh)
    assert fresh.read(3 << 20, 4) == b"data" and fresh.read(40 << 20, 4) == bytes(4)
    assert fresh.read((64 << 20) - 8, 8) == bytes(8)


def test_loaded_memory_is_copy_on_write(tmp_path: Path) -> None:
    """After load_memory the guest's writes stay in its memory: the image file is unchanged, views taken before
    the load see the loaded bytes (the buffer does not move), and zeroing still zeroes."""
    p, _ = make(tmp_path)
    before = p.read_bytes()
    fresh = GuestMemory.from_ranges([(0, 0x4000), (0x100000, 0x2000)])
    view = fresh.view(0x10, 5)
    load_memory(read_image(p), fresh)
    assert bytes(view) == b"hello"
    fresh.write(0x10, b"HELLO")
    fresh.fill(0x100000, 0x2000)
    assert fresh.read(0x10, 5) == b"HELLO" and fresh.read(0x100100, 5) == bytes(5)
    assert p.read_bytes() == before
    view.release()


def test_a_memfd_region_keeps_its_memfd(tmp_path: Path) -> None:
    """A memfd region (another process maps it) gets the bytes copied into the same memfd."""
    from pyvirtio.memory import Backing

    p, _ = make(tmp_path)
    fresh = GuestMemory.from_ranges([(0, 0x4000), (0x100000, 0x2000)], backing=Backing.MEMFD)
    fd = fresh.regions[0].fd
    load_memory(read_image(p), fresh)
    assert fresh.regions[0].fd == fd and os.pread(fd, 5, 0x10) == b"hello"
    assert fresh.read(0x100100, 5) == b"world"


def test_layout_mismatch_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    p, _ = make(tmp_path)
    other = GuestMemory(0x8000)
    with pytest.raises(UserInputError, match="layout"):
        load_memory(read_image(p), other)
    assert other.read(0x10, 5) == bytes(5)


def test_interrupted_write_leaves_the_old_image(tmp_path: Path) -> None:
    p, mem = make(tmp_path)
    old = p.read_bytes()

    class Boom(dict):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise KeyboardInterrupt

    with pytest.raises(TypeError):
        write_image(p, {"x": object()}, mem)  # not JSON: fails before the rename
    assert p.read_bytes() == old
    assert [f.name for f in tmp_path.iterdir()] == ["img"]


def test_another_file_format_version_is_one_line_naming_it(tmp_path: Path) -> None:
    """An image written by another version of the file format: one line naming that version and ours."""
    p, _ = make(tmp_path)
    data = bytearray(p.read_bytes())
    data[8:12] = (7).to_bytes(4, "little")  # the u32 version after the magic
    p.write_bytes(bytes(data))
    with pytest.raises(UserInputError) as e:
        read_image(p)
    assert str(e.value) == f"S4 image {p}: file format version 7 is not supported (this pyvirtio reads version 2)"
    assert VERSION == 2


def test_an_image_of_file_format_version_1_is_refused_naming_it(tmp_path: Path) -> None:
    """Images written before XXH3 and aligned regions (file format version 1: CRC-32 of the whole file) are
    refused in one line naming the version (an S4 image lives only as long as one hibernation)."""
    import struct
    import zlib

    raw = json.dumps({"header_version": 3, "regions": [[0, 4096]]}).encode()
    body = b"PYVIRTS4" + struct.pack("<II", 1, len(raw)) + raw + bytes(4096)
    p = tmp_path / "v1.img"
    p.write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(UserInputError) as e:
        read_image(p)
    assert str(e.value) == f"S4 image {p}: file format version 1 is not supported (this pyvirtio reads version 2)"


def test_the_container_owns_the_regions_key(tmp_path: Path) -> None:
    p, _ = make(tmp_path)
    assert "regions" not in read_image(p).header
    with pytest.raises(ValueError, match="regions"):
        write_image(tmp_path / "x", {"regions": []}, GuestMemory(0x1000))


# -- the header: ImageHeader ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def header() -> dict[str, Any]:
    from pyvirtio.pm.config import ScenarioConfig
    from pyvirtio.pm.profiles import parse_profile
    from pyvirtio.pm.system import build_system, image_header

    system = build_system(parse_profile("freeze-mode+s4-replay"), ScenarioConfig(resources=1))
    return image_header(system).to_dict()


def test_header_round_trip(header: dict[str, Any]) -> None:
    """to_dict -> JSON -> from_dict -> to_dict is the identity, and the kinds are stored by value."""
    stored = json.loads(json.dumps(header))
    h = ImageHeader.from_dict(stored)
    assert json.loads(json.dumps(h.to_dict())) == stored
    assert header["gpu_driver"] == "s4-replay" and header["header_version"] == HEADER_VERSION
    assert h.profile.name == "freeze-mode+s4-replay" and [d.name for d in h.drivers] == ["gpu", "rng"]


@pytest.mark.parametrize("version", [1, 2, 3, HEADER_VERSION + 1, None])
def test_another_header_version_is_one_line_naming_it(header: dict[str, Any], version: int | None) -> None:
    """An image whose header has another version (none at all: version 1, which stored class paths; 2: the
    driver states before the typed GPU and rng state)."""
    old = copy.deepcopy(header)
    if version is None:
        del old["header_version"]
    else:
        old["header_version"] = version
    with pytest.raises(UserInputError) as e:
        ImageHeader.from_dict(old, source="hib.img")
    want = 1 if version is None else version
    assert str(e.value) == (f"S4 image hib.img: header version {want} is not supported "
                            f"(this pyvirtio reads version {HEADER_VERSION})")


def test_boot_from_an_image_of_another_header_version_is_refused(header: dict[str, Any], tmp_path: Path) -> None:
    from pyvirtio.pm.system import boot_from_image

    p = tmp_path / "old.img"
    write_image(p, {**header, "header_version": 1}, GuestMemory(0x1000))
    with pytest.raises(UserInputError, match=r"header version 1 is not supported") as e:
        boot_from_image(p)
    assert "\n" not in str(e.value)


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(h: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for k in parents:
            h = h[int(k) if k.isdigit() else k]
        if value is _DELETE:
            del h[last]
        else:
            h[last] = value
    return edit


_DELETE = object()
BAD_HEADERS = {
    "missing field": (_set("allocator", _DELETE), "missing field"),
    "unknown field": (_set("class_path", "pyvirtio.guest.gpu.driver.GpuDriver"), "unknown field"),
    "unknown profile": (_set("profile", "turbo"), "unknown profile"),
    "bit out of range": (_set("freeze_mode_bit", 50), "44..49"),
    "bool for an int": (_set("config.scanouts", True), "config.scanouts: expected int"),
    "string for an int": (_set("config.seed", "0"), "config.seed: expected int"),
    "config field missing": (_set("config.width", _DELETE), "config: fields"),
    "config out of range": (_set("config.scanouts", 99), "--scanouts must be"),
    "kernel differs from the plan": (_set("kernel.pm_no_reset", False), "kernel configuration does not match"),
    "unknown driver kind": (_set("gpu_driver", "pyvirtio.guest.gpu.driver.GpuDriver"), "GpuDriverKind"),
    "driver kind differs from the plan": (_set("gpu_driver", "no-hooks"), "gpu driver kind 'no-hooks'"),
    "driver state not an object": (_set("drivers.1.state", []), "drivers[].state: expected dict"),
    "a driver missing": (lambda h: h["drivers"].pop(), "expected driver states for 'gpu' and 'rng'"),
    "a driver twice": (lambda h: h["drivers"].append(h["drivers"][0]), "expected driver states"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_header_is_one_line_naming_the_problem(header: dict[str, Any], case: str) -> None:
    """Untrusted input: every malformed header is one UserInputError line, never a half-built system."""
    edit, needle = BAD_HEADERS[case]
    bad = copy.deepcopy(header)
    edit(bad)
    with pytest.raises(UserInputError) as e:
        ImageHeader.from_dict(bad, source="hib.img")
    msg = str(e.value)
    assert msg.startswith("S4 image hib.img: ") and needle in msg and "\n" not in msg, msg


def test_header_that_is_not_an_object_is_one_line() -> None:
    with pytest.raises(UserInputError, match=r"^S4 image hib.img: malformed header \(not an object\)$"):
        ImageHeader.from_dict([], source="hib.img")
