"""S4 image: atomic write, strict read, one-line errors for corrupt or truncated files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvirtio.errors import UserInputError
from pyvirtio.memory import GuestMemory
from pyvirtio.pm.image import load_memory, read_image, write_image


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


@pytest.mark.parametrize("offset", [0, 9, 30, 0x2000, -3])
def test_corrupt_image_is_a_clear_error(tmp_path: Path, offset: int) -> None:
    p, _ = make(tmp_path)
    data = bytearray(p.read_bytes())
    data[offset] ^= 0x5A
    p.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match="S4 image"):
        read_image(p)


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
