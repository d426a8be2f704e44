"""The variant initramfs: the newc reader gives back what the writer wrote, a file is swapped in place, and a
broken archive is one line."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from pyvirtio.vm.errors import ProvisionError
from pyvirtio.vm.initramfs import CpioEntry, CpioWriter, build_initramfs, read_cpio, replace_files


def _archive() -> bytes:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.directory("lib")
    w.char_device("dev/console", 5, 1)
    w.symlink("bin/sh", "busybox")
    w.file("lib/modules/virtio_gpu.ko", b"stock" * 3)
    w.file("init", b"#!/bin/sh\n", 0o755)
    w.trailer()
    return buf.getvalue()


def test_read_what_the_writer_wrote() -> None:
    entries = read_cpio(_archive())
    assert [e.name for e in entries] == ["lib", "dev/console", "bin/sh", "lib/modules/virtio_gpu.ko", "init"]
    assert entries[1].rdev == (5, 1) and entries[2].data == b"busybox" and entries[3].data == b"stock" * 3
    assert entries[4] == CpioEntry("init", 0o100755, b"#!/bin/sh\n")


def test_replace_a_module_keeps_everything_else(tmp_path: Path) -> None:
    mods = tmp_path / "m"
    mods.mkdir()
    for name in ("drm.ko", "virtio_gpu.ko"):
        (mods / name).write_bytes(name.encode())
    initrd = tmp_path / "initrd.img"
    build_initramfs(initrd, b"busybox", mods, ["drm.ko", "virtio_gpu.ko"], {"data/x": b"x"})
    stock = initrd.read_bytes()
    assert replace_files(stock, {}) == stock  # byte for byte
    variant = replace_files(stock, {"lib/modules/virtio_gpu.ko": b"ours"})
    before = read_cpio(gzip.decompress(stock))
    after = read_cpio(gzip.decompress(variant))
    assert [e.name for e in after] == [e.name for e in before]
    changed = [(b.name, a.data) for b, a in zip(before, after, strict=True) if a != b]
    assert changed == [("lib/modules/virtio_gpu.ko", b"ours")]
    with pytest.raises(ProvisionError, match=r"has no lib/modules/nope\.ko"):
        replace_files(stock, {"lib/modules/nope.ko": b""})


@pytest.mark.parametrize("bad", [b"", b"070702" + b"0" * 104, b"070701" + b"x" * 104,
                                 _archive()[:200], _archive().replace(b"TRAILER!!!", b"TRAILER!!?")])
def test_broken_archives_are_one_line(bad: bytes) -> None:
    with pytest.raises(ProvisionError) as e:
        read_cpio(bad)
    assert "\n" not in str(e.value) and str(e.value).startswith("initramfs: ")


def test_not_gzip() -> None:
    with pytest.raises(ProvisionError, match="not gzip-compressed"):
        replace_files(b"plain", {})
