"""Guest initramfs: module load order from ``modules.dep``, a newc cpio writer, and the ``/init`` script.

The guest is a busybox-static userland plus the kernel modules the harness needs. ``/init`` loads the modules
in dependency order, optionally hands a swap device to ``/sys/power/resume`` (S4), then runs a shell on the
serial console.
"""

from __future__ import annotations

import gzip
import io
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyvirtio.vm.errors import ProvisionError

#: Modules the harness needs; dependencies are added from ``modules.dep``.
WANTED_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_gpu", "virtio_blk", "virtio_input", "virtio_rng", "evdev")

#: Printed by ``/init`` (see :func:`render_init`) and matched by the harness.
INIT_READY = "PVINIT-READY"
INIT_RESUME_FAILED = "PVINIT-RESUME-FAILED"
INIT_INSMOD_FAILED = "PVINIT-INSMOD-FAILED"
#: Kernel command-line key naming the block device (``vda1``) whose swap holds a hibernation image.
RESUME_ARG = "pyvirtio.resume"

_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


def module_name(path: str) -> str:
    """``kernel/drivers/gpu/drm/virtio/virtio-gpu.ko`` -> ``virtio_gpu`` (the kernel's normalised name)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """Parse ``modules.dep``: name -> (relative path, paths of the modules it depends on)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path, sep, rest = line.partition(":")
        if not sep or not path:
            raise ProvisionError(f"modules.dep line {lineno} is malformed: {raw!r}")
        out[module_name(path)] = (path.strip(), rest.split())
    return out


def resolve_load_order(dep: Mapping[str, tuple[str, Sequence[str]]], wanted: Iterable[str]) -> list[str]:
    """Module paths in an order where every module comes after all modules it depends on.

    A depth-first post-order walk over the dependency graph; the wanted modules keep their relative order
    where the graph allows. Unknown modules and dependency cycles are errors.
    """
    order: list[str] = []
    done: set[str] = set()
    active: list[str] = []

    def visit(name: str, needed_by: str | None) -> None:
        if name in done:
            return
        if name in active:
            cycle = " -> ".join([*active[active.index(name):], name])
            raise ProvisionError(f"dependency cycle in modules.dep: {cycle}")
        if name not in dep:
            who = f" (needed by {needed_by})" if needed_by else ""
            raise ProvisionError(f"module {name}{who} is not in modules.dep")
        active.append(name)
        path, deps = dep[name]
        for d in deps:
            visit(module_name(d), name)
        active.pop()
        done.add(name)
        order.append(path)

    for w in wanted:
        visit(w.replace("-", "_"), None)
    return order


# ----------------------------------------------------------------------------------------------------------
# newc cpio
# ----------------------------------------------------------------------------------------------------------


@dataclass
class CpioWriter:
    """Writes a ``newc`` (SVR4, no CRC) cpio archive, the format the kernel unpacks as an initramfs."""

    out: io.BufferedIOBase | io.BytesIO
    _ino: int = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name_b = name.lstrip("/").encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(name_b), 0)
        self._ino += 1
        hdr = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
        self.out.write(hdr + name_b + b"\0" * (-(len(hdr) + len(name_b)) % 4))
        self.out.write(data + b"\0" * (-len(data) % 4))

    def directory(self, name: str, perm: int = 0o755) -> None:
        """A directory entry (parents first: cpio does not create them)."""
        self._entry(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        """A regular file with ``data``."""
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        """A symbolic link to ``target``."""
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        """A character device node ``major:minor``."""
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def trailer(self) -> None:
        """The ``TRAILER!!!`` entry that ends the archive (write it last)."""
        self._entry("TRAILER!!!", 0)


@dataclass(frozen=True)
class CpioEntry:
    """One entry of a ``newc`` archive, as :func:`read_cpio` finds it."""

    name: str
    mode: int
    data: bytes
    rdev: tuple[int, int] = (0, 0)


_NEWC_HEADER = 110  # "070701" + 13 fields of 8 hex digits


def read_cpio(data: bytes) -> list[CpioEntry]:
    """The entries of a ``newc`` archive up to its trailer (what :class:`CpioWriter` writes). Anything malformed
    (a bad magic, a field that is not hex, a size past the end, no trailer) is a one-line
    :class:`ProvisionError`."""
    out: list[CpioEntry] = []
    pos = 0
    while True:
        hdr = data[pos:pos + _NEWC_HEADER]
        if len(hdr) < _NEWC_HEADER or hdr[:6] != b"070701":
            raise ProvisionError(f"initramfs: no newc cpio header at offset {pos}")
        try:
            f = [int(hdr[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise ProvisionError(f"initramfs: cpio header at offset {pos} has a field that is not hex") from None
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        name_at = pos + _NEWC_HEADER
        data_at = name_at + namesize + (-(_NEWC_HEADER + namesize) % 4)
        end = data_at + size
        if namesize < 1 or end > len(data):
            raise ProvisionError(f"initramfs: cpio entry at offset {pos} runs past the end of the archive")
        name = data[name_at:name_at + namesize - 1].decode(errors="replace")
        if name == "TRAILER!!!":
            return out
        out.append(CpioEntry(name, mode, data[data_at:end], (rmaj, rmin)))
        pos = end + (-size % 4)


def replace_files(initrd: bytes, files: Mapping[str, bytes]) -> bytes:
    """A gzip-compressed initramfs like ``initrd`` (one :func:`build_initramfs` wrote) with the contents of the
    entries named in ``files`` replaced (names as in the archive, ``lib/modules/virtio_gpu.ko``); every other
    entry is copied as it is. A name that is not in the archive is a :class:`ProvisionError`."""
    try:
        raw = gzip.decompress(initrd)
    except (OSError, EOFError) as e:
        raise ProvisionError(f"initramfs is not gzip-compressed: {e}") from None
    entries = read_cpio(raw)
    missing = sorted(set(files) - {e.name for e in entries})
    if missing:
        raise ProvisionError(f"initramfs has no {', '.join(missing)} to replace")
    buf = io.BytesIO()
    w = CpioWriter(buf)
    for entry in entries:
        w._entry(entry.name, entry.mode, files.get(entry.name, entry.data), entry.rdev)
    w.trailer()
    return gzip.compress(buf.getvalue(), compresslevel=6, mtime=0)


def render_init(module_files: Sequence[str]) -> str:
    """The guest's ``/init`` script (busybox sh). ``module_files`` are basenames under ``/lib/modules``."""
    insmods = "\n".join(
        f"insmod /lib/modules/{m} || echo {INIT_INSMOD_FAILED} {m}" for m in module_files)
    return f"""#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /dev/pts
{insmods}
dev=$(sed -n 's/.*{RESUME_ARG}=\\([a-z0-9]*\\).*/\\1/p' /proc/cmdline)
if [ -n "$dev" ]; then
  i=0
  while [ ! -e /sys/class/block/$dev/dev ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  cat /sys/class/block/$dev/dev > /sys/power/resume
  echo {INIT_RESUME_FAILED} $dev
fi
echo 4 4 1 4 > /proc/sys/kernel/printk
echo {INIT_READY}
exec setsid cttyhack sh
"""


def build_initramfs(out_path: Path, busybox: bytes, modules_root: Path, module_paths: Sequence[str],
                    extra_files: Mapping[str, bytes] | None = None) -> list[str]:
    """Write a gzip-compressed initramfs to ``out_path``; returns the module basenames in load order."""
    buf = io.BytesIO()
    w = CpioWriter(buf)
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "lib",
              "lib/modules", "etc", "root", "data"):
        w.directory(d)
    w.char_device("dev/console", 5, 1)
    w.char_device("dev/null", 1, 3, 0o666)
    w.char_device("dev/ttyS0", 4, 64)
    w.file("bin/busybox", busybox, 0o755)
    w.symlink("bin/sh", "busybox")
    names: list[str] = []
    for rel in module_paths:
        base = rel.rsplit("/", 1)[-1]
        try:
            data = (modules_root / rel).read_bytes()
        except OSError as e:
            raise ProvisionError(f"cannot read kernel module {modules_root / rel}: {e.strerror}") from None
        w.file(f"lib/modules/{base}", data)
        names.append(base)
    w.file("init", render_init(names).encode(), 0o755)
    w.file("etc/modules-order", ("\n".join(names) + "\n").encode())
    for name, data in (extra_files or {}).items():
        w.file(name, data)
    w.trailer()
    out_path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=6, mtime=0))
    return names
