"""Initramfs: module load order from modules.dep, newc cpio layout, /init contents."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from pyvirtio.vm.errors import ProvisionError
from pyvirtio.vm.initramfs import (
    CpioWriter,
    build_initramfs,
    module_name,
    parse_modules_dep,
    render_init,
    resolve_load_order,
)

# Deliberately shuffled: dependency lists are not in load order and lines are unsorted.
SAMPLE_DEP = (
    "kernel/drivers/gpu/drm/virtio/virtio-gpu.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/gpu/drm/drm_kms"
    "_helper.ko kernel/drivers/virtio/virtio.ko kernel/drivers/gpu/drm/drm.ko kernel/drivers/virtio/virtio_dma_buf.ko\n"
    "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n"
    "kernel/drivers/gpu/drm/drm_kms_helper.ko: kernel/drivers/gpu/drm/drm.ko\n"
    "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/"
    "drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko\n"
    "kernel/drivers/virtio/virtio_ring.ko:\n"
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n"
    "kernel/drivers/gpu/drm/drm.ko:\n"
    "kernel/drivers/virtio/virtio_dma_buf.ko:\n"
    "kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/dri"
    "vers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n"
)


def _names(paths: list[str]) -> list[str]:
    return [module_name(p) for p in paths]


def test_module_name_normalises() -> None:
    assert module_name("kernel/drivers/gpu/drm/virtio/virtio-gpu.ko") == "virtio_gpu"
    assert module_name("a/b/virtio-rng.ko.xz") == "virtio_rng"


def test_load_order_respects_every_dependency() -> None:
    dep = parse_modules_dep(SAMPLE_DEP)
    order = _names(resolve_load_order(dep, ["virtio_gpu", "virtio_pci", "virtio-rng"]))
    assert sorted(order) == sorted(dep)
    for name, (_, deps) in dep.items():
        for d in deps:
            assert order.index(module_name(d)) < order.index(name), (d, name)
    assert len(order) == len(set(order))


def test_load_order_keeps_wanted_order_where_free() -> None:
    order = _names(resolve_load_order(parse_modules_dep(SAMPLE_DEP), ["virtio_pci", "virtio_gpu"]))
    assert order.index("virtio_pci") < order.index("virtio_gpu")


def test_unknown_module_and_cycle_are_errors() -> None:
    dep = parse_modules_dep(SAMPLE_DEP)
    with pytest.raises(ProvisionError, match=r"not in modules\.dep"):
        resolve_load_order(dep, ["nope"])
    cyclic = parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n")
    with pytest.raises(ProvisionError, match="cycle"):
        resolve_load_order(cyclic, ["a"])
    with pytest.raises(ProvisionError, match="malformed"):
        parse_modules_dep("no colon here\n")


def _read_cpio(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    out = {}
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        body = name_start + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data[body:body + size], (rmaj, rmin))
        pos = body + size + (-size % 4)


def test_cpio_newc_round_trip() -> None:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.directory("bin")
    w.file("bin/x", b"abcde", 0o755)
    w.symlink("bin/sh", "busybox")
    w.char_device("dev/console", 5, 1)
    w.trailer()
    entries = _read_cpio(buf.getvalue())
    assert entries["bin/x"][1] == b"abcde" and entries["bin/x"][0] & 0o777 == 0o755
    assert entries["bin/sh"][1] == b"busybox"
    assert entries["dev/console"][2] == (5, 1)
    assert len(buf.getvalue()) % 4 == 0


def test_build_initramfs_contains_modules_in_order(tmp_path: Path) -> None:
    root = tmp_path / "mods"
    dep = parse_modules_dep(SAMPLE_DEP)
    for path, _ in dep.values():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(path.encode())
    order = resolve_load_order(dep, ["virtio_pci", "virtio_gpu"])
    out = tmp_path / "initrd.img"
    names = build_initramfs(out, b"BUSYBOX", root, order, {"data/x": b"1"})
    entries = _read_cpio(gzip.decompress(out.read_bytes()))
    init = entries["init"][1].decode()
    assert [ln.split()[1].rsplit("/", 1)[1] for ln in init.splitlines() if ln.startswith("insmod")] == names
    assert entries["bin/busybox"][1] == b"BUSYBOX" and entries["data/x"][1] == b"1"
    for n in names:
        assert f"lib/modules/{n}" in entries


def test_init_script_resume_and_ready() -> None:
    text = render_init(["a.ko"])
    assert "/sys/power/resume" in text and "PVINIT-READY" in text and text.startswith("#!/bin/busybox sh")
