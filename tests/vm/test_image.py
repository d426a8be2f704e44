"""Frames, PPM -> PNG, comparison, placeholder detection; the scratch disk's MBR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyvirtio.vm import disk, image
from pyvirtio.vm.errors import VmError


def _write_ppm(path: Path, rgb: np.ndarray) -> None:
    h, w, _ = rgb.shape
    path.write_bytes(b"P6\n%d %d\n255\n" % (w, h) + rgb.astype(np.uint8).tobytes())


def test_ppm_to_png_keeps_pixels(tmp_path: Path) -> None:
    frame = image.make_frame("a", 64, 16)
    _write_ppm(tmp_path / "s.ppm", frame)
    got = image.ppm_to_png(tmp_path / "s.ppm", tmp_path / "s.png")
    assert image.same_image(got, frame)
    with Image.open(tmp_path / "s.png") as im:
        assert im.format == "PNG" and im.size == (64, 16)
        assert image.same_image(np.asarray(im.convert("RGB")), frame)


def test_bad_ppm_is_a_vm_error(tmp_path: Path) -> None:
    (tmp_path / "bad.ppm").write_bytes(b"nope")
    with pytest.raises(VmError, match="cannot read screendump"):
        image.read_ppm(tmp_path / "bad.ppm")


def test_frames_differ_and_pack_as_xrgb() -> None:
    a, b = image.make_frame("a", 32, 8), image.make_frame("b", 32, 8)
    assert not image.same_image(a, b)
    packed = image.frame_to_xrgb8888(b)
    assert len(packed) == 32 * 8 * 4
    assert tuple(packed[:4]) == (int(b[0, 0, 2]), int(b[0, 0, 1]), int(b[0, 0, 0]), 0)
    with pytest.raises(ValueError):
        image.make_frame("z")


def test_placeholder_detection() -> None:
    ph = np.zeros((800, 1280, 3), dtype=np.uint8)
    ph[390:400, 520:750] = 170  # grey text in the middle
    assert image.describe(ph).placeholder
    assert not image.describe(image.make_frame("a")).placeholder
    assert not image.describe(np.zeros((8, 8, 3), dtype=np.uint8)).placeholder  # all black: not text


def test_same_image_shapes() -> None:
    a = image.make_frame("a", 8, 8)
    assert not image.same_image(a, a[:4])
    assert not image.same_image(a, None)


def test_blk_pattern_is_deterministic() -> None:
    assert image.blk_pattern() == image.blk_pattern()
    assert len(image.blk_pattern()) == image.BLK_PATTERN_SIZE


def test_mbr_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    disk.create_disk(path)
    assert path.stat().st_size == disk.DISK_MB * 1024 * 1024
    parts = disk.parse_mbr(path.read_bytes()[:512])
    assert parts == [disk.SWAP, disk.SCRATCH]
    assert disk.SWAP.offset + disk.SWAP.size <= disk.SCRATCH.offset
    assert disk.SCRATCH.offset + disk.SCRATCH.size <= path.stat().st_size
    with pytest.raises(ValueError):
        disk.parse_mbr(bytes(512))
