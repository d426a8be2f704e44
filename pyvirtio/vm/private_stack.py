"""Provision a private stack (QEMU and a guest kernel unpacked into the cache, never installed).

Layout under ``<cache>/stacks/<stack>/``: ``apt/`` (a private apt configuration: sources, lists, package cache),
``<key>/`` (one provisioned build: ``root/`` the unpacked QEMU, ``vmlinuz``, ``initrd.img``, ``stamp.json``) and
``current`` (a symlink to the build in use, replaced atomically). ``<key>`` digests the stack's name, the
resolved package versions and the initramfs inputs. A build is made in a temporary directory, its stamp is
written last (atomically) and only then is it renamed into place, so a directory without a readable stamp is a
half-provisioned leftover: it is removed and rebuilt, never used.

:func:`provision_stack` and :func:`load_stack` take any stack by name (the default one is the system's,
:mod:`pyvirtio.vm.provisioning`).

Provisioning also builds our virtio-gpu modules for the stack's kernel and the initramfs variants that carry them
(:mod:`pyvirtio.vm.kmod`, cached under ``kmod/``, by kernel version and patch).

Contract: :func:`provision_private` resolves versions at call time (``apt-get update`` on the private lists,
``apt-cache madison``, ``apt-cache depends``); every failure is one line naming the stack, the package and what
to do (:class:`~pyvirtio.vm.errors.ProvisionError`). Nothing outside ``<cache>/stacks/<stack>/`` changes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pyvirtio.atomicio import write_text_atomic
from pyvirtio.vm import image, initramfs, kmod
from pyvirtio.vm.errors import ProvisionError
from pyvirtio.vm.initramfs import WANTED_MODULES, build_initramfs, module_name, resolve_load_order
from pyvirtio.vm.provisioning import (
    BUSYBOX_PACKAGE,
    LAYOUT_VERSION,
    GuestAssets,
    Log,
    _extract,
    _last_line,
    _locked,
    _point_current,
    _quiet,
    _read_stamp,
    _run,
    default_cache_dir,
    provision,
    qemu_version,
)
from pyvirtio.vm.provisioning import load_assets as load_system
from pyvirtio.vm.stacks import DEFAULT_STACK, Stack, get_stack

ARCHIVE = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
#: Bump when the private layout changes.
PRIVATE_LAYOUT = 1
_MODINFO_DEPENDS = re.compile(rb"(?:^|\0)depends=([^\0]*)\0")


@dataclass(frozen=True)
class Resolved:
    """Package versions resolved for one provisioning."""

    qemu_version: str  # apt version of qemu-system-x86, e.g. 1:10.0.2+ds-2+deb13u1~bpo12+1
    seabios_version: str
    kernel_package: str  # linux-image-6.12.117+deb12-amd64
    kernel_version: str
    busybox_version: str


class PrivateApt:
    """apt-get/apt-cache with lists and package cache under ``root`` (``-o Dir::...``), sources of Debian 12."""

    def __init__(self, root: Path, stack: Stack) -> None:
        self.root, self.stack = root, stack
        for d in ("lists/partial", "cache/archives/partial"):
            (root / d).mkdir(parents=True, exist_ok=True)
        sources = (f"deb [signed-by={KEYRING}] {ARCHIVE} bookworm main\n"
                   f"deb [signed-by={KEYRING}] {SECURITY} bookworm-security main\n"
                   f"deb [signed-by={KEYRING}] {ARCHIVE} bookworm-backports main\n")
        if not (root / "sources.list").is_file() or (root / "sources.list").read_text() != sources:
            write_text_atomic(root / "sources.list", sources)

    def options(self) -> list[str]:
        """The ``-o`` options that make apt private (no system lists, lock or cache is touched)."""
        r = self.root
        return ["-o", f"Dir::Etc::SourceList={r / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/nonexistent",
                "-o", f"Dir::State::Lists={r / 'lists'}", "-o", f"Dir::Cache={r / 'cache'}",
                "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root"]

    def fail(self, package: str, what: str) -> ProvisionError:
        """A one-line error naming the stack, the package and what to do."""
        return ProvisionError(f"stack {self.stack.name}: package {package}: {what}; check network access to "
                              f"deb.debian.org, then run: pyvirtio vm provision --stack {self.stack.name} "
                              "(the other stack is unaffected)")

    def update(self) -> None:
        """Refresh the private package lists."""
        cp = _run(["apt-get", *self.options(), "update"], timeout=300)
        if cp.returncode != 0:
            raise self.fail("(package lists)", f"apt-get update failed ({_last_line(cp)})")

    def madison(self, package: str) -> list[tuple[str, str]]:
        """(version, source line) pairs apt knows for ``package``, newest first."""
        cp = _run(["apt-cache", *self.options(), "madison", package], timeout=120)
        out = []
        for line in cp.stdout.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) >= 3 and parts[0] == package:
                out.append((parts[1], parts[2]))
        return out

    def version_in(self, package: str, suite: str, series: str = "") -> str:
        """The newest version of ``package`` from ``suite`` (its upstream part starting with ``series``)."""
        for version, src in self.madison(package):
            upstream = version.split(":", 1)[-1]
            if f" {suite}/" in f" {src.split(' ', 1)[-1]}" and upstream.startswith(series):
                return version
        want = f"{suite}" + (f", series {series}" if series else "")
        raise self.fail(package, f"no version from {want} is known to apt")

    def depends(self, package: str) -> str:
        """The ABI package a kernel meta package depends on (``linux-image-6.12.117+deb12-amd64``)."""
        cp = _run(["apt-cache", *self.options(), "depends", package], timeout=120)
        m = re.search(r"Depends:\s*(linux-image-[0-9][^\s]*)", cp.stdout)
        if cp.returncode != 0 or not m:
            raise self.fail(package, "apt-cache depends names no kernel package")
        return m.group(1)

    def download(self, pins: dict[str, str], into: Path) -> dict[str, Path]:
        """``apt-get download pkg=version ...`` into ``into``; package name -> .deb."""
        into.mkdir(parents=True, exist_ok=True)
        cp = _run(["apt-get", *self.options(), "download", *(f"{p}={v}" for p, v in pins.items())], cwd=into)
        debs = {deb.name.split("_", 1)[0]: deb for deb in into.glob("*.deb")}
        missing = [p for p in pins if p not in debs]
        if cp.returncode != 0 or missing:
            raise self.fail(" ".join(missing or pins), f"apt-get download failed ({_last_line(cp)})")
        return debs


def resolve(apt: PrivateApt, stack: Stack) -> Resolved:
    """Resolve every version now (the private lists must be up to date)."""
    kpkg = apt.depends(stack.kernel_meta_package)
    return Resolved(qemu_version=apt.version_in("qemu-system-x86", stack.qemu_suite, stack.qemu_series),
                    seabios_version=apt.version_in("seabios", stack.qemu_suite),
                    kernel_package=kpkg, kernel_version=apt.version_in(kpkg, stack.kernel_suite),
                    busybox_version=apt.version_in(BUSYBOX_PACKAGE, "bookworm"))


def inputs_digest() -> str:
    """A digest of what the initramfs is built from (the generator's and the frames' source, the layouts)."""
    h = hashlib.sha256(f"{LAYOUT_VERSION}/{PRIVATE_LAYOUT}".encode())
    for mod in (initramfs, image):
        if mod.__file__:
            h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:16]


def build_key(stack: Stack, r: Resolved) -> str:
    """The build directory's name: stack, resolved versions and initramfs inputs, digested."""
    text = json.dumps([stack.name, r.qemu_version, r.seabios_version, r.kernel_package, r.kernel_version,
                       r.busybox_version, inputs_digest()])
    return "b-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def modinfo_depends(ko: bytes) -> list[str]:
    """The ``depends=`` entry of a module's ``.modinfo``, as normalised module names (empty when none)."""
    m = _MODINFO_DEPENDS.search(ko)
    if not m or not m.group(1):
        return []
    return [module_name(d.decode(errors="replace")) for d in m.group(1).split(b",") if d]


def decompress_module(path: Path) -> bytes:
    """A module file's ELF bytes (``.ko.xz`` decompressed with :mod:`lzma`)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        try:
            return lzma.decompress(data)
        except lzma.LZMAError as e:
            raise ProvisionError(f"cannot decompress kernel module {path}: {e}") from None
    return data


def gather_modules(mroot: Path, out: Path, wanted: tuple[str, ...] = WANTED_MODULES) -> list[str]:
    """Decompress the wanted modules and their dependencies (``depends=`` from ``.modinfo``, no depmod) into
    ``out`` as ``<name>.ko``; returns their file names in load order. Built-in modules are skipped."""
    builtin: set[str] = set()
    with_builtin = mroot / "modules.builtin"
    if with_builtin.is_file():
        builtin = {module_name(ln.strip()) for ln in with_builtin.read_text().splitlines() if ln.strip()}
    files = {module_name(p.name): p for p in (mroot / "kernel").rglob("*.ko*")}
    out.mkdir(parents=True, exist_ok=True)
    dep: dict[str, tuple[str, list[str]]] = {}
    todo = [module_name(w) for w in wanted if module_name(w) not in builtin]
    while todo:
        name = todo.pop()
        if name in dep or name in builtin:
            continue
        if name not in files:
            raise ProvisionError(f"kernel module {name} is neither in {mroot / 'kernel'} nor built in")
        data = decompress_module(files[name])
        (out / f"{name}.ko").write_bytes(data)
        deps = [d for d in modinfo_depends(data) if d not in builtin]
        dep[name] = (f"{name}.ko", [f"{d}.ko" for d in deps])
        todo.extend(deps)
    return resolve_load_order(dep, [module_name(w) for w in wanted if module_name(w) not in builtin])


def _stack_dir(cache: Path, stack: Stack) -> Path:
    return cache / "stacks" / stack.name


def _assets_from(build: Path, stack: Stack) -> GuestAssets | None:
    """The assets of a complete build (a readable stamp of this layout and every file), else None."""
    st = _read_stamp(build)
    if not st or st.get("layout") != LAYOUT_VERSION or st.get("private_layout") != PRIVATE_LAYOUT \
            or st.get("stack") != stack.name:
        return None
    root = build / "root"
    qemu = root / "usr/bin/qemu-system-x86_64"
    kernel, initrd = build / "vmlinuz", build / "initrd.img"
    if not (qemu.is_file() and kernel.is_file() and initrd.is_file()):
        return None
    try:
        frame, modules = st["frame_size"], st["modules"]
        if not (isinstance(frame, list) and len(frame) == 2 and isinstance(modules, list)):
            return None
        rroot = root.resolve()
        env = (("QEMU_MODULE_DIR", str(rroot / "usr/lib/x86_64-linux-gnu/qemu")),)
        args = ("-L", str(rroot / "usr/share/qemu"), "-L", str(rroot / "usr/share/seabios"))
        return GuestAssets(
            root=build.resolve(), kernel=kernel.resolve(), initrd=initrd.resolve(),
            kernel_package=str(st["kernel_package"]), kernel_package_version=str(st["kernel_package_version"]),
            kernel_release=str(st["kernel_release"]), busybox_version=str(st["busybox_version"]),
            modules=tuple(str(m) for m in modules), frame_size=(int(frame[0]), int(frame[1])),
            blk_pattern_md5=str(st["blk_pattern_md5"]), qemu=qemu.resolve(), qemu_version=str(st["qemu"]),
            stack=stack.name, qemu_env=env, qemu_args=args, qemu_package_version=str(st["qemu_package"]))
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


def _build(sdir: Path, key: str, stack: Stack, r: Resolved, apt: PrivateApt, log: Log) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=sdir))
    try:
        work = tmp / "work"
        pins = {p: r.qemu_version for p in stack.qemu_packages if p != "seabios"}
        pins.update({"seabios": r.seabios_version, r.kernel_package: r.kernel_version,
                     BUSYBOX_PACKAGE: r.busybox_version})
        log(f"{stack.name}: downloading {', '.join(f'{p}={v}' for p, v in pins.items())}")
        debs = apt.download(pins, work / "debs")
        build = tmp / "build"
        root = build / "root"
        root.mkdir(parents=True)
        for p in pins:
            if p not in (r.kernel_package, BUSYBOX_PACKAGE):
                _extract(debs[p], root)
        kroot, bbroot = work / "kroot", work / "bb"
        kroot.mkdir()
        bbroot.mkdir()
        _extract(debs[r.kernel_package], kroot)
        _extract(debs[BUSYBOX_PACKAGE], bbroot)
        releases = sorted(p.name for p in (kroot / "lib/modules").iterdir() if p.is_dir())
        if len(releases) != 1:
            raise apt.fail(r.kernel_package, f"holds {len(releases)} module trees, expected one")
        release = releases[0]
        mroot = kroot / "lib/modules" / release
        mods = work / "mods"
        order = gather_modules(mroot, mods)
        pattern = image.blk_pattern()
        frames = {f"data/frame-{k}.gz": gzip.compress(image.frame_to_xrgb8888(image.make_frame(k)), mtime=0)
                  for k in ("a", "b")}
        names = build_initramfs(build / "initrd.img", (bbroot / "bin/busybox").read_bytes(), mods, order,
                                {**frames, "data/blk-pattern.bin": pattern})
        shutil.copyfile(kroot / "boot" / f"vmlinuz-{release}", build / "vmlinuz")
        qemu = root / "usr/bin/qemu-system-x86_64"
        qver = qemu_version(qemu, {**os.environ, "QEMU_MODULE_DIR": str(root / "usr/lib/x86_64-linux-gnu/qemu")})
        stamp = {"layout": LAYOUT_VERSION, "private_layout": PRIVATE_LAYOUT, "stack": stack.name, "key": key,
                 "qemu": qver, "qemu_package": r.qemu_version, "seabios": r.seabios_version,
                 "kernel_package": r.kernel_package, "kernel_package_version": r.kernel_version,
                 "kernel_release": release, "busybox_version": r.busybox_version, "modules": names,
                 "frame_size": [image.FRAME_WIDTH, image.FRAME_HEIGHT],
                 "blk_pattern_md5": hashlib.md5(pattern).hexdigest(), "initramfs_inputs": inputs_digest()}
        write_text_atomic(build / "stamp.json", json.dumps(stamp, indent=2) + "\n")  # last: the build is whole
        final = sdir / key
        if final.exists():
            shutil.rmtree(final)
        os.rename(build, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_private(cache: Path, stack: Stack) -> GuestAssets:
    """The provisioned private stack, without provisioning; a one-line error when it is missing or partial. Our
    virtio-gpu modules come along when they are built (:func:`pyvirtio.vm.kmod.load_modules`)."""
    assets = _assets_from(_stack_dir(cache, stack) / "current", stack)
    if assets is None:
        raise ProvisionError(f"stack {stack.name} is not provisioned in {cache}; run: pyvirtio vm provision "
                             f"--stack {stack.name}")
    return kmod.load_modules(_stack_dir(cache, stack) / "kmod", assets)


def provision_private(cache: Path, stack: Stack, *, refresh: bool = False, log: Log = _quiet) -> GuestAssets:
    """Resolve the stack's versions now and make sure a whole build of exactly those is in the cache."""
    sdir = _stack_dir(cache, stack)
    with _locked(sdir):
        apt = PrivateApt(sdir / "apt", stack)
        current = _assets_from(sdir / "current", stack)
        try:
            apt.update()
            r = resolve(apt, stack)
        except ProvisionError:
            if current is not None and not refresh:
                log(f"{stack.name}: cannot resolve versions now; keeping the provisioned build")
                return kmod.load_modules(sdir / "kmod", current, log=log)
            raise
        key = build_key(stack, r)
        build = sdir / key
        found = _assets_from(build, stack)
        if found is not None and not refresh:
            _point_current(sdir, build)
            log(f"{stack.name}: up to date ({build})")
            return kmod.provision_modules(sdir / "kmod", found, apt.download, log=log)
        if build.exists():
            log(f"{stack.name}: {build} is incomplete (no valid stamp); rebuilding")
            shutil.rmtree(build)
        build = _build(sdir, key, stack, r, apt, log)
        _point_current(sdir, build)
        assets = _assets_from(build, stack)
        if assets is None:
            raise ProvisionError(f"stack {stack.name}: freshly built {build} is unreadable")
        log(f"{stack.name}: ready ({build})")
        return kmod.provision_modules(sdir / "kmod", assets, apt.download, log=log)


def provision_stack(cache_dir: Path | None = None, *, stack: str | Stack = DEFAULT_STACK, refresh: bool = False,
                    install_qemu: bool = True, log: Log = _quiet) -> GuestAssets:
    """Provision ``stack`` (by name): the system stack through :func:`pyvirtio.vm.provisioning.provision`,
    a private one through :func:`provision_private`."""
    st = get_stack(stack)
    if not st.private:
        return provision(cache_dir, install_qemu=install_qemu, refresh=refresh, log=log)
    return provision_private((cache_dir or default_cache_dir()).expanduser(), st, refresh=refresh, log=log)


def load_stack(cache_dir: Path | None = None, *, stack: str | Stack = DEFAULT_STACK) -> GuestAssets:
    """The provisioned ``stack``, without provisioning anything."""
    st = get_stack(stack)
    if not st.private:
        return load_system(cache_dir)
    return load_private((cache_dir or default_cache_dir()).expanduser(), st)
